"""eoembed.producers.encoders.checkpoint: a compressor trained by `eoembed train` as the producer's encoder."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed._errors import CheckpointError, EncoderError
from eoembed.producers.compressor import load_checkpoint
from eoembed.producers.encoders import get_encoder
from eoembed.producers.encoders.checkpoint import CheckpointEncoder
from tests.producers.training import BIN, settings, train, write_config

YEAR = "2000-01-01T00:00:00Z/2000-12-31T23:59:59Z"
pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def nc_scene(shared_data) -> str:
    return str(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif")


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory, nc_scene) -> Path:
    root = tmp_path_factory.mktemp("train1")
    run = train(1, write_config(root / "train.toml", settings(nc_scene, root / "run")))
    assert run.returncode == 0, run.stderr
    return root / "run"


def test_the_registry_names_it_by_prefix(one_rank_run):
    assert isinstance(get_encoder(f"checkpoint:{one_rank_run / 'encoder.pt'}"), CheckpointEncoder)


def test_the_trained_encoder_produces_a_valid_product(tmp_path, one_rank_run, nc_scene):
    encoder = one_rank_run / "encoder.pt"
    out = tmp_path / "p"
    command = [str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "produce", nc_scene, "--out", str(out),
               "--chip-size", "8", "--encoder", f"checkpoint:{encoder}", "--datetime", YEAR, "--no-progress",
               "--unit-chips", "1000", "--quantization", "int8-per-row"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = eoembed.validate(out)
    assert report.findings == [], str(report)
    product = eoembed.open(out)
    model = product.metadata["model"]
    assert model["weights_sha256"] == hashlib.sha256(encoder.read_bytes()).hexdigest()
    assert [b["name"] for b in model["input"]["bands"]] == ["B1", "B2", "B3", "B4", "B5"]
    assert model["input"]["chip_size_px"] == 8 and model["output"]["dim"] == 16
    saved = load_checkpoint(encoder)["input"]["normalization"]
    assert model["input"]["normalization"] == {"method": "standardize", "mean": saved["mean"], "std": saved["std"]}
    item = json.loads(next((out / "models").glob("*.json")).read_text())
    assert item["assets"]["model"]["file:checksum"] == "1220" + model["weights_sha256"]
    # A copy inside the product, never the file:// URI of the machine that trained it.
    assert model["weights_href"].startswith("models/") and model["weights_href"].endswith(".weights.pt")
    assert item["assets"]["model"]["href"] == "../" + model["weights_href"]
    assert product.model_weights == out / model["weights_href"]
    assert product.model_weights.read_bytes() == encoder.read_bytes()
    assert "mlm:weights" in item["assets"]["model"]["roles"]
    assert item["properties"]["mlm:input"][0]["input"]["shape"] == [-1, 5, 8, 8]
    assert product.num_rows == 2860 and product.to_numpy().shape == (2860, 16)


def test_the_checkpoint_encoder_refuses_other_chips(one_rank_run, nc_scene):
    encoder = get_encoder(f"checkpoint:{one_rank_run / 'encoder.pt'}")
    with pytest.raises(EncoderError, match="--chip-size 8"):
        encoder.encode(np.zeros((2, 5, 16, 16), np.float32))
    with pytest.raises(EncoderError, match="--bands B1,B2,B3,B4,B5"):
        encoder.contract(bands=["red", "green", "blue", "nir", "swir"], chip_size=8, stride=8, gsd=28.5)
    with pytest.raises(CheckpointError, match="does not exist"):
        get_encoder(f"checkpoint:{one_rank_run / 'missing.pt'}")
    with pytest.raises(CheckpointError, match="not an eoembed checkpoint|cannot be read"):
        get_encoder(f"checkpoint:{one_rank_run / 'summary.json'}")
