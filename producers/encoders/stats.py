"""The ``stats`` encoder: per-band statistics of each chip, the baseline every learned encoder must beat."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from eoembed._errors import EncoderError

from .base import Encoder, _band_inputs, _check_geometry
from .registry import register_encoder

_QUANTILES = (0.10, 0.50, 0.90)


@register_encoder
class StatsEncoder(Encoder):
    """Per band: mean, std (population), p10, p50, p90 over the valid pixels of a chip.

    Vector layout is band-major: ``[b1_mean, b1_std, b1_p10, b1_p50, b1_p90, b2_mean, ...]``.
    Percentiles use linear interpolation (numpy's default). A chip with no valid pixel gets zeros.
    Non-finite pixels are treated as invalid in their band.

    ``steps=T`` (``--encoder-option steps=T``) takes the bands as T time steps of the same bands,
    time-major (``B@t0 ... B@t1 ...``, as temporal stacks name them), and gives each band's statistics
    over every time step and pixel of the chip: per pixel (a 1-pixel chip), the statistics of the
    pixel's time series. The dimension is then ``5 * n_bands / T``.
    """

    name = "stats"
    version = "1"
    description = "per band: mean, std, p10, p50, p90"
    dim_rule = "5 * n_bands"
    flip_invariant = True  # per-band statistics of a chip do not change when it is flipped or turned

    steps = 1  # time steps the bands hold (an instance option; subclasses need not call __init__)

    def __init__(self, *, steps: int = 1) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise EncoderError(f"stats: steps={steps!r}; pass the number of time steps the bands hold (an integer >= 1)")
        self.steps = steps

    def dim(self, n_bands: int) -> int:
        if int(n_bands) != n_bands or n_bands < 1:
            raise EncoderError(f"stats: n_bands={n_bands!r}; pass a band count >= 1")
        if int(n_bands) % self.steps:
            raise EncoderError(f"stats: {n_bands} bands are not {self.steps} time steps of the same bands; "
                               "pass steps= the stack's number of dates")
        return 5 * int(n_bands) // self.steps

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        pixels, valid = self._check_input(pixels, valid)
        n, bands, h, w = pixels.shape
        if n == 0:
            return np.zeros((0, self.dim(bands)), dtype=np.float32)
        self.dim(bands)  # the bands must split into the time steps
        b, t = bands // self.steps, self.steps
        # Each band's values over every time step and pixel: (n, b, t * h * w), time-major bands regrouped.
        x = pixels.reshape(n, t, b, h * w).transpose(0, 2, 1, 3).reshape(n, b, t * h * w) if t > 1 else pixels.reshape(n, b, h * w)
        ok = np.isfinite(x)
        if valid is not None:
            ok &= np.broadcast_to(valid.reshape(n, 1, 1, h * w), (n, 1, t, h * w)).reshape(n, 1, t * h * w)
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
        return self._check_output(stats.reshape(n, b * 5), bands)

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
            dim=self.dim(len(inputs)),
            description=self.description if self.steps == 1 else f"per band: mean, std, p10, p50, p90 over {self.steps} time steps",
            **({"parameters": {"steps": self.steps}} if self.steps > 1 else {}),
        )
