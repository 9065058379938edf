"""Spatial blocks: chips close enough to share what an evaluation should not see twice.

Neighbouring chips look alike: land cover and pixels are spatially autocorrelated, so a split that
fits on one chip and scores its neighbour measures memory of the place, not generalisation. A
blocked split keeps its two sides in different blocks: squares of ``size`` metres (``"2km"``,
``"500m"``) or of ``size`` chips (``"8cells"``) on a grid anchored at the south-west corner of the
product's chips. A chip belongs to the block holding its footprint's centre, measured in the
product's own CRS (the chips' ``native_crs`` when they share one projected CRS in metres) or else in
an azimuthal equidistant projection centred on the product, so that a lon/lat product is blocked in
metres too.

Default block (``DEFAULT_BLOCK``): 2 km, from the spatial autocorrelation of the NC Landsat-7 scene
(``benchmarks/fewshot_nc.py --autocorrelation``). The mean correlation of two 8 px chips'
standardised band-statistics vectors is 0.51 for adjacent chips (230 m apart), 0.14 at 1-1.5 km,
0.08 at 1.5-2 km, 0.04 at 2.5-3.5 km and about 0 beyond 3.5 km; the excess chance that two pixels of
the land-cover raster share a class falls from 0.28 at 228 m to 0.08 at 2 km. At 2 km most of the
likeness of neighbours is gone (a sixth of the adjacent chips' correlation is left) while the scene
still holds 42 blocks, enough for its rarest class (water, 26 chips) to keep its support and query
chips apart; larger blocks remove the rest of the likeness at the cost of the rare classes. Data
whose autocorrelation reaches further (coarser pixels, larger fields) needs a larger block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._errors import SpatialBlockError

DEFAULT_BLOCK = "2km"
_SIZE = re.compile(r"^\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>m|km|cells?|chips?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BlockSize:
    """A block edge: ``value`` metres (``unit="m"``) or ``value`` chips (``unit="cells"``)."""

    value: float
    unit: Literal["m", "cells"]

    def __str__(self) -> str:
        if self.unit == "cells":
            return f"{self.value:g} cells"
        return f"{self.value / 1000:g} km" if self.value >= 1000 else f"{self.value:g} m"

    def option(self) -> str:
        """The size as an option value: ``2km``, ``500m``, ``8cells``."""
        if self.unit == "cells":
            return f"{self.value:g}cells"
        return f"{self.value / 1000:g}km" if self.value >= 1000 else f"{self.value:g}m"

    def metres(self, cell: float) -> float:
        """The edge in metres for chips ``cell`` metres wide."""
        return self.value * cell if self.unit == "cells" else self.value


def parse_block(block: str | float | BlockSize) -> BlockSize:
    """``"2km"``, ``"500 m"``, ``"8cells"`` (chips per block edge), a number of metres, or a :class:`BlockSize`."""
    if isinstance(block, BlockSize):
        size = block
    elif isinstance(block, (int, float)) and not isinstance(block, bool):
        size = BlockSize(float(block), "m")
    else:
        match = _SIZE.match(str(block))
        if not match:
            raise SpatialBlockError(f"block size {block!r} is not a length: write it as 2km, 500m or 8cells (chips per block edge)")
        value, unit = float(match["value"]), match["unit"].lower()
        size = BlockSize(value * 1000 if unit == "km" else value, "m" if unit in ("m", "km") else "cells")
    if not np.isfinite(size.value) or size.value <= 0:
        raise SpatialBlockError(f"block size {block!r} must be a positive length such as 2km or 8cells")
    return size


@dataclass(frozen=True)
class Blocks:
    """The block of each chip (``ids``, int64 in ``0..count-1``) and how the blocks were drawn."""

    ids: np.ndarray
    size: BlockSize
    metres: float  # block edge in metres
    cell: float  # median chip edge in metres
    crs: str  # the metric CRS the centres were measured in

    @property
    def count(self) -> int:
        return int(self.ids.max()) + 1 if len(self.ids) else 0

    def take(self, rows: np.ndarray) -> "Blocks":
        """The blocks of chips ``rows`` (positions in product order), renumbered from 0."""
        _, ids = np.unique(self.ids[np.asarray(rows, dtype=np.int64)], return_inverse=True)
        return Blocks(ids.astype(np.int64), self.size, self.metres, self.cell, self.crs)

    def describe(self) -> str:
        return f"blocked, {self.size} blocks" + (f" ({self.metres / 1000:.2g} km)" if self.size.unit == "cells" else "")


def grid_blocks(x: np.ndarray, y: np.ndarray, *, edge: float, origin: tuple[float, float]) -> np.ndarray:
    """Block number (0.., in order of first appearance on the grid) of points (x, y) on squares of ``edge`` from ``origin``."""
    col = np.floor((np.asarray(x, dtype=np.float64) - origin[0]) / edge).astype(np.int64)
    row = np.floor((np.asarray(y, dtype=np.float64) - origin[1]) / edge).astype(np.int64)
    _, ids = np.unique(np.stack([row, col], axis=1), axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def _metric_crs(product, footprints) -> Any:
    """The chips' shared projected CRS in metres, else an azimuthal equidistant CRS at the product's centre."""
    import pyproj
    import shapely

    if "native_crs" in product.schema.names:
        names = {str(v) for batch in product.iter_batches(columns=["native_crs"]) for v in batch.column("native_crs").to_pylist()}
        if len(names) == 1 and "None" not in names:
            crs = pyproj.CRS.from_user_input(names.pop())
            units = {axis.unit_name for axis in crs.axis_info}
            if crs.is_projected and units <= {"metre", "meter"}:
                return crs
    xmin, ymin, xmax, ymax = shapely.total_bounds(footprints)
    return pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={(ymin + ymax) / 2} +lon_0={(xmin + xmax) / 2} +datum=WGS84 +units=m")


def spatial_blocks(product, *, block: str | float | BlockSize = DEFAULT_BLOCK) -> Blocks:
    """The block of every chip of ``product`` (product order) for blocks of ``block`` (see :func:`parse_block`)."""
    import pyproj
    import shapely

    from ._labels import chip_footprints

    size = parse_block(block)
    _, footprints = chip_footprints(product)
    if not len(footprints):
        raise SpatialBlockError(f"{product.path} holds no chips to put into blocks")
    crs = _metric_crs(product, footprints)
    to_metric = pyproj.Transformer.from_crs("OGC:CRS84", crs, always_xy=True)
    metric = shapely.transform(footprints, lambda xy: np.stack(to_metric.transform(xy[:, 0], xy[:, 1]), axis=1))
    bounds = shapely.bounds(metric)
    cell = float(np.sqrt(np.median(shapely.area(metric))))
    cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
    edge = size.metres(cell)
    # The grid starts at the outer edge of the south-west chips, so that "8cells" holds 8 whole chips.
    ids = grid_blocks(cx, cy, edge=edge, origin=(float(bounds[:, 0].min()), float(bounds[:, 1].min())))
    return Blocks(ids=ids, size=size, metres=edge, cell=cell, crs=crs.to_string())
