"""Cut scenes into square chips and place each chip on Earth.

Chip grids follow the Major TOM idea: a regular grid of ``chip_size`` squares every ``stride``
pixels, plus (``cover_edges``) a last column and row shifted inward so the image border is covered
without padding. Chips never extend beyond the image, so no pixel is invented.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.errors import RasterioError

from eoembed._errors import ImageryError, TilingError

from .read import Scene, _band_indexes, _read_open

__all__ = ["ChipWindow", "ChipBatch", "chip_windows", "iter_chip_batches", "footprint_polygons_lonlat"]

#: segments per chip edge when a footprint is reprojected (the edges of a projected square are curves in lon/lat)
DENSIFY_SEGMENTS = 8


@dataclass(frozen=True)
class ChipWindow:
    """A ``size`` x ``size`` square whose top-left pixel is (``col_off``, ``row_off``)."""

    col_off: int
    row_off: int
    size: int


@dataclass
class ChipBatch:
    """Up to ``batch_size`` chips of one scene, in :func:`chip_windows` order.

    ``valid`` (bool ``(n, size, size)``) is False where a pixel is nodata or non-finite in any band;
    encoders take it to skip those pixels.
    """

    pixels: np.ndarray  # float32 (n, bands, size, size)
    valid_fraction: np.ndarray  # float32 (n,)
    windows: list[ChipWindow]
    native_bounds: np.ndarray  # float64 (n, 4) xmin, ymin, xmax, ymax in the scene CRS
    lonlat_bounds: np.ndarray  # float64 (n, 4) west, south, east, north in OGC:CRS84
    pixel_bbox: np.ndarray  # int32 (n, 4) col0, row0, col1, row1 (end exclusive)
    valid: np.ndarray  # bool (n, size, size)

    def __len__(self) -> int:
        return len(self.windows)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TilingError(f"{name}={value!r} is not an integer; pass a whole number of pixels >= 1")
    if value < 1:
        raise TilingError(f"{name}={value} is below 1; pass a whole number of pixels >= 1")
    return int(value)


def _offsets(n: int, size: int, stride: int, cover_edges: bool) -> list[int]:
    if n < size:
        return []
    offsets = list(range(0, n - size + 1, stride))
    if cover_edges and offsets[-1] + size < n:
        offsets.append(n - size)
    return offsets


def chip_windows(
    width: int, height: int, *, chip_size: int, stride: int | None = None, cover_edges: bool = True
) -> list[ChipWindow]:
    """Chip windows of a ``width`` x ``height`` image, row-major (top row first, left to right).

    ``stride`` defaults to ``chip_size``. With ``cover_edges`` a last column/row is added at
    ``width - chip_size`` / ``height - chip_size`` when the regular grid leaves a border uncovered.
    An image smaller than ``chip_size`` in either direction has no chips.
    """
    chip_size = _positive_int("chip_size", chip_size)
    stride = chip_size if stride is None else _positive_int("stride", stride)
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 0:
        raise TilingError(f"width={width!r} is not a pixel count; pass an integer >= 0")
    if isinstance(height, bool) or not isinstance(height, numbers.Integral) or height < 0:
        raise TilingError(f"height={height!r} is not a pixel count; pass an integer >= 0")
    cols = _offsets(int(width), chip_size, stride, cover_edges)
    rows = _offsets(int(height), chip_size, stride, cover_edges)
    return [ChipWindow(c, r, chip_size) for r in rows for c in cols]


@lru_cache(maxsize=32)
def _to_crs84(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)


def _unit_ring(segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractions (u, v) along the border of the unit square, clockwise from the top-left, not closed."""
    t = np.arange(segments, dtype=np.float64) / segments
    u = np.concatenate([t, np.ones(segments), 1.0 - t, np.zeros(segments)])
    v = np.concatenate([np.zeros(segments), t, np.ones(segments), 1.0 - t])
    return u, v


def _windows_array(windows: Sequence[ChipWindow]) -> np.ndarray:
    return np.array([(w.col_off, w.row_off, w.size) for w in windows], dtype=np.float64).reshape(-1, 3)


def _native_bounds(scene: Scene, win: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = scene.transform[:6]
    col0, row0, size = win[:, 0], win[:, 1], win[:, 2]
    cols = np.stack([col0, col0 + size, col0, col0 + size], axis=1)
    rows = np.stack([row0, row0, row0 + size, row0 + size], axis=1)
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def _lonlat_rings(scene: Scene, win: np.ndarray, segments: int = DENSIFY_SEGMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Densified chip borders in CRS84: lon, lat arrays of shape (n, 4 * segments)."""
    u, v = _unit_ring(segments)
    cols = win[:, :1] + win[:, 2:3] * u[None, :]
    rows = win[:, 1:2] + win[:, 2:3] * v[None, :]
    a, b, c, d, e, f = scene.transform[:6]
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    lon, lat = _to_crs84(scene.crs).transform(xs.ravel(), ys.ravel())
    lon = np.asarray(lon, dtype=np.float64).reshape(xs.shape)
    lat = np.asarray(lat, dtype=np.float64).reshape(xs.shape)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ImageryError(
            f"{scene.path}: some chip corners cannot be projected from {scene.crs} to lon/lat; "
            "check the scene's CRS and geotransform"
        )
    return lon, lat


def _lonlat_bounds(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    west, east = lon.min(1), lon.max(1)
    crossing = (east - west) > 180.0
    if crossing.any():  # antimeridian: west > east, as STAC / GeoJSON bboxes write it
        shifted = np.where(lon[crossing] < 0, lon[crossing] + 360.0, lon[crossing])
        w, e = shifted.min(1), shifted.max(1)
        west[crossing] = np.where(w > 180.0, w - 360.0, w)
        east[crossing] = np.where(e > 180.0, e - 360.0, e)
    return np.stack([west, lat.min(1), east, lat.max(1)], axis=1)


def footprint_polygons_lonlat(scene: Scene, windows: Sequence[ChipWindow]) -> list[shapely.Polygon]:
    """Chip footprints as OGC:CRS84 polygons, each edge densified to :data:`DENSIFY_SEGMENTS` segments.

    Footprints crossing the antimeridian are not split.
    """
    if len(windows) == 0:
        return []
    lon, lat = _lonlat_rings(scene, _windows_array(windows))
    coords = np.stack([lon, lat], axis=-1)
    coords = np.concatenate([coords, coords[:, :1]], axis=1)  # close the rings
    return list(shapely.polygons(coords))


def _make_batch(scene: Scene, pixels, valid, windows, fractions) -> ChipBatch:
    win = _windows_array(windows)
    lon, lat = _lonlat_rings(scene, win)
    size = win[:, 2]
    bbox = np.stack([win[:, 0], win[:, 1], win[:, 0] + size, win[:, 1] + size], axis=1).astype(np.int32)
    valid_arr = np.stack(valid)
    return ChipBatch(
        pixels=np.stack(pixels),
        valid_fraction=np.array(fractions, dtype=np.float32),
        windows=list(windows),
        native_bounds=_native_bounds(scene, win),
        lonlat_bounds=_lonlat_bounds(lon, lat),
        pixel_bbox=bbox,
        valid=valid_arr,
    )


def iter_chip_batches(
    scene: Scene,
    *,
    chip_size: int,
    stride: int | None = None,
    batch_size: int = 256,
    min_valid_fraction: float = 0.0,
    bands: Sequence[int] | None = None,
    windows: Sequence[ChipWindow] | None = None,
) -> Iterator[ChipBatch]:
    """Chips of ``scene`` in batches of up to ``batch_size``, in :func:`chip_windows` order.

    Reads one strip per chip row (all chips of a row in one read) through one open dataset.
    Chips whose valid fraction is below ``min_valid_fraction`` are dropped. ``bands`` are 1-based
    band indexes (None: all). ``windows`` restricts the chips to a subset of :func:`chip_windows`
    (one work unit of a distributed job), kept in the given order.
    """
    indexes = _band_indexes(scene, bands)
    try:
        ds = rasterio.open(scene.path)
    except RasterioError as exc:
        raise ImageryError(f"{scene.path}: rasterio cannot open it ({exc}); check that the file is still there") from exc
    with ds:
        def read(*, col_off: int, row_off: int, width: int, height: int):
            return _read_open(ds, scene, col_off=col_off, row_off=row_off, width=width, height=height, indexes=indexes)

        yield from strip_batches(scene, read, chip_size=chip_size, stride=stride, batch_size=batch_size,
                                 min_valid_fraction=min_valid_fraction, windows=windows)


def strip_batches(
    grid,
    read,
    *,
    chip_size: int,
    stride: int | None,
    batch_size: int,
    min_valid_fraction: float,
    windows: Sequence[ChipWindow] | None = None,
) -> Iterator[ChipBatch]:
    """Chip batches of ``grid`` (anything with width, height, crs and transform), reading one strip
    per chip row through ``read(col_off=, row_off=, width=, height=) -> (pixels, valid)``."""
    batch_size = _positive_int("batch_size", batch_size)
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise TilingError(f"min_valid_fraction={min_valid_fraction!r} is outside [0, 1]; pass a fraction of pixels")
    if windows is None:
        windows = chip_windows(grid.width, grid.height, chip_size=chip_size, stride=stride)
    if not windows:
        return
    rows: dict[int, list[ChipWindow]] = {}
    for w in windows:
        rows.setdefault(w.row_off, []).append(w)
    size = windows[0].size
    pend_pixels: list[np.ndarray] = []
    pend_valid: list[np.ndarray] = []
    pend_windows: list[ChipWindow] = []
    pend_fraction: list[np.float32] = []
    for row_off, row_windows in rows.items():
        c0 = row_windows[0].col_off
        c1 = row_windows[-1].col_off + size
        strip, strip_valid = read(col_off=c0, row_off=row_off, width=c1 - c0, height=size)
        for w in row_windows:
            x = w.col_off - c0
            chip_valid = strip_valid[:, x : x + size]
            fraction = np.float32(np.count_nonzero(chip_valid) / chip_valid.size)
            if fraction < min_valid_fraction:
                continue
            pend_pixels.append(strip[:, :, x : x + size])
            pend_valid.append(chip_valid)
            pend_windows.append(w)
            pend_fraction.append(fraction)
            if len(pend_windows) == batch_size:
                yield _make_batch(grid, pend_pixels, pend_valid, pend_windows, pend_fraction)
                pend_pixels, pend_valid, pend_windows, pend_fraction = [], [], [], []
    if pend_windows:
        yield _make_batch(grid, pend_pixels, pend_valid, pend_windows, pend_fraction)
