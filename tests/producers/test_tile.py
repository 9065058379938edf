"""eoembed.producers.tile: chip grids (property tests), batches from real scenes, lon/lat footprints."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from eoembed._errors import TilingError
from eoembed.producers.read import Scene, open_scene, read_window
from eoembed.producers.tile import (
    ChipBatch,
    ChipWindow,
    chip_windows,
    footprint_polygons_lonlat,
    iter_chip_batches,
)

NC = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
RGB = "imagery/rasterio/RGB.byte.tif"


def coverage(width, height, windows):
    """How many windows cover each pixel (2-D difference array, no per-window loop over pixels)."""
    diff = np.zeros((height + 1, width + 1), np.int64)
    if windows:
        w = np.array([(x.col_off, x.row_off, x.size) for x in windows])
        c0, r0, s = w[:, 0], w[:, 1], w[:, 2]
        np.add.at(diff, (r0, c0), 1)
        np.add.at(diff, (r0, c0 + s), -1)
        np.add.at(diff, (r0 + s, c0), -1)
        np.add.at(diff, (r0 + s, c0 + s), 1)
    return diff.cumsum(0).cumsum(1)[:height, :width]


dims = st.integers(min_value=0, max_value=150)
sizes = st.integers(min_value=1, max_value=40)


@settings(max_examples=150, deadline=None)
@given(width=dims, height=dims, chip=sizes, stride=sizes, cover=st.booleans())
@example(width=33, height=32, chip=32, stride=32, cover=True)  # one pixel left over: a shifted 2nd column
@example(width=32, height=32, chip=32, stride=32, cover=True)  # exact fit: no duplicate edge chip
@example(width=31, height=100, chip=32, stride=32, cover=True)  # narrower than a chip: nothing
@example(width=100, height=100, chip=10, stride=30, cover=True)  # stride > chip: gaps, but the far edge is reached
@example(width=0, height=0, chip=1, stride=1, cover=True)
def test_chip_window_properties(width, height, chip, stride, cover):
    windows = chip_windows(width, height, chip_size=chip, stride=stride, cover_edges=cover)
    if width < chip or height < chip:
        assert windows == []
        return
    # inside, right size, no duplicates, row-major
    for w in windows:
        assert w.size == chip
        assert 0 <= w.col_off <= width - chip and 0 <= w.row_off <= height - chip
    keys = [(w.row_off, w.col_off) for w in windows]
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys)
    assert windows[0] == ChipWindow(0, 0, chip)
    cov = coverage(width, height, windows)
    if cover:
        # the far corner is always reached; every pixel is when the stride leaves no gaps
        assert cov[-1, -1] > 0 and cov[0, -1] > 0 and cov[-1, 0] > 0
        if stride <= chip:
            assert cov.all()
    else:
        assert cov[0, 0] > 0
    n_cols, n_rows = (width - chip) // stride + 1, (height - chip) // stride + 1
    if not cover or ((width - chip) % stride == 0 and (height - chip) % stride == 0):
        assert len(windows) == n_cols * n_rows
    else:
        extra_c = int((width - chip) % stride != 0)
        extra_r = int((height - chip) % stride != 0)
        assert len(windows) == (n_cols + extra_c) * (n_rows + extra_r)


def test_chip_windows_defaults_and_small_cases():
    assert chip_windows(64, 32, chip_size=32) == [ChipWindow(0, 0, 32), ChipWindow(32, 0, 32)]
    assert chip_windows(40, 32, chip_size=32) == [ChipWindow(0, 0, 32), ChipWindow(8, 0, 32)]
    assert chip_windows(40, 32, chip_size=32, cover_edges=False) == [ChipWindow(0, 0, 32)]
    assert chip_windows(10, 10, chip_size=11) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chip_size": 0}, "chip_size=0"),
        ({"chip_size": -3}, "chip_size=-3"),
        ({"chip_size": 8, "stride": 0}, "stride=0"),
        ({"chip_size": 2.5}, "chip_size=2.5"),
        ({"chip_size": True}, "chip_size=True"),
    ],
)
def test_chip_windows_rejects_bad_sizes(kwargs, match):
    with pytest.raises(TilingError, match=match) as info:
        chip_windows(100, 100, **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.fixture(scope="module")
def nc_scene(shared_data):
    return open_scene(shared_data / NC)


def test_batches_equal_per_chip_reads(nc_scene):
    windows = chip_windows(nc_scene.width, nc_scene.height, chip_size=32, stride=24)
    batches = list(iter_chip_batches(nc_scene, chip_size=32, stride=24, batch_size=7, bands=[2, 4]))
    assert all(isinstance(b, ChipBatch) and 1 <= len(b) <= 7 for b in batches)
    assert all(len(b) == 7 for b in batches[:-1])
    got_windows = [w for b in batches for w in b.windows]
    assert got_windows == windows
    pixels = np.concatenate([b.pixels for b in batches])
    fractions = np.concatenate([b.valid_fraction for b in batches])
    valid = np.concatenate([b.valid for b in batches])
    assert pixels.dtype == np.float32 and pixels.shape == (len(windows), 2, 32, 32)
    assert fractions.dtype == np.float32
    for i, w in enumerate(windows):
        p, v = read_window(nc_scene, col_off=w.col_off, row_off=w.row_off, width=32, height=32, bands=[2, 4])
        np.testing.assert_array_equal(pixels[i], p)
        np.testing.assert_array_equal(valid[i], v)
        assert fractions[i] == np.float32(v.sum() / v.size)
    bbox = np.concatenate([b.pixel_bbox for b in batches])
    assert bbox.dtype == np.int32
    np.testing.assert_array_equal(bbox, [(w.col_off, w.row_off, w.col_off + 32, w.row_off + 32) for w in windows])


def test_native_and_lonlat_bounds_of_nc_chips(nc_scene):
    batches = list(iter_chip_batches(nc_scene, chip_size=32))
    native = np.concatenate([b.native_bounds for b in batches])
    lonlat = np.concatenate([b.lonlat_bounds for b in batches])
    assert native.dtype == np.float64 and lonlat.dtype == np.float64
    # the chips (edges covered) span the scene exactly: 630534..630534+489*28.5, 228114-443*28.5..228114
    np.testing.assert_allclose(native[:, 0].min(), 630534.0)
    np.testing.assert_allclose(native[:, 2].max(), 630534.0 + 489 * 28.5)
    np.testing.assert_allclose(native[:, 3].max(), 228114.0)
    np.testing.assert_allclose(native[:, 1].min(), 228114.0 - 443 * 28.5)
    np.testing.assert_allclose(native[:, 2] - native[:, 0], 32 * 28.5)
    # Raleigh, North Carolina (observed: lon -78.77..-78.61, lat 35.69..35.81)
    assert (lonlat[:, 0] > -78.8).all() and (lonlat[:, 2] < -78.58).all()
    assert (lonlat[:, 1] > 35.67).all() and (lonlat[:, 3] < 35.83).all()
    assert (lonlat[:, 0] < lonlat[:, 2]).all() and (lonlat[:, 1] < lonlat[:, 3]).all()
    # the first chip's corners, projected independently, lie inside its lon/lat bounds
    to_ll = Transformer.from_crs("EPSG:32119", "EPSG:4326", always_xy=True)
    xmin, ymin, xmax, ymax = native[0]
    lon, lat = to_ll.transform([xmin, xmax, xmin, xmax], [ymin, ymin, ymax, ymax])
    west, south, east, north = lonlat[0]
    np.testing.assert_allclose([west, south, east, north], [min(lon), min(lat), max(lon), max(lat)], atol=1e-9)


def test_footprint_polygons(nc_scene):
    windows = chip_windows(nc_scene.width, nc_scene.height, chip_size=64)[:5]
    polygons = footprint_polygons_lonlat(nc_scene, windows)
    batch = next(iter_chip_batches(nc_scene, chip_size=64, batch_size=5))
    assert len(polygons) == 5
    for poly, bounds in zip(polygons, batch.lonlat_bounds):
        assert poly.is_valid and poly.area > 0
        assert len(poly.exterior.coords) > 5  # densified, not just 4 corners
        np.testing.assert_allclose(poly.bounds, bounds)
    assert footprint_polygons_lonlat(nc_scene, []) == []


def test_min_valid_fraction_drops_chips(nc_scene):
    all_fractions = np.concatenate([b.valid_fraction for b in iter_chip_batches(nc_scene, chip_size=16)])
    assert (all_fractions < 1).any() and (all_fractions == 1).any()  # the NC scene has nodata corners
    kept = list(iter_chip_batches(nc_scene, chip_size=16, min_valid_fraction=1.0))
    kept_fractions = np.concatenate([b.valid_fraction for b in kept])
    assert len(kept_fractions) == int((all_fractions == 1).sum())
    assert (kept_fractions == 1).all()
    with pytest.raises(TilingError, match="min_valid_fraction=1.5"):
        next(iter_chip_batches(nc_scene, chip_size=16, min_valid_fraction=1.5))


def test_uint8_nodata_scene_fractions(shared_data):
    scene = open_scene(shared_data / RGB)
    fractions = np.concatenate([b.valid_fraction for b in iter_chip_batches(scene, chip_size=64)])
    assert fractions.min() == 0.0 and fractions.max() == 1.0  # rotated footprint inside a 0-filled frame


def test_scene_smaller_than_chip_yields_nothing(nc_scene):
    assert list(iter_chip_batches(nc_scene, chip_size=500)) == []


def test_antimeridian_bbox_is_written_west_greater_than_east():
    # UTM 60N: 180 degrees east lies near x = 834 km at the equator
    scene = Scene(
        path="synthetic", crs="EPSG:32660", transform=Affine(100.0, 0.0, 830000.0, 0.0, -100.0, 10000.0),
        width=100, height=100, count=1, band_names=("B1",), dtype="float32", nodata=None, datetime=None,
        res=(100.0, 100.0),
    )
    from eoembed.producers.tile import _lonlat_bounds, _lonlat_rings, _windows_array

    lon, lat = _lonlat_rings(scene, _windows_array([ChipWindow(0, 0, 100)]))
    west, south, east, north = _lonlat_bounds(lon, lat)[0]
    assert 179.0 < west <= 180.0 and -180.0 <= east < -179.0
    assert 0.0 <= south < north < 0.1
