"""Device choice per rank, and encoders on an accelerator agreeing with the CPU.

The CUDA tests run where a GPU is present (the project's GPU machines); on CPU-only machines they
are skipped for want of hardware, not of a package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eoembed.producers.encoders import get_encoder, select_device
from tests.producers.toy_models import build

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_device_choice(monkeypatch):
    monkeypatch.setenv("EOEMBED_DEVICE", "cpu")
    assert select_device(3) == "cpu"
    monkeypatch.delenv("EOEMBED_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [select_device(r) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(1) == "cpu"


def _chips(n: int = 300, bands: int = 5, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, size=(n, bands, size, size)).astype(np.float32)
    valid = np.ones((n, size, size), dtype=bool)
    valid[::7, :, size // 2 :] = False  # some chips half masked
    return pixels, valid


@CUDA
def test_rcf_on_cuda_matches_cpu():
    pixels, valid = _chips()
    cpu = get_encoder("rcf", features=256, seed=3).fit(pixels[:100], valid[:100])
    gpu = type(cpu).from_state(cpu.state()).to(select_device(0))
    a, b = cpu.encode(pixels, valid), gpu.encode(pixels, valid)
    assert gpu.device.startswith("cuda")
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(gpu.encode(pixels, valid), b)  # deterministic on the device


@CUDA
def test_user_model_on_cuda_matches_cpu():
    pixels, _ = _chips(bands=5)
    contract = {"name": "toy", "version": "1", "dim": 12}
    cpu = get_encoder("module:tests.producers.toy_models:build", contract=contract)
    gpu = get_encoder("module:tests.producers.toy_models:build", contract=contract).to("cuda:0")
    assert next(gpu.model.parameters()).is_cuda
    np.testing.assert_allclose(gpu.encode(pixels), cpu.encode(pixels), rtol=1e-4, atol=1e-3)
    assert build  # the module the encoders load
