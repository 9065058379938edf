"""Pixel few-shot on the NC Landsat-7 scene with its labelled points: each point's pixel, the
product's vectors being the pixel's five band values (the baseline any pixel encoder must beat)."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio

import eoembed
from eoembed._errors import LabelsOutsideProductError

from tests.conftest import NC_POINTS, NC_SCENE


@pytest.fixture(scope="module")
def bands_product(shared_data, tmp_path_factory):
    with rasterio.open(shared_data / NC_SCENE) as ds:
        bands, transform, crs = ds.read().transpose(1, 2, 0).astype(np.float32), ds.transform, ds.crs
    model = {"name": "band-values", "version": "1", "framework": "numpy", "weights_sha256": None, "architecture": "identity",
             "pooling": "none", "output": {"dim": 5},
             "input": {"bands": [{"name": f"B{i + 1}", "source": "landsat_multiband.tif"} for i in range(5)], "chip_size_px": 1,
                       "stride_px": 1, "gsd_m": 28.5, "normalization": {"method": "none"}}}
    scene = {"embeddings": bands, "crs": crs, "transform": transform, "source_id": "landsat_multiband",
             "datetime": datetime(2000, 6, 1, tzinfo=timezone.utc)}
    return eoembed.open(eoembed.write_pixel_product(tmp_path_factory.mktemp("nc") / "bands", scene, model=model, tile_size=256))


def test_points_sample_the_band_values_the_label_file_carries(bands_product, shared_data):
    import geopandas as gpd

    points = gpd.read_file(shared_data / NC_POINTS)
    stated = points[["b1", "b2", "b3", "b4", "b5"]].to_numpy(dtype=np.float32)
    known = ~np.isnan(stated).any(axis=1)
    sampled = bands_product.sample(points)  # EPSG:3358 points on EPSG:32119 tiles
    assert known.sum() > 700 and np.array_equal(sampled[known], stated[known])


def test_pixel_fewshot_reports_accuracy_with_intervals(bands_product, shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eoembed.FewShotWarning)  # water has 17 points: fewer queries at 5 and 10 shots
        blocked, random = eoembed.fewshot_pixels(bands_product, shared_data / NC_POINTS, drop_classes=["agriculture", "sediment"],
                                                 shots=(1, 5, 10), episodes=100)
    assert blocked.split.startswith("blocked") and blocked.blocks > 10 and random.split == "random"
    assert blocked.classes == random.classes == ["developed", "forest", "herbaceous", "shrubland", "water"]
    for report in (blocked, random):
        assert [r.shots for r in report.results] == [1, 5, 10]
        for r in report.results:
            assert 0 < r.accuracy <= 1 and 0 < r.accuracy_ci95 < 0.1
        one = report.result(1)
        assert one.accuracy - one.accuracy_ci95 > 1 / 5  # above chance on the 5-way task


def test_points_off_the_scene_are_refused(bands_product, tmp_path):
    import geopandas as gpd
    from shapely.geometry import Point

    far = gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=[Point(10.0, 50.0), Point(10.1, 50.1)], crs="OGC:CRS84")
    with pytest.raises(LabelsOutsideProductError, match="none of the 2"):
        eoembed.fewshot_pixels(bands_product, far, splits=[None])
