"""Spatial grids that chips are aligned to.

Two grid families are supported; both map a lon/lat point (OGC:CRS84, degrees) to a cell id string.

**Major TOM** (ids ``majortom-{N}km``, e.g. ``majortom-10km``)
    The grid of the Major TOM datasets (ESA Phi-lab, arXiv 2402.12095), reproduced with the same
    floating-point operations so that cell boundaries agree bit for bit with the published cells.
    Rows are latitude rings about ``N`` km apart, numbered ``0U, 1U, ...`` northwards from the
    equator and ``1D, 2D, ...`` southwards; each ring is cut into columns about ``N`` km wide,
    numbered ``0R, 1R, ...`` eastwards from the prime meridian and ``1L, 2L, ...`` westwards.
    A cell id is ``{row}_{col}`` (``922D_249L``). Only rows whose bottom latitude lies in
    [-85, 85] exist.

    Boundaries follow Major TOM's ``np.searchsorted`` (side ``'left'``) lookup: a cell spans
    ``(south, north]`` in latitude and ``(west, east]`` in longitude, so a point lying exactly on
    a grid line belongs to the cell *below* / *west of* it. The easternmost column of a ring wraps
    across the antimeridian to the westernmost grid line; its footprint is reported with
    ``east > 180`` (``east = westernmost line + 360``).

**Regular UTM** (ids ``utm-{size}m``, e.g. ``utm-10000m``; ``utm-10km`` is accepted too)
    Square cells of ``size`` metres in the UTM zone of the point. Zones are the standard 6-degree
    zones, ``zone = floor((lon + 180) / 6) + 1``, *without* the Norway/Svalbard exceptions, and
    the hemisphere is north when ``lat >= 0``. The point is projected to EPSG:326zz/327zz and the
    cell is ``(floor(E / size), floor(N / size))``; its id is ``{zone:02d}{N|S}_{col}E_{row}N``
    (``33N_45E_532N``). Latitudes outside [-80, 84] (the UTM domain) are rejected.

Use :func:`get_grid` to obtain a grid from its id and :func:`grid_from_definition` to rebuild one
from the JSON-serialisable dict returned by :meth:`Grid.definition`.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

from ._errors import GridError

__all__ = [
    "Grid",
    "MajorTomGrid",
    "UtmGrid",
    "get_grid",
    "grid_from_definition",
    "list_grids",
    "utm_zone",
]

RADIUS_EQUATOR = 6378.137  # km, the constant Major TOM uses for its sphere
MAJORTOM_LATITUDE_RANGE = (-85.0, 85.0)
UTM_LATITUDE_RANGE = (-80.0, 84.0)

_MAJORTOM_ID = re.compile(r"majortom-([1-9][0-9]*)km")
_UTM_ID = re.compile(r"utm-([1-9][0-9]*)(m|km)")
_MAJORTOM_CELL = re.compile(r"(0|[1-9][0-9]*)([UD])_(0|[1-9][0-9]*)([RL])")
_UTM_CELL = re.compile(r"(0[1-9]|[1-5][0-9]|60)([NS])_(0|[1-9][0-9]*)E_(0|[1-9][0-9]*)N")


def utm_zone(lon: float) -> int:
    """Standard 6-degree UTM zone (1..60) of a longitude; no Norway/Svalbard exceptions."""
    # lon = 180 would give zone 61: clamp, it is the same meridian as -180.
    return min(max(math.floor((lon + 180.0) / 6.0) + 1, 1), 60)


def _utm_epsg(zone: int, north: bool) -> int:
    return (32600 if north else 32700) + zone


def _as_points(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Broadcast lon/lat to flat float64 arrays; also say whether the input was scalar."""
    scalar = np.ndim(lon) == 0 and np.ndim(lat) == 0
    try:
        lon_a, lat_a = np.broadcast_arrays(
            np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
        )
    except (TypeError, ValueError) as exc:
        raise GridError(
            f"lon/lat must be numbers or arrays of numbers of matching shapes, got {lon!r}, {lat!r}"
        ) from exc
    lon_f, lat_f = lon_a.ravel(), lat_a.ravel()
    bad = ~np.isfinite(lon_f) | (lon_f < -180.0) | (lon_f > 180.0)
    if bad.any():
        raise GridError(f"longitude {float(lon_f[bad][0])!r} is outside [-180, 180]: expected finite OGC:CRS84 degrees")
    if (~np.isfinite(lat_f)).any():
        raise GridError(f"latitude {float(lat_f[~np.isfinite(lat_f)][0])!r} is not finite: expected degrees")
    return lon_f, lat_f, scalar


def _groups(keys: np.ndarray):
    """Yield (key, indices) for each distinct key, without an O(groups * points) mask loop."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(keys)]):
        yield sorted_keys[start], order[start:stop]


class Grid(ABC):
    """A grid of cells covering (part of) the Earth. Subclasses: :class:`MajorTomGrid`, :class:`UtmGrid`."""

    id: str
    #: Latitudes (south, north) of the area the grid covers, in degrees.
    lat_range: tuple[float, float]

    @abstractmethod
    def definition(self) -> dict:
        """JSON-serialisable description; :func:`grid_from_definition` rebuilds the grid from it."""

    @abstractmethod
    def cell_of(self, lon: Any, lat: Any) -> Any:
        """Cell id of a point: ``str`` for scalars, ``np.ndarray`` of ``str`` (dtype object) for arrays."""

    @abstractmethod
    def parse(self, cell_id: str) -> tuple:
        """Validate a cell id and split it into its parts; raises :class:`GridError` naming it."""

    @abstractmethod
    def format(self, parts: tuple) -> str:
        """Inverse of :meth:`parse`: ``grid.format(grid.parse(cid)) == cid``."""

    @abstractmethod
    def cell_polygon(self, cell_id: str) -> shapely.Polygon:
        """Footprint of a cell in OGC:CRS84 lon/lat."""

    @abstractmethod
    def native_crs(self, cell_id: str) -> str:
        """CRS to cut the cell's chip in, as ``"EPSG:326zz"`` / ``"EPSG:327zz"``."""

    def cell_bounds(self, cell_id: str) -> tuple[float, float, float, float]:
        """(lon_west, lat_south, lon_east, lat_north) of the cell's footprint in OGC:CRS84."""
        return tuple(float(v) for v in self.cell_polygon(cell_id).bounds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and type(other) is type(self) and other.id == self.id

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.id))


def _format_cells(format, shape: tuple, *parts: np.ndarray) -> np.ndarray:
    """Cell ids (dtype object, ``shape``) of points given by their integer index ``parts``; each
    distinct cell is formatted once (the chips of a scene fall in a handful of cells)."""
    keys = np.stack([np.asarray(p, dtype=np.int64).ravel() for p in parts], axis=1)
    if len(keys) == 0:
        return np.empty(shape, dtype=object)
    low = keys.min(axis=0)
    spans = keys.max(axis=0) - low + 1
    if np.prod(spans.astype(np.float64)) < 2**62:
        # One integer per cell: np.unique over rows (axis=0) sorts structured records, ten times slower.
        _, first, inverse = np.unique(np.ravel_multi_index(tuple((keys - low).T), tuple(spans.tolist())),
                                      return_index=True, return_inverse=True)
        cells = keys[first]
    else:
        cells, inverse = np.unique(keys, axis=0, return_inverse=True)
    names = np.empty(len(cells), dtype=object)
    names[:] = [format(tuple(cell)) for cell in cells.tolist()]
    return names[inverse.ravel()].reshape(shape)


# --------------------------------------------------------------------------------------------- #
# Major TOM
# --------------------------------------------------------------------------------------------- #


@lru_cache(maxsize=2048)
def _ring_longitudes(dist_km: int, row_lat: float) -> tuple[np.ndarray, int]:
    """Sorted column longitudes of the ring whose bottom latitude is ``row_lat``, and the index of 0.

    Same operations, in the same order, as Major TOM (scalar ``math`` for the circumference, numpy
    for the subdivision) so that every grid line is the same float. Bounded cache: a 1 km grid has
    ~19 000 rings of up to ~40 000 columns.
    """
    radius_at_lat = RADIUS_EQUATOR * math.cos(row_lat * math.pi / 180)
    circumference = 2 * math.pi * radius_at_lat
    count = math.ceil(circumference / dist_km)
    lons = np.sort(np.mod(np.linspace(-180, 180, count + 1)[:-1], 360) - 180)
    lons.flags.writeable = False  # shared through the cache
    # linspace starts at -180 and mod(-180, 360) - 180 is exactly 0, so 0 is always a grid line.
    zero = int(np.flatnonzero(lons == 0)[0])
    return lons, zero


class MajorTomGrid(Grid):
    """The Major TOM grid with cells about ``dist_km`` km on a side (``majortom-{dist_km}km``).

    :meth:`parse` returns Major TOM's integer pair ``(grid_row_u, grid_col_r)``: U/R positive,
    D/L negative (``"922D_249L"`` -> ``(-922, -249)``).
    """

    kind = "majortom"

    def __init__(self, dist_km: int = 10) -> None:
        if isinstance(dist_km, bool) or not isinstance(dist_km, (int, np.integer)) or dist_km < 1:
            raise GridError(f"Major TOM cell size {dist_km!r} km is invalid: expected a positive integer number of km")
        if dist_km > 5000:
            raise GridError(f"Major TOM cell size {dist_km!r} km is too large: expected at most 5000 km")
        self.dist_km = int(dist_km)
        self.id = f"majortom-{self.dist_km}km"

        # Row latitudes, exactly as Major TOM computes them. linspace starts at -90 and
        # mod(-90, 180) - 90 is exactly 0, so the equator is always a grid line.
        count = math.ceil(math.pi * RADIUS_EQUATOR / self.dist_km)
        lats = np.sort(np.mod(np.linspace(-90, 90, count + 1)[:-1], 180) - 90)
        lats.flags.writeable = False
        self._lats = lats
        self._zero_row = int(np.searchsorted(lats, 0))
        kept = np.flatnonzero((lats >= MAJORTOM_LATITUDE_RANGE[0]) & (lats <= MAJORTOM_LATITUDE_RANGE[1]))
        self._first_row, self._last_row = int(kept[0]), int(kept[-1])
        # North edge of every full-grid row; the topmost has no successor so, like Major TOM's
        # footprints, it repeats the previous row height.
        self._tops = np.r_[lats[1:], lats[-1] + (lats[-1] - lats[-2])]
        # Covered latitudes: (bottom of first kept row, top of last kept row].
        self.lat_range = (float(lats[self._first_row]), float(self._tops[self._last_row]))

    # -- rows and columns ---------------------------------------------------------------------

    @property
    def row_step(self) -> float:
        """Nominal row height in degrees (``180 / ceil(pi * R / dist)``)."""
        return 180.0 / len(self._lats)

    @property
    def row_range(self) -> tuple[int, int]:
        """(lowest, highest) ``grid_row_u`` that exist (inclusive)."""
        return self._first_row - self._zero_row, self._last_row - self._zero_row

    def _row_index(self, row_u: int) -> int:
        return row_u + self._zero_row

    def _ring(self, row_index: int) -> tuple[np.ndarray, int]:
        return _ring_longitudes(self.dist_km, float(self._lats[row_index]))

    def column_count(self, row_u: int) -> int:
        """Number of columns in the ring ``row_u`` (U positive, D negative)."""
        self._check_row(row_u, str(row_u))
        return len(self._ring(self._row_index(row_u))[0])

    def _check_row(self, row_u: int, cell_id: str) -> None:
        low, high = self.row_range
        if not low <= row_u <= high:
            raise GridError(
                f"Major TOM cell {cell_id!r}: row {row_u} does not exist in {self.id}; "
                f"expected a row between {abs(low)}D and {high}U (bottom latitude within [-85, 85])"
            )

    # -- point -> cell ------------------------------------------------------------------------

    def indices_of(self, lon: Any, lat: Any) -> tuple[Any, Any]:
        """``(grid_row_u, grid_col_r)`` of points: ints for scalars, int64 arrays otherwise."""
        lon_f, lat_f, scalar = _as_points(lon, lat)
        # Major TOM: rows = searchsorted(lats, lat) - 1 with the default side='left', so a point
        # exactly on a row's bottom latitude falls into the row below. Kept as-is for compatibility.
        rows = np.searchsorted(self._lats, lat_f) - 1
        outside = (rows < self._first_row) | (rows > self._last_row)
        if outside.any():
            bad = float(lat_f[outside][0])
            raise GridError(
                f"latitude {bad!r} is outside {self.id}: expected a latitude in "
                f"({self.lat_range[0]!r}, {self.lat_range[1]!r}]"
            )
        cols = np.empty(len(lon_f), dtype=np.int64)
        for row, idx in _groups(rows):
            lons, zero = self._ring(int(row))
            col = np.searchsorted(lons, lon_f[idx]) - 1
            # -1 (west of the first grid line) is the last column, wrapping over the antimeridian,
            # as Python's negative indexing does in Major TOM.
            col[col < 0] = len(lons) - 1
            cols[idx] = col - zero
        rows_u = rows - self._zero_row
        if scalar:
            return int(rows_u[0]), int(cols[0])
        shape = np.broadcast_shapes(np.shape(lon), np.shape(lat))
        return rows_u.reshape(shape), cols.reshape(shape)

    def cell_of(self, lon: Any, lat: Any) -> Any:
        rows_u, cols_r = self.indices_of(lon, lat)
        if np.ndim(rows_u) == 0:
            return self.format((rows_u, cols_r))
        return _format_cells(self.format, rows_u.shape, rows_u.ravel(), cols_r.ravel())

    # -- cell ids -----------------------------------------------------------------------------

    def parse(self, cell_id: str) -> tuple[int, int]:
        """``"922D_249L"`` -> ``(-922, -249)``; checks that the cell exists in this grid."""
        match = _MAJORTOM_CELL.fullmatch(cell_id) if isinstance(cell_id, str) else None
        if match is None:
            raise GridError(
                f"Major TOM cell id {cell_id!r} is malformed: expected '{{row}}{{U|D}}_{{col}}{{R|L}}' "
                "such as '922D_249L' or '0U_0R'"
            )
        row_n, row_dir, col_n, col_dir = match.groups()
        # 0D / 0L never exist: the equator row is 0U and the prime-meridian column 0R.
        if (row_dir == "D" and row_n == "0") or (col_dir == "L" and col_n == "0"):
            raise GridError(f"Major TOM cell id {cell_id!r} is malformed: row 0 is '0U' and column 0 is '0R'")
        row_u = int(row_n) if row_dir == "U" else -int(row_n)
        col_r = int(col_n) if col_dir == "R" else -int(col_n)
        self._check_row(row_u, cell_id)
        lons, zero = self._ring(self._row_index(row_u))
        if not -zero <= col_r < len(lons) - zero:
            raise GridError(
                f"Major TOM cell {cell_id!r}: column does not exist in row {row_n}{row_dir} of {self.id}; "
                f"expected a column between {zero}L and {len(lons) - zero - 1}R"
            )
        return row_u, col_r

    def format(self, parts: tuple) -> str:
        row_u, col_r = (int(p) for p in parts)
        row = f"{row_u}U" if row_u >= 0 else f"{-row_u}D"
        col = f"{col_r}R" if col_r >= 0 else f"{-col_r}L"
        return f"{row}_{col}"

    # -- footprints ---------------------------------------------------------------------------

    def cell_bounds(self, cell_id: str) -> tuple[float, float, float, float]:
        """(west, south, east, north) from the grid lines; the wrapping column has ``east > 180``."""
        row_u, col_r = self.parse(cell_id)
        row = self._row_index(row_u)
        lons, zero = self._ring(row)
        col = col_r + zero
        west = float(lons[col])
        # Last column: it ends at the first grid line, one turn later (west + column width).
        east = float(lons[col + 1]) if col + 1 < len(lons) else float(lons[0]) + 360.0
        return west, float(self._lats[row]), east, float(self._tops[row])

    def cell_polygon(self, cell_id: str) -> shapely.Polygon:
        return shapely.box(*self.cell_bounds(cell_id))

    def native_crs(self, cell_id: str) -> str:
        """UTM zone of the cell's bottom-left corner (Major TOM's ``"bottomleft"`` rule)."""
        west, south, _, _ = self.cell_bounds(cell_id)
        return f"EPSG:{_utm_epsg(utm_zone(west), south >= 0)}"

    def definition(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "dist_km": self.dist_km,
            "radius_equator_km": RADIUS_EQUATOR,
            "latitude_range": list(MAJORTOM_LATITUDE_RANGE),
            "utm_definition": "bottomleft",
            "description": (
                f"Major TOM grid, cells about {self.dist_km} km on a side: latitude rings named "
                "{i}U/{i}D north/south of the equator, each split into columns {j}R/{j}L east/west "
                "of the prime meridian; cell id '{row}_{col}'. A point on a grid line belongs to "
                "the cell below/west of it (numpy searchsorted side='left')."
            ),
        }


# --------------------------------------------------------------------------------------------- #
# Regular UTM
# --------------------------------------------------------------------------------------------- #


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


@lru_cache(maxsize=256)
def _from_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


class UtmGrid(Grid):
    """Square cells of ``size_m`` metres in the standard UTM zone of each point (``utm-{size_m}m``).

    :meth:`parse` returns ``(zone, hemisphere, col, row)``, e.g. ``(33, "N", 45, 532)``.
    """

    kind = "utm"

    def __init__(self, size_m: int = 10_000, *, points_per_edge: int = 16) -> None:
        if isinstance(size_m, bool) or not isinstance(size_m, (int, np.integer)) or size_m < 1:
            raise GridError(f"UTM cell size {size_m!r} m is invalid: expected a positive integer number of metres")
        if points_per_edge < 2:
            raise GridError(f"points_per_edge={points_per_edge!r} is invalid: expected at least 2")
        self.size_m = int(size_m)
        self.points_per_edge = int(points_per_edge)
        self.id = f"utm-{self.size_m}m"
        self.lat_range = UTM_LATITUDE_RANGE

    def _locate(self, lon: Any, lat: Any):
        lon_f, lat_f, scalar = _as_points(lon, lat)
        outside = (lat_f < UTM_LATITUDE_RANGE[0]) | (lat_f > UTM_LATITUDE_RANGE[1])
        if outside.any():
            raise GridError(
                f"latitude {float(lat_f[outside][0])!r} is outside {self.id}: expected a latitude "
                f"in [{UTM_LATITUDE_RANGE[0]!r}, {UTM_LATITUDE_RANGE[1]!r}] (the UTM domain)"
            )
        zones = np.clip(np.floor((lon_f + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)
        epsgs = np.where(lat_f >= 0, 32600, 32700) + zones
        cols = np.empty(len(lon_f), dtype=np.int64)
        rows = np.empty(len(lon_f), dtype=np.int64)
        for epsg, idx in _groups(epsgs):
            east, north = _to_utm(int(epsg)).transform(lon_f[idx], lat_f[idx])
            cols[idx] = np.floor(np.asarray(east) / self.size_m)
            rows[idx] = np.floor(np.asarray(north) / self.size_m)
        return zones, lat_f >= 0, cols, rows, scalar

    def cell_of(self, lon: Any, lat: Any) -> Any:
        zones, north, cols, rows, scalar = self._locate(lon, lat)
        ids = _format_cells(lambda p: self.format((p[0], "N" if p[1] else "S", p[2], p[3])),
                            np.shape(zones), zones, north.astype(np.int64), cols, rows)
        return ids[0] if scalar else ids.reshape(np.broadcast_shapes(np.shape(lon), np.shape(lat)))

    def parse(self, cell_id: str) -> tuple[int, str, int, int]:
        """``"33N_45E_532N"`` -> ``(33, "N", 45, 532)``."""
        match = _UTM_CELL.fullmatch(cell_id) if isinstance(cell_id, str) else None
        if match is None:
            raise GridError(
                f"UTM cell id {cell_id!r} is malformed: expected '{{zone:02d}}{{N|S}}_{{col}}E_{{row}}N' "
                "with zone 01-60, such as '33N_45E_532N'"
            )
        zone, hemi, col, row = int(match[1]), match[2], int(match[3]), int(match[4])
        # Loose sanity bounds: UTM eastings lie in (0, 1 000 000) and northings in [0, 10 000 000].
        # A row may *start* at 10 000 000: a latitude a hair south of the equator projects to a
        # southern northing that rounds to exactly 10 000 000 m.
        if col * self.size_m >= 1_000_000 or row * self.size_m > 10_000_000:
            raise GridError(
                f"UTM cell id {cell_id!r} is outside the UTM zone for {self.id}: expected "
                f"col < {math.ceil(1_000_000 / self.size_m)} and row <= {10_000_000 // self.size_m}"
            )
        return zone, hemi, col, row

    def format(self, parts: tuple) -> str:
        zone, hemi, col, row = parts
        return f"{int(zone):02d}{hemi}_{int(col)}E_{int(row)}N"

    def native_crs(self, cell_id: str) -> str:
        zone, hemi, _, _ = self.parse(cell_id)
        return f"EPSG:{_utm_epsg(zone, hemi == 'N')}"

    def cell_native_bounds(self, cell_id: str) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the cell in its UTM CRS (:meth:`native_crs`), in metres."""
        _, _, col, row = self.parse(cell_id)
        size = self.size_m
        return float(col * size), float(row * size), float((col + 1) * size), float((row + 1) * size)

    def cell_polygon(self, cell_id: str) -> shapely.Polygon:
        """The UTM square in OGC:CRS84, densified to ``points_per_edge`` points per edge.

        Edges are chords between the densified points, so the polygon is within a few mm of the
        true (curved) footprint for 10 km cells. Near the antimeridian longitudes are unwrapped
        around the zone's central meridian, so they may leave [-180, 180].
        """
        zone, hemi, _, _ = self.parse(cell_id)
        xmin, ymin, xmax, ymax = self.cell_native_bounds(cell_id)
        # Walk the square anticlockwise; each edge has points_per_edge points counting both
        # corners, and each corner is written once.
        t = np.linspace(0.0, 1.0, self.points_per_edge)[:-1]
        along_x, back_x = xmin + (xmax - xmin) * t, xmax - (xmax - xmin) * t
        along_y, back_y = ymin + (ymax - ymin) * t, ymax - (ymax - ymin) * t
        xs = np.concatenate([along_x, np.full_like(t, xmax), back_x, np.full_like(t, xmin)])
        ys = np.concatenate([np.full_like(t, ymin), along_y, np.full_like(t, ymax), back_y])
        lons, lats = _from_utm(_utm_epsg(zone, hemi == "N")).transform(xs, ys)
        # PROJ folds longitudes into [-180, 180]; unfold them around the central meridian so a
        # cell of zone 1 or 60 does not jump across the whole map.
        central = zone * 6.0 - 183.0
        lons = central + np.mod(np.asarray(lons) - central + 180.0, 360.0) - 180.0
        return shapely.Polygon(np.column_stack([lons, lats]))

    def definition(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "cell_size_m": self.size_m,
            "latitude_range": list(UTM_LATITUDE_RANGE),
            "zones": "standard 6-degree UTM zones, no Norway/Svalbard exceptions; north if lat >= 0",
            "description": (
                f"Square {self.size_m} m cells in the UTM zone of each point (EPSG:326zz/327zz): "
                "col = floor(easting / size), row = floor(northing / size); cell id "
                "'{zone:02d}{N|S}_{col}E_{row}N'."
            ),
        }


# --------------------------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------------------------- #

_KNOWN_FORMS = "'majortom-{N}km' (e.g. 'majortom-10km') or 'utm-{size}m' / 'utm-{size}km' (e.g. 'utm-10000m')"


def get_grid(grid_id: str) -> Grid:
    """The grid named ``grid_id`` (see :func:`list_grids`); raises :class:`GridError` for unknown ids."""
    if not isinstance(grid_id, str):
        raise GridError(f"unknown grid id {grid_id!r}: expected a string, {_KNOWN_FORMS}")
    if match := _MAJORTOM_ID.fullmatch(grid_id):
        return _build_grid("majortom", int(match[1]))
    if match := _UTM_ID.fullmatch(grid_id):
        return _build_grid("utm", int(match[1]) * (1000 if match[2] == "km" else 1))
    raise GridError(f"unknown grid id {grid_id!r}: expected {_KNOWN_FORMS}")


@lru_cache(maxsize=64)
def _build_grid(kind: str, size: int) -> Grid:
    # One instance per canonical grid ('utm-10km' is 'utm-10000m'); building Major TOM rows is cheap
    # but callers compare and hash grids, and sharing instances keeps that trivial.
    return MajorTomGrid(size) if kind == "majortom" else UtmGrid(size)


def list_grids() -> list[str]:
    """Canonical example grid ids; other sizes follow the same forms."""
    return ["majortom-10km", "utm-10000m"]


def grid_from_definition(definition: dict) -> Grid:
    """Rebuild a grid from :meth:`Grid.definition`; rejects definitions this version cannot honour."""
    if not isinstance(definition, dict):
        raise GridError(f"grid definition {definition!r} is invalid: expected a dict from Grid.definition()")
    kind = definition.get("kind")
    try:
        if kind == "majortom":
            grid: Grid = get_grid(f"majortom-{int(definition['dist_km'])}km")
        elif kind == "utm":
            grid = get_grid(f"utm-{int(definition['cell_size_m'])}m")
        else:
            raise GridError(f"grid definition kind {kind!r} is unknown: expected 'majortom' or 'utm'")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, GridError):
            raise
        raise GridError(f"grid definition {definition!r} is incomplete: {exc!r}") from exc
    # Every parameter given must match what the rebuilt grid does (the description is free text).
    expected = grid.definition()
    for key, value in definition.items():
        value = list(value) if isinstance(value, tuple) else value
        if key != "description" and key in expected and expected[key] != value:
            raise GridError(
                f"grid definition field {key!r} = {value!r} is not supported for {grid.id}: expected {expected[key]!r}"
            )
    return grid
