"""Reading pixel products: windows as DataArrays, points as vectors, against the array written."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer

import eoembed
from eoembed._errors import CoordinateRangeError, DamagedProductError, SpecError
from tests.sdk.test_pixel import CRS, EMB, HOLE, TRANSFORM, _write

A, _, X0, _, E, Y0 = TRANSFORM


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    return eoembed.open(_write(tmp_path_factory.mktemp("read") / "p", "zarr", "none"))


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    return eoembed.open(_write(tmp_path_factory.mktemp("read") / "q", "cog", "sqrt"))


def _centre(row: int, col: int) -> tuple[float, float]:
    return X0 + (col + 0.5) * A, Y0 + (row + 0.5) * E


def test_open_gives_a_pixel_product(exact):
    assert isinstance(exact, eoembed.PixelProduct) and exact.kind == "pixel"
    assert exact.dim == 16 and exact.crs == CRS and len(exact.tiles) == 9
    with pytest.raises(SpecError, match="pixel product"):
        eoembed.Product(exact.path)


def test_to_numpy_over_a_window_crossing_tiles(exact):
    window = exact.to_numpy((20, 25, 50, 70))  # rows 20..50, cols 25..70: six tiles
    assert window.shape == (30, 45, 16) and window.dtype == np.float32
    assert np.array_equal(window, EMB[20:50, 25:70], equal_nan=True)
    whole = exact.to_numpy((0, 0, 70, 90))
    assert np.isnan(whole[HOLE]).all() and np.array_equal(whole, EMB, equal_nan=True)
    beyond = exact.to_numpy((60, 80, 75, 95))  # past the scene's edge: NaN there
    assert np.isnan(beyond[10:, :]).all() and np.array_equal(beyond[:10, :10], EMB[60:70, 80:90])


def test_read_a_bbox_to_a_dataarray_with_crs(exact):
    from pyproj import CRS as ProjCRS

    x0, y1 = X0 + 10 * A, Y0 + 5 * E  # from column 10, row 5 ...
    x1, y0 = X0 + 40 * A, Y0 + 45 * E  # ... to column 40, row 45
    array = exact.read((x0, y0, x1, y1))
    assert array.dims == ("y", "x", "dim") and array.shape == (40, 30, 16)
    assert array.attrs["crs"] == CRS and ProjCRS.from_wkt(array["spatial_ref"].attrs["crs_wkt"]).to_epsg() == 32618
    assert np.allclose(array["x"].values[[0, -1]], [_centre(0, 10)[0], _centre(0, 39)[0]])
    assert np.allclose(array["y"].values[[0, -1]], [_centre(5, 0)[1], _centre(44, 0)[1]])
    assert np.array_equal(array.values, EMB[5:45, 10:40], equal_nan=True)
    assert array.sel(x=_centre(0, 12)[0], y=_centre(7, 0)[1]).values.tolist() == EMB[7, 12].tolist()


def test_read_a_lon_lat_bbox(exact):
    to_lonlat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True)
    lon0, lat0 = to_lonlat.transform(*_centre(30, 30))
    lon1, lat1 = to_lonlat.transform(*_centre(20, 40))
    array = exact.read((lon0, lat0, lon1, lat1), crs="OGC:CRS84")
    # The UTM box around two lon/lat corners holds both pixels.
    for row, col in ((30, 30), (20, 40)):
        x, y = _centre(row, col)
        assert array.sel(x=x, y=y, method="nearest").values.tolist() == EMB[row, col].tolist()


def test_sample_lon_lat_points_and_a_geodataframe(exact, coded):
    import geopandas as gpd
    from shapely.geometry import Point

    pixels = [(0, 0), (31, 32), (69, 89), HOLE]
    xy = np.array([_centre(r, c) for r, c in pixels])
    lon, lat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True).transform(xy[:, 0], xy[:, 1])
    points = np.column_stack([lon, lat])
    vectors = exact.sample(np.vstack([points, [[lon[0] + 1.0, lat[0]]]]))  # the last point lies in no tile
    assert vectors.shape == (5, 16)
    for i, (r, c) in enumerate(pixels[:3]):
        assert np.array_equal(vectors[i], EMB[r, c])
    assert np.isnan(vectors[3]).all() and np.isnan(vectors[4]).all()
    frame = gpd.GeoDataFrame({"label": list("abcd")}, geometry=[Point(x, y) for x, y in xy], crs=CRS)
    from_frame = coded.sample(frame)
    decoded = coded.to_numpy((0, 0, 70, 90))
    assert np.array_equal(from_frame, np.array([decoded[r, c] for r, c in pixels]), equal_nan=True)
    assert np.abs(from_frame[:3] - vectors[:3]).max() < 0.02  # sqrt codes against the float32 originals


def test_bad_requests_are_refused(exact):
    with pytest.raises(CoordinateRangeError, match="lon/lat"):
        exact.sample(np.array([[500000.0, 4200000.0]]))
    with pytest.raises(CoordinateRangeError, match="xmin < xmax"):
        exact.read((10.0, 0.0, 5.0, 1.0))
    with pytest.raises(SpecError, match="exactly one"):
        exact.to_numpy()


def test_a_truncated_tile_is_refused_on_open(exact, tmp_path):
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(exact.path, copy)
    tile = sorted((copy / "data").iterdir())[0]
    tile.write_bytes(tile.read_bytes()[:-10])
    with pytest.raises(DamagedProductError, match="bytes"):
        eoembed.open(copy)


def test_search_a_window_for_the_nearest_pixels(exact):
    window = (10, 20, 60, 80)
    hits = exact.search(EMB[30, 45], k=5, window=window)
    assert hits.column("rank").to_pylist() == [1, 2, 3, 4, 5]
    assert (hits.column("row")[0].as_py(), hits.column("col")[0].as_py()) == (30, 45)
    assert abs(hits.column("distance")[0].as_py()) < 1e-6
    # Exact: the same five as brute force over the window's pixels with data.
    block = EMB[10:60, 20:80].reshape(-1, 16)
    cos = block @ EMB[30, 45] / np.linalg.norm(block, axis=1) / np.linalg.norm(EMB[30, 45])
    order = np.argsort(-np.nan_to_num(cos, nan=-2.0))[:5]
    assert [(10 + i // 60, 20 + i % 60) for i in order] == list(zip(hits.column("row").to_pylist(), hits.column("col").to_pylist()))
    assert np.all(np.diff(hits.column("distance").to_numpy()) >= 0)
    x, y = _centre(30, 45)
    assert np.isclose(hits.column("x")[0].as_py(), x) and np.isclose(hits.column("y")[0].as_py(), y)
    lon, lat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True).transform(x, y)
    by_point = exact.search((lon, lat), k=1, window=window)  # the point's own pixel is its nearest
    assert (by_point.column("row")[0].as_py(), by_point.column("col")[0].as_py()) == (30, 45)


def test_search_refuses_bad_queries(exact):
    from eoembed._errors import SearchError

    with pytest.raises(SearchError, match="16 finite numbers"):
        exact.search(np.ones(3), window=(0, 0, 5, 5))
    with pytest.raises(SearchError, match="window"):
        exact.search(EMB[0, 1])
