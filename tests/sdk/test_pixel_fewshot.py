"""Pixel few-shot and prediction on the NC Landsat-7 scene with its labelled points: each point's
pixel, the product's vectors being the pixel's five band values (the baseline any pixel encoder
must beat); the predicted map lines up with the scene and agrees with its land-cover raster."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio

import eoembed
from eoembed._errors import LabelsOutsideProductError

from tests.conftest import NC_POINTS, NC_SCENE
from tests.factories import nc_band_values_contract


@pytest.fixture(scope="module")
def bands_product(shared_data, tmp_path_factory):
    with rasterio.open(shared_data / NC_SCENE) as ds:
        bands, transform, crs = ds.read().transpose(1, 2, 0).astype(np.float32), ds.transform, ds.crs
        bands[(bands == ds.nodata).any(axis=2)] = np.nan  # the scene's -99999 border: pixels without data
    model = nc_band_values_contract()
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


def test_predict_writes_a_map_on_the_scene_grid(bands_product, shared_data, tmp_path):
    import json

    from tests.conftest import NC_STRATA, NC_STRATA_CLASSES

    out = eoembed.predict_pixels(bands_product, shared_data / NC_POINTS, out=tmp_path / "map.tif",
                                 drop_classes=["agriculture", "sediment"])
    with rasterio.open(out) as got, rasterio.open(shared_data / NC_SCENE) as scene, rasterio.open(shared_data / NC_STRATA) as truth:
        assert got.crs == scene.crs and got.transform == scene.transform and got.shape == scene.shape
        assert got.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = json.loads(got.tags()["EOEMBED_CLASSES"])
        predicted = got.read(1)
        strata = truth.read(1)
        nodata = (scene.read() == scene.nodata).any(axis=0)
        assert truth.transform == scene.transform  # the land-cover raster is on the scene's grid
    assert classes == ["developed", "forest", "herbaceous", "shrubland", "water"]
    assert np.array_equal(predicted == 0, nodata) and predicted.max() <= 5  # 0 exactly where the scene has no data
    named = np.array(["", *classes], dtype=object)[predicted]
    wanted = np.vectorize(lambda v: NC_STRATA_CLASSES.get(int(v), ""))(strata)
    scored = np.isin(wanted, classes) & ~nodata
    agreement = float((named[scored] == wanted[scored]).mean())
    # Chance for 5 classes drawn as the map draws them: the sum of products of the two class shares.
    chance = sum(float((named[scored] == c).mean()) * float((wanted[scored] == c).mean()) for c in classes)
    assert agreement > chance + 0.1, (agreement, chance)


def test_polygons_label_the_pixels_whose_centres_they_hold(bands_product, shared_data):
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    polygons = gpd.read_file(shared_data / "imagery/nc_landsat7_landclass96/landsat96_polygons.shp")
    vectors, names, lon, lat = eoembed._pixel_fewshot.labelled_pixels(bands_product, polygons)
    x, y = Transformer.from_crs("OGC:CRS84", polygons.crs, always_xy=True).transform(lon, lat)
    for label in set(names):
        mine = names == label
        union = shapely.union_all(polygons.geometry[polygons["label"] == label].to_numpy())
        assert shapely.contains_xy(union, x[mine], y[mine]).all(), label
    # As many pixels as the polygons' area holds (28.5 m pixels; edges cut either way).
    expected = polygons.area.sum() / 28.5**2
    assert 0.9 * expected < len(vectors) < 1.1 * expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eoembed.FewShotWarning)
        (blocked,) = eoembed.fewshot_pixels(bands_product, polygons, drop_classes=["agriculture", "sediment"],
                                            shots=(5,), episodes=50, splits=["2km"])
    assert blocked.split.startswith("blocked") and blocked.result(5).accuracy > 1 / 5
