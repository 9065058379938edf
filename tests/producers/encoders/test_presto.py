"""eoembed.producers.encoders.presto: the pretrained Presto encoder, on the real published weights."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import eoembed
from eoembed._errors import EncoderError
from eoembed.producers.encoders import presto as presto_module
from eoembed.producers.encoders import get_encoder, list_encoders
from eoembed.producers.encoders.presto import (
    CHANNEL_GROUPS,
    DW_MISSING,
    LANDSAT7_BAND_MAP,
    PRESTO_CHANNELS,
    PrestoEncoder,
    PrestoNet,
    load_presto,
    month_table,
    normalize,
    sinusoid_table,
)
from tests.conftest import _require

WEIGHTS = "weights/presto/default_model.pt"
CHIPS = "fewshot/nc_landclass96/chips.npz"
#: every tensor of the encoder half of default_model.pt (the MANIFEST's "about 404k parameters")
ENCODER_NUMEL = 404_160
#: Landsat DN (0-255) to the Sentinel-2 reflectance x 10 000 scale Presto was trained on (crude)
DN_SCALE = 10_000 / 255
NC_LATLON = (35.78, -78.64)  # Raleigh, North Carolina: the nc_spm_08 sample region


@pytest.fixture(scope="module")
def weights(shared_data):
    return _require(shared_data / WEIGHTS)


@pytest.fixture(scope="module")
def net(weights):
    model, dropped = load_presto(weights)
    return model, dropped


def _chips(n=5, bands=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, size=(n, bands, size, size)).astype(np.float32)
    valid = rng.random((n, size, size)) > 0.3
    valid[1] = False  # a chip with no valid pixel
    valid[2] = True
    return pixels, valid


# loading ------------------------------------------------------------------------------------------


def test_strict_load_of_the_real_weights(weights, net, tmp_path):
    model, dropped = net
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert sorted("encoder." + k for k in state) == sorted(k for k in raw if k.startswith("encoder."))
    assert sum(v.numel() for v in state.values()) == ENCODER_NUMEL
    # only the pretraining decoder is left out (it reconstructs masked inputs; no part of the vectors)
    assert dropped and all(k.startswith("decoder.") for k in dropped)
    assert len(dropped) + len(state) == len(raw)
    for k, v in state.items():
        assert torch.equal(v, raw["encoder." + k]), k
    # the fixed encodings we compute are exactly the stored ones
    assert torch.equal(sinusoid_table(24, 64), raw["encoder.pos_embed"][0])
    assert torch.equal(month_table(32), raw["encoder.month_embed.weight"])
    # strict: a checkpoint that lacks an encoder tensor is refused
    broken = dict(raw)
    del broken["encoder.blocks.1.mlp.fc2.bias"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(EncoderError, match="does not match the Presto encoder"):
        load_presto(tmp_path / "broken.pt")
    with pytest.raises(EncoderError, match="not found"):
        load_presto(tmp_path / "absent.pt")


def test_registered_and_contract(weights):
    assert "presto" in {e["name"] for e in list_encoders()}
    enc = get_encoder("presto", weights=str(weights), band_map=LANDSAT7_BAND_MAP, latlon=NC_LATLON)
    assert isinstance(enc, PrestoEncoder) and enc.dim(6) == 128
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sha.startswith("559c9d76")
    bands = list(LANDSAT7_BAND_MAP)
    contract = enc.contract(bands=bands, chip_size=8, stride=8, gsd=28.5, band_sources="chips.npz")
    assert contract == {
        "name": "presto",
        "version": "1",
        "framework": "pytorch",
        "weights_sha256": sha,
        "weights_href": "https://github.com/nasaharvest/presto/raw/main/data/default_model.pt",
        "architecture": "Presto (pretrained, nasaharvest)",
        "pooling": "mean over valid pixels",
        "parameters": {"band_map": LANDSAT7_BAND_MAP, "month": 6, "latlon": list(NC_LATLON), "input_scale": 1.0},
        "input": {
            "bands": [{"name": b, "source": "chips.npz"} for b in bands],
            "chip_size_px": 8,
            "stride_px": 8,
            "gsd_m": 28.5,
            "normalization": {"method": "custom", "description": "Presto fixed shift/divisor per channel group"},
        },
        "output": {"dim": 128, "description": enc.description},
    }
    assert json.loads(json.dumps(contract)) == contract
    with pytest.raises(EncoderError, match="band_map order"):
        enc.contract(bands=bands[::-1], chip_size=8, stride=8, gsd=28.5)


def test_options_are_checked(weights):
    w = str(weights)
    with pytest.raises(EncoderError, match="month=0"):
        PrestoEncoder(weights=w, month=0)
    with pytest.raises(EncoderError, match="not a Presto channel"):
        PrestoEncoder(weights=w, band_map={"red": "B04"})
    with pytest.raises(EncoderError, match="both"):
        PrestoEncoder(weights=w, band_map={"a": "B4", "b": "B4"})
    with pytest.raises(EncoderError, match="completes no Presto channel group"):
        PrestoEncoder(weights=w, band_map={"swir1": "B11"})  # SWIR needs B11 and B12
    with pytest.raises(EncoderError, match="latlon"):
        PrestoEncoder(weights=w, latlon=(95, 0))
    with pytest.raises(EncoderError, match="does not take options"):
        get_encoder("presto", weights=w, band_names=3)
    with pytest.raises(EncoderError, match="either band_map or bands"):
        PrestoEncoder(weights=w, band_map=LANDSAT7_BAND_MAP, bands=["B1"])
    with pytest.raises(EncoderError, match="bands='B1'"):
        PrestoEncoder(weights=w, bands="B1")
    with pytest.raises(EncoderError, match="sensor='spot' is not one of"):
        PrestoEncoder(weights=w, bands=["B1"], sensor="spot")
    enc = PrestoEncoder(weights=w, band_map={"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11", "B7": None})
    # B11 alone cannot fill the SWIR group, so B5 is masked with B7; NDVI comes from B8 and B4
    assert enc.unused_bands == ["B5", "B7"]
    assert enc.groups_used == ["S2_RGB", "S2_NIR_10m", "NDVI"]
    with pytest.raises(EncoderError, match="chips have 5 bands"):
        enc.encode(np.zeros((1, 5, 4, 4), np.float32))


def test_bands_of_a_sensor_map_through_the_band_alias_table(weights):
    w = str(weights)
    landsat = PrestoEncoder(weights=w, bands=["B1", "B2", "B3", "B4", "B5"], sensor="landsat7", latlon=NC_LATLON,
                            input_scale=DN_SCALE)
    assert landsat.band_map == {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}
    explicit = PrestoEncoder(weights=w, band_map=landsat.band_map, latlon=NC_LATLON, input_scale=DN_SCALE)
    pixels, valid = _chips(bands=5)
    np.testing.assert_array_equal(landsat.encode(pixels, valid), explicit.encode(pixels, valid))
    # BigEarthNet's S1 + S2 names: B01 and B09 reach no Presto channel and are left out
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "VV", "VH"]
    s1s2 = PrestoEncoder(weights=w, bands=names)
    assert [b for b, c in s1s2.band_map.items() if c is None] == ["B01", "B09"]
    assert s1s2.band_map["B8A"] == "B8A" and s1s2.band_map["VV"] == "VV"
    assert s1s2.unused_bands == ["B01", "B09"] and "S1" in s1s2.groups_used and "S2_SWIR" in s1s2.groups_used


# behaviour ----------------------------------------------------------------------------------------


def test_shape_finite_and_deterministic(weights):
    enc = PrestoEncoder(weights=str(weights), band_map=LANDSAT7_BAND_MAP, latlon=NC_LATLON, input_scale=DN_SCALE)
    pixels, valid = _chips()
    a = enc.encode(pixels, valid)
    b = enc.encode(pixels.copy(), valid.copy())
    assert a.shape == (5, 128) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # bitwise
    assert (a[1] == 0).all() and (np.abs(a[[0, 2, 3, 4]]).sum(axis=1) > 0).all()
    assert enc.encode(pixels[:0], valid[:0]).shape == (0, 128)
    # a chip's vector is the mean of its valid pixels' vectors
    i, j = np.argwhere(valid[0])[0]
    one = enc.encode(pixels[:1, :, i : i + 1, j : j + 1])
    only = valid[:1].copy()
    only[:] = False
    only[0, i, j] = True
    np.testing.assert_allclose(enc.encode(pixels[:1], only), one, rtol=1e-5, atol=1e-6)
    pix = np.moveaxis(pixels[0], 0, -1)[valid[0]][:, :, None, None]  # every valid pixel as a 1x1 chip
    np.testing.assert_allclose(a[0], enc.encode(pix).mean(axis=0), rtol=1e-4, atol=1e-5)


def test_masked_channels_do_not_change_the_output(net):
    model, _ = net
    rng = np.random.default_rng(1)
    b, t = 6, 3
    x = torch.from_numpy(normalize(rng.uniform(0, 3000, size=(b, t, 17)).astype(np.float32)))
    mask = torch.zeros(b, t, 17, dtype=torch.bool)
    mask[:, :, [0, 1, 12, 13]] = True  # no S1, no ERA5
    mask[0, :, 5] = True  # one channel of the red-edge group masks the whole group
    mask[2, 1, 8] = True  # one timestep of NIR
    dw = torch.full((b, t), DW_MISSING)
    dw[3] = torch.tensor([0, 4, DW_MISSING])
    latlons = torch.tensor([[35.78, -78.64]]).expand(b, 2)
    with torch.inference_mode():
        ref = model(x, mask, dw, latlons, month=4)
        noisy = x.clone()
        noisy[mask] = torch.from_numpy(rng.normal(0, 100, size=int(mask.sum())).astype(np.float32))
        assert torch.equal(model(noisy, mask, dw, latlons, month=4), ref)
        changed = x.clone()
        changed[0, 0, 2] += 0.5  # an unmasked channel: the output moves
        assert not torch.equal(model(changed, mask, dw, latlons, month=4)[0], ref[0])
        # rows with different masks (attention-masked batch) == each row on its own (tokens dropped)
        for i in range(b):
            alone = model(x[i : i + 1], mask[i : i + 1], dw[i : i + 1], latlons[i : i + 1], month=4)
            torch.testing.assert_close(alone, ref[i : i + 1], rtol=1e-4, atol=1e-5)


def test_unused_bands_and_invalid_pixels_do_not_matter(weights):
    band_map = {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11", "B7": None}
    enc = PrestoEncoder(weights=str(weights), band_map=band_map)
    pixels, valid = _chips(seed=2)
    ref = enc.encode(pixels, valid)
    other = pixels.copy()
    other[:, 4:] = np.random.default_rng(3).uniform(0, 255, size=other[:, 4:].shape)  # B5 (SWIR incomplete), B7
    other[~np.broadcast_to(valid[:, None], other.shape)] = np.nan  # invalid pixels
    np.testing.assert_array_equal(enc.encode(other, valid), ref)
    with_swir = PrestoEncoder(weights=str(weights), band_map=LANDSAT7_BAND_MAP)
    assert "S2_SWIR" in with_swir.groups_used and not with_swir.unused_bands
    assert not np.allclose(with_swir.encode(pixels, valid), ref)


# few-shot evidence ---------------------------------------------------------------------------------


def test_fewshot_nearest_centroid_beats_chance(weights, shared_data):
    data = np.load(shared_data / CHIPS)
    x, y = data["X"].astype(np.float32), data["y"]
    assert [str(b) for b in data["bands"]] == list(LANDSAT7_BAND_MAP)
    classes = [c for c in np.unique(y) if (y == c).sum() >= 20]
    assert len(classes) == 5  # developed, herbaceous, shrubland, forest, water (agriculture has 7)
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    enc = PrestoEncoder(weights=str(weights), band_map=LANDSAT7_BAND_MAP, latlon=NC_LATLON, input_scale=DN_SCALE)
    features = enc.encode(x)
    report = eoembed.fewshot(features, y, shots=(1, 5, 10), method="prototype", episodes=100, seed=0, standardize=False)
    acc = {r.shots: r.accuracy for r in report.results}
    print(f"presto nearest-centroid 5-way 1/5/10-shot: {acc[1]:.3f}/{acc[5]:.3f}/{acc[10]:.3f} (MANIFEST .44/.51/.54)")
    assert acc[5] > 0.2 + 0.15  # chance is 1/5
    assert acc[1] > 0.3 and acc[10] >= acc[1]


def test_groups_cover_every_channel_once():
    idx = sorted(i for _, group in CHANNEL_GROUPS for i in group)
    assert idx == list(range(len(PRESTO_CHANNELS)))
    assert isinstance(presto_module.PrestoNet(), PrestoNet)


# parity with the authors' model code ----------------------------------------------------------------

#: modules the authors' Earth Engine export pipelines import at their top; the model code needs none of
#: them, only the band groups and the Dynamic World class count defined beside those pipelines
_PIPELINE_ONLY = ("ee", "xarray", "google", "google.cloud", "openmapflow", "openmapflow.ee_exporter",
                  "openmapflow.engineer")


class _Placeholder:
    """What a pipeline-only name stands for in annotations and class bodies: any attribute, call or
    subscript of it is itself. The model never uses one."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __getitem__(self, key):
        return self

    def __mro_entries__(self, bases):  # used as a base class
        return (object,)


class _Inert(types.ModuleType):
    """A stand-in for a pipeline-only module: every name in it is a :class:`_Placeholder`."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is missing, or one of the stand-ins
        return False


@pytest.fixture(scope="module")
def authors_encoder(weights):
    """The Presto encoder of the ``geoml-presto`` package (``presto/presto.py``, its model module) holding
    ``default_model.pt``. The package's ``__init__`` imports its Earth Engine pipelines; the model
    module is imported on its own (its package folders as namespaces) and sys.modules is restored."""
    spec = importlib.util.find_spec("presto")
    assert spec is not None and spec.submodule_search_locations, (
        "geoml-presto is not installed: `make setup` installs it (pip install --no-deps geoml-presto==0.0.3)"
    )
    root = Path(list(spec.submodule_search_locations)[0])
    before = set(sys.modules)
    try:
        for name, folder in (("presto", root), ("presto.dataops", root / "dataops"),
                             ("presto.dataops.pipelines", root / "dataops" / "pipelines")):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
        for name in _PIPELINE_ONLY:
            if name not in sys.modules and not _importable(name):
                sys.modules[name] = _Inert(name)
        authors = importlib.import_module("presto.presto")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
    authors.device = torch.device("cpu")  # its module-level default is the first GPU when there is one
    model = authors.Presto.construct()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.encoder.eval()


def _generated_batch(rng: np.random.Generator, batch: int, steps: int, *, month_as_int: bool):
    raw = np.concatenate([
        rng.uniform(-30, 0, (batch, steps, 2)),  # S1 dB
        rng.uniform(0, 8000, (batch, steps, 10)),  # S2 reflectance x 10 000
        rng.uniform(250, 310, (batch, steps, 1)), rng.uniform(0, 0.1, (batch, steps, 1)),  # ERA5
        rng.uniform(0, 3000, (batch, steps, 1)), rng.uniform(0, 40, (batch, steps, 1)),  # SRTM
        np.zeros((batch, steps, 1)),  # NDVI, computed by normalize
    ], axis=-1).astype(np.float32)
    x = torch.from_numpy(normalize(raw))
    mask = torch.from_numpy(rng.random((batch, steps, len(PRESTO_CHANNELS))) < 0.15)  # partial groups too
    mask[0] = False  # one series with everything seen
    mask[1, :, :12] = True  # one with no S1 / S2 at all
    dw = torch.from_numpy(rng.integers(0, DW_MISSING + 1, (batch, steps)))
    dw[2] = DW_MISSING
    latlons = torch.from_numpy(np.stack([rng.uniform(-80, 80, batch), rng.uniform(-180, 180, batch)], 1).astype(np.float32))
    month = int(rng.integers(0, 12)) if month_as_int else torch.from_numpy(rng.integers(0, 12, batch))
    return x, mask, dw, latlons, month


@pytest.mark.parametrize(("batch", "steps", "month_as_int"), [(16, 1, True), (8, 3, False), (6, 12, False), (4, 24, True)])
def test_parity_with_the_authors_model_code(net, authors_encoder, batch, steps, month_as_int):
    model, _ = net
    rng = np.random.default_rng(batch * 100 + steps)
    for _ in range(3):  # several batches
        x, mask, dw, latlons, month = _generated_batch(rng, batch, steps, month_as_int=month_as_int)
        with torch.inference_mode():
            ours = model(x, mask, dw, latlons, month)
            theirs = authors_encoder(x, dynamic_world=dw, latlons=latlons, mask=mask.float(), month=month, eval_task=True)
        assert torch.isfinite(ours).all()
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-5)
        assert not np.allclose(ours[0].numpy(), ours[1].numpy(), atol=1e-3)  # the inputs matter
