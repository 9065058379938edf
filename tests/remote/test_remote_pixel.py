"""Pixel products read where they live (S3 and HTTP on the loopback): the same vectors as the local
copy, tiles read in place, and a window costs a part of the product's bytes, not all of it."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
from affine import Affine

import eoembed
from tests.conftest import NC_POINTS, NC_SCENE
from tests.factories import nc_band_values_contract
from tests.servers import total_bytes, upload


@pytest.fixture(scope="module", params=["zarr", "cog"])
def served_pixels(request, served, shared_data):
    """(local pixel product, {'s3': URL, 'http': URL}, servers): 240 x 240 pixels of the NC scene's five
    bands in 16 tiles of 60, written in one tile form, served beside the chip product of ``served``."""
    local_chips, urls, servers = served
    form = request.param
    with rasterio.open(shared_data / NC_SCENE) as ds:
        window = ((100, 340), (150, 390))
        bands = ds.read(window=window).transpose(1, 2, 0).astype(np.float32)
        transform, crs = ds.transform @ Affine.translation(150, 100), ds.crs
    model = nc_band_values_contract()
    scene = {"embeddings": bands, "crs": crs, "transform": transform, "source_id": "nc",
             "datetime": datetime(2000, 6, 1, tzinfo=timezone.utc)}
    name = f"pixels-{form}"
    local = eoembed.write_pixel_product(local_chips.parent / name, scene, model=model, tile_size=60, format=form)
    upload(local, f"s3://products/{name}")
    yield local, {"s3": f"s3://products/{name}", "http": urls["http"].rsplit("/", 1)[0] + f"/{name}"}, servers
    shutil.rmtree(local)


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_a_remote_pixel_product_reads_as_the_local_copy(served_pixels, kind, shared_data):
    import geopandas as gpd

    local_path, urls, _ = served_pixels
    local, there = eoembed.open(local_path), eoembed.open(urls[kind])
    assert there.kind == "pixel" and len(there.tiles) == len(local.tiles) == 16
    assert there.crs == local.crs and [t.geo for t in there.tiles] == [t.geo for t in local.tiles]
    assert np.array_equal(there.to_numpy((50, 70, 130, 190)), local.to_numpy((50, 70, 130, 190)), equal_nan=True)
    points = gpd.read_file(shared_data / NC_POINTS)
    on_crop = local.sample(points)
    assert (~np.isnan(on_crop).any(axis=1)).sum() > 5  # some points fall on the crop's pixels
    assert np.array_equal(there.sample(points), on_crop, equal_nan=True)
    assert eoembed.validate(urls[kind]).ok  # fetched whole, then every check of the local product


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_a_window_of_a_remote_pixel_product_reads_its_tiles_in_place(served_pixels, kind):
    local_path, urls, servers = served_pixels
    there = eoembed.open(urls[kind])
    server = servers[kind]
    server.counter.reset()
    corner = there.to_numpy((0, 0, 30, 30))  # inside the first tile of 16
    assert corner.shape == (30, 30, 5)
    assert 0 < server.counter.bytes < total_bytes(local_path) / 4
