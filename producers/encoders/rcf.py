"""The ``rcf`` encoder: random convolutional features, as in MOSAIKS (Rolf et al., 2021).

``fit`` draws ``features // 2`` kernels of ``kernel_size`` x ``kernel_size`` x bands from random
patches of the fitting chips (after per-band standardisation, optionally ZCA-whitened). ``encode``
convolves each chip with every kernel (no padding) and keeps, per kernel, the mean over the chip of
``ReLU(conv - 1)`` and of ``ReLU(-conv - 1)``: ``features`` values, optionally reduced by a PCA fitted on
the fitting chips' features.

Multi-season chips: with ``seasons = T`` the chip's bands are T seasons of the same channels in
time-major order (as stacks and cubes name them ``BAND@LABEL``). Kernels then span one season's
channels, every season is encoded on its own and the features are averaged over the seasons that
pool any output; the PCA, if any, reduces that average. This is the training-free entry of the
Embed2Scale challenge: rcf features averaged over seasons, then PCA to the target size.

Invalid pixels (``valid`` False, or non-finite in any band) never reach a vector: they are set to the
band mean before the convolution, and the mean pools only the convolution outputs whose whole
``kernel_size`` x ``kernel_size`` window is valid. A chip that has valid pixels but no fully valid window
pools the outputs centred on a valid pixel instead; a chip with neither gets zeros.

Numbers are reproducible bit for bit on one machine: chips go through the convolution in chunks of
:data:`CHUNK` (the last one padded), so a chip's vector does not depend on the batch it came in, and
every fitted parameter travels in :meth:`RcfEncoder.state`.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eoembed._errors import EncoderError

from .base import Encoder, _band_inputs, _check_geometry
from .registry import register_encoder

__all__ = ["RcfEncoder", "CHUNK", "BIAS", "ZCA_EPS"]

#: chips per convolution call; a fixed shape keeps every chip's arithmetic identical
CHUNK = 4
DEVICE_CHUNK = 1024  # chips per convolution on an accelerator
#: the ReLU threshold of MOSAIKS: features are ReLU(conv - BIAS) and ReLU(-conv - BIAS)
BIAS = 1.0
#: added to the patch covariance eigenvalues before ZCA whitening (standardised units)
ZCA_EPS = 1e-2
#: patches used to estimate the ZCA whitening matrix
ZCA_PATCHES = 20_000

_STATE_FORMAT = "eoembed.rcf"
_STATE_VERSION = 1
_ARRAYS = ("band_mean", "band_std", "kernels", "offsets", "pca_mean", "pca_components")
_SCALARS = ("features", "kernel_size", "seed", "whiten", "pca_dim", "bias", "zca_eps", "n_bands", "fit_chips")


def _int_option(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise EncoderError(f"rcf: {name}={value!r}; pass a whole number >= {minimum}")
    return int(value)


@register_encoder
class RcfEncoder(Encoder):
    """Random convolutional features (MOSAIKS). Call :meth:`fit` on sample chips before :meth:`encode`."""

    name = "rcf"
    version = "1"
    description = "random convolutional features (MOSAIKS): mean-pooled ReLU(+-conv - 1) of kernels drawn from image patches"
    dim_rule = "pca_dim if set, else features"

    def __init__(
        self,
        *,
        features: int = 512,
        kernel_size: int = 3,
        seed: int = 0,
        whiten: bool = False,
        pca_dim: int | None = None,
        seasons: int = 1,
    ) -> None:
        features = _int_option("features", features, 2)
        if features % 2:
            raise EncoderError(
                f"rcf: features={features} is odd; pass an even number (half the features are ReLU(conv - 1), "
                "half ReLU(-conv - 1))"
            )
        self.features = features
        self.kernel_size = _int_option("kernel_size", kernel_size, 1)
        self.seed = _int_option("seed", seed, 0)
        if not isinstance(whiten, (bool, np.bool_)):
            raise EncoderError(f"rcf: whiten={whiten!r}; pass True or False")
        self.whiten = bool(whiten)
        if pca_dim is not None:
            pca_dim = _int_option("pca_dim", pca_dim, 1)
            if pca_dim > features:
                raise EncoderError(f"rcf: pca_dim={pca_dim} exceeds features={features}; pass pca_dim <= features")
        self.pca_dim = pca_dim
        self.seasons = _int_option("seasons", seasons, 1)
        self._fitted: dict[str, Any] | None = None
        self._torch: dict[str, torch.Tensor] | None = None

    # public API ----------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self._fitted is not None

    def dim(self, n_bands: int) -> int:
        if isinstance(n_bands, bool) or int(n_bands) != n_bands or n_bands < 1:
            raise EncoderError(f"rcf: n_bands={n_bands!r}; pass a band count >= 1")
        return self.pca_dim if self.pca_dim is not None else self.features

    def fit(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> "RcfEncoder":
        """Draw the kernels (and the standardisation, whitening and PCA) from sample chips; returns self."""
        pixels, valid = self._check_input(pixels, valid)
        n_bands = pixels.shape[1]
        season_pixels, season_valid = self._split_seasons(pixels, valid)
        n, b, h, w = season_pixels.shape
        k = self.kernel_size
        if n == 0:
            raise EncoderError("rcf: fit got no chips; pass at least one chip (n, bands, height, width)")
        if h < k or w < k:
            raise EncoderError(f"rcf: chips of {h}x{w} px are smaller than kernel_size={k}; pass larger chips")
        ok = _ok_mask(season_pixels, season_valid)
        if not ok.any():
            raise EncoderError("rcf: the fitting chips have no valid pixel; fit on chips with valid pixels")
        # per-band standardisation over every valid pixel of the sample
        x64 = np.moveaxis(season_pixels, 1, 0)[:, ok].astype(np.float64)  # (b, n_valid)
        mean = x64.mean(axis=1)
        std = x64.std(axis=1)
        std = np.where(std > 0, std, 1.0)  # a constant band: centre it only
        band_mean = mean.astype(np.float32)
        band_std = std.astype(np.float32)
        xs = _standardize(season_pixels, ok, band_mean, band_std)  # float32 numpy, invalid -> 0

        # candidate patch positions: windows whose every pixel is valid
        win_ok = _window_valid(ok, k)  # (n, h-k+1, w-k+1)
        candidates = np.flatnonzero(win_ok)
        if candidates.size == 0:
            raise EncoderError(
                f"rcf: no {k}x{k} window of the fitting chips is fully valid; fit on chips with more valid pixels"
            )
        rng = np.random.default_rng(self.seed)
        m = self.features // 2
        picks = rng.choice(candidates.size, size=m, replace=candidates.size < m)
        patches = _patches(xs, candidates[picks], win_ok.shape).astype(np.float64)  # (m, b*k*k)

        if self.whiten:
            count = min(candidates.size, ZCA_PATCHES)
            sample_idx = rng.choice(candidates.size, size=count, replace=False)
            sample = _patches(xs, candidates[np.sort(sample_idx)], win_ok.shape).astype(np.float64)
            mu = sample.mean(axis=0)
            centred = sample - mu
            cov = centred.T @ centred / max(count - 1, 1)
            evals, evecs = np.linalg.eigh(cov)
            zca = (evecs * (1.0 / np.sqrt(np.maximum(evals, 0.0) + ZCA_EPS))) @ evecs.T
            zca = (zca + zca.T) / 2
            # feature = (Z (p - mu)) . (Z (x - mu)) = (Z Z (p - mu)) . x - (Z Z (p - mu)) . mu
            kernels = (patches - mu) @ zca @ zca
            offsets = kernels @ mu
        else:
            kernels = patches
            offsets = np.zeros(m)

        fitted: dict[str, Any] = {
            "n_bands": n_bands,
            "fit_chips": len(pixels),
            "band_mean": band_mean,
            "band_std": band_std,
            "kernels": np.ascontiguousarray(kernels.reshape(m, b, k, k), dtype=np.float32),
            "offsets": offsets.astype(np.float32),
            "pca_mean": None,
            "pca_components": None,
        }
        self._set_fitted(fitted)
        if self.pca_dim is not None:
            feats, counts = self._seasonal_features(pixels, valid)
            used = feats[counts > 0].astype(np.float64)
            if used.shape[0] < self.pca_dim:
                self._fitted = self._torch = None
                raise EncoderError(
                    f"rcf: pca_dim={self.pca_dim} needs at least {self.pca_dim} fitting chips with valid pixels, "
                    f"got {used.shape[0]}; fit on more chips or lower pca_dim"
                )
            pca_mean = used.mean(axis=0)
            centred = used - pca_mean
            evals, evecs = np.linalg.eigh(centred.T @ centred)
            comps = evecs[:, ::-1][:, : self.pca_dim].T.copy()  # (pca_dim, features), largest variance first
            # fix the sign of each component: its largest-magnitude entry is positive
            lead = comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)]
            comps *= np.where(lead < 0, -1.0, 1.0)[:, None]
            fitted["pca_mean"] = pca_mean.astype(np.float32)
            fitted["pca_components"] = np.ascontiguousarray(comps, dtype=np.float32)
            self._set_fitted(fitted)
        return self

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        fitted = self._require_fitted("encode")
        pixels, valid = self._check_input(pixels, valid)
        n, b, h, w = pixels.shape
        if b != fitted["n_bands"]:
            raise EncoderError(
                f"rcf: chips have {b} bands, the encoder was fitted on {fitted['n_bands']}; pass chips with the "
                "fitted band layout"
            )
        if n == 0:
            return np.zeros((0, self.dim(b)), dtype=np.float32)
        k = self.kernel_size
        if h < k or w < k:
            raise EncoderError(f"rcf: chips of {h}x{w} px are smaller than kernel_size={k}; pass larger chips")
        feats, counts = self._seasonal_features(pixels, valid)
        if fitted["pca_components"] is not None:
            feats = self._project(feats)
            feats[counts == 0] = 0.0
        return self._check_output(feats, b)

    def state(self) -> dict:
        """Every fitted parameter (numpy float32 arrays, ints, floats, bools, None); see :meth:`from_state`."""
        fitted = self._require_fitted("state")
        out: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "features": self.features,
            "kernel_size": self.kernel_size,
            "seed": self.seed,
            "whiten": self.whiten,
            "pca_dim": self.pca_dim,
            "bias": BIAS,
            "zca_eps": ZCA_EPS if self.whiten else None,
            "n_bands": int(fitted["n_bands"]),
            "fit_chips": int(fitted["fit_chips"]),
            "seasons": self.seasons,
        }
        for key in _ARRAYS:
            value = fitted[key]
            out[key] = None if value is None else value.copy()
        return out

    @classmethod
    def from_state(cls, state: dict) -> "RcfEncoder":
        """Rebuild a fitted encoder from :meth:`state` (arrays may also come as nested lists)."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise EncoderError(f"rcf: not an rcf state (format {_get(state, 'format')!r}); pass RcfEncoder.state()")
        if state.get("version") != _STATE_VERSION:
            raise EncoderError(
                f"rcf: state version {state.get('version')!r} is not supported (this eoembed reads {_STATE_VERSION})"
            )
        missing = [key for key in (*_SCALARS, *_ARRAYS) if key not in state]
        if missing:
            raise EncoderError(f"rcf: the state lacks {missing}; pass RcfEncoder.state() unchanged")
        if state["bias"] != BIAS:
            raise EncoderError(f"rcf: state bias {state['bias']!r} differs from this eoembed's {BIAS}")
        expected_eps = ZCA_EPS if state["whiten"] else None
        if state["zca_eps"] != expected_eps:
            raise EncoderError(f"rcf: state zca_eps {state['zca_eps']!r}; this eoembed uses {expected_eps!r}")
        enc = cls(
            features=state["features"],
            kernel_size=state["kernel_size"],
            seed=state["seed"],
            whiten=state["whiten"],
            pca_dim=state["pca_dim"],
            seasons=state.get("seasons", 1),  # states from before seasons existed hold one season
        )
        n_bands = _int_option("n_bands", state["n_bands"], 1)
        enc._check_seasons(n_bands)
        b = n_bands // enc.seasons
        k, m, f = enc.kernel_size, enc.features // 2, enc.features
        shapes: dict[str, tuple[int, ...] | None] = {
            "band_mean": (b,),
            "band_std": (b,),
            "kernels": (m, b, k, k),
            "offsets": (m,),
            "pca_mean": None if enc.pca_dim is None else (f,),
            "pca_components": None if enc.pca_dim is None else (enc.pca_dim, f),
        }
        fitted: dict[str, Any] = {"n_bands": n_bands, "fit_chips": _int_option("fit_chips", state["fit_chips"], 1)}
        for key, shape in shapes.items():
            value = state[key]
            if shape is None:
                if value is not None:
                    raise EncoderError(f"rcf: state {key} is set but pca_dim is None; pass RcfEncoder.state() unchanged")
                fitted[key] = None
                continue
            arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
            if arr.shape != shape:
                raise EncoderError(f"rcf: state {key} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise EncoderError(f"rcf: state {key} holds non-finite values")
            fitted[key] = arr.copy()
        if not (fitted["band_std"] > 0).all():
            raise EncoderError("rcf: state band_std holds values <= 0")
        enc._set_fitted(fitted)
        return enc

    def weights_sha256(self) -> str:
        """SHA-256 (lowercase hex) of the canonical bytes of :meth:`state`: a JSON header, then each array."""
        state = self.state()
        header = {key: state[key] for key in ("format", "version", *_SCALARS)}
        if self.seasons != 1:  # one-season states keep the digest they had before seasons existed
            header["seasons"] = self.seasons
        header["arrays"] = {
            key: None if state[key] is None else {"dtype": "<f4", "shape": list(state[key].shape)} for key in _ARRAYS
        }
        digest = hashlib.sha256()
        digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        for key in _ARRAYS:
            value = state[key]
            if value is not None:
                digest.update(b"\x00" + key.encode("ascii") + b"\x00")
                digest.update(np.ascontiguousarray(value, dtype="<f4").tobytes(order="C"))
        return digest.hexdigest()

    def contract(
        self,
        *,
        bands: Sequence[str],
        chip_size: int,
        stride: int,
        gsd: float,
        band_sources: Sequence[str] | None = None,
    ) -> dict:
        fitted = self._require_fitted("contract")
        chip_size, stride, gsd = _check_geometry(chip_size, stride, gsd)
        inputs = _band_inputs(bands, band_sources)
        if len(inputs) != fitted["n_bands"]:
            raise EncoderError(
                f"rcf: contract for {len(inputs)} bands, the encoder was fitted on {fitted['n_bands']}; "
                "pass the fitted band layout"
            )
        if chip_size < self.kernel_size:
            raise EncoderError(f"rcf: chip_size={chip_size} is below kernel_size={self.kernel_size}")
        return self._contract_document(
            framework="pytorch",
            weights_sha256=self.weights_sha256(),
            architecture="random convolutional features (MOSAIKS)",
            pooling="mean",
            parameters={
                "features": self.features,
                "kernel_size": self.kernel_size,
                "seed": self.seed,
                "whiten": self.whiten,
                "pca_dim": self.pca_dim,
                "fit_chips": int(fitted["fit_chips"]),
                # one-season contracts stay as they were, so earlier products still match them
                **({"seasons": self.seasons} if self.seasons != 1 else {}),
            },
            inputs=inputs,
            chip_size=chip_size,
            stride=stride,
            gsd=gsd,
            normalization={
                "method": "standardize",
                "mean": [float(v) for v in fitted["band_mean"]],
                "std": [float(v) for v in fitted["band_std"]],
            },
            dim=self.dim(len(inputs)),
            description=self.description,
        )

    # internals -----------------------------------------------------------------------------------

    def _require_fitted(self, what: str) -> dict[str, Any]:
        if self._fitted is None:
            raise EncoderError(
                f"rcf: {what} needs a fitted encoder; call fit(sample_chips) first "
                "(or pass fit_on=... to the producer), or rebuild one with RcfEncoder.from_state()"
            )
        return self._fitted

    def _set_fitted(self, fitted: dict[str, Any]) -> None:
        m = self.features // 2
        kernels = torch.from_numpy(fitted["kernels"])
        offsets = torch.from_numpy(fitted["offsets"])
        # one convolution gives both halves: +K with bias -(offset + 1), -K with bias (offset - 1)
        weight = torch.cat([kernels, -kernels]).contiguous()
        bias = torch.cat([-offsets - BIAS, offsets - BIAS]).contiguous()
        assert weight.shape[0] == 2 * m
        tensors = {"weight": weight, "bias": bias}
        if fitted["pca_components"] is not None:
            tensors["pca_mean"] = torch.from_numpy(fitted["pca_mean"])
            tensors["pca_t"] = torch.from_numpy(fitted["pca_components"]).t().contiguous()
        self._fitted = fitted
        self._torch = tensors

    def _check_seasons(self, n_bands: int) -> None:
        if n_bands % self.seasons:
            raise EncoderError(
                f"rcf: {n_bands} bands do not split into seasons={self.seasons} equal seasons; pass chips of "
                f"seasons x channels bands in time-major order, or another seasons count"
            )

    def _split_seasons(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, T*C, h, w) -> (n*T, C, h, w): every season becomes a chip of its own (chip-major)."""
        n, bands, h, w = pixels.shape
        self._check_seasons(bands)
        if self.seasons == 1:
            return pixels, valid
        split = pixels.reshape(n * self.seasons, bands // self.seasons, h, w)
        return split, None if valid is None else np.repeat(valid, self.seasons, axis=0)

    def _seasonal_features(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Pre-PCA features averaged over the seasons that pool any output, and the pooled outputs per chip."""
        feats, counts = self._features(*self._split_seasons(pixels, valid))
        if self.seasons == 1:
            return feats, counts
        n = len(pixels)
        used = (counts > 0).reshape(n, self.seasons)
        total = (feats.reshape(n, self.seasons, -1) * used[..., None]).sum(axis=1, dtype=np.float64)
        averaged = (total / np.maximum(used.sum(axis=1), 1)[:, None]).astype(np.float32)
        return averaged, counts.reshape(n, self.seasons).sum(axis=1)

    def _features(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Pre-PCA features (n, features) float32 and the number of pooled outputs per chip."""
        fitted, tensors = self._fitted, self._torch
        assert fitted is not None and tensors is not None
        n, b, h, w = pixels.shape
        k = self.kernel_size
        ok = _ok_mask(pixels, valid)
        pool = _pool_mask(ok, k)  # (n, h-k+1, w-k+1) bool
        counts = pool.reshape(n, -1).sum(axis=1)
        padded = -(-n // CHUNK) * CHUNK  # every convolution call sees the same shape
        xs = np.zeros((padded, b, h, w), dtype=np.float32)
        xs[:n] = _standardize(pixels, ok, fitted["band_mean"], fitted["band_std"])
        partial = np.ones(padded // CHUNK, dtype=bool)  # chunks whose pooling needs the mask
        full = pool.reshape(n, -1).all(axis=1)
        partial[: n // CHUNK] = ~full[: n // CHUNK * CHUNK].reshape(-1, CHUNK).all(axis=1)
        pool_t = torch.zeros((padded, 1) + pool.shape[1:], dtype=torch.float32)
        pool_t[:n, 0] = torch.from_numpy(pool)
        xt = torch.from_numpy(xs)
        weight, bias = tensors["weight"], tensors["bias"]
        if self.device != "cpu":
            return self._features_on_device(xt, pool_t, weight, bias, counts, n)
        sums = torch.empty((padded, self.features), dtype=torch.float32)
        with torch.no_grad():
            for i in range(0, padded, CHUNK):
                y = F.conv2d(xt[i : i + CHUNK], weight, bias)
                y.relu_()
                if partial[i // CHUNK]:
                    y.mul_(pool_t[i : i + CHUNK])  # x * 1.0 is exact: a full chip sums the same values either way
                torch.sum(y, dim=(2, 3), out=sums[i : i + CHUNK])
            feats = sums[:n] / torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).unsqueeze(1)
        out = feats.numpy()
        out[counts == 0] = 0.0
        return out, counts

    def _features_on_device(self, xt, pool_t, weight, bias, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The same features on an accelerator, in large batches (tiny ones suit only the CPU)."""
        device = torch.device(self.device)
        weight, bias = weight.to(device), bias.to(device)
        out = []
        with torch.no_grad():
            for i in range(0, xt.shape[0], DEVICE_CHUNK):
                y = F.conv2d(xt[i : i + DEVICE_CHUNK].to(device, non_blocking=True), weight, bias)
                y.relu_().mul_(pool_t[i : i + DEVICE_CHUNK].to(device, non_blocking=True))
                out.append(torch.sum(y, dim=(2, 3)).cpu())
        feats = torch.cat(out)[:n] / torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).unsqueeze(1)
        result = feats.numpy()
        result[counts == 0] = 0.0
        return result, counts

    def _project(self, feats: np.ndarray) -> np.ndarray:
        tensors = self._torch
        assert tensors is not None
        n = feats.shape[0]
        out = np.empty((n, self.pca_dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, n, CHUNK):
                stop = min(start + CHUNK, n)
                block = np.zeros((CHUNK, self.features), dtype=np.float32)
                block[: stop - start] = feats[start:stop]
                proj = (torch.from_numpy(block) - tensors["pca_mean"]) @ tensors["pca_t"]
                out[start:stop] = proj[: stop - start].numpy()
        return out


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _ok_mask(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """(n, h, w) bool: valid and finite in every band."""
    ok = np.isfinite(pixels).all(axis=1)
    if valid is not None:
        ok &= valid
    return ok


def _standardize(pixels: np.ndarray, ok: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per band in float32; invalid pixels become 0 (the band mean)."""
    with np.errstate(invalid="ignore", over="ignore"):
        xs = (pixels - mean[None, :, None, None]) / std[None, :, None, None]
    xs = xs.astype(np.float32, copy=False)
    if not ok.all():
        xs = np.where(ok[:, None], xs, np.float32(0.0))
    return np.ascontiguousarray(xs, dtype=np.float32)


def _window_valid(ok: np.ndarray, k: int) -> np.ndarray:
    """(n, h-k+1, w-k+1) bool: every pixel of the k x k window at each position is valid."""
    n, h, w = ok.shape
    ho, wo = h - k + 1, w - k + 1
    if ok.all():
        return np.ones((n, ho, wo), dtype=bool)
    rows = ok[:, :ho, :].copy()  # separable erosion: k rows, then k columns
    for d in range(1, k):
        rows &= ok[:, d : d + ho, :]
    out = rows[:, :, :wo].copy()
    for d in range(1, k):
        out &= rows[:, :, d : d + wo]
    return out


def _pool_mask(ok: np.ndarray, k: int) -> np.ndarray:
    """Which convolution outputs each chip pools: fully valid windows, else windows centred on a valid pixel."""
    pool = _window_valid(ok, k)
    if pool.all():
        return pool
    n, h, w = ok.shape
    empty = ~pool.reshape(n, -1).any(axis=1)
    if empty.any():
        top = (k - 1) // 2
        centre = ok[:, top : top + h - k + 1, top : top + w - k + 1]
        pool = pool.copy()
        pool[empty] = centre[empty]
    return pool


def _patches(xs: np.ndarray, flat: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Flattened (len(flat), b*k*k) patches of ``xs`` at flat indexes into the ``grid`` of window positions."""
    _, ho, wo = grid
    b, h, w = xs.shape[1:]
    k = h - ho + 1
    chip, rest = np.divmod(flat, ho * wo)
    row, col = np.divmod(rest, wo)
    dr, dc = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    rows = row[:, None, None] + dr  # (m, k, k)
    cols = col[:, None, None] + dc
    out = xs[chip[:, None, None, None], np.arange(b)[None, :, None, None], rows[:, None], cols[:, None]]
    return out.reshape(len(flat), b * k * k)
