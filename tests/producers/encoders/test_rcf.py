"""eoembed.producers.encoders.rcf: the ``rcf`` (MOSAIKS random convolutional features) encoder."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap

import jsonschema
import numpy as np
import pytest
import torch

import eoembed
from eoembed._errors import EncoderError
from eoembed._spec import spec_schema
from eoembed.producers.encoders import get_encoder, list_encoders
from eoembed.producers.encoders.rcf import RcfEncoder
from eoembed.producers.read import open_scene
from eoembed.producers.tile import iter_chip_batches

NC = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
FEWSHOT = "fewshot/nc_landclass96/chips.npz"


def synthetic_chips(n=40, bands=3, size=12, seed=3):
    """Smooth-ish random chips on a Landsat-like DN scale."""
    rng = np.random.default_rng(seed)
    base = rng.normal(80, 25, size=(n, bands, size, size))
    base += np.cumsum(rng.normal(0, 4, size=(n, bands, size, size)), axis=-1)  # spatial structure
    return base.astype(np.float32)


@pytest.fixture(scope="module")
def chips():
    return synthetic_chips()


def test_registered_and_options():
    assert "rcf" in [e["name"] for e in list_encoders()]
    enc = get_encoder("rcf", features=16, kernel_size=5, seed=4, whiten=True, pca_dim=8)
    assert isinstance(enc, RcfEncoder)
    assert (enc.features, enc.kernel_size, enc.seed, enc.whiten, enc.pca_dim) == (16, 5, 4, True, 8)
    with pytest.raises(EncoderError, match="features=511"):
        RcfEncoder(features=511)
    with pytest.raises(EncoderError, match="features=7 is odd"):
        get_encoder("rcf", features=7)
    with pytest.raises(EncoderError, match="pca_dim=40 exceeds features=32"):
        RcfEncoder(features=32, pca_dim=40)
    with pytest.raises(EncoderError, match="kernel_size=0"):
        RcfEncoder(kernel_size=0)
    with pytest.raises(TypeError):
        RcfEncoder(512)  # the options are keyword-only
    with pytest.raises(EncoderError, match="does not take options"):
        get_encoder("rcf", nfeatures=8)


def test_encode_before_fit_says_to_fit(chips):
    enc = RcfEncoder(features=8)
    for call in (lambda: enc.encode(chips), enc.state, enc.weights_sha256,
                 lambda: enc.contract(bands=["a", "b", "c"], chip_size=12, stride=12, gsd=30)):
        with pytest.raises(EncoderError, match=r"call fit\(") as info:
            call()
        assert "fit_on" in str(info.value)


def test_dim_with_and_without_pca(chips):
    plain = RcfEncoder(features=32).fit(chips)
    assert plain.dim(3) == 32 and plain.encode(chips[:5]).shape == (5, 32)
    reduced = RcfEncoder(features=32, pca_dim=6).fit(chips)
    out = reduced.encode(chips)
    assert reduced.dim(3) == 6 and out.shape == (40, 6) and out.dtype == np.float32
    # the PCA is fitted on these chips: its scores are centred and ordered by variance
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3 * out.std())
    var = out.var(axis=0)
    assert (np.diff(var) <= 1e-6 * var[0]).all()
    assert reduced.encode(chips[:0]).shape == (0, 6)
    with pytest.raises(EncoderError, match="pca_dim=30 needs at least 30"):
        RcfEncoder(features=32, pca_dim=30).fit(chips[:10])


def test_determinism_same_seed_same_bits_other_seed_differs(chips):
    a = RcfEncoder(features=64, seed=11).fit(chips)
    b = RcfEncoder(features=64, seed=11).fit(chips.copy())
    assert a.weights_sha256() == b.weights_sha256()
    ea, eb = a.encode(chips), b.encode(chips)
    assert ea.tobytes() == eb.tobytes()
    assert a.encode(chips).tobytes() == ea.tobytes()  # across calls
    c = RcfEncoder(features=64, seed=12).fit(chips)
    assert c.weights_sha256() != a.weights_sha256()
    assert not np.array_equal(c.encode(chips), ea)
    # a chip's vector does not depend on the batch it came in, nor on the thread count
    alone = np.concatenate([a.encode(chips[i : i + 1]) for i in range(7)])
    assert alone.tobytes() == ea[:7].tobytes()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = a.encode(chips)
    finally:
        torch.set_num_threads(threads)
    assert single.tobytes() == ea.tobytes()


def test_hash_tracks_every_parameter(chips):
    enc = RcfEncoder(features=16, pca_dim=4).fit(chips)
    state = enc.state()
    seen = {enc.weights_sha256()}
    for key in ("band_mean", "band_std", "kernels", "offsets", "pca_mean", "pca_components"):
        changed = dict(state)
        arr = state[key].copy()
        arr.flat[0] = np.nextafter(arr.flat[0], np.float32(np.inf))  # one ulp
        changed[key] = arr
        seen.add(RcfEncoder.from_state(changed).weights_sha256())
    for key, value in (("seed", 1), ("fit_chips", 41)):
        seen.add(RcfEncoder.from_state({**state, key: value}).weights_sha256())
    assert len(seen) == 9
    whitened = RcfEncoder(features=16, pca_dim=4, whiten=True).fit(chips)
    assert whitened.weights_sha256() not in seen
    assert not np.array_equal(whitened.state()["kernels"], state["kernels"])


@pytest.mark.parametrize("options", [{}, {"whiten": True, "pca_dim": 5, "kernel_size": 4}])
def test_state_round_trip(chips, options):
    enc = RcfEncoder(features=24, seed=5, **options).fit(chips)
    state = enc.state()
    back = RcfEncoder.from_state(pickle.loads(pickle.dumps(state)))
    assert back.weights_sha256() == enc.weights_sha256()
    assert back.encode(chips).tobytes() == enc.encode(chips).tobytes()
    # JSON-able: arrays as lists survive the trip bit for bit (float32 -> float64 -> float32 is exact)
    as_json = json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()}))
    assert RcfEncoder.from_state(as_json).weights_sha256() == enc.weights_sha256()
    state["kernels"][0, 0, 0, 0] += 1  # state() hands out copies
    assert RcfEncoder.from_state(enc.state()).weights_sha256() == enc.weights_sha256()
    with pytest.raises(EncoderError, match="kernels has shape"):
        RcfEncoder.from_state({**enc.state(), "kernels": np.zeros((3, 3, 3, 3), np.float32)})
    with pytest.raises(EncoderError, match="not an rcf state"):
        RcfEncoder.from_state({"format": "other"})


def test_fresh_process_gets_the_same_hash_and_vectors(tmp_path, chips):
    enc = RcfEncoder(features=32, seed=9, pca_dim=4).fit(chips)
    (tmp_path / "state.pkl").write_bytes(pickle.dumps(enc.state()))
    np.save(tmp_path / "chips.npy", chips)
    script = textwrap.dedent(
        f"""
        import hashlib, pickle, numpy as np
        from eoembed.producers.encoders.rcf import RcfEncoder
        chips = np.load({str(tmp_path / "chips.npy")!r})
        rebuilt = RcfEncoder.from_state(pickle.loads(open({str(tmp_path / "state.pkl")!r}, "rb").read()))
        refit = RcfEncoder(features=32, seed=9, pca_dim=4).fit(chips)
        print(rebuilt.weights_sha256(), refit.weights_sha256())
        print(hashlib.sha256(rebuilt.encode(chips).tobytes()).hexdigest())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stdout.split()
    assert lines[0] == lines[1] == enc.weights_sha256()
    assert lines[2] == hashlib.sha256(enc.encode(chips).tobytes()).hexdigest()


def test_invalid_right_half_equals_left_half_alone():
    rng = np.random.default_rng(21)
    fit = rng.normal(50, 10, size=(30, 2, 16, 16)).astype(np.float32)
    enc = RcfEncoder(features=64, seed=2).fit(fit)
    chip = rng.normal(50, 10, size=(1, 2, 16, 16)).astype(np.float32)
    chip[..., 8:] = rng.normal(400, 200, size=(1, 2, 16, 8))  # very different pixels on the right
    chip[0, 0, 3, 12] = np.nan  # and a non-finite one
    valid = np.ones((1, 16, 16), dtype=bool)
    valid[:, :, 8:] = False
    masked = enc.encode(chip, valid)
    left = enc.encode(np.ascontiguousarray(chip[..., :8]))
    np.testing.assert_allclose(masked, left, rtol=1e-5, atol=1e-6)
    # the test can fail: counting the right half (or even its first column) changes the vector
    valid[:, :, 8] = True
    assert not np.allclose(enc.encode(chip, valid), left, rtol=1e-3)
    chip[0, 0, 3, 12] = 0
    assert not np.allclose(enc.encode(chip), left, rtol=1e-3)


def test_nan_pixel_is_invalid_even_when_marked_valid(chips):
    enc = RcfEncoder(features=16).fit(chips)
    bad = chips[:2].copy()
    bad[1, 2, 0, 0] = np.inf
    valid = np.ones((2, 12, 12), dtype=bool)
    out = enc.encode(bad, valid)
    assert np.isfinite(out).all()
    valid[1, 0, 0] = False
    assert out.tobytes() == enc.encode(bad, valid).tobytes()


@pytest.mark.parametrize("pca_dim", [None, 4])
def test_no_valid_pixel_gives_zeros_sparse_pixels_do_not(chips, pca_dim):
    enc = RcfEncoder(features=16, pca_dim=pca_dim).fit(chips)
    valid = np.ones((3, 12, 12), dtype=bool)
    valid[0] = False
    valid[1] = (np.add.outer(np.arange(12), np.arange(12)) % 2) == 0  # checkerboard: no valid 3x3 window
    out = enc.encode(chips[:3], valid)
    assert (out[0] == 0).all()
    assert np.isfinite(out).all() and (out[1] != 0).any()
    assert enc.encode(np.full((2, 3, 12, 12), np.nan, np.float32)).tolist() == [[0.0] * enc.dim(3)] * 2


def test_bad_inputs(chips):
    enc = RcfEncoder(features=8).fit(chips)
    with pytest.raises(EncoderError, match="4 bands"):
        enc.encode(np.zeros((1, 4, 12, 12), np.float32))
    with pytest.raises(EncoderError, match="smaller than kernel_size=3"):
        enc.encode(np.zeros((1, 3, 2, 12), np.float32))
    with pytest.raises(EncoderError, match="no valid pixel"):
        RcfEncoder(features=8).fit(chips, np.zeros((40, 12, 12), bool))
    with pytest.raises(EncoderError, match="fitted on 3"):
        enc.contract(bands=["a", "b"], chip_size=12, stride=12, gsd=30)


def test_contract(chips):
    enc = RcfEncoder(features=32, pca_dim=8, seed=3).fit(chips)
    contract = enc.contract(bands=["B1", "B2", "B3"], chip_size=12, stride=6, gsd=28.5, band_sources="lsat7")
    assert contract == json.loads(json.dumps(contract))
    state = enc.state()
    assert contract == {
        "name": "rcf",
        "version": "1",
        "framework": "pytorch",
        "weights_sha256": enc.weights_sha256(),
        "architecture": "random convolutional features (MOSAIKS)",
        "pooling": "mean",
        "parameters": {"features": 32, "kernel_size": 3, "seed": 3, "whiten": False, "pca_dim": 8, "fit_chips": 40},
        "input": {
            "bands": [{"name": b, "source": "lsat7"} for b in ("B1", "B2", "B3")],
            "chip_size_px": 12,
            "stride_px": 6,
            "gsd_m": 28.5,
            "normalization": {
                "method": "standardize",
                "mean": state["band_mean"].tolist(),
                "std": state["band_std"].tolist(),
            },
        },
        "output": {"dim": 8, "description": enc.description},
    }
    footer = spec_schema("footer")
    model_schema = {**footer["properties"]["model"], "definitions": footer.get("definitions", {})}
    jsonschema.Draft7Validator(model_schema).validate(contract)
    np.testing.assert_allclose(contract["input"]["normalization"]["mean"], chips.mean(axis=(0, 2, 3)), rtol=1e-5)


def test_real_landsat_chips(shared_data):
    scene = open_scene(shared_data / NC)
    batches = iter_chip_batches(scene, chip_size=16, batch_size=256, min_valid_fraction=0.0)
    first, second = next(batches), next(batches)
    enc = RcfEncoder(features=128, seed=1).fit(first.pixels, first.valid)
    out = enc.encode(second.pixels, second.valid)
    assert out.shape == (len(second), 128) and out.dtype == np.float32
    assert np.isfinite(out).all()
    has = second.valid_fraction > 0
    assert has.sum() >= 10
    assert (out[~has] == 0).all()
    spread = out[has].std(axis=0)
    assert (spread > 0).mean() > 0.9  # features vary across chips
    assert len(np.unique(out[has], axis=0)) == has.sum()


def test_fewshot_separates_land_classes(shared_data):
    data = np.load(shared_data / FEWSHOT)
    x = data["X"][:, :5].astype(np.float32)  # B1-B5: B7 is zero-filled where it had nodata
    y = data["y"]
    labels, counts = np.unique(y, return_counts=True)
    classes = labels[counts >= 20]
    assert len(classes) == 5
    rcf = RcfEncoder(features=256, seed=0).fit(x)
    feats = {"rcf": rcf.encode(x), "stats": get_encoder("stats").encode(x)}
    keep = np.isin(y, classes)
    acc = {
        (name, r.shots): r.accuracy
        for name, f in feats.items()
        for r in eoembed.fewshot(f[keep], y[keep], shots=(1, 5), method="prototype", episodes=50, seed=0).results
    }
    print("\nnearest-centroid accuracy, 5 classes, 50 episodes:",
          ", ".join(f"{name} {shots}-shot {a:.3f}" for (name, shots), a in acc.items()))
    assert acc[("rcf", 5)] > 1 / len(classes) + 0.1


def test_seasons_share_kernels_and_average_their_features():
    """seasons=2: each season of a time-major chip is encoded with the same kernels and the features
    are averaged over the seasons that pool anything; the state round-trips and changes the digest."""
    spring, autumn = synthetic_chips(n=30, seed=5), synthetic_chips(n=30, seed=6)
    both = np.concatenate([spring, autumn], axis=1)  # (n, 2 x 3 bands, h, w), time-major
    enc = RcfEncoder(features=16, seed=2, seasons=2).fit(both)
    per_season = RcfEncoder.from_state({**enc.state(), "seasons": 1, "n_bands": 3})
    expected = (per_season.encode(spring) + per_season.encode(autumn)) / 2
    assert np.allclose(enc.encode(both), expected, atol=1e-6)
    valid = np.ones((30, 12, 12), bool)
    gone = both.copy()
    gone[:, 3:] = np.nan  # autumn missing everywhere: the chip is its spring features alone
    assert np.allclose(enc.encode(gone, valid), per_season.encode(spring), atol=1e-6)
    back = RcfEncoder.from_state(enc.state())
    assert np.array_equal(back.encode(both), enc.encode(both))
    assert back.weights_sha256() == enc.weights_sha256() != per_season.weights_sha256()
    reduced = RcfEncoder(features=16, seed=2, seasons=2, pca_dim=4).fit(both)
    assert reduced.encode(both).shape == (30, 4)
    assert reduced.contract(bands=[f"B{i}" for i in range(6)], chip_size=12, stride=12, gsd=30)["parameters"]["seasons"] == 2
    with pytest.raises(EncoderError, match="7 bands do not split into seasons=2"):
        RcfEncoder(seasons=2).fit(synthetic_chips(bands=7))
    with pytest.raises(EncoderError, match="seasons=0"):
        RcfEncoder(seasons=0)
