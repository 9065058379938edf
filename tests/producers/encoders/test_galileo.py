"""eoembed.producers.encoders.galileo: the pretrained Galileo nano encoder, pinned to the authors' outputs.

``weights/galileo-nano/parity.npz`` holds inputs made from real BigEarthNet S1+S2 pixels and the
outputs of the authors' own ``single_file_galileo.py`` on them (its README gives the exact call).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import eoembed
from eoembed._errors import EncoderError
from eoembed.producers.encoders import get_encoder, list_encoders
from eoembed.producers.encoders.galileo import (
    DIV,
    SHIFT,
    SPACE_TIME_CHANNELS,
    SPACE_TIME_GROUPS,
    GalileoEncoder,
    GalileoNet,
    load_galileo,
    month_table,
    ndvi,
    normalize,
    sincos,
)
from eoembed.producers.stack import bigearthnet_s2_stack, find_s1_for_s2, read_stack_window
from tests.conftest import _require

FOLDER = "weights/galileo-nano"
BEN = "imagery/bigearthnet/examples"
#: the README's figure: 106 tensors, 1,037,856 parameters
NUMEL = 1_037_856
TOLERANCE = 1e-4  # the README's suggestion for a float32 port; the reference itself moves by <= 3.4e-6
FORWARD = ("s_t_x", "sp_x", "t_x", "st_x", "s_t_m", "sp_m", "t_m", "st_m", "months")
S1S2 = SPACE_TIME_CHANNELS[:-1]  # the 12 channels a product can give; NDVI is computed


@pytest.fixture(scope="module")
def folder(shared_data) -> Path:
    return _require(shared_data / FOLDER / "encoder.pt").parent


@pytest.fixture(scope="module")
def weights(folder) -> Path:
    return folder / "encoder.pt"


@pytest.fixture(scope="module")
def net(weights) -> GalileoNet:
    return load_galileo(weights)


@pytest.fixture(scope="module")
def parity(folder) -> dict[str, np.ndarray]:
    with np.load(folder / "parity.npz") as data:
        return {k: data[k] for k in data.files}


def _tensors(arrays: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in FORWARD]


# loading ------------------------------------------------------------------------------------------


def test_checked_load_of_the_real_weights(weights, net, tmp_path):
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    assert len(raw) == 106 and net.num_parameters == NUMEL
    for key, value in raw.items():
        assert torch.equal(net.params[key], value), key
    # the fixed encodings we compute are exactly the stored ones
    assert torch.equal(sincos(torch.arange(24), 32), raw["pos_embed"])
    assert torch.equal(month_table(32), raw["month_embed.weight"])
    (tmp_path / "config.json").write_text((weights.parent / "config.json").read_text())
    broken = dict(raw)
    del broken["blocks.3.mlp.fc2.bias"]
    broken["space_time_embed.S1.proj.weight"] = torch.zeros(128, 2, 4, 4)
    torch.save(broken, tmp_path / "encoder.pt")
    with pytest.raises(EncoderError, match=r"missing: blocks\.3\.mlp\.fc2\.bias; wrong shape: space_time_embed\.S1"):
        load_galileo(tmp_path / "encoder.pt")
    with pytest.raises(EncoderError, match="not found"):
        load_galileo(tmp_path / "absent.pt")
    (tmp_path / "config.json").unlink()
    with pytest.raises(EncoderError, match="no config.json beside"):
        load_galileo(tmp_path / "encoder.pt")


def test_normalization_constants_are_the_published_ones(parity):
    np.testing.assert_array_equal(SHIFT, parity["norm_shift"])
    np.testing.assert_array_equal(DIV, parity["norm_div"])
    np.testing.assert_array_equal(normalize(parity["s_t_x_raw"]), parity["s_t_x"])
    raw = parity["s_t_x_raw"]
    red, nir = raw[..., SPACE_TIME_CHANNELS.index("B4")], raw[..., SPACE_TIME_CHANNELS.index("B8")]
    np.testing.assert_allclose(ndvi(red, nir), raw[..., -1], rtol=0, atol=1e-6)


# parity with the authors' outputs ------------------------------------------------------------------


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_parity_with_the_reference_outputs(net, parity, patch_size):
    inputs = _tensors(parity)
    with torch.inference_mode():
        tokens = net(*inputs, patch_size=patch_size)
        pooled = net.pooled(*inputs, patch_size=patch_size)
    reference = parity[f"embedding_p{patch_size}"]
    np.testing.assert_allclose(GalileoNet.average_tokens(tokens).numpy(), reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(pooled.numpy(), reference, rtol=0, atol=TOLERANCE)
    side = 4 // patch_size
    assert tokens.s_t_x.shape == (4, side, side, 3, 7, 128) and tokens.st_x.shape == (4, 4, 128)
    if f"tokens_s_t_p{patch_size}" in parity:
        np.testing.assert_allclose(tokens.s_t_x.numpy(), parity[f"tokens_s_t_p{patch_size}"], rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(tokens.s_t_m.numpy(), parity[f"tokens_s_t_mask_p{patch_size}"])
    if patch_size == 2:
        for kind in ("sp", "t", "st"):
            np.testing.assert_allclose(getattr(tokens, f"{kind}_x").numpy(), parity[f"tokens_{kind}_p2"], rtol=0,
                                       atol=TOLERANCE)


def test_masked_inputs_do_not_matter(net, parity):
    inputs = dict(parity)
    noisy = parity["s_t_x"].copy()
    hidden = np.repeat(parity["s_t_m"], [len(c) for _, c in SPACE_TIME_GROUPS], axis=-1) >= 1
    noisy[hidden] = np.random.default_rng(0).normal(0, 5, size=int(hidden.sum()))
    inputs["s_t_x"] = noisy
    inputs["sp_x"] = np.random.default_rng(1).normal(0, 5, size=parity["sp_x"].shape).astype(np.float32)
    with torch.inference_mode():
        ref = net.pooled(*_tensors(parity), patch_size=2)
        np.testing.assert_allclose(net.pooled(*_tensors(inputs), patch_size=2), ref, rtol=0, atol=1e-6)
        inputs["s_t_x"] = noisy + np.float32(0.5) * ~hidden  # a seen value moves the output
        assert not np.allclose(net.pooled(*_tensors(inputs), patch_size=2), ref, atol=1e-3)


# the encoder: product bands and seasons ----------------------------------------------------------


def _season_bands(labels: list[str], absent: dict[int, set[str]] | None = None) -> list[str]:
    """``BAND@LABEL`` names of the 12 S1/S2 channels per season, product spelling (B02, B08, ...)."""
    spelled = {c: (f"B{int(c[1:]):02d}" if c[1:].isdigit() else c) for c in S1S2}
    return [f"{spelled[c]}@{label}" for t, label in enumerate(labels) for c in S1S2 if c not in (absent or {}).get(t, ())]


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_encoder_on_season_chips_gives_the_reference_embeddings(weights, parity, patch_size):
    """Samples 0 and 1 of the fixture as a product holds them (bands named BAND@DATE, raw values,
    sample 1 without S2 in its third season) reproduce the authors' pooled embeddings."""
    raw = parity["s_t_x_raw"]
    for sample, absent in ((0, {}), (1, {2: set(S1S2) - {"VV", "VH"}})):
        months = parity["months"][sample] + 1
        year = [2017, 2018, 2018] if sample == 1 else [2017] * 3
        labels = [f"{y}-{m:02d}-15" for y, m in zip(year, months)]
        bands = _season_bands(labels, absent)
        chips = np.concatenate([
            np.moveaxis(raw[sample][:, :, t][..., [S1S2.index(c) for c in S1S2 if c not in absent.get(t, ())]], -1, 0)
            for t in range(3)
        ])[None]  # (1, bands, 4, 4)
        enc = GalileoEncoder(weights=str(weights), bands=bands, patch_size=patch_size)
        assert [m + 1 for m in enc.months] == list(months)
        np.testing.assert_allclose(enc.encode(chips)[0], parity[f"embedding_p{patch_size}"][sample], rtol=0,
                                   atol=TOLERANCE)


def test_band_layout_times_and_options(weights):
    w = str(weights)
    assert "galileo" in {e["name"] for e in list_encoders()}
    bands = ["B01@2020-01-10", "B02@2020-01-10", "B03@2020-01-10", "B04@2020-01-10", "B08@2020-01-10",
             "VV@2020-07-02", "VH@2020-07-02", "B11@2020-07-02"]
    enc = get_encoder("galileo", weights=w, bands=bands)
    assert enc.labels == ["2020-01-10", "2020-07-02"] and list(enc.months) == [0, 6]
    assert enc.groups_used == [["S2_RGB", "S2_NIR_10m", "NDVI"], ["S1"]]
    assert enc.unused_bands == ["B01@2020-01-10", "B11@2020-07-02"]  # B11 alone cannot fill the SWIR group
    assert list(get_encoder("galileo", weights=w, bands=bands, times=["2020-03-01", "2020-12-31"]).months) == [2, 11]
    plain = get_encoder("galileo", weights=w, times=["2019-05-04T10:00:00Z"])
    assert plain.bands == list(S1S2) and list(plain.months) == [4] and plain.unused_bands == []
    with pytest.raises(EncoderError, match="carry no date; pass times"):
        GalileoEncoder(weights=w, bands=["B02", "B03", "B04"])
    with pytest.raises(EncoderError, match="one acquisition date per timestep"):
        GalileoEncoder(weights=w, bands=bands, times=["2020-01-01"])
    with pytest.raises(EncoderError, match="not an ISO 8601 date"):
        GalileoEncoder(weights=w, bands=["B02@winter", "B03@winter", "B04@winter"])
    with pytest.raises(EncoderError, match="both give B4"):
        GalileoEncoder(weights=w, bands=["B04@2020-01-01", "B4@2020-01-01"])
    with pytest.raises(EncoderError, match="mix plain names"):
        GalileoEncoder(weights=w, bands=["B02", "B03@2020-01-01"])
    with pytest.raises(EncoderError, match="complete no channel group"):
        GalileoEncoder(weights=w, bands=["B01", "B11"], times=["2020-01-01"])
    with pytest.raises(EncoderError, match="patch_size=9"):
        GalileoEncoder(weights=w, times=["2020-01-01"], patch_size=9)
    with pytest.raises(EncoderError, match="does not take options"):
        get_encoder("galileo", weights=w, band_map={})
    with pytest.raises(EncoderError, match="multiple of patch_size=4"):
        plain.encode(np.zeros((1, 12, 6, 6), np.float32))
    with pytest.raises(EncoderError, match="chips have 5 bands"):
        plain.encode(np.zeros((1, 5, 8, 8), np.float32))


def test_invalid_pixels_mask_their_patches(weights, parity):
    enc = GalileoEncoder(weights=str(weights), bands=_season_bands(["2017-06-13"]), patch_size=2)
    chips = np.moveaxis(parity["s_t_x_raw"][:, :, :, 0, :12], -1, 1).copy()  # (4, 12, 4, 4), one season
    valid = np.ones((4, 4, 4), dtype=bool)
    ref = enc.encode(chips, valid)
    assert ref.shape == (4, 128) and np.isfinite(ref).all()
    # an invalid pixel hides its whole 2x2 patch: whatever its values, or its patch partners', the vector stays
    valid[0, 0, 0] = False
    hidden = enc.encode(chips, valid)
    changed = chips.copy()
    changed[0, :, 0, 0] = np.nan
    changed[0, :, 1, 1] += 1000.0
    np.testing.assert_array_equal(enc.encode(changed, valid), hidden)
    assert not np.allclose(hidden[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(hidden[1:], ref[1:], rtol=0, atol=1e-6)  # the other chips keep theirs
    # a NaN in one S1 pixel masks only the S1 token of its patch: the same as a product without S1 there
    s1 = chips.copy()
    s1[2, 0, 3, 3] = np.nan
    assert np.isfinite(enc.encode(s1)).all() and not np.allclose(enc.encode(s1)[2], ref[2], atol=1e-4)
    # no valid pixel: zeros
    assert (enc.encode(chips, np.zeros((4, 4, 4), dtype=bool)) == 0).all()
    assert enc.encode(chips[:0]).shape == (0, 128)


# the producer on real imagery ----------------------------------------------------------------------


def _write_tif(path: Path, stack, names: list[str], when: str) -> Path:
    """The stack's bands on its 10 m grid as one GeoTIFF, bands described by name, dated ``when``."""
    pixels, _ = read_stack_window(stack, col_off=0, row_off=0, width=stack.width, height=stack.height)
    index = [stack.band_names.index(n) for n in names]
    profile = {"driver": "GTiff", "width": stack.width, "height": stack.height, "count": len(names),
               "dtype": "float32", "crs": stack.crs, "transform": stack.transform}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels[index].astype(np.float32))
        dst.descriptions = tuple(names)
        dst.update_tags(TIFFTAG_DATETIME=when)
    return path


@pytest.fixture(scope="module")
def season_files(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """A real two-date stack of one place: the S2 L2A patch of 2017-09-24 and its S1 patch of the next day."""
    s2 = shared_data / BEN / "BigEarthNet-S2-Example" / "S2B_MSIL2A_20170924T93020_69_24"
    s1 = find_s1_for_s2(s2, shared_data / BEN / "BigEarthNet-S1-Example")
    stack = bigearthnet_s2_stack(s2, with_s1=s1)
    folder = tmp_path_factory.mktemp("seasons")
    s2_names = [b for b in stack.band_names if b not in ("VV", "VH")]
    return (_write_tif(folder / "s2.tif", stack, s2_names, "2017:09:24 09:30:20"),
            _write_tif(folder / "s1.tif", stack, ["VV", "VH"], "2017:09:25 04:32:56"))


@pytest.mark.mpi
def test_producer_on_a_real_s1_s2_stack(tmp_path, weights, net, season_files):
    s2, s1 = season_files
    with rasterio.open(s2) as a, rasterio.open(s1) as b:
        names = [f"{n}@2017-09-24" for n in a.descriptions] + [f"{n}@2017-09-25" for n in b.descriptions]
        s2_pixels, s1_pixels = a.read(), b.read()
    out = tmp_path / "p"
    command = [str(Path(sys.executable).parent / "mpirun"), "-n", "2", str(Path(sys.executable).parent / "eoembed"),
               "produce", "--no-progress", "--stack", f"{s2},{s1}", "--out", str(out), "--chip-size", "8",
               "--encoder", "galileo", "--encoder-option", f"weights={weights}",
               "--encoder-option", f"bands={json.dumps(names)}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    check = subprocess.run([str(Path(sys.executable).parent / "eoembed"), "validate", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    product = eoembed.open(out)
    assert product.dim == 128 and product.num_rows == 225
    # the model card names the weights' checksum and the band order
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = product.model
    assert model["weights_sha256"] == sha and [b["name"] for b in model["input"]["bands"]] == names
    assert model["parameters"]["bands"] == names and model["parameters"]["months"] == [9, 9]
    assert model["parameters"]["channel_order"] == list(SPACE_TIME_CHANNELS)
    item = json.loads((out / "models" / "galileo-1.json").read_text())
    assert item["assets"]["model"]["file:checksum"] == "1220" + sha
    assert [b["name"] for b in item["properties"]["bands"]] == names
    # one chip, by hand: S2 (and NDVI) seen on the first date, S1 on the second, straight into the model
    row = product.sql("SELECT pixel_bbox, embedding FROM embeddings ORDER BY chip_id LIMIT 1 OFFSET 100").to_pylist()[0]
    c0, r0, c1, r1 = row["pixel_bbox"]
    s2_chip = s2_pixels[:, r0:r1, c0:c1]
    s1_chip = s1_pixels[:, r0:r1, c0:c1]
    s_t = np.zeros((1, 8, 8, 2, 13), np.float32)
    for i, name in enumerate(names[:12]):
        channel = name.split("@")[0].replace("B0", "B")
        if channel in SPACE_TIME_CHANNELS:
            s_t[0, :, :, 0, SPACE_TIME_CHANNELS.index(channel)] = s2_chip[i]
    s_t[0, :, :, 0, 12] = ndvi(s2_chip[names.index("B04@2017-09-24")], s2_chip[names.index("B08@2017-09-24")])
    s_t[0, :, :, 1, :2] = np.moveaxis(s1_chip, 0, -1)
    mask = np.ones((1, 8, 8, 2, 7), np.float32)
    mask[..., 0, 1:] = 0  # S2 groups and NDVI on 2017-09-24
    mask[..., 1, 0] = 0  # S1 on 2017-09-25
    direct = {"s_t_x": normalize(s_t), "sp_x": np.zeros((1, 8, 8, 16), np.float32), "t_x": np.zeros((1, 2, 6), np.float32),
              "st_x": np.zeros((1, 18), np.float32), "s_t_m": mask, "sp_m": np.ones((1, 8, 8, 3), np.float32),
              "t_m": np.ones((1, 2, 3), np.float32), "st_m": np.ones((1, 4), np.float32),
              "months": np.array([[8, 8]])}
    with torch.inference_mode():
        expected = GalileoNet.average_tokens(net(*_tensors(direct), patch_size=4))[0].numpy()
    np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected, rtol=0, atol=1e-5)


def test_landsat7_bands_feed_their_sentinel2_equivalents(weights, shared_data):
    """ETM+ bands 1-5 of the real NC scene (positional names B1..B5, 8-bit DN) reach Galileo as blue,
    green, red, NIR (B2, B3, B4, B8), not as Sentinel-2 B1..B5; input_scale brings the DN to the
    reflectance scale first."""
    with rasterio.open(_require(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif")) as src:
        chips = src.read(window=rasterio.windows.Window(200, 200, 16, 8)).astype(np.float32)
    chips = np.stack([chips[:, :, :8], chips[:, :, 8:]])  # two 8 px chips, (2, 5, 8, 8)
    w, scale, landsat = str(weights), 10000 / 255, ["B1", "B2", "B3", "B4", "B5"]
    enc = GalileoEncoder(weights=w, bands=landsat, sensor="landsat7", input_scale=scale, times=["2000-06-01"], gsd_m=28.5)
    assert enc.groups_used == [["S2_RGB", "S2_NIR_10m", "NDVI"]]
    assert enc.unused_bands == ["B5"]  # SWIR1 alone: the SWIR group wants B12 too
    # the same chips under Sentinel-2 names, scaled by hand, and under common names
    named = GalileoEncoder(weights=w, bands=["B02", "B03", "B04", "B08", "B11"], times=["2000-06-01"], gsd_m=28.5)
    common = GalileoEncoder(weights=w, bands=["blue", "green", "red", "nir", "swir16"], times=["2000-06-01"], gsd_m=28.5)
    out = enc.encode(chips)
    np.testing.assert_allclose(out, named.encode(chips * np.float32(scale)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out, common.encode(chips * np.float32(scale)), rtol=0, atol=1e-5)
    # read as Sentinel-2 band numbers the NIR band would land on red and the vectors differ
    as_s2 = GalileoEncoder(weights=w, bands=landsat, input_scale=scale, times=["2000-06-01"], gsd_m=28.5)
    assert as_s2.groups_used == [["S2_RGB"]] and np.abs(as_s2.encode(chips) - out).max() > 0.1
    card = enc.contract(bands=landsat, chip_size=8, stride=8, gsd=28.5)["parameters"]
    assert card["sensor"] == "landsat7" and card["input_scale"] == pytest.approx(scale)
    assert card["channels"] == {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}
    with pytest.raises(EncoderError, match="sensor='landsat-x' is not one of"):
        GalileoEncoder(weights=w, bands=landsat, sensor="landsat-x", times=["2000-06-01"])
    with pytest.raises(EncoderError, match="input_scale=0"):
        GalileoEncoder(weights=w, bands=landsat, sensor="landsat7", input_scale=0, times=["2000-06-01"])
    with pytest.raises(EncoderError, match="or pass the sensor whose band numbers they are"):
        GalileoEncoder(weights=w, bands=["B6", "B8"], sensor="landsat7", times=["2000-06-01"])
