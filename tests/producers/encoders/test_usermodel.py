"""Users' own models (TorchScript or module:callable) as encoders, end to end under MPI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import eoembed
from eoembed._errors import EncoderError
from eoembed.producers.encoders import get_encoder
from tests.producers.toy_models import build

BIN = Path(sys.executable).parent
CONTRACT = {"name": "toy", "version": "3", "dim": 12, "architecture": "1x1 conv", "pooling": "mean",
            "normalization": {"method": "standardize", "mean": [80.0] * 5, "std": [30.0] * 5}}


@pytest.fixture()
def scripted(tmp_path) -> Path:
    path = tmp_path / "toy.pt"
    # Users bring TorchScript files made with older torch; making one here is deprecated in torch 2.13.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
        torch.jit.script(build()).save(str(path))
    (tmp_path / "contract.json").write_text(json.dumps(CONTRACT))
    return path


def test_torchscript_and_module_encoders_agree(scripted):
    chips = np.random.default_rng(0).uniform(0, 255, size=(7, 5, 8, 8)).astype(np.float32)
    a = get_encoder(f"torchscript:{scripted}", contract=CONTRACT)
    b = get_encoder("module:tests.producers.toy_models:build", contract=scripted.parent / "contract.json")
    np.testing.assert_allclose(a.encode(chips), b.encode(chips), rtol=1e-6)
    x = torch.from_numpy((chips - 80.0) / 30.0)
    np.testing.assert_allclose(a.encode(chips), build()(x).mean(dim=(2, 3)).detach().numpy(), rtol=1e-5)
    contract = a.contract(bands=[f"B{i}" for i in range(1, 6)], chip_size=8, stride=8, gsd=28.5)
    assert contract["weights_sha256"] == hashlib.sha256(scripted.read_bytes()).hexdigest()
    assert contract["input"]["normalization"] == CONTRACT["normalization"] and contract["output"]["dim"] == 12
    assert b.contract(bands=["B1"] * 5, chip_size=8, stride=8, gsd=28.5)["weights_sha256"] != contract["weights_sha256"]


def test_torch_export_programs_load_too(tmp_path):
    chips = np.random.default_rng(1).uniform(0, 255, size=(4, 5, 8, 8)).astype(np.float32)
    path = tmp_path / "toy.pt2"
    torch.export.save(torch.export.export(build(), (torch.zeros(2, 5, 8, 8),), dynamic_shapes=({0: torch.export.Dim("n")},)), str(path))
    encoder = get_encoder(f"torchscript:{path}", contract=CONTRACT)
    expected = build()(torch.from_numpy((chips - 80.0) / 30.0)).mean(dim=(2, 3)).detach().numpy()
    np.testing.assert_allclose(encoder.encode(chips), expected, rtol=1e-5)


def test_bad_user_models_are_named(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        get_encoder(f"torchscript:{tmp_path / 'nope.pt'}", contract=CONTRACT)
    with pytest.raises(EncoderError, match="lacks 'dim'"):
        get_encoder("module:tests.producers.toy_models:build", contract={"name": "x", "version": "1"})
    with pytest.raises(EncoderError, match="cannot load"):
        get_encoder("module:tests.producers.toy_models:missing", contract=CONTRACT)


@pytest.mark.mpi
def test_a_torchscript_model_produces_a_valid_product_on_two_ranks(tmp_path, scripted, shared_data):
    scene = shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
    out = tmp_path / "p"
    run = subprocess.run([str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "produce", str(scene), "--out", str(out),
                          "--encoder", f"torchscript:{scripted}", "--encoder-option", f"contract={scripted.parent / 'contract.json'}",
                          "--chip-size", "16", "--datetime", "2000-01-01T00:00:00Z/2000-12-31T23:59:59Z", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    product = eoembed.open(out)
    assert product.model["name"] == "toy" and product.model["weights_sha256"] == hashlib.sha256(scripted.read_bytes()).hexdigest()
    assert eoembed.validate(out).findings == []
    model_item = json.loads(next((out / "models").glob("*.json")).read_text())
    assert model_item["assets"]["model"]["file:checksum"] == "1220" + product.model["weights_sha256"]
