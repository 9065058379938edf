"""eoembed.producers.encoders.stats: the ``stats`` encoder (and the base class's input checks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eoembed._errors import EncoderError
from eoembed.producers.encoders import get_encoder, list_encoders
from eoembed.producers.encoders.stats import StatsEncoder
from eoembed.producers.read import open_scene
from eoembed.producers.tile import iter_chip_batches

NC = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"


def reference_stats(pixels, valid):
    """Straightforward numpy, one chip and band at a time."""
    n, b = pixels.shape[:2]
    out = np.zeros((n, 5 * b))
    for i in range(n):
        for j in range(b):
            vals = pixels[i, j][valid[i] & np.isfinite(pixels[i, j])].astype(np.float64)
            if vals.size:
                out[i, 5 * j : 5 * j + 5] = [vals.mean(), vals.std(), *np.percentile(vals, [10, 50, 90])]
    return out


def test_stats_matches_numpy_on_a_hand_made_array():
    rng = np.random.default_rng(7)
    pixels = rng.normal(100, 30, size=(6, 3, 9, 7)).astype(np.float32)
    valid = rng.random((6, 9, 7)) > 0.35
    valid[2] = False  # no valid pixel at all
    valid[3] = True
    valid[4] = False
    valid[4, 5, 2] = True  # a single valid pixel
    pixels[5, 1, 0, 0] = np.nan  # non-finite: invalid in its band only
    valid[5, 0, 0] = True
    enc = get_encoder("stats")
    got = enc.encode(pixels, valid)
    assert got.dtype == np.float32 and got.shape == (6, 15)
    np.testing.assert_allclose(got, reference_stats(pixels, valid), rtol=1e-5, atol=1e-4)
    assert (got[2] == 0).all()
    np.testing.assert_allclose(got[4, [0, 2, 3, 4]], pixels[4, 0, 5, 2])
    assert got[4, 1] == 0.0


def test_stats_layout_on_a_tiny_known_chip():
    pixels = np.array([[[[1, 2], [3, 4]], [[10, 10], [10, 10]]]], dtype=np.float32)
    got = StatsEncoder().encode(pixels)
    p10, p50, p90 = np.percentile([1, 2, 3, 4], [10, 50, 90])
    np.testing.assert_allclose(got[0], [2.5, np.std([1, 2, 3, 4]), p10, p50, p90, 10, 0, 10, 10, 10], rtol=1e-6)


def test_stats_without_mask_equals_all_true_mask():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, size=(10, 2, 16, 16)).astype(np.float32)
    enc = StatsEncoder()
    np.testing.assert_allclose(enc.encode(pixels), enc.encode(pixels, np.ones((10, 16, 16), bool)))
    np.testing.assert_allclose(enc.encode(pixels), reference_stats(pixels, np.ones((10, 16, 16), bool)), rtol=1e-5)
    assert enc.encode(pixels[:0]).shape == (0, 10)


def test_stats_of_a_chip_do_not_depend_on_the_partial_chips_beside_it():
    """Fully valid chips take the dense path even in a batch with partial ones; their vectors are the
    bits that the chip alone gives, and those of the masked path the whole batch took before."""
    rng = np.random.default_rng(11)
    pixels = rng.integers(1, 4000, size=(8, 3, 16, 16)).astype(np.float32)
    valid = np.ones((8, 16, 16), bool)
    valid[[1, 6], :5] = False  # two partial chips among six full ones
    pixels[4, 2, 3, 3] = np.inf  # full in the mask, partial in one band
    enc = StatsEncoder()
    got = enc.encode(pixels, valid)
    alone = np.concatenate([enc.encode(pixels[i : i + 1], valid[i : i + 1]) for i in range(8)])
    np.testing.assert_array_equal(got, alone)
    ok = np.isfinite(pixels.reshape(8, 3, -1)) & valid.reshape(8, 1, -1)
    masked = StatsEncoder._masked(pixels.reshape(8, 3, -1), ok).reshape(8, 15).astype(np.float32)
    np.testing.assert_array_equal(got, masked)
    np.testing.assert_allclose(got, reference_stats(pixels, valid), rtol=1e-5, atol=1e-4)


def test_stats_moments_are_the_bits_of_numpy_mean_and_std():
    """The encoder computes the moments in place (np.std's temporaries were its costliest step);
    the sums are numpy's own, so the values are those of np.mean and np.std to the last bit."""
    rng = np.random.default_rng(5)
    x = (rng.integers(1, 30000, size=(9, 4, 256)) * rng.random((9, 4, 1))).astype(np.float32)
    x64 = x.astype(np.float64)
    dense = StatsEncoder._dense(x)
    np.testing.assert_array_equal(dense[..., 0], x64.mean(axis=-1))
    np.testing.assert_array_equal(dense[..., 1], x64.std(axis=-1))
    np.testing.assert_array_equal(StatsEncoder._masked(x, np.ones(x.shape, bool)), dense)
    ok = rng.random(x.shape) > 0.3
    masked = StatsEncoder._masked(x, ok)
    zeroed = np.where(ok, x64, 0.0)
    mean = zeroed.sum(axis=-1) / ok.sum(axis=-1)
    np.testing.assert_array_equal(masked[..., 0], mean)
    dev = np.where(ok, zeroed - mean[..., None], 0.0)
    np.testing.assert_array_equal(masked[..., 1], np.sqrt((dev * dev).sum(axis=-1) / ok.sum(axis=-1)))


def test_dim_rule():
    enc = get_encoder("stats")
    assert [enc.dim(n) for n in (1, 3, 5, 12)] == [5, 15, 25, 60]
    with pytest.raises(EncoderError, match="n_bands=0"):
        enc.dim(0)
    listed = {e["name"]: e for e in list_encoders()}
    assert listed["stats"]["dim"] == "5 * n_bands"
    assert listed["stats"]["description"] == "per band: mean, std, p10, p50, p90"


def test_contract_shape_and_json():
    contract = StatsEncoder().contract(
        bands=["B1", "B2", "B3", "B4", "B5"], chip_size=8, stride=8, gsd=28.5, band_sources="landsat_multiband.tif"
    )
    assert contract == {
        "name": "stats",
        "version": "1",
        "framework": "numpy",
        "weights_sha256": None,
        "architecture": "band statistics",
        "pooling": "none",
        "input": {
            "bands": [{"name": f"B{i}", "source": "landsat_multiband.tif"} for i in range(1, 6)],
            "chip_size_px": 8,
            "stride_px": 8,
            "gsd_m": 28.5,
            "normalization": {"method": "none"},
        },
        "output": {"dim": 25, "description": "per band: mean, std, p10, p50, p90"},
    }
    assert json.loads(json.dumps(contract)) == contract
    per_band = StatsEncoder().contract(bands=["red", "nir"], chip_size=np.int64(32), stride=16, gsd=np.float32(10),
                                       band_sources=["s2:B04", "s2:B08"])
    json.dumps(per_band)  # numpy scalars were converted
    assert [b["source"] for b in per_band["input"]["bands"]] == ["s2:B04", "s2:B08"]
    with pytest.raises(EncoderError, match="1 band_sources for 2 bands"):
        StatsEncoder().contract(bands=["red", "nir"], chip_size=8, stride=8, gsd=10, band_sources=["x"])
    with pytest.raises(EncoderError, match="gsd=0.0"):
        StatsEncoder().contract(bands=["red"], chip_size=8, stride=8, gsd=0)


def test_stats_on_real_nc_chips(shared_data):
    scene = open_scene(shared_data / NC)
    enc = get_encoder("stats")
    batch = next(iter_chip_batches(scene, chip_size=8, batch_size=512))
    out = enc.encode(batch.pixels, batch.valid)
    assert out.shape == (512, 25) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert (batch.valid_fraction == 0).any()  # nodata chips give zeros, not -99999 statistics
    assert (out[batch.valid_fraction == 0] == 0).all()
    full = np.flatnonzero(batch.valid_fraction == 1)[0]
    np.testing.assert_allclose(out[full, 0::5], batch.pixels[full].mean(axis=(1, 2)), rtol=1e-6)
    assert (out[:, 0::5] >= 0).all() and (out[:, 0::5] <= 255).all()  # Landsat DN


def test_bad_input_shapes():
    enc = StatsEncoder()
    with pytest.raises(EncoderError, match=r"shape \(3, 8, 8\)"):
        enc.encode(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(EncoderError, match="valid mask has shape"):
        enc.encode(np.zeros((2, 1, 8, 8), np.float32), np.ones((2, 4, 4), bool))


def test_steps_give_each_bands_statistics_over_its_time_series():
    rng = np.random.default_rng(5)
    # 3 chips of 2 x 2 px, 2 dates of 3 bands, time-major: B1@t0 B2@t0 B3@t0 B1@t1 B2@t1 B3@t1.
    pixels = rng.uniform(0, 100, size=(3, 6, 2, 2)).astype(np.float32)
    valid = np.ones((3, 2, 2), dtype=bool)
    valid[1, 0, 0] = False  # one pixel without data on every date
    got = StatsEncoder(steps=2).encode(pixels, valid)
    assert got.shape == (3, 15)
    for chip in range(3):
        for band in range(3):
            series = np.concatenate([pixels[chip, band][valid[chip]], pixels[chip, 3 + band][valid[chip]]]).astype(np.float64)
            expected = [series.mean(), series.std(), *np.percentile(series, [10, 50, 90])]
            assert np.allclose(got[chip, 5 * band:5 * band + 5], expected, rtol=1e-5), (chip, band)
    # Per pixel (1-pixel chips) the time series alone: two dates' values of the band.
    one = StatsEncoder(steps=2).encode(pixels[:, :, :1, :1])
    assert np.allclose(one[:, 0], (pixels[:, 0, 0, 0] + pixels[:, 3, 0, 0]) / 2, rtol=1e-6)
    contract = StatsEncoder(steps=2).contract(bands=["B1@t0", "B2@t0", "B3@t0", "B1@t1", "B2@t1", "B3@t1"],
                                              chip_size=1, stride=1, gsd=10)
    assert contract["output"]["dim"] == 15 and contract["parameters"] == {"steps": 2}


def test_steps_that_do_not_split_the_bands_are_refused():
    with pytest.raises(EncoderError, match="not 2 time steps"):
        StatsEncoder(steps=2).encode(np.zeros((1, 5, 2, 2), np.float32))
    with pytest.raises(EncoderError, match="steps="):
        StatsEncoder(steps=0)
