"""The `eoembed` verbs on pixel products, run as a user runs them: `fewshot` and `predict` given a
pixel product work per pixel (predict writes the GeoTIFF map), `import --level pixel` keeps
AlphaEarth / TESSERA tiles per pixel."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio

import eoembed
from tests.conftest import NC_POINTS, NC_SCENE
from tests.factories import nc_band_values_contract
from tests.sdk.importers.fixtures import alphaearth_cog, tessera_tile
from tests.test_cli import run

DROP = ["--drop", "agriculture", "--drop", "sediment"]


@pytest.fixture(scope="module")
def bands_product(shared_data, tmp_path_factory):
    """The NC scene's five band values as a pixel product (tiles of 256 px)."""
    with rasterio.open(shared_data / NC_SCENE) as ds:
        bands, transform, crs = ds.read().transpose(1, 2, 0).astype(np.float32), ds.transform, ds.crs
        bands[(bands == ds.nodata).any(axis=2)] = np.nan
    model = nc_band_values_contract()
    scene = {"embeddings": bands, "crs": crs, "transform": transform, "source_id": "landsat_multiband",
             "datetime": datetime(2000, 6, 1, tzinfo=timezone.utc)}
    return eoembed.write_pixel_product(tmp_path_factory.mktemp("nc") / "bands", scene, model=model, tile_size=256)


def test_fewshot_on_a_pixel_product_reports_both_splits(bands_product, shared_data):
    done = run("fewshot", str(bands_product), "--labels", str(shared_data / NC_POINTS), *DROP,
               "--shots", "1,5", "--episodes", "40", "--json")
    assert done.returncode == 0, done.stderr
    splits = json.loads(done.stdout)["splits"]
    assert splits[0]["split"].startswith("blocked") and splits[1]["split"] == "random"
    for split in splits:
        assert split["classes"] == ["developed", "forest", "herbaceous", "shrubland", "water"]
        assert [r["shots"] for r in split["results"]] == [1, 5]
        assert all(1 / 5 < r["accuracy"] <= 1 for r in split["results"])


def test_predict_on_a_pixel_product_writes_the_map_on_its_grid(bands_product, shared_data, tmp_path):
    out = tmp_path / "map.tif"
    done = run("predict", str(bands_product), "--labels", str(shared_data / NC_POINTS), *DROP, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    with rasterio.open(shared_data / NC_SCENE) as scene, rasterio.open(out) as prediction:
        assert prediction.crs == scene.crs and prediction.transform == scene.transform
        assert prediction.shape == scene.shape and prediction.dtypes[0] == "uint8"
        assert set(np.unique(prediction.read(1)).tolist()) <= set(range(6)) and prediction.read(1).max() > 1


def test_chip_only_labels_options_are_not_needed_for_pixels_and_bad_labels_are_explained(bands_product, tmp_path):
    bad = tmp_path / "none.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"label": "x"}, "geometry": {"type": "Point", "coordinates": [10.0, 50.0]}}]}))
    done = run("fewshot", str(bands_product), "--labels", str(bad))
    assert done.returncode != 0 and "Traceback" not in done.stderr and "pixel" in done.stderr


@pytest.mark.parametrize("form", ["zarr", "cog"])
def test_import_alphaearth_at_pixel_level(tmp_path, form):
    source = alphaearth_cog(tmp_path / "ae.tif")
    out = tmp_path / "ae"
    done = run("import", "alphaearth", str(source), "--out", str(out), "--level", "pixel", "--tile-size", "16",
               "--tile-format", form, "--option", "datetime=2023")
    assert done.returncode == 0, done.stderr
    assert "wrote pixel product" in done.stdout
    assert eoembed.validate(out).findings == []
    product = eoembed.open(out)
    assert product.kind == "pixel" and product.quantization.method == "sqrt" and len(product.tiles) == 6
    info = json.loads(run("info", str(out)).stdout)
    assert info["kind"] == "pixel" and info["tiles"] == 6


def test_import_tessera_at_pixel_level_keeps_the_scales(tmp_path):
    source = tessera_tile(tmp_path / "tessera")
    out = tmp_path / "t"
    done = run("import", "tessera", str(source), "--out", str(out), "--level", "pixel", "--tile-size", "16",
               "--option", "datetime=2024")
    assert done.returncode == 0, done.stderr
    product = eoembed.open(out)
    assert product.quantization.method == "per-row" and product.dim == 128
    assert eoembed.validate(out).findings == []


def test_chip_only_import_flags_are_refused_at_pixel_level(tmp_path):
    source = alphaearth_cog(tmp_path / "ae.tif")
    done = run("import", "alphaearth", str(source), "--out", str(tmp_path / "ae"), "--level", "pixel", "--normalize")
    assert done.returncode != 0 and "--normalize" in done.stderr and "Traceback" not in done.stderr
