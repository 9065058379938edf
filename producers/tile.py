"""Cut scenes into square chips and place each chip on Earth.

Chip grids follow the Major TOM idea: a regular grid of ``chip_size`` squares every ``stride``
pixels, plus (``cover_edges``) a last column and row shifted inward so the image border is covered
without padding. Chips never extend beyond the image, so no pixel is invented.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import shapely
from numpy.lib.stride_tricks import sliding_window_view
from pyproj import Transformer
from rasterio.errors import RasterioError

from eoembed._errors import ImageryError, TilingError

from .read import Scene, _band_indexes, _read_open, open_dataset

__all__ = ["ChipWindow", "ChipBatch", "chip_windows", "iter_chip_batches", "footprint_polygons_lonlat"]

#: segments per chip edge when a footprint is reprojected (the edges of a projected square are curves in lon/lat)
DENSIFY_SEGMENTS = 8


class ChipWindow(NamedTuple):
    """A ``size`` x ``size`` square whose top-left pixel is (``col_off``, ``row_off``).

    A named tuple: a scene has tens of thousands of them, and a list of them converts to an array in
    one call (:func:`_windows_array`)."""

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
    return list(_chip_windows(int(width), int(height), chip_size, stride, bool(cover_edges)))


@lru_cache(maxsize=16)
def _chip_windows(width: int, height: int, chip_size: int, stride: int, cover_edges: bool) -> tuple[ChipWindow, ...]:
    """The windows of one chip grid, made once: planning, each unit and each rank ask for them again."""
    cols = _offsets(width, chip_size, stride, cover_edges)
    rows = _offsets(height, chip_size, stride, cover_edges)
    return tuple(ChipWindow(c, r, chip_size) for r in rows for c in cols)


@lru_cache(maxsize=32)
def _to_crs84(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)


def _unit_ring(segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractions (u, v) along the border of the unit square, clockwise from the top-left, not closed."""
    t = np.arange(segments, dtype=np.float64) / segments
    u = np.concatenate([t, np.ones(segments), 1.0 - t, np.zeros(segments)])
    v = np.concatenate([np.zeros(segments), t, np.ones(segments), 1.0 - t])
    return u, v


def _windows_array(windows: Sequence[ChipWindow], *, dtype=np.float64) -> np.ndarray:
    """(n, 3) col_off, row_off, size: one pass over the flattened tuples (np.array takes each tuple apart)."""
    return np.fromiter(itertools.chain.from_iterable(windows), dtype=dtype, count=3 * len(windows)).reshape(-1, 3)


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
    shape = (len(win), len(u))
    # Points on the chips' top and bottom edges lie on few rows, those on their left and right edges on
    # few columns, and neighbouring chips share them: project each point of those two lattices once.
    edges = [(v == 0) | (v == 1)]
    edges.append(~edges[0])  # left and right edges (u is 0 or 1)
    offsets_c, offsets_r, sizes = (np.unique(win[:, i]) for i in range(3))
    # each chip's column offset, row offset and size as positions among those distinct values
    at_c, at_r, at_size = (np.searchsorted(values, win[:, i]) for i, values in enumerate((offsets_c, offsets_r, sizes)))

    def lattice(offsets: np.ndarray, chip_at: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct positions offset + size * fraction, and each chip point's index among them, found
        in a table over (offset, size, fraction) rather than by a search per point. The sums are those
        of the points' own positions (offset + size * u), so equal positions meet bit for bit."""
        steps, step_of = np.unique(fractions, return_inverse=True)
        sums = offsets[:, None, None] + sizes[None, :, None] * steps[None, None, :]
        values = np.unique(sums)
        table = np.searchsorted(values, sums)
        return values, table[chip_at[:, None], at_size[:, None], step_of[None, :]]

    lattices = [(edge, *lattice(offsets_c, at_c, u[edge]), *lattice(offsets_r, at_r, v[edge])) for edge in edges]
    if sum(len(c) * len(r) for _, c, _, r, _ in lattices) >= np.prod(shape):  # scattered chips share few points
        cols = win[:, :1] + win[:, 2:3] * u[None, :]
        rows = win[:, 1:2] + win[:, 2:3] * v[None, :]
        lon, lat = (values.reshape(shape) for values in _to_crs84_points(scene, cols, rows))
    else:
        lon, lat = np.empty(shape), np.empty(shape)
        for edge, lattice_cols, col_at, lattice_rows, row_at in lattices:
            x, y = _to_crs84_points(scene, *np.meshgrid(lattice_cols, lattice_rows))
            at = row_at * len(lattice_cols) + col_at
            lon[:, edge], lat[:, edge] = x[at], y[at]
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ImageryError(
            f"{scene.path}: some chip corners cannot be projected from {scene.crs} to lon/lat; "
            "check the scene's CRS and geotransform"
        )
    return lon, lat


def _to_crs84_points(scene: Scene, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat lon, lat arrays of pixel positions (col, row) of ``scene``."""
    a, b, c, d, e, f = scene.transform[:6]
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    lon, lat = _to_crs84(scene.crs).transform(xs.ravel(), ys.ravel())
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


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


def _make_batch(scene: Scene, pixels: np.ndarray, valid: np.ndarray, windows: list[ChipWindow],
                fractions: np.ndarray, win: np.ndarray) -> ChipBatch:
    """The batch of chips ``windows`` (also as an (n, 3) array ``win``)."""
    lon, lat = _lonlat_rings(scene, win)
    size = win[:, 2]
    bbox = np.stack([win[:, 0], win[:, 1], win[:, 0] + size, win[:, 1] + size], axis=1).astype(np.int32)
    return ChipBatch(
        pixels=pixels,
        valid_fraction=fractions,
        windows=windows,
        native_bounds=_native_bounds(scene, win),
        lonlat_bounds=_lonlat_bounds(lon, lat),
        pixel_bbox=bbox,
        valid=valid,
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
        opened = open_dataset(scene.path)
    except RasterioError as exc:
        raise ImageryError(f"{scene.path}: rasterio cannot open it ({exc}); check that the file is still there") from exc
    with opened as ds:
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
    """Chip batches of ``grid`` (anything with width, height, crs and transform), reading blocks of
    consecutive chip rows through ``read(col_off=, row_off=, width=, height=) -> (pixels, valid)``.

    Chips come row by row (rows in the order they first appear in ``windows``, chips of a row in the
    given order). A block holds up to :data:`READ_BLOCK_PIXELS` pixels a band, so the rows that
    overlapping chip rows share are read once; chips are cut from it with array views, all at once."""
    batch_size = _positive_int("batch_size", batch_size)
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise TilingError(f"min_valid_fraction={min_valid_fraction!r} is outside [0, 1]; pass a fraction of pixels")
    if windows is None:
        windows = chip_windows(grid.width, grid.height, chip_size=chip_size, stride=stride)
    if not windows:
        return
    windows = list(windows)
    win = _windows_array(windows, dtype=np.int64)
    size = int(win[0, 2])
    # chips grouped by row, rows in order of first appearance
    row_ids, first_seen = np.unique(win[:, 1], return_index=True)
    rank = np.empty(len(row_ids), dtype=np.int64)
    rank[np.argsort(first_seen, kind="stable")] = np.arange(len(row_ids))
    order = np.argsort(rank[np.searchsorted(row_ids, win[:, 1])], kind="stable")
    pending = _PendingChips(batch_size)
    for block in _read_blocks(win[order], size):
        index = order[block]
        cols, rows = win[index, 0], win[index, 1]
        c0, r0 = int(cols.min()), int(rows.min())
        pixels, valid = read(col_off=c0, row_off=r0, width=int(cols.max()) - c0 + size, height=int(rows.max()) - r0 + size)
        chip_valid = sliding_window_view(valid, (size, size))[rows - r0, cols - c0]  # (k, size, size), a copy
        fractions = (np.count_nonzero(chip_valid, axis=(1, 2)) / (size * size)).astype(np.float32)
        keep = np.flatnonzero(fractions >= min_valid_fraction)
        if not len(keep):
            continue
        views = np.moveaxis(sliding_window_view(pixels, (size, size), axis=(1, 2)), 0, 2)  # (h', w', bands, size, size)
        chips = views[rows[keep] - r0, cols[keep] - c0]  # (k, bands, size, size), a contiguous copy
        pending.add(chips, chip_valid[keep], index[keep], fractions[keep])
        for part in pending.full_batches():
            yield _make_batch(grid, *part[:2], [windows[i] for i in part[2]], part[3], win[part[2]].astype(np.float64))
    for part in pending.rest():
        yield _make_batch(grid, *part[:2], [windows[i] for i in part[2]], part[3], win[part[2]].astype(np.float64))


#: pixels a band read in one block of chip rows (4 MiB a band as float32)
READ_BLOCK_PIXELS = 1 << 20


def _read_blocks(win: np.ndarray, size: int) -> Iterator[slice]:
    """Slices of ``win`` (windows grouped by row) whose chip rows are read together: consecutive rows
    that overlap or touch, while the block stays within :data:`READ_BLOCK_PIXELS` a band."""
    starts = np.flatnonzero(np.r_[True, win[1:, 1] != win[:-1, 1]]).tolist()
    first = None
    for s, e in zip(starts, starts[1:] + [len(win)]):
        row, lo, hi = int(win[s, 1]), int(win[s:e, 0].min()), int(win[s:e, 0].max())
        if first is not None:
            left_, right_ = min(left, lo), max(right, hi)
            if previous <= row <= previous + size and (row - top + size) * (right_ - left_ + size) <= READ_BLOCK_PIXELS:
                left, right, previous = left_, right_, row
                continue
            yield slice(first, s)
        first, top, left, right, previous = s, row, lo, hi, row
    yield slice(first, len(win))


class _PendingChips:
    """Chips cut but not yet handed out, in batches of exactly ``batch_size`` (the last one shorter)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.count = 0

    def add(self, *arrays: np.ndarray) -> None:
        self.parts.append(arrays)
        self.count += len(arrays[0])

    def full_batches(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self.count < self.batch_size:
            return
        joined = [np.concatenate(a) if len(self.parts) > 1 else a[0] for a in zip(*self.parts)]
        full = self.count // self.batch_size * self.batch_size
        for start in range(0, full, self.batch_size):
            yield tuple(a[start : start + self.batch_size] for a in joined)
        self.parts = [tuple(a[full:] for a in joined)] if full < self.count else []
        self.count -= full

    def rest(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self.count:
            yield tuple(np.concatenate(a) if len(self.parts) > 1 else a[0] for a in zip(*self.parts))
