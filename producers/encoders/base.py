"""The encoder base class: what every encoder takes, returns and records.

Every encoder takes float32 chips ``(n, bands, h, w)`` with an optional validity mask ``(n, h, w)``
and returns finite float32 vectors ``(n, dim)``. ``contract()`` describes the encoder and its input
so a product records exactly how its vectors were made.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eoembed._errors import EncoderError, NonFiniteEmbeddingError

__all__ = ["Encoder", "PretrainedEncoder", "SHARED", "read_state_dict", "select_device"]

#: where the project keeps published weights files: ``$EOEMBED_SHARED``, by default ``../shared``
#: beside the checkout (this file is ``CHECKOUT/producers/encoders/base.py``)
SHARED = Path(os.environ.get("EOEMBED_SHARED", Path(__file__).resolve().parents[3] / "shared"))


class Encoder(abc.ABC):
    """Base class of every encoder. Subclasses set ``name``, ``version``, ``description``, ``dim_rule``."""

    name: str = ""
    version: str = ""
    description: str = ""
    dim_rule: str = ""  # human-readable, e.g. "5 * n_bands"
    device: str = "cpu"
    #: the vector of a chip does not change when the chip is flipped or turned by quarter turns, so a
    #: trainer distilling it under those augmentations computes one vector per chip, not eight
    flip_invariant: bool = False

    def to(self, device: str) -> "Encoder":
        """Run on ``device`` ("cpu", "cuda:0", ...). Encoders without torch work stay on the CPU."""
        self.device = str(device)
        return self

    @abc.abstractmethod
    def dim(self, n_bands: int) -> int:
        """Length of the vector for chips with ``n_bands`` bands."""

    @abc.abstractmethod
    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``(n, bands, h, w)`` float32 chips (+ optional ``(n, h, w)`` bool validity) -> ``(n, dim)`` float32."""

    @abc.abstractmethod
    def contract(
        self,
        *,
        bands: Sequence[str],
        chip_size: int,
        stride: int,
        gsd: float,
        band_sources: Sequence[str] | None = None,
    ) -> dict:
        """JSON-serialisable description of the encoder and its input."""

    # shared helpers ------------------------------------------------------------------------------

    def _contract_document(
        self,
        *,
        framework: str,
        weights_sha256: str | None,
        architecture: str,
        pooling: str,
        inputs: list[dict],
        chip_size: int,
        stride: int,
        gsd: float,
        normalization: dict,
        dim: int,
        description: str,
        parameters: dict | None = None,
        weights_href: str | None = None,
    ) -> dict:
        """The contract of :meth:`contract` from checked parts, in the one layout every encoder writes."""
        document: dict = {"name": self.name, "version": self.version, "framework": framework,
                          "weights_sha256": weights_sha256}
        if weights_href is not None:
            document["weights_href"] = weights_href
        document.update(architecture=architecture, pooling=pooling)
        if parameters is not None:
            document["parameters"] = parameters
        document["input"] = {"bands": inputs, "chip_size_px": chip_size, "stride_px": stride, "gsd_m": gsd,
                             "normalization": normalization}
        document["output"] = {"dim": dim, "description": description}
        return document

    def _check_input(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        pixels = np.asarray(pixels)
        if pixels.ndim != 4:
            raise EncoderError(
                f"encoder {self.name!r}: pixels have shape {pixels.shape}; pass chips as (n, bands, height, width)"
            )
        if pixels.shape[1] < 1:
            raise EncoderError(f"encoder {self.name!r}: pixels have no bands (shape {pixels.shape})")
        pixels = pixels.astype(np.float32, copy=False)
        if valid is not None:
            valid = np.asarray(valid)
            expected = (pixels.shape[0], pixels.shape[2], pixels.shape[3])
            if valid.shape != expected:
                raise EncoderError(
                    f"encoder {self.name!r}: valid mask has shape {valid.shape}, the chips need {expected} "
                    "(n, height, width)"
                )
            if valid.dtype != np.bool_:
                raise EncoderError(f"encoder {self.name!r}: valid mask has dtype {valid.dtype}; pass a bool array")
        return pixels, valid

    def _check_output(self, out: np.ndarray, n_bands: int) -> np.ndarray:
        out = np.ascontiguousarray(out, dtype=np.float32)
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise NonFiniteEmbeddingError(
                f"encoder {self.name!r} produced non-finite values for {bad} chip(s); "
                "check the input scale (float32 overflow) and the validity mask"
            )
        if out.shape[1] != self.dim(n_bands):
            raise EncoderError(f"encoder {self.name!r} returned {out.shape[1]} values, dim() says {self.dim(n_bands)}")
        return out


class PretrainedEncoder(Encoder):
    """Base of encoders over a weights file, ``self.weights``, whose model ``self._net`` (anything with
    ``.to(device)``) gives ``embedding_dim`` values per chip whatever the band count. A product's
    model card points at ``published_weights[sha256]`` when the file is a published one, else at the
    local file (which the product then carries)."""

    embedding_dim: int = 0
    published_weights: Mapping[str, str] = {}  # sha256 -> URL of the published file
    weights: str
    _net: Any
    _net_device = "cpu"
    _sha256: str | None = None

    @property
    def model(self) -> Any:
        """The model, moved to :attr:`device` on first use there."""
        if self._net_device != self.device:
            self._net.to(self.device)
            self._net_device = self.device
        return self._net

    def dim(self, n_bands: int) -> int:
        if isinstance(n_bands, bool) or int(n_bands) != n_bands or n_bands < 1:
            raise EncoderError(f"{self.name}: n_bands={n_bands!r}; pass a band count >= 1")
        return self.embedding_dim

    def weights_sha256(self) -> str:
        """SHA-256 (lowercase hex) of the weights file, computed once."""
        if self._sha256 is None:
            from eoembed._write import sha256_file

            self._sha256 = sha256_file(Path(self.weights))
        return self._sha256

    def weights_href(self) -> str:
        """Where a product's model card finds the weights: the published URL, else the local file."""
        return self.published_weights.get(self.weights_sha256()) or Path(self.weights).absolute().as_uri()


def read_state_dict(path: str | Path, *, encoder: str, expected: str) -> Mapping[str, Any]:
    """The torch state dict saved at ``path`` (tensors only, on the CPU); ``expected`` names the file
    the ``encoder`` wants, for the messages of a missing, unreadable or foreign file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EncoderError(
            f"{encoder}: weights file {str(path)!r} not found; pass weights= the path of {expected} (nothing is downloaded)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise EncoderError(f"{encoder}: cannot read weights {str(path)!r}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise EncoderError(f"{encoder}: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def select_device(local_rank: int = 0) -> str:
    """The device for the rank with this node-local index: ``EOEMBED_DEVICE`` if set, else one GPU per
    local rank (round-robin) when CUDA is available, else the CPU. cuDNN is made deterministic so a
    product does not depend on how many ranks made it."""
    import os

    import torch

    forced = os.environ.get("EOEMBED_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def _band_inputs(bands: Sequence[str], band_sources: Sequence[str] | None) -> list[dict]:
    bands = [str(b) for b in bands]
    if not bands:
        raise EncoderError("contract: bands is empty; pass the band names in chip order")
    if band_sources is None:
        sources = ["unspecified"] * len(bands)
    elif isinstance(band_sources, str):
        sources = [band_sources] * len(bands)
    else:
        sources = [str(s) for s in band_sources]
        if len(sources) != len(bands):
            raise EncoderError(
                f"contract: {len(sources)} band_sources for {len(bands)} bands; pass one source per band"
            )
    return [{"name": b, "source": s} for b, s in zip(bands, sources)]


def _check_geometry(chip_size: int, stride: int, gsd: float) -> tuple[int, int, float]:
    if int(chip_size) != chip_size or chip_size < 1:
        raise EncoderError(f"contract: chip_size={chip_size!r}; pass a whole number of pixels >= 1")
    if int(stride) != stride or stride < 1:
        raise EncoderError(f"contract: stride={stride!r}; pass a whole number of pixels >= 1")
    gsd = float(gsd)
    if not np.isfinite(gsd) or gsd <= 0:
        raise EncoderError(f"contract: gsd={gsd!r}; pass the ground sample distance in metres (> 0)")
    return int(chip_size), int(stride), gsd
