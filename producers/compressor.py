"""Learned compressors: the networks ``eoembed train`` fits and their checkpoint files. The producer
uses a trained one through the ``checkpoint:PATH`` encoder (:mod:`.encoders.checkpoint`).

A compressor maps a standardised chip ``(bands, size, size)`` to one vector of ``dim`` values (the
bottleneck). Training adds a head that is dropped afterwards: a decoder back to the pixels (the
autoencoder objectives) or a projection to a bigger teacher's features (distillation).

A ``pca`` checkpoint (the training-free compressor) holds no network: it records its frozen teachers
with their fitted states and the principal components of their features, and runs both to encode.

A checkpoint is a ``torch.save`` dict of plain types and tensors (it loads with
``weights_only=True``): the architecture, the encoder's weights, the input contract (bands,
normalisation, chip size, gsd) and, in the per-epoch checkpoints, the whole training state.

    eoembed produce SCENES... --encoder checkpoint:runs/nc/encoder.pt --chip-size 8 --out out/p
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from eoembed._errors import CheckpointError


CHECKPOINT_FORMAT = "eoembed.checkpoint"
CHECKPOINT_VERSION = 1


def _torch():
    import torch

    return torch


def build_encoder_net(*, bands: int, chip_size: int, dim: int, widths: Sequence[int]):
    """Convolutional encoder: per width a 3x3 convolution and a stride-2 3x3 convolution (GELU after
    each), then a linear layer from the flattened feature map to ``dim``."""
    torch = _torch()
    nn = torch.nn
    layers: list = []
    channels = bands
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
                   nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU()]
        channels = width
    side = chip_size // 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(channels * side * side, dim)]
    return nn.Sequential(*layers)


def build_decoder_net(*, bands: int, chip_size: int, dim: int, widths: Sequence[int]):
    """The encoder mirrored: linear to the smallest feature map, then per width a convolution to four
    times the channels and a pixel shuffle (a plain reshape, so its gradients are deterministic on GPUs)."""
    torch = _torch()
    nn = torch.nn
    side = chip_size // 2 ** len(widths)
    widths = list(widths)[::-1]
    layers: list = [nn.Linear(dim, widths[0] * side * side), nn.Unflatten(1, (widths[0], side, side))]
    for i, width in enumerate(widths):
        out = widths[i + 1] if i + 1 < len(widths) else widths[-1]
        layers += [nn.GELU(), nn.Conv2d(width, out * 4, 3, padding=1), nn.PixelShuffle(2)]
    layers += [nn.GELU(), nn.Conv2d(widths[-1], bands, 3, padding=1)]
    return nn.Sequential(*layers)


def build_training_model(architecture: dict, objective: str, teacher_dim: int | None = None):
    """The encoder plus its training head: ``model.encoder`` is what the checkpoint encoder runs."""
    torch = _torch()
    arch = {k: architecture[k] for k in ("bands", "chip_size", "dim", "widths")}

    class Compressor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = build_encoder_net(**arch)
            if objective == "distill":
                self.head = torch.nn.Linear(arch["dim"], int(teacher_dim))
            else:
                self.head = build_decoder_net(**arch)

        def forward(self, x):
            return self.head(self.encoder(x))

    return Compressor()


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict's tensors in name order (the same bytes on every rank and machine)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def save_atomic(document: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it: a
    reader (or a resumed run) sees the old file or the new one, never half of one."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``eoembed train`` (loaded safely: tensors and plain types only)."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the encoder.pt (or an epoch checkpoint) "
                              "that `eoembed train` wrote")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({error}); it may be truncated or not from eoembed") from error
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an eoembed checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                              "train one with `eoembed train`")
    if document.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {document.get('version')!r}; this eoembed reads "
                              f"version {CHECKPOINT_VERSION}")
    return document


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
