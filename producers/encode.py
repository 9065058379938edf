"""Encoders turn chips into vectors; a registry finds them by name.

Every encoder takes float32 chips ``(n, bands, h, w)`` with an optional validity mask ``(n, h, w)``
and returns finite float32 vectors ``(n, dim)``. ``contract()`` describes the encoder and its input
so a product records exactly how its vectors were made.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from eoembed._errors import EncoderError, NonFiniteEmbeddingError, UnknownEncoderError

__all__ = ["Encoder", "StatsEncoder", "register_encoder", "get_encoder", "list_encoders"]

_REGISTRY: dict[str, type["Encoder"]] = {}


class Encoder(abc.ABC):
    """Base class of every encoder. Subclasses set ``name``, ``version``, ``description``, ``dim_rule``."""

    name: str = ""
    version: str = ""
    description: str = ""
    dim_rule: str = ""  # human-readable, e.g. "5 * n_bands"
    device: str = "cpu"

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


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: make ``cls`` available to :func:`get_encoder` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        raise EncoderError(f"{cls!r} is not an Encoder subclass; derive it from eoembed.producers.encode.Encoder")
    if not cls.name or not cls.version:
        raise EncoderError(f"{cls.__name__} has no name or version; set both class attributes")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise EncoderError(
            f"encoder name {cls.name!r} is already taken by {existing.__module__}.{existing.__qualname__}; pick another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


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


def get_encoder(name: str, **options) -> Encoder:
    """A new encoder registered under ``name``, built with ``options``; ``torchscript:PATH`` and
    ``module:package.module:callable`` load users' own models (see :mod:`.usermodel`), ``checkpoint:PATH``
    a compressor trained by ``eoembed train`` (see :mod:`.compressor`)."""
    if name.split(":", 1)[0] in ("torchscript", "module") and ":" in name:
        from .usermodel import UserModelEncoder

        return UserModelEncoder(name, **options)
    if name.startswith("checkpoint:"):  # a compressor trained by `eoembed train`
        from .compressor import CheckpointEncoder

        return CheckpointEncoder(name, **options)
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownEncoderError(f"no encoder named {name!r}; registered encoders: {known}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise EncoderError(f"encoder {name!r} does not take options {sorted(options)}: {exc}") from exc


def list_encoders() -> list[dict]:
    """One dict per registered encoder: name, version, description, dim (its rule in words)."""
    return [
        {"name": cls.name, "version": cls.version, "description": cls.description, "dim": cls.dim_rule}
        for _, cls in sorted(_REGISTRY.items())
    ]


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


_QUANTILES = (0.10, 0.50, 0.90)


@register_encoder
class StatsEncoder(Encoder):
    """Per band: mean, std (population), p10, p50, p90 over the valid pixels of a chip.

    Vector layout is band-major: ``[b1_mean, b1_std, b1_p10, b1_p50, b1_p90, b2_mean, ...]``.
    Percentiles use linear interpolation (numpy's default). A chip with no valid pixel gets zeros.
    Non-finite pixels are treated as invalid in their band.
    """

    name = "stats"
    version = "1"
    description = "per band: mean, std, p10, p50, p90"
    dim_rule = "5 * n_bands"

    def dim(self, n_bands: int) -> int:
        if int(n_bands) != n_bands or n_bands < 1:
            raise EncoderError(f"stats: n_bands={n_bands!r}; pass a band count >= 1")
        return 5 * int(n_bands)

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        pixels, valid = self._check_input(pixels, valid)
        n, b, h, w = pixels.shape
        if n == 0:
            return np.zeros((0, self.dim(b)), dtype=np.float32)
        x = pixels.reshape(n, b, h * w)
        ok = np.isfinite(x)
        if valid is not None:
            ok &= valid.reshape(n, 1, h * w)
        # Each chip takes the path its own pixels allow: one partial chip in a batch must not send
        # the fully valid others through the masked path, which costs several times as much.
        full = ok.all(axis=(1, 2))
        if full.all():
            stats = self._dense(x)
        elif not full.any():
            stats = self._masked(x, ok)
        else:
            stats = np.empty((n, b, 5), dtype=np.float64)
            stats[full] = self._dense(x[full])
            stats[~full] = self._masked(x[~full], ok[~full])
        return self._check_output(stats.reshape(n, b * 5), b)

    @staticmethod
    def _moments(x64: np.ndarray, count, *, ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population std along the last axis over ``count`` values (pixels where ``ok``),
        with the sums np.mean and np.std take, so the same bits, but in place in ``x64`` (consumed):
        np.std's own temporaries made it the costliest step of the encoder."""
        mean = np.add.reduce(x64, axis=-1) / count
        x64 -= mean[..., None]
        if ok is not None:
            np.copyto(x64, 0.0, where=~ok)
        x64 *= x64
        return mean, np.sqrt(np.add.reduce(x64, axis=-1) / count)

    @staticmethod
    def _dense(x: np.ndarray) -> np.ndarray:
        """Every pixel valid: one sort, fixed interpolation positions (faster than np.percentile)."""
        mean, std = StatsEncoder._moments(x.astype(np.float64), x.shape[-1])
        s = np.sort(x, axis=-1)
        last = x.shape[-1] - 1
        qs = []
        for p in _QUANTILES:
            pos = p * last
            lo = int(np.floor(pos))
            hi = min(lo + 1, last)
            v_lo = s[..., lo].astype(np.float64)
            qs.append(v_lo + (s[..., hi].astype(np.float64) - v_lo) * (pos - lo))
        return np.stack([mean, std, *qs], axis=-1)

    @staticmethod
    def _masked(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        count = ok.sum(axis=-1)  # (n, b)
        safe = np.maximum(count, 1)
        mean, std = StatsEncoder._moments(np.where(ok, x, 0.0).astype(np.float64), safe, ok=ok)
        # sort once with invalid pixels pushed to the end, then interpolate inside the valid prefix
        s = np.sort(np.where(ok, x, np.inf), axis=-1)
        s[count == 0] = 0.0  # no valid pixel: avoid inf - inf below (the result is zeroed anyway)
        last = np.maximum(count - 1, 0)
        qs = []
        for p in _QUANTILES:
            pos = p * last
            lo = np.floor(pos).astype(np.intp)
            hi = np.minimum(lo + 1, last)
            frac = pos - lo
            v_lo = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0].astype(np.float64)
            v_hi = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0].astype(np.float64)
            qs.append(v_lo + (v_hi - v_lo) * frac)
        out = np.stack([mean, std, *qs], axis=-1)
        out[count == 0] = 0.0
        return out

    def contract(
        self,
        *,
        bands: Sequence[str],
        chip_size: int,
        stride: int,
        gsd: float,
        band_sources: Sequence[str] | None = None,
    ) -> dict:
        chip_size, stride, gsd = _check_geometry(chip_size, stride, gsd)
        inputs = _band_inputs(bands, band_sources)
        return self._contract_document(
            framework="numpy", weights_sha256=None, architecture="band statistics", pooling="none", inputs=inputs,
            chip_size=chip_size, stride=stride, gsd=gsd, normalization={"method": "none"},
            dim=self.dim(len(inputs)), description=self.description,
        )


from . import rcf  # noqa: E402,F401  registers the rcf encoder
from . import presto  # noqa: E402,F401  registers the presto encoder
