"""Users' own models as encoders: a TorchScript file, a ``torch.export`` program (``.pt2``), or a
``module:callable`` returning a torch module.

    eoembed produce ... --encoder torchscript:model.pt --encoder-option contract=contract.json
    eoembed produce ... --encoder module:mypackage.models:build --encoder-option contract=contract.json

The contract (a JSON file or dict) declares what the product records and the encoder applies:
``name``, ``version``, ``dim``, optional ``architecture``, ``pooling`` and ``normalization``
(``{"method": "standardize", "mean": [...], "std": [...]}`` per band, or ``{"method": "none"}``).
The model gets float32 chips (n, bands, h, w) and returns (n, dim) or a feature map (n, dim, h', w'),
which is mean-pooled. At pixel level (``produce --level pixel``) a model that maps (n, bands, h, w)
to (n, dim, h, w) gets each tile whole and its feature map is the tile's pixel vectors
(:meth:`UserModelEncoder.encode_map`). The weights' SHA-256 is that of the TorchScript file, or of the module's
state dict serialised in a fixed order.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eoembed._errors import EncoderError, NonFiniteEmbeddingError

from .base import Encoder, _band_inputs, _check_geometry

PREFIXES = ("torchscript", "module")


def _state_sha256(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).astype(np.dtype(tensor.detach().cpu().numpy().dtype).newbyteorder("<")).tobytes())
    return digest.hexdigest()


class UserModelEncoder(Encoder):
    name = "user-model"
    version = "1"
    description = "a TorchScript file or module:callable with a declared contract"
    dim_rule = "declared in the contract"

    def __init__(self, target: str, *, contract: str | Mapping[str, Any], batch_size: int = 64) -> None:
        import torch

        kind, _, where = target.partition(":")
        if kind not in PREFIXES or not where:
            raise EncoderError(f"user model {target!r}: use torchscript:PATH or module:package.module:callable")
        self.target = target
        self.declared = dict(json.loads(Path(contract).read_text()) if isinstance(contract, (str, Path)) else contract)
        for key in ("name", "version", "dim"):
            if key not in self.declared:
                raise EncoderError(f"contract for {target!r} lacks {key!r}; declare name, version and dim")
        self.name = str(self.declared["name"])
        self.version = str(self.declared["version"])
        self.batch_size = batch_size
        if kind == "torchscript":
            path = Path(where)
            if not path.exists():
                raise EncoderError(f"TorchScript file {path} does not exist")
            if path.suffix == ".pt2":  # a torch.export program, the format torch now recommends
                # Exported programs are already in inference form (they refuse .eval()).
                self.model = torch.export.load(str(path)).module()
            else:
                # TorchScript is how many models are still exchanged; torch 2.13 deprecates loading it.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
                    self.model = torch.jit.load(str(path), map_location="cpu")
            self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            self.framework = "pytorch"
        else:
            module_name, _, attribute = where.rpartition(":")
            if not module_name:
                raise EncoderError(f"user model {target!r}: give module:package.module:callable")
            try:
                factory = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as error:
                raise EncoderError(f"cannot load {where!r}: {error}") from error
            self.model = factory()
            if not isinstance(self.model, torch.nn.Module):
                raise EncoderError(f"{where} returned {type(self.model).__name__}, not a torch.nn.Module")
            self.sha256 = _state_sha256(self.model)
            self.framework = "pytorch"
        if not (kind == "torchscript" and Path(where).suffix == ".pt2"):
            self.model.eval()

    def to(self, device: str) -> "UserModelEncoder":
        self.device = str(device)
        self.model.to(self.device)
        return self

    def dim(self, n_bands: int) -> int:
        return int(self.declared["dim"])

    def _normalize(self, pixels: np.ndarray) -> np.ndarray:
        norm = self.declared.get("normalization", {"method": "none"})
        if norm.get("method") == "standardize":
            mean = np.asarray(norm["mean"], np.float32)[None, :, None, None]
            std = np.asarray(norm["std"], np.float32)[None, :, None, None]
            if mean.shape[1] != pixels.shape[1]:
                raise EncoderError(f"contract normalization has {mean.shape[1]} bands, chips have {pixels.shape[1]}")
            return (pixels - mean) / std
        return pixels

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        import torch

        pixels, valid = self._check_input(pixels, valid)
        x = np.nan_to_num(self._normalize(pixels.astype(np.float32)), nan=0.0)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                out = self.model(torch.from_numpy(np.ascontiguousarray(x[start : start + self.batch_size])).to(self.device))
                if out.ndim == 4:
                    out = out.mean(dim=(2, 3))  # feature map: mean-pool to one vector a chip
                outputs.append(out.float().cpu().numpy())
        return self._check_output(np.concatenate(outputs) if outputs else np.zeros((0, self.dim(0)), np.float32), pixels.shape[1])

    def encode_map(self, pixels: np.ndarray) -> np.ndarray:
        """The model's feature map (n, dim, h, w) of ``pixels`` (n, bands, h, w), one vector a pixel;
        NaN inputs (no data) enter as 0 after normalisation, as in :meth:`encode`."""
        import torch

        pixels, _ = self._check_input(pixels, None)
        x = np.nan_to_num(self._normalize(pixels), nan=0.0)
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float().cpu().numpy()
        expected = (pixels.shape[0], self.dim(0), *pixels.shape[2:])
        if out.shape != expected:
            raise EncoderError(f"{self.target}: at pixel level the model must map (n, bands, h, w) to (n, dim, h, w) = "
                               f"{expected}; it returned {tuple(out.shape)}. Return a feature map of the input's size, "
                               "or produce chips (--level chip)")
        if not np.isfinite(out).all():
            raise NonFiniteEmbeddingError(f"{self.target} produced non-finite values for "
                                          f"{int((~np.isfinite(out).all(axis=1)).sum())} pixel(s); check the input scale")
        return out

    def contract(self, *, bands: Sequence[str], chip_size: int, stride: int, gsd: float,
                 band_sources: Sequence[str] | None = None) -> dict:
        chip_size, stride, gsd = _check_geometry(chip_size, stride, gsd)
        return self._contract_document(
            framework=self.framework,
            weights_sha256=self.sha256,
            architecture=str(self.declared.get("architecture", "user model")),
            pooling=str(self.declared.get("pooling", "mean")),
            parameters={"source": self.target},
            inputs=_band_inputs(bands, band_sources),
            chip_size=chip_size,
            stride=stride,
            gsd=gsd,
            normalization=self.declared.get("normalization", {"method": "none"}),
            dim=self.dim(len(bands)),
            description=f"{self.target}",
        )
