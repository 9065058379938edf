"""Running `eoembed train` from tests: a small config on the real NC scene, written as TOML, run under mpirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def settings(scene: str, out: Path, **extra) -> dict:
    base = {"inputs": [scene], "out": str(out), "chip_size": 8, "max_chips": 256, "objective": "autoencoder",
            "dim": 16, "widths": [8, 16], "epochs": 3, "batch_size": 32, "lr": 2e-3, "seed": 7}
    return {**base, **extra}


def write_config(path: Path, values: dict) -> Path:
    def toml(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return json.dumps(value)

    path.write_text("".join(f"{key} = {toml(value)}\n" for key, value in values.items()))
    return path


def train(ranks: int, config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "train", "--config", str(config),
               "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
