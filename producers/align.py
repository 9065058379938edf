"""Chips aligned to the cells of a named grid (Major TOM, regular UTM) instead of to each scene.

Scene-aligned chips follow each raster's own pixel grid, so two scenes of the same place give chips
that do not line up. Cell-aligned chips lie on a lattice that belongs to the grid cell, so every
scene, date and sensor over a place yields the same chip footprints and the same ``pixel_bbox``:
rows of several acquisitions or products join on place.

The lattice of a cell (spec Section 7, "Cell-aligned chips"), for a pixel size ``res`` in metres:

* the cell's CRS is its native UTM zone (:meth:`Grid.native_crs`) and its anchor ``(x0, y0)`` is
  the cell's south-west corner in that CRS (the projected bottom-left corner for Major TOM, the
  exact corner ``(col * size, row * size)`` for UTM cells);
* chip ``(i, j)`` is the square of ``chip_size * res`` metres whose south-west corner is
  ``(x0 + i * stride * res, y0 + j * stride * res)``;
* a cell owns the chips whose footprint's lon/lat bbox centre lies in it (the rule that sets
  ``grid_cell``), so each chip belongs to exactly one cell;
* ``pixel_bbox`` counts pixels from the top-left of the smallest lattice raster holding every chip
  the cell owns; it depends on the cell alone, never on the scene.

Each source scene or stack becomes one :class:`CellStack` per cell it touches: a
:class:`~eoembed.producers.stack.Stack` on the cell's lattice raster (bands resampled through
rasterio's ``WarpedVRT``; pixels outside the source are invalid) that carries the windows of the
chips it owns and overlaps. The rest of the producer cuts and encodes it like any stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from eoembed._errors import TilingError
from eoembed._grid import Grid, MajorTomGrid, UtmGrid, get_grid

from .read import Scene
from .stack import WARP_RESAMPLINGS, BandSource, Stack, _ground_res, _same_crs
from .tile import ChipWindow, _lonlat_bounds, _lonlat_rings, _positive_int, _to_crs84

__all__ = ["ALIGNMENTS", "CellStack", "align_scenes", "cell_frame", "cell_stacks", "grid_section", "pixel_size_m"]

#: where chips are cut: on each source raster's pixel grid, or on the lattice of each grid cell
ALIGNMENTS = ("scene", "cell")

#: points per cell edge when a lon/lat cell is projected to its UTM zone
_CELL_EDGE_POINTS = 64


@dataclass(frozen=True)
class CellStack(Stack):
    """A scene or stack resampled onto the lattice raster of one grid cell, with the chips to cut.

    ``path`` stays the source's path (so ``source_id`` names the scene); ``cell`` is the grid cell
    and ``windows`` the chips of the cell that overlap the source, in row-major order.
    """

    cell: str = ""
    windows: tuple[ChipWindow, ...] = ()


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def pixel_size_m(scene, resolution: float | None) -> float:
    """The lattice pixel size: ``resolution`` when given, else the scene's own pixel size in metres."""
    if resolution is not None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not resolution > 0 \
                or not math.isfinite(resolution):
            raise TilingError(f"resolution={resolution!r} is not a pixel size; pass metres > 0 (e.g. 10 or 30)")
        return float(resolution)
    crs = CRS.from_user_input(scene.crs)
    if crs.is_geographic or abs(abs(scene.res[0]) - abs(scene.res[1])) > 1e-6 * abs(scene.res[0]):
        raise TilingError(
            f"{scene.path}: its pixels ({scene.res[0]} x {scene.res[1]} in {scene.crs}) are not square metres; "
            "pass the lattice pixel size in metres (--resolution)"
        )
    return float(_ground_res(scene))


def cell_frame(grid: Grid, cell: str) -> tuple[str, float, float, tuple[float, float, float, float]]:
    """(CRS, x0, y0, projected bounds) of a cell: its UTM CRS, south-west anchor, and the bounds of its
    footprint in that CRS."""
    crs = grid.native_crs(cell)
    if isinstance(grid, UtmGrid):
        _, _, col, row = grid.parse(cell)
        x0, y0 = float(col * grid.size_m), float(row * grid.size_m)
        return crs, x0, y0, (x0, y0, x0 + grid.size_m, y0 + grid.size_m)
    if isinstance(grid, MajorTomGrid):
        west, south, east, north = grid.cell_bounds(cell)
        t = np.linspace(0.0, 1.0, _CELL_EDGE_POINTS + 1)
        lon = np.concatenate([west + (east - west) * t, np.full_like(t, east), east - (east - west) * t, np.full_like(t, west)])
        lat = np.concatenate([np.full_like(t, south), south + (north - south) * t, np.full_like(t, north), north - (north - south) * t])
        lon = np.where(lon > 180.0, lon - 360.0, lon)  # the wrapping column of a ring
        to_cell = _transformer("OGC:CRS84", crs)
        xs, ys = to_cell.transform(lon, lat)
        x0, y0 = to_cell.transform(west if west <= 180 else west - 360, south)
        return crs, float(x0), float(y0), (float(np.min(xs)), float(np.min(ys)), float(np.max(xs)), float(np.max(ys)))
    raise TilingError(f"grid {grid.id!r} has no cells to align chips to; use a majortom-* or utm-* grid, or scene alignment")


@dataclass(frozen=True)
class _Lattice:
    """The chips of one cell's lattice raster, before selecting the ones the cell owns."""

    crs: str
    transform: Affine
    width: int
    height: int
    i: np.ndarray  # lattice column of each candidate chip
    j: np.ndarray  # lattice row (northwards) of each candidate chip
    col_off: np.ndarray
    row_off: np.ndarray


def _lattice(grid: Grid, cell: str, *, res: float, chip_size: int, stride: int) -> _Lattice:
    crs, x0, y0, (bx0, by0, bx1, by1) = cell_frame(grid, cell)
    step, size = stride * res, chip_size * res
    # candidates: every chip whose centre can fall inside the cell's projected bounds
    i_min, i_max = math.floor((bx0 - x0 - size / 2) / step), math.floor((bx1 - x0 - size / 2) / step)
    j_min, j_max = math.floor((by0 - y0 - size / 2) / step), math.floor((by1 - y0 - size / 2) / step)
    ii, jj = np.meshgrid(np.arange(i_min, i_max + 1), np.arange(j_max, j_min - 1, -1))  # top row first
    ii, jj = ii.ravel(), jj.ravel()
    transform = Affine(res, 0.0, x0 + i_min * step, 0.0, -res, y0 + j_max * step + size)
    return _Lattice(
        crs=crs,
        transform=transform,
        width=(i_max - i_min) * stride + chip_size,
        height=(j_max - j_min) * stride + chip_size,
        i=ii,
        j=jj,
        col_off=(ii - i_min) * stride,
        row_off=(j_max - jj) * stride,
    )


def _source_footprint(scene, crs: str) -> shapely.Polygon:
    """The source raster's outline in ``crs`` (edges densified, so reprojected edges stay close)."""
    u = np.linspace(0.0, 1.0, 33)
    cols = np.concatenate([u, np.ones_like(u), 1 - u, np.zeros_like(u)]) * scene.width
    rows = np.concatenate([np.zeros_like(u), u, np.ones_like(u), 1 - u]) * scene.height
    a, b, c, d, e, f = scene.transform[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    if not _same_crs(scene.crs, crs):
        xs, ys = _transformer(scene.crs, crs).transform(xs, ys)
    return shapely.Polygon(np.stack([xs, ys], axis=1))


def _cells_touched(scene, grid: Grid, *, spacing_m: float) -> list[str]:
    """Cells of ``grid`` under the scene: sampled every ``spacing_m`` inside and every pixel along its border."""
    step = max(1, int(spacing_m / max(_ground_res(scene), 1e-9)))
    cols = np.unique(np.r_[np.arange(0, scene.width, step), scene.width]).astype(np.float64)
    rows = np.unique(np.r_[np.arange(0, scene.height, step), scene.height]).astype(np.float64)
    cc, rr = np.meshgrid(cols, rows)
    edge_c = np.arange(scene.width + 1, dtype=np.float64)
    edge_r = np.arange(scene.height + 1, dtype=np.float64)
    c = np.concatenate([cc.ravel(), edge_c, edge_c, np.zeros_like(edge_r), np.full_like(edge_r, scene.width)])
    r = np.concatenate([rr.ravel(), np.zeros_like(edge_c), np.full_like(edge_c, scene.height), edge_r, edge_r])
    a, b, cc0, d, e, f = scene.transform[:6]
    lon, lat = _to_crs84(scene.crs).transform(a * c + b * r + cc0, d * c + e * r + f)
    lon, lat = np.asarray(lon), np.asarray(lat)
    south, north = grid.lat_range
    inside = np.isfinite(lon) & np.isfinite(lat) & (lat > south) & (lat <= north)
    if not inside.any():
        raise TilingError(f"{scene.path}: the scene lies outside grid {grid.id} (latitudes {south}..{north})")
    return sorted(set(grid.cell_of(lon[inside], lat[inside]).tolist()))


def cell_stacks(
    scene,
    *,
    grid: str | Grid,
    chip_size: int,
    stride: int | None = None,
    resolution: float | None = None,
    resampling: str = "bilinear",
) -> list[CellStack]:
    """One :class:`CellStack` per grid cell that owns chips overlapping ``scene`` (a Scene or Stack),
    in cell-id order; cells without such chips are left out."""
    grid = get_grid(grid) if isinstance(grid, str) else grid
    chip_size = _positive_int("chip_size", chip_size)
    stride = chip_size if stride is None else _positive_int("stride", stride)
    if resampling not in WARP_RESAMPLINGS:
        raise TilingError(f"resampling={resampling!r} is not supported; use one of {', '.join(WARP_RESAMPLINGS)}")
    if not isinstance(grid, (MajorTomGrid, UtmGrid)):
        raise TilingError(f"grid {grid.id!r} has no cells to align chips to; use a majortom-* or utm-* grid")
    res = pixel_size_m(scene, resolution)
    bands = _band_sources(scene)
    out = []
    for cell in _cells_touched(scene, grid, spacing_m=chip_size * res / 2):
        lat = _lattice(grid, cell, res=res, chip_size=chip_size, stride=stride)
        if not len(lat.i):
            continue
        windows = np.stack([lat.col_off, lat.row_off, np.full_like(lat.col_off, chip_size)], axis=1).astype(np.float64)
        lon, latd = _lonlat_rings(SimpleNamespace(path=scene.path, crs=lat.crs, transform=lat.transform), windows)
        box = _lonlat_bounds(lon, latd)
        centre_lon, centre_lat = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
        owned = np.asarray(grid.cell_of(centre_lon, centre_lat)) == cell
        a, _, c, _, e, f = lat.transform[:6]
        x_left, y_top = a * lat.col_off + c, e * lat.row_off + f
        chips = shapely.box(x_left, y_top - chip_size * res, x_left + chip_size * res, y_top)
        keep = owned & shapely.intersects(chips, _source_footprint(scene, lat.crs))
        if not keep.any():
            continue
        out.append(CellStack(
            path=scene.path,
            crs=lat.crs,
            transform=lat.transform,
            width=lat.width,
            height=lat.height,
            res=(res, res),
            bands=bands,
            band_names=tuple(scene.band_names),
            count=len(bands),
            nodata=None,
            datetime=scene.datetime,
            reference="",
            resampling=resampling,
            reprojected=() if _same_crs(lat.crs, scene.crs) else tuple(b.name for b in bands),
            cell=cell,
            windows=tuple(ChipWindow(int(x), int(y), chip_size)
                          for x, y in zip(lat.col_off[keep].tolist(), lat.row_off[keep].tolist())),
        ))
    return out


def _band_sources(scene) -> tuple[BandSource, ...]:
    if isinstance(scene, Stack):
        return scene.bands
    if isinstance(scene, Scene):
        indexes = scene.band_indexes or tuple(range(1, scene.count + 1))
        return tuple(BandSource(name=name, path=scene.path, band=i, nodata=scene.nodata)
                     for name, i in zip(scene.band_names, indexes))
    raise TilingError(
        f"{scene.path}: cell-aligned chips are cut from GeoTIFF scenes and band stacks; "
        "a data cube is chipped on its own pixel grid (use scene alignment)"
    )



def align_scenes(
    scenes: Sequence,
    *,
    align: str,
    grid: str,
    chip_size: int,
    stride: int | None,
    resolution: float | None,
    resampling: str,
) -> tuple[list, list[dict[str, str]], float | None]:
    """The scenes to cut for an ``align`` mode: unchanged for ``scene``, one CellStack per (scene, cell)
    for ``cell``. Returns (scenes, errors, lattice pixel size); a scene that cannot be aligned, or
    whose pixel size differs from the first scene's when no ``resolution`` is given, becomes an
    ``{"input", "reason"}`` error and the others go on."""
    if align not in ALIGNMENTS:
        raise TilingError(f"align={align!r} is not an alignment; use one of {', '.join(ALIGNMENTS)}")
    if align == "scene":
        return list(scenes), [], None
    out, errors, res = [], [], None
    for scene in scenes:
        try:
            size = pixel_size_m(scene, resolution)
            if res is not None and not math.isclose(size, res, rel_tol=1e-6):
                raise TilingError(
                    f"{scene.path}: pixel size {size:g} m differs from {res:g} m of the first input; one product "
                    "holds one lattice: pass --resolution to resample every input to it"
                )
            cells = cell_stacks(scene, grid=grid, chip_size=chip_size, stride=stride, resolution=size,
                                resampling=resampling)
        except TilingError as error:
            errors.append({"input": str(scene.path), "reason": str(error)})
            continue
        res = size
        out.extend(cells)
    return out, errors, res


def grid_section(grid: str, *, align: str = "scene", pixel_size: float | None = None,
                 resampling: str = "bilinear") -> str | dict:
    """The writer's ``grid`` argument: the grid id for scene-aligned chips, the full footer section for
    cell-aligned ones."""
    if align == "scene":
        return grid
    resolved = get_grid(grid)
    return {"id": resolved.id, "definition": resolved.definition(), "alignment": "cell",
            "pixel_size_m": float(pixel_size), "resampling": resampling}
