"""The example configurations parse into jobs and point at real data; one runs end to end."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

import eoembed
from eoembed.producers.distribute import JobConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


TRAINING = sorted(EXAMPLES.glob("train-*.toml"))


@pytest.mark.parametrize("config", sorted(set(EXAMPLES.glob("*.toml")) - set(TRAINING)), ids=lambda p: p.stem)
def test_example_configs_name_known_keys_and_existing_inputs(config, shared_data):
    settings = tomllib.loads(config.read_text())
    known = {f.name for f in fields(JobConfig)} | {"datetime"}
    assert set(settings) <= known, set(settings) - known
    stacked = [f for stack in settings.get("stacks", []) for f in stack["files"]]
    assert settings.get("inputs") or stacked
    for path in settings.get("inputs", []) + stacked + ([settings["s1_root"]] if "s1_root" in settings else []):
        assert (config.parent / path).exists(), path


def test_nc_example_runs(tmp_path, shared_data):
    run = subprocess.run([str(Path(sys.executable).parent / "eoembed"), "produce", "--config", str(EXAMPLES / "nc-landsat7.toml"),
                          "--out", str(tmp_path / "nc"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    product = eoembed.open(tmp_path / "nc")
    assert product.collection["id"] == "nc-landsat7-2000" and product.quantization.method == "per-row"
    assert eoembed.validate(tmp_path / "nc").ok


def test_slurm_script_uses_srun_and_resume():
    text = (EXAMPLES / "slurm-produce.sbatch").read_text()
    assert "srun" in text and "eoembed produce" in text and "--resume" in text


@pytest.mark.parametrize("config", TRAINING, ids=lambda p: p.stem)
def test_example_training_configs_load_and_point_at_real_imagery(config, shared_data):
    from eoembed.producers.trainconfig import load_config

    loaded = load_config(config)
    assert loaded.inputs and all(Path(path).exists() for path in loaded.inputs)
