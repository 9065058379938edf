"""AlphaEarth COG tiles and TESSERA tiles import into chip products by pooling (pixel-level
products are not part of the spec yet); fixtures are faithful tiles written by code."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import eoembed
from tests.sdk.importers.fixtures import alphaearth_cog, assert_valid_everywhere, tessera_tile


def _chip(product, col_off: int, row_off: int) -> dict:
    rows = product.sql("SELECT pixel_bbox, valid_fraction, chip_id FROM embeddings").to_pylist()
    vectors = product.to_numpy()
    index = next(i for i, r in enumerate(rows) if r["pixel_bbox"][:2] == [col_off, row_off])
    return {"vector": vectors[index], **rows[index]}


def test_alphaearth_tile_pools_the_dequantised_pixels_of_each_chip(tmp_path):
    source = alphaearth_cog(tmp_path / "tile.tif")
    report = eoembed.import_product("alphaearth", [source], out=tmp_path / "p", chip_size=8, datetime="2023")
    # 40 x 24 px in 8 px chips is 5 x 3 chips; the all-nodata top-left chip has no vector.
    assert report.rows == 14
    assert_valid_everywhere(report.path)
    product = eoembed.open(report.path)
    with rasterio.open(source) as ds:
        codes = np.moveaxis(ds.read(), 0, -1).astype(np.float64)
    values = np.sign(codes) * (np.abs(codes) / 127.5) ** 2  # the format's de-quantisation, written out
    valid = (codes != -128).all(axis=-1)
    block = values[8:16, 0:8][valid[8:16, 0:8]]
    chip = _chip(product, 0, 8)
    np.testing.assert_allclose(chip["vector"], block.mean(axis=0), rtol=1e-5, atol=1e-7)
    assert chip["valid_fraction"] == pytest.approx(40 / 64)
    model = product.metadata["model"]
    assert model["pooling"] == "mean" and model["parameters"]["pooling"]["window_px"] == 8
    assert (model["input"]["chip_size_px"], model["input"]["gsd_m"], model["output"]["dim"]) == (8, 10.0, 64)
    interval = product.collection["extent"]["temporal"]["interval"][0]
    assert interval[0].startswith("2023-01-01") and interval[1].startswith("2023-12-31")


def test_alphaearth_tile_without_a_time_is_refused_with_what_to_pass(tmp_path):
    source = alphaearth_cog(tmp_path / "tile.tif")
    with pytest.raises(eoembed.SourceFormatError, match="datetime="):
        eoembed.import_product("alphaearth", [source], out=tmp_path / "p")


def test_a_raster_that_is_not_an_alphaearth_tile_is_refused(shared_data, tmp_path):
    with pytest.raises(eoembed.SourceFormatError, match="3 uint8 bands; an AlphaEarth tile has 64 int8 bands"):
        eoembed.import_product("alphaearth", [shared_data / "imagery/rasterio/RGB.byte.tif"], out=tmp_path / "p", datetime="2023")


def test_tessera_tile_pools_codes_times_scales(tmp_path):
    source = tessera_tile(tmp_path / "tiles")
    report = eoembed.import_product("tessera", [source], out=tmp_path / "p", chip_size=4, datetime="2024")
    assert report.rows == 6 * 5 - 1  # 24 x 20 px in 4 px chips; the top-left chip has zero scales
    assert_valid_everywhere(report.path)
    product = eoembed.open(report.path)
    codes = np.load(source).astype(np.float64)
    scales = np.load(source.with_name(source.stem + "_scales.npy")).astype(np.float64)
    expected = (codes[4:8, 8:12] * scales[4:8, 8:12, None]).reshape(-1, 128).mean(axis=0)
    np.testing.assert_allclose(_chip(product, 8, 4)["vector"], expected, rtol=1e-5, atol=1e-7)
    with rasterio.open(source.with_suffix(".tiff")) as ds:
        assert {r["native_crs"] for r in product.sql("SELECT native_crs FROM embeddings").to_pylist()} == {ds.crs.to_string()}


def test_tessera_tile_without_its_georeference_is_refused(tmp_path):
    source = tessera_tile(tmp_path / "tiles")
    source.with_suffix(".tiff").unlink()
    with pytest.raises(eoembed.SourceFormatError, match="not georeferenced.*reference=GeoTIFF"):
        eoembed.import_product("tessera", [source], out=tmp_path / "p", datetime="2024")
