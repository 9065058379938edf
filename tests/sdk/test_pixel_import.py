"""AlphaEarth and TESSERA tiles imported as pixel products: their codes and scales kept byte for
byte, on the source's grid, valid; fixtures built from the formats' public descriptions."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import eoembed
from eoembed._errors import SourceFormatError
from eoembed._tiles import read_tile
from tests.sdk.importers.fixtures import alphaearth_cog, tessera_tile


def _mosaic(product, shape, width):
    codes = np.zeros((*shape, width), dtype=np.int8)
    scale = np.zeros(shape, dtype=np.float32)
    a, _, x0, _, e, y0 = min((t.geo.transform for t in product.tiles), key=lambda g: (-g[5], g[2]))
    for t in product.tiles:
        tile = read_tile(t.path)
        r, c = round((t.geo.transform[5] - y0) / e), round((t.geo.transform[2] - x0) / a)
        rows, cols = t.geo.shape
        codes[r:r + rows, c:c + cols] = tile.codes
        if tile.scale is not None:
            scale[r:r + rows, c:c + cols] = tile.scale
    return codes, scale


@pytest.mark.parametrize("form", ["zarr", "cog"])
def test_alphaearth_codes_are_kept_as_they_are(tmp_path, form):
    source = alphaearth_cog(tmp_path / "ae.tif")
    out = eoembed.import_pixels("alphaearth", [source], out=tmp_path / "ae", datetime="2023", format=form, tile_size=16)
    assert eoembed.validate(out).findings == []
    product = eoembed.open(out)
    assert product.quantization.method == "sqrt" and product.dim == 64 and len(product.tiles) == 6  # 40 x 24 in tiles of 16
    with rasterio.open(source) as src:
        stored = np.moveaxis(src.read(), 0, -1)
        assert product.tiles[0].geo.transform == tuple(src.transform)[:6] and product.crs == "EPSG:32617"
    codes, _ = _mosaic(product, stored.shape[:2], 64)
    assert np.array_equal(codes, stored)
    assert np.isnan(product.to_numpy((0, 0, 8, 8))).all()  # the tile's nodata block


def test_tessera_codes_and_scales_are_kept(tmp_path):
    source = tessera_tile(tmp_path / "tessera")
    out = eoembed.import_pixels("tessera", [source], out=tmp_path / "t", datetime="2024", tile_size=16)
    assert eoembed.validate(out).findings == []
    product = eoembed.open(out)
    assert product.quantization.method == "per-row" and product.dim == 128
    stored, scales = np.load(source), np.load(source.with_name(source.stem + "_scales.npy"))
    codes, scale = _mosaic(product, stored.shape[:2], 128)
    data = scales > 0
    assert np.array_equal(codes[data], stored[data]) and np.array_equal(scale[data], scales[data])
    assert (codes[~data] == -128).all() and (scale[~data] == 1.0).all()  # no observation: eoembed's nodata pixel
    values = product.to_numpy((0, 0, *stored.shape[:2]))
    assert np.array_equal(values[data], stored[data].astype(np.float32) * scales[data][:, None])


def test_chip_importers_are_refused(tmp_path):
    with pytest.raises(SourceFormatError, match="pixel imports take alphaearth or tessera"):
        eoembed.import_pixels("clay", [tmp_path / "x.parquet"], out=tmp_path / "c")
