"""Tests of eoembed._grid: the Major TOM grid and the regular UTM grid."""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from eoembed._errors import GridError
from eoembed._grid import (
    Grid,
    MajorTomGrid,
    UtmGrid,
    get_grid,
    grid_from_definition,
    list_grids,
)

MT = get_grid("majortom-10km")
UTM = get_grid("utm-10000m")
STEP_10KM = 180 / 2004  # ceil(pi * 6378.137 / 10) = 2004 rows pole to pole

LONS = st.floats(min_value=-180, max_value=180, exclude_max=True, allow_nan=False)
MT_LATS = st.floats(min_value=MT.lat_range[0], max_value=MT.lat_range[1], exclude_min=True, allow_nan=False)
UTM_LATS = st.floats(min_value=-80, max_value=84, allow_nan=False)
SETTINGS = settings(deadline=None, max_examples=200)


# --------------------------------------------------------------------------------------------- #
# A deliberately plain re-implementation of the Major TOM formulas: loops, no searchsorted, no
# caching. The module under test must agree with it everywhere.
# --------------------------------------------------------------------------------------------- #


@lru_cache(maxsize=None)
def _ref_rows(dist: int) -> tuple[list[float], int]:
    n = math.ceil(math.pi * 6378.137 / dist)
    lats = sorted(float(v) for v in np.mod(np.linspace(-90, 90, n + 1)[:-1], 180) - 90)
    zero = lats.index(0.0)
    return lats, zero


def _ref_cols(lat: float, dist: int) -> tuple[list[float], int]:
    circumference = 2 * math.pi * (6378.137 * math.cos(lat * math.pi / 180))
    m = math.ceil(circumference / dist)
    lons = sorted(float(v) for v in np.mod(np.linspace(-180, 180, m + 1)[:-1], 360) - 180)
    return lons, lons.index(0.0)


def _ref_cell(lon: float, lat: float, dist: int = 10) -> str:
    lats, zero = _ref_rows(dist)
    # The row is the last one whose bottom lies strictly below the point.
    row = None
    for i, bottom in enumerate(lats):
        if -85 <= bottom <= 85 and bottom < lat:
            row = i
    assert row is not None
    lons, zero_col = _ref_cols(lats[row], dist)
    col = len(lons) - 1  # west of the first grid line: the wrapping last column
    for j, west in enumerate(lons):
        if west < lon:
            col = j
    r, c = row - zero, col - zero_col
    return f"{r}U" if r >= 0 else f"{-r}D", f"{c}R" if c >= 0 else f"{-c}L"


def ref_cell(lon: float, lat: float, dist: int = 10) -> str:
    row, col = _ref_cell(lon, lat, dist)
    return f"{row}_{col}"


def _mt_contains(bounds: tuple[float, float, float, float], lon: float, lat: float) -> bool:
    west, south, east, north = bounds
    inside_lon = west <= lon <= east or west <= lon + 360 <= east  # the last column wraps
    return inside_lon and south <= lat <= north


def _wrap(lon: float) -> float:
    """Bring a longitude computed past the antimeridian back into [-180, 180)."""
    return lon - 360 if lon >= 180 else lon


# --------------------------------------------------------------------------------------------- #
# Major TOM: known values
# --------------------------------------------------------------------------------------------- #


def test_origin_cells():
    assert MT.cell_of(0.001, 0.001) == "0U_0R"
    # Just south-west of (0, 0): the first row south is 1D, the first column west 1L.
    assert MT.cell_of(-0.001, -0.001) == "1D_1L"
    assert MT.cell_bounds("0U_0R")[:2] == (0.0, 0.0)
    assert MT.cell_bounds("1D_1L")[2:] == (0.0, 0.0)


def test_on_grid_line_belongs_to_cell_below_and_west():
    # searchsorted(side='left') as in Major TOM: a point on a grid line goes to the row below /
    # the column to the west.
    assert MT.cell_of(0.0, 0.0) == "1D_1L"
    assert MT.cell_of(0.001, 0.0) == "1D_0R"
    assert MT.cell_of(0.0, 0.001) == "0U_1L"


def test_row_step_and_count():
    assert MT.row_step == pytest.approx(STEP_10KM, rel=1e-15)
    low, high = MT.row_range
    assert (low, high) == (-946, 946)
    assert high - low + 1 == 1893  # rows with a bottom latitude in [-85, 85]
    assert MT.lat_range[0] == pytest.approx(-946 * STEP_10KM, abs=1e-12)
    assert MT.lat_range[1] == pytest.approx(947 * STEP_10KM, abs=1e-12)


def test_row_of_latitude_45():
    n = math.floor(45 / STEP_10KM)  # 501: 45 deg is exactly a grid line of the 10 km grid
    assert MT.cell_of(0.5, 45.0 + 1e-9).split("_")[0] == f"{n}U"
    # On the line itself the point belongs to the row below (side='left').
    assert MT.cell_bounds(MT.cell_of(0.5, 45.0 + 1e-9))[1] == 45.0
    assert MT.cell_of(0.5, 45.0).split("_")[0] == f"{n - 1}U"


@pytest.mark.parametrize(
    ("name", "lon", "lat", "expected"),
    [("Rome", 12.5, 41.9, "466U_103R"), ("Buenos Aires", -58.4, -34.6, "386D_535L")],
)
def test_known_cities(name, lon, lat, expected):
    assert ref_cell(lon, lat) == expected
    assert MT.cell_of(lon, lat) == expected
    assert _mt_contains(MT.cell_bounds(expected), lon, lat)


def test_integer_form_and_native_crs():
    assert MT.parse("922D_249L") == (-922, -249)
    assert MT.parse("0U_0R") == (0, 0)
    assert MT.indices_of(12.5, 41.9) == (466, 103)
    assert MT.native_crs("0U_0R") == "EPSG:32631"
    assert MT.native_crs("1D_1L") == "EPSG:32730"
    assert MT.native_crs("466U_103R") == "EPSG:32633"


def test_wrapping_column():
    lats, zero = _ref_rows(10)
    # Row 5U has an even column count: -180 is a grid line, so only -180 itself wraps.
    lons, _ = _ref_cols(lats[zero + 5], 10)
    assert lons[0] == -180.0
    cell = MT.cell_of(179.99999, 0.5)
    assert MT.cell_of(-180.0, 0.5) == cell != MT.cell_of(-179.99999, 0.5)
    assert MT.cell_bounds(cell)[2] == 180.0
    # A row with an odd column count has no grid line at -180: its last column straddles the
    # antimeridian and is reported with east > 180.
    row = next(r for r in range(1, 946) if len(_ref_cols(lats[zero + r], 10)[0]) % 2)
    lat = lats[zero + row] + 0.01
    lons, _ = _ref_cols(lats[zero + row], 10)
    cell = MT.cell_of(-180.0, lat)
    assert cell == MT.cell_of(179.99999, lat) == MT.cell_of(lons[0] - 1e-9, lat) == ref_cell(-180.0, lat)
    west, _, east, _ = MT.cell_bounds(cell)
    assert west == lons[-1] and east == lons[0] + 360 and east > 180
    assert MT.cell_polygon(cell).bounds == MT.cell_bounds(cell)


def test_other_distance():
    grid = get_grid("majortom-100km")
    assert isinstance(grid, MajorTomGrid) and grid.dist_km == 100
    for lon, lat in [(12.5, 41.9), (-58.4, -34.6), (-179.9, 80.1), (0.0, 0.0)]:
        assert grid.cell_of(lon, lat) == ref_cell(lon, lat, 100)


# --------------------------------------------------------------------------------------------- #
# Major TOM: properties
# --------------------------------------------------------------------------------------------- #


@SETTINGS
@given(lon=LONS, lat=MT_LATS)
@example(lon=0.0, lat=0.0)
@example(lon=-180.0, lat=0.5)
@example(lon=0.0, lat=45.0)
@example(lon=-180.0, lat=MT.lat_range[1])
@example(lon=179.99999999999997, lat=-84.96)
def test_majortom_point_in_its_cell(lon, lat):
    cell = MT.cell_of(lon, lat)
    assert cell == ref_cell(lon, lat)
    assert _mt_contains(MT.cell_bounds(cell), lon, lat)


@SETTINGS
@given(lon=LONS, lat=MT_LATS)
def test_majortom_parse_round_trip(lon, lat):
    cell = MT.cell_of(lon, lat)
    parts = MT.parse(cell)
    assert MT.format(parts) == cell
    assert MT.indices_of(lon, lat) == parts


@SETTINGS
@given(row=st.integers(*MT.row_range), frac=st.floats(0, 1, exclude_max=True))
def test_majortom_format_parse_from_indices(row, frac):
    count = MT.column_count(row)
    zero = _ref_cols(_ref_rows(10)[0][_ref_rows(10)[1] + row], 10)[1]
    col = int(frac * count) - zero
    assert MT.parse(MT.format((row, col))) == (row, col)


@SETTINGS
@given(lon=LONS, lat=st.floats(MT.lat_range[0], MT.lat_range[1] - 0.1, exclude_min=True))
@example(lon=-180.0, lat=-61.5)  # centre of the wrapping column is past 180: 180.00000000000003
def test_majortom_neighbours_differ(lon, lat):
    cell = MT.cell_of(lon, lat)
    row, col = MT.parse(cell)
    west, south, east, north = MT.cell_bounds(cell)
    cx, cy = (west + east) / 2, (south + north) / 2
    east_cell = MT.cell_of(_wrap(cx + (east - west)), cy)
    north_cell = MT.cell_of(_wrap(cx), cy + (north - south))
    assert len({cell, east_cell, north_cell}) == 3
    assert MT.parse(north_cell)[0] == row + 1
    zero = _ref_cols(_ref_rows(10)[0][_ref_rows(10)[1] + row], 10)[1]
    last = MT.column_count(row) - 1 - zero
    assert MT.parse(east_cell) == (row, col + 1 if col < last else -zero)


@SETTINGS
@given(points=st.lists(st.tuples(LONS, MT_LATS), min_size=1, max_size=50))
def test_majortom_vectorised_matches_scalar(points):
    lon = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    cells = MT.cell_of(lon, lat)
    assert cells.dtype == object and cells.shape == lon.shape
    assert cells.tolist() == [MT.cell_of(float(x), float(y)) for x, y in points]


def test_majortom_vectorised_large_batch():
    rng = np.random.default_rng(42)
    lon = rng.uniform(-180, 180, 100_000)
    lat = rng.uniform(-84, 84, 100_000)
    cells = MT.cell_of(lon, lat)
    for i in range(0, 100_000, 997):
        assert cells[i] == ref_cell(lon[i], lat[i])
    assert MT.cell_of(lon.reshape(100, 1000), lat.reshape(100, 1000)).shape == (100, 1000)


# --------------------------------------------------------------------------------------------- #
# UTM
# --------------------------------------------------------------------------------------------- #


@lru_cache(maxsize=None)
def _to_utm(epsg: str) -> Transformer:
    return Transformer.from_crs("OGC:CRS84", epsg, always_xy=True)


def test_utm_known_values():
    assert get_grid("utm-10km") is UTM and UTM.id == "utm-10000m"
    # Rome: zone 33 N; easting ~291 km, northing ~4641 km.
    cell = UTM.cell_of(12.5, 41.9)
    assert cell == "33N_29E_464N"
    assert UTM.parse(cell) == (33, "N", 29, 464)
    assert UTM.native_crs(cell) == "EPSG:32633"
    assert UTM.cell_native_bounds(cell) == (290000.0, 4640000.0, 300000.0, 4650000.0)
    assert UTM.native_crs(UTM.cell_of(-58.4, -34.6)) == "EPSG:32721"
    # Standard zones only: Bergen (5.3 E) is in zone 31, not Norway's widened 32V.
    assert UTM.cell_of(5.3, 60.4).startswith("31N_")
    assert UTM.cell_of(180.0, 10.0).startswith("60N_")
    assert UTM.cell_of(-180.0, 10.0).startswith("01N_")


def test_utm_polygon_near_antimeridian_is_not_split():
    for lon in (179.99, -179.99):
        poly = UTM.cell_polygon(UTM.cell_of(lon, 45.0))
        west, _, east, _ = poly.bounds
        assert east - west < 1, poly.bounds


@SETTINGS
@given(lon=LONS, lat=UTM_LATS)
@example(lon=0.0, lat=0.0)
@example(lon=-0.0, lat=-0.0)
@example(lon=-180.0, lat=-80.0)
@example(lon=6.0, lat=84.0)
@example(lon=15.0, lat=45.0)  # on the central meridian: the west edge of column 50
@example(lon=179.99999999999997, lat=-1e-300)  # northing rounds to 10 000 000: row 1000 of 'S'
def test_utm_point_in_its_cell(lon, lat):
    cell = UTM.cell_of(lon, lat)
    epsg = UTM.native_crs(cell)
    x, y = _to_utm(epsg).transform(lon, lat)
    xmin, ymin, xmax, ymax = UTM.cell_native_bounds(cell)
    assert xmin <= x < xmax and ymin <= y < ymax
    poly = UTM.cell_polygon(cell)
    assert isinstance(poly, shapely.Polygon) and poly.is_valid
    assert len(poly.exterior.coords) == 4 * 15 + 1
    # The densified edges are chords of curved lines (a few mm off for 10 km cells), so points
    # within a few cm of an edge get the chord tolerance instead of 1e-9 degrees.
    near_edge = min(x - xmin, xmax - x, y - ymin, ymax - y) < 0.05
    assert poly.distance(shapely.Point(lon, lat)) <= (1e-5 if near_edge else 1e-9)
    west, south, east, north = UTM.cell_bounds(cell)
    assert west - 1e-5 <= lon <= east + 1e-5 and south - 1e-5 <= lat <= north + 1e-5


@SETTINGS
@given(lon=LONS, lat=UTM_LATS)
@example(lon=0.0, lat=-1.41153134207383e-58)  # was rejected by parse: '31S_16E_1000N'
def test_utm_parse_round_trip(lon, lat):
    cell = UTM.cell_of(lon, lat)
    assert UTM.format(UTM.parse(cell)) == cell


@SETTINGS
@given(lon=LONS, lat=st.floats(-79.8, 83.8))
@example(lon=0.0, lat=-1.649543943760609e-171)
def test_utm_neighbours_differ(lon, lat):
    cell = UTM.cell_of(lon, lat)
    zone, hemi, col, row = UTM.parse(cell)
    to_geo = Transformer.from_crs(UTM.native_crs(cell), "OGC:CRS84", always_xy=True)
    xmin, ymin, xmax, ymax = UTM.cell_native_bounds(cell)
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    for dx, dy in [(10_000, 0), (-10_000, 0), (0, 10_000), (0, -10_000)]:
        nlon, nlat = to_geo.transform(cx + dx, cy + dy)
        nlon = (nlon + 180) % 360 - 180
        if not -80 <= nlat <= 84:
            continue
        other = UTM.cell_of(nlon, nlat)
        assert other != cell
        ozone, ohemi, ocol, orow = UTM.parse(other)
        if (ozone, ohemi) == (zone, hemi):
            assert (ocol - col, orow - row) == (dx // 10_000, dy // 10_000)


@SETTINGS
@given(points=st.lists(st.tuples(LONS, UTM_LATS), min_size=1, max_size=50))
def test_utm_vectorised_matches_scalar(points):
    lon = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    cells = UTM.cell_of(lon, lat)
    assert cells.dtype == object and cells.shape == lon.shape
    assert cells.tolist() == [UTM.cell_of(float(x), float(y)) for x, y in points]


# --------------------------------------------------------------------------------------------- #
# Registry and definitions
# --------------------------------------------------------------------------------------------- #


def test_registry_and_definitions():
    assert list_grids() == ["majortom-10km", "utm-10000m"]
    for grid_id in list_grids():
        grid = get_grid(grid_id)
        assert isinstance(grid, Grid) and grid.id == grid_id
        definition = json.loads(json.dumps(grid.definition()))
        assert definition["id"] == grid_id and definition["kind"] in {"majortom", "utm"}
        assert definition["description"]
        assert grid_from_definition(definition) == grid
    assert isinstance(UTM, UtmGrid) and UtmGrid(5000).id == "utm-5000m"


def test_definition_mismatch_rejected():
    definition = MT.definition() | {"radius_equator_km": 6371.0}
    with pytest.raises(GridError, match="6371"):
        grid_from_definition(definition)
    with pytest.raises(GridError, match="hexagon"):
        grid_from_definition({"kind": "hexagon"})
    with pytest.raises(GridError, match="cell_size_m"):
        grid_from_definition({"kind": "utm"})


# --------------------------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("grid_id", ["nope", "majortom-0km", "utm-10", "majortom-10", "", "UTM-10km"])
def test_unknown_grid(grid_id):
    with pytest.raises(GridError, match="majortom-10km") as info:
        get_grid(grid_id)
    assert repr(grid_id) in str(info.value)


@pytest.mark.parametrize(
    "cell_id", ["12X_3R", "", "33N_1E", "0D_0R", "0U_0L", "01U_0R", "947U_0R", "0U_2004R", "0U_2005L", " 0U_0R"]
)
def test_bad_majortom_cell_ids(cell_id):
    with pytest.raises(GridError) as info:
        MT.parse(cell_id)
    assert repr(cell_id) in str(info.value)
    with pytest.raises(GridError):
        MT.cell_bounds(cell_id)


@pytest.mark.parametrize("cell_id", ["12X_3R", "", "33N_1E", "61N_1E_1N", "00N_1E_1N", "33N_100E_1N", "33n_1E_1N"])
def test_bad_utm_cell_ids(cell_id):
    with pytest.raises(GridError) as info:
        UTM.parse(cell_id)
    assert repr(cell_id) in str(info.value)


@pytest.mark.parametrize("grid", [MT, UTM], ids=lambda g: g.id)
@pytest.mark.parametrize(
    ("lon", "lat", "bad"), [(0, 89.9, "89.9"), (0, -89.9, "-89.9"), (200, 0.5, "200"), (0, math.nan, "nan")]
)
def test_points_outside_grid(grid, lon, lat, bad):
    with pytest.raises(GridError, match=bad):
        grid.cell_of(lon, lat)
    with pytest.raises(GridError, match=bad):
        grid.cell_of(np.array([0.0, lon]), np.array([0.5, lat]))


def test_majortom_bottom_edge_is_outside():
    # The bottom line of the southernmost row belongs to the (missing) row below it.
    with pytest.raises(GridError):
        MT.cell_of(0.5, MT.lat_range[0])
    assert MT.cell_of(0.5, MT.lat_range[1]).startswith("946U_")
    with pytest.raises(GridError):
        MT.cell_of(0.5, float(np.nextafter(MT.lat_range[1], 90)))


def test_bad_constructor_arguments():
    for bad in (0, -5, 2.5, True):
        with pytest.raises(GridError):
            MajorTomGrid(bad)
        with pytest.raises(GridError):
            UtmGrid(bad)
