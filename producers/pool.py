"""Chip products from pixel products: the pixel vectors of each chip pooled into one vector.

The chips of a scene are cut on the scene's own pixel grid (the grid of its tiles), as the chip
producer cuts imagery; a chip's vector is the mean (or max) of its pixels with data, and a chip
with less than ``min_valid`` of them is left out. The pooling is part of the chip product's model
contract: ``pooling`` names the method, ``input.chip_size_px``/``stride_px`` the chips, and
``parameters.pooled_from`` the pixel product and its pixel model's own pooling and window.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely

from eoembed._errors import SpecError, TilingError
from eoembed._grid import get_grid
from eoembed._write import ProductWriter

from .produce import _cells_or_none
from .tile import _lonlat_bounds, _lonlat_rings, _native_bounds, _positive_int

__all__ = ["pool"]

_METHODS = ("mean", "max")


@dataclass(frozen=True)
class _SceneGrid:
    """The pixel grid of one source scene, as the tiler's helpers take it."""

    path: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int


def _scenes(product) -> dict[str, _SceneGrid]:
    out: dict[str, _SceneGrid] = {}
    for source in sorted({t.source_id for t in product.tiles}):
        tiles = [t for t in product.tiles if t.source_id == source]
        if len({t.geo.code for t in tiles}) != 1:
            raise SpecError(f"{product.path}: the tiles of {source} lie in several CRSs; a scene has one grid")
        a, _, _, _, e, _ = tiles[0].geo.transform
        x0 = min(t.geo.transform[2] for t in tiles)
        y0 = max(t.geo.transform[5] for t in tiles)
        width = int(round((max(t.geo.transform[2] + t.geo.shape[1] * a for t in tiles) - x0) / a))
        height = int(round((min(t.geo.transform[5] + t.geo.shape[0] * e for t in tiles) - y0) / e))
        out[source] = _SceneGrid(path=f"{product.path.name}:{source}", crs=tiles[0].geo.code,
                                 transform=(a, 0.0, x0, 0.0, e, y0), width=width, height=height)
    return out


def pool(source: str | os.PathLike, out: str | os.PathLike, *, chip_size: int, stride: int | None = None,
         method: Literal["mean", "max"] = "mean", min_valid: float = 0.5, quantization: str = "none",
         overwrite: bool = False) -> Path:
    """Write the chip product of ``source`` (a pixel product): chips of ``chip_size`` pixels every
    ``stride`` (default ``chip_size``), each the ``method`` of its pixels with data. Returns ``out``."""
    import eoembed

    chip_size = _positive_int("chip_size", chip_size)
    stride = chip_size if stride is None else _positive_int("stride", stride)
    if method not in _METHODS:
        raise SpecError(f"pooling method {method!r} is not one of {list(_METHODS)}")
    if not 0.0 < float(min_valid) <= 1.0:
        raise TilingError(f"min_valid={min_valid!r} must be a fraction in (0, 1]")
    product = eoembed.open(source)
    if getattr(product, "kind", "chip") != "pixel":
        raise SpecError(f"{source} is a chip product already; pool takes a pixel product (eoembed produce --level pixel)")
    pixel_model = product.model
    model = copy.deepcopy(pixel_model)
    model["pooling"] = method
    model["input"] = {**model["input"], "chip_size_px": chip_size, "stride_px": stride}
    model["parameters"] = {**model.get("parameters", {}), "pooled_from": {
        "collection": product.collection.get("id"), "level": "pixel", "pixel_pooling": pixel_model["pooling"],
        "pixel_chip_size_px": pixel_model["input"]["chip_size_px"], "min_valid": float(min_valid)}}
    grid_section = product.metadata["grid"]
    grid = get_grid(grid_section["id"])
    embedding = product.metadata["embedding"]
    with ProductWriter(out, model=model, grid=grid_section, quantization=quantization, metric=embedding["metric"],
                       license=product.metadata["license"], overwrite=overwrite,
                       provenance={"config": {"pooled_from": str(product.path), "chip_size": chip_size, "stride": stride,
                                              "method": method, "min_valid": float(min_valid)}}) as writer:
        times = {t.source_id: read_time(t.path) for t in product.tiles}
        for source_id, scene in _scenes(product).items():
            start, end = times[source_id]
            for row in range(0, scene.height - chip_size + 1, stride):
                strip = product.to_numpy((row, 0, row + chip_size, scene.width), source_id=source_id)
                cols = np.arange(0, scene.width - chip_size + 1, stride)
                if not len(cols):
                    continue
                # (chips, chip_size, chip_size, D) views of the strip
                chips = np.stack([strip[:, c:c + chip_size] for c in cols])
                valid = ~np.isnan(chips).all(axis=3)
                fraction = valid.reshape(len(cols), -1).mean(axis=1).astype(np.float32)
                keep = fraction >= min_valid
                if not keep.any():
                    continue
                chips, fraction, cols = chips[keep], fraction[keep], cols[keep]
                flat = chips.reshape(len(cols), -1, chips.shape[-1])
                vectors = np.nanmean(flat, axis=1) if method == "mean" else np.nanmax(flat, axis=1)
                win = np.stack([cols, np.full(len(cols), row), np.full(len(cols), chip_size)], axis=1).astype(np.float64)
                lon, lat = _lonlat_rings(scene, win)
                bounds = _lonlat_bounds(lon, lat)
                native = _native_bounds(scene, win)
                centre_lon, centre_lat = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
                cells = _cells_or_none(grid, centre_lon, centre_lat, refuse=True, where=source_id)
                pixel_bbox = np.stack([cols, np.full(len(cols), row), cols + chip_size, np.full(len(cols), row + chip_size)], axis=1)
                batch: dict[str, Any] = {
                    "embedding": vectors.astype(np.float32), "bounds": bounds, "source_id": source_id, "grid_cell": cells,
                    "native_crs": scene.crs, "native_footprint": shapely.box(*native.T), "pixel_bbox": pixel_bbox.astype(np.int32),
                    "valid_fraction": fraction,
                }
                if start == end:
                    batch["datetime"] = start
                else:
                    batch["start_datetime"], batch["end_datetime"] = start, end
                writer.write(batch)
    return writer.path


def read_time(path: Path):
    from eoembed._tiles import parse_time, read_tile

    tile = read_tile(path, data=False).tile
    return parse_time(tile["start_datetime"]), parse_time(tile["end_datetime"])
