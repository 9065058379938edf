"""The ``presto`` encoder: the pretrained Presto pixel-time-series transformer (Tseng et al., 2023).

Presto ("Lightweight, Pre-trained Transformers for Remote Sensing Timeseries", nasaharvest, MIT
licence) encodes one pixel's time series of 17 channels (Sentinel-1, Sentinel-2, ERA5, SRTM, NDVI)
plus a Dynamic World class per timestep, the pixel's latitude/longitude and the start month. The
model code below is written for eoembed from the paper's description and the layout of the published
state dict; it loads ``default_model.pt`` (the encoder half) with ``strict=True``.

Architecture (what :class:`PrestoNet` computes for ``x`` of shape ``(batch, T, 17)``):

* the 17 channels form 9 groups (:data:`CHANNEL_GROUPS`); each group at each timestep becomes one
  128-d token through its own linear layer (SRTM, being static, gives one token from timestep 0);
  each Dynamic World class gives a token through an embedding table (class 9 = missing);
* every token gets ``[month encoding (32) | channel-group embedding (32) | position encoding (64)]``
  added: sinusoidal month-of-year and timestep encodings (fixed), a learned group embedding; the SRTM
  token gets only its group embedding;
* tokens of masked groups (any channel of the group masked) and of missing Dynamic World classes are
  dropped; a location token (a linear map of the unit vector of lat/lon) is prepended;
* 2 pre-norm transformer blocks (8 heads, MLP 128-512-128, GELU), then the mean over the kept tokens
  and a final LayerNorm: a 128-d vector. (This order, mean then norm, is the published encoder's
  ``eval_task`` output.)

The encoder treats each pixel of a chip as a one-timestep series and mean-pools the per-pixel vectors
over the chip's valid pixels.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eoembed._errors import EncoderError

from .bands import check_sensor, s2_band
from .base import SHARED, PretrainedEncoder, _band_inputs, _check_geometry, read_state_dict
from .registry import register_encoder

__all__ = [
    "PrestoEncoder",
    "PrestoNet",
    "PRESTO_CHANNELS",
    "CHANNEL_GROUPS",
    "SHIFT",
    "DIVISOR",
    "DW_MISSING",
    "DEFAULT_WEIGHTS",
    "LANDSAT7_BAND_MAP",
    "normalize",
    "load_presto",
]

#: where the project keeps the published weights (nasaharvest/presto data/default_model.pt, MIT):
#: ``$EOEMBED_SHARED/data/weights/presto/default_model.pt``, SHARED of .base
DEFAULT_WEIGHTS = str(SHARED / "data" / "weights" / "presto" / "default_model.pt")
#: the published pretrained weights, named in a product's model item when those are the weights used
PUBLISHED_WEIGHTS_URL = "https://github.com/nasaharvest/presto/raw/main/data/default_model.pt"
PUBLISHED_WEIGHTS_SHA256 = "559c9d76f525bdf2dd3774da8b1e7f1510769b73baacac12e9e4d8d5c67fbe65"

#: Presto's 17 input channels, in the order of its input arrays
PRESTO_CHANNELS: tuple[str, ...] = (
    "VV", "VH",  # Sentinel-1, dB
    "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12",  # Sentinel-2, reflectance x 10 000
    "temperature_2m", "total_precipitation",  # ERA5 monthly: K, m
    "elevation", "slope",  # SRTM: m, degrees
    "NDVI",  # (B8 - B4) / (B8 + B4)
)

#: channel groups, in the order that indexes the learned group embedding (``channel_embed``);
#: Dynamic World takes the next index (9)
CHANNEL_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("S1", (0, 1)),
    ("S2_RGB", (2, 3, 4)),
    ("S2_Red_Edge", (5, 6, 7)),
    ("S2_NIR_10m", (8,)),
    ("S2_NIR_20m", (9,)),
    ("S2_SWIR", (10, 11)),
    ("ERA5", (12, 13)),
    ("SRTM", (14, 15)),
    ("NDVI", (16,)),
)
_SRTM = 7
_DW_GROUP = len(CHANNEL_GROUPS)  # 9

# Published normalisation: x_normalised = (x + SHIFT) / DIVISOR, per channel. Values from the public
# Presto code, presto/dataops/pipelines/s1_s2_era5_srtm.py (S1_/S2_/ERA5_/SRTM_SHIFT_VALUES and
# _DIV_VALUES, assembled there as ADD_BY / DIVIDE_BY):
#   S1 VV, VH (dB, Earth Engine range about -50..1):  (x + 25) / 25
#   S2 bands (reflectance x 10 000):                  x / 10 000
#   ERA5 temperature_2m (K):                          (x - 272.15) / 35   (to deg C, then / 35)
#   ERA5 total_precipitation (m):                     x / 0.03
#   SRTM elevation (m), slope (deg):                  x / 2000, x / 50
#   NDVI:                                             unchanged (computed from the normalised B8, B4)
SHIFT = np.array([25.0, 25.0] + [0.0] * 10 + [-272.15, 0.0] + [0.0, 0.0] + [0.0], dtype=np.float32)
DIVISOR = np.array([25.0, 25.0] + [1e4] * 10 + [35.0, 0.03] + [2000.0, 50.0] + [1.0], dtype=np.float32)

#: Dynamic World has 9 classes (0..8); index 9 means "missing" and its token is masked
DW_MISSING = 9

#: Landsat-7 ETM+ bands -> nearest Sentinel-2 bands, from the band-alias table (:mod:`.bands`): an
#: approximation (ETM+ band 1 blue 450-515 nm ~ B2, 2 green ~ B3, 3 red ~ B4, 4 NIR 775-900 nm ~ B8,
#: 5 SWIR1 1550-1750 nm ~ B11, 7 SWIR2 2090-2350 nm ~ B12). Spectral responses, radiometric levels (DN
#: vs reflectance) and resolutions differ; Presto was pretrained on Sentinel-2 only. For other sensors
#: or band subsets: :func:`.bands.s2_band_map`.
LANDSAT7_BAND_MAP: dict[str, str] = {b: s2_band(b, sensor="landsat7") for b in ("B1", "B2", "B3", "B4", "B5", "B7")}

EMBED_DIM = 128
MAX_TIMESTEPS = 24
#: pixels per forward pass on the CPU (small passes stay in cache: fastest on 2 cores); the last chunk
#: is padded so every pass has one shape
CHUNK = 1024
DEVICE_CHUNK = 32768  # pixels per forward pass on an accelerator


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


def sinusoid_table(positions: int, dim: int, base: float = 1000.0) -> torch.Tensor:
    """Transformer position encoding: sin on even, cos on odd features, wavelengths base**(2i/dim)."""
    pos = np.arange(positions, dtype=np.float64)[:, None]
    pair = (np.arange(dim) // 2) * 2
    angle = pos / np.power(base, pair / dim)
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(table.astype(np.float32))


def month_table(dim: int) -> torch.Tensor:
    """Month-of-year encoding: sin(2 pi m / 12) on the first half of the features, cos on the second."""
    phase = 2.0 * np.pi * np.arange(12, dtype=np.float64) / 12.0
    half = dim // 2
    table = np.concatenate([np.repeat(np.sin(phase)[:, None], half, 1), np.repeat(np.cos(phase)[:, None], half, 1)], 1)
    return torch.from_numpy(table.astype(np.float32))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if keep is None else keep[:, None, None, :]  # True = may be attended to
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class PrestoNet(nn.Module):
    """The Presto encoder; its state dict is the ``encoder.*`` half of ``default_model.pt``.

    ``forward(x, mask, dynamic_world, latlons, month)``: ``x`` (batch, T, 17) *normalised* channels
    (:func:`normalize`), ``mask`` same shape (True / 1 = missing), ``dynamic_world`` (batch, T) class
    ids (:data:`DW_MISSING` when unknown), ``latlons`` (batch, 2) degrees or None (no location token),
    ``month`` the 0-based month of the first timestep (int or (batch,) tensor). Returns (batch, 128).
    """

    def __init__(self, dim: int = EMBED_DIM, depth: int = 2, heads: int = 8, mlp_hidden: int = 512) -> None:
        super().__init__()
        self.dim = dim
        self.eo_patch_embed = nn.ModuleDict({name: nn.Linear(len(idx), dim) for name, idx in CHANNEL_GROUPS})
        self.dw_embed = nn.Embedding(DW_MISSING + 1, dim)
        self.latlon_embed = nn.Linear(3, dim)
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        month_dim = channel_dim = dim // 4
        pos_dim = dim - month_dim - channel_dim
        self.month_dim, self.channel_dim, self.pos_dim = month_dim, channel_dim, pos_dim
        # fixed encodings; stored in the published state dict too (and loaded from it)
        self.register_buffer("pos_embed", sinusoid_table(MAX_TIMESTEPS, pos_dim)[None])
        self.month_embed = nn.Embedding(12, month_dim)
        self.month_embed.weight.data.copy_(month_table(month_dim))
        self.month_embed.weight.requires_grad_(False)
        self.channel_embed = nn.Embedding(_DW_GROUP + 1, channel_dim)

    @staticmethod
    def cartesian(latlons: torch.Tensor) -> torch.Tensor:
        """(lat, lon) in degrees -> unit vector (x, y, z)."""
        rad = latlons * (math.pi / 180.0)
        lat, lon = rad[:, 0], rad[:, 1]
        return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        dynamic_world: torch.Tensor | None = None,
        latlons: torch.Tensor | None = None,
        month: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        b, t, c = x.shape
        if c != len(PRESTO_CHANNELS) or not 1 <= t <= MAX_TIMESTEPS:
            raise EncoderError(f"presto: x has shape {tuple(x.shape)}; pass (batch, 1..{MAX_TIMESTEPS}, 17)")
        device = x.device
        mask = torch.zeros(x.shape, dtype=torch.bool, device=device) if mask is None else mask.bool()
        x = x.masked_fill(mask, 0.0)  # masked values never reach the arithmetic
        if dynamic_world is None:
            dynamic_world = torch.full((b, t), DW_MISSING, dtype=torch.long, device=device)
        if isinstance(month, torch.Tensor):
            start = month.to(device=device, dtype=torch.long).reshape(-1, 1).expand(b, 1)
        else:
            start = torch.full((b, 1), int(month), dtype=torch.long, device=device)
        months = torch.remainder(start + torch.arange(t, device=device), 12)  # (b, t)
        month_enc = self.month_embed(months)  # (b, t, 32)
        pos_enc = self.pos_embed[:, :t].expand(b, t, self.pos_dim)

        def encoding(group: int) -> torch.Tensor:
            chan = self.channel_embed.weight[group].expand(b, t, self.channel_dim)
            return torch.cat([month_enc, chan, pos_enc], dim=-1)

        tokens, masks = [], []
        for g, (name, idx) in enumerate(CHANNEL_GROUPS):
            cols = list(idx)
            if g == _SRTM:  # static: one token, from the first timestep, with only its group embedding
                emb = self.eo_patch_embed[name](x[:, :1, cols])
                chan = self.channel_embed.weight[g].expand(b, 1, self.channel_dim)
                zeros_m = month_enc.new_zeros(b, 1, self.month_dim)
                zeros_p = pos_enc.new_zeros(b, 1, self.pos_dim)
                tokens.append(emb + torch.cat([zeros_m, chan, zeros_p], dim=-1))
                masks.append(mask[:, :1, cols].any(dim=-1))
            else:
                tokens.append(self.eo_patch_embed[name](x[:, :, cols]) + encoding(g))
                masks.append(mask[:, :, cols].any(dim=-1))
        tokens.append(self.dw_embed(dynamic_world) + encoding(_DW_GROUP))
        masks.append(dynamic_world == DW_MISSING)
        if latlons is not None:
            tokens.insert(0, self.latlon_embed(self.cartesian(latlons.to(x.dtype)))[:, None])
            masks.insert(0, torch.zeros((b, 1), dtype=torch.bool, device=device))
        z = torch.cat(tokens, dim=1)
        keep = ~torch.cat(masks, dim=1)  # (b, n_tokens)
        if b and bool((keep == keep[:1]).all()):
            # one pattern for the whole batch: drop the masked tokens outright
            z = z[:, keep[0]]
            if z.shape[1] == 0:
                raise EncoderError("presto: every token is masked; provide at least one channel group or a location")
            for blk in self.blocks:
                z = blk(z, None)
            pooled = z.mean(dim=1)
        else:
            count = keep.sum(dim=1, keepdim=True)
            if bool((count == 0).any()):
                raise EncoderError("presto: every token of some series is masked; provide at least one channel group")
            for blk in self.blocks:
                z = blk(z, keep)
            pooled = (z * keep[..., None]).sum(dim=1) / count
        return self.norm(pooled)


def normalize(x: np.ndarray | torch.Tensor, compute_ndvi: bool = True):
    """Presto's published normalisation of raw channels ``(..., 17)``; NDVI recomputed from B8, B4."""
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.asarray(x, dtype=np.float32)) if is_np else x.float()
    out = (t + torch.as_tensor(SHIFT, device=t.device)) / torch.as_tensor(DIVISOR, device=t.device)
    if compute_ndvi:
        nir, red = out[..., 8], out[..., 4]
        total = nir + red
        safe = torch.where(total > 0, total, torch.ones_like(total))
        out = out.clone()
        out[..., 16] = torch.where(total > 0, (nir - red) / safe, torch.zeros_like(total))
    return out.numpy() if is_np else out


_ENCODER_PREFIX = "encoder."


def load_presto(path: str | Path) -> tuple[PrestoNet, list[str]]:
    """A :class:`PrestoNet` holding the ``encoder.*`` weights of a Presto checkpoint (strict load).

    Returns the model (eval mode) and the checkpoint keys that were not loaded (the pretraining
    decoder, ``decoder.*``: it reconstructs masked inputs and plays no part in the embeddings).
    """
    state = read_state_dict(path, encoder="presto", expected="Presto's default_model.pt")
    encoder_state = {k[len(_ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(_ENCODER_PREFIX)}
    dropped = sorted(k for k in state if not k.startswith(_ENCODER_PREFIX))
    model = PrestoNet()
    try:
        model.load_state_dict(encoder_state, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f"presto: {str(path)!r} does not match the Presto encoder: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    return model, dropped


# --------------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------------


def _check_band_map(band_map: Any) -> dict[str, str | None] | None:
    if band_map is None:
        return None
    if not isinstance(band_map, Mapping) or not band_map:
        raise EncoderError(
            f"presto: band_map={band_map!r}; pass a dict from chip band names (in chip order) to Presto channels "
            f"({', '.join(PRESTO_CHANNELS)}), or None"
        )
    out: dict[str, str | None] = {}
    seen: dict[str, str] = {}
    for band, channel in band_map.items():
        band = str(band)
        if channel is not None:
            channel = str(channel)
            if channel not in PRESTO_CHANNELS:
                raise EncoderError(
                    f"presto: band_map maps {band!r} to {channel!r}, not a Presto channel; use one of "
                    f"{', '.join(PRESTO_CHANNELS)} (or None to leave the band out)"
                )
            if channel in seen:
                raise EncoderError(f"presto: band_map maps both {seen[channel]!r} and {band!r} to {channel!r}")
            seen[channel] = band
        out[band] = channel
    if not seen:
        raise EncoderError("presto: band_map maps no band to a Presto channel")
    return out


def presto_channel(band: str, *, sensor: str = "sentinel2") -> str | None:
    """The Presto channel a chip band of ``sensor`` feeds (by the band-alias table), or None."""
    if band.strip().upper() in ("VV", "VH"):
        return band.strip().upper()
    channel = s2_band(band, sensor=sensor)
    return channel if channel in PRESTO_CHANNELS else None


@register_encoder
class PrestoEncoder(PretrainedEncoder):
    """Pretrained Presto (nasaharvest) applied per pixel, mean-pooled over each chip's valid pixels.

    Options:

    * ``weights``: path of Presto's ``default_model.pt`` (read, never downloaded).
    * ``band_map``: chip band name -> Presto channel name (:data:`PRESTO_CHANNELS`), one entry per chip
      band *in chip order* (map a band to None to leave it out). None: the chips carry the 17 Presto
      channels in Presto order. Chip values must be in the channels' native units (S2: reflectance
      x 10 000, S1: dB, ...); they are then normalised as Presto was (:data:`SHIFT`, :data:`DIVISOR`).
      Presto masks a whole channel group when any of its channels is missing: a map that gives B11
      without B12 leaves the SWIR group out (see :attr:`unused_bands`). NDVI is computed from B8 and
      B4 when both are mapped and NDVI is not. E.g. :data:`LANDSAT7_BAND_MAP` (an approximation).
    * ``bands`` (instead of ``band_map``): the chip band names in chip order; each feeds the channel
      the band-alias table (:mod:`.bands`) gives it for ``sensor`` (``VV`` / ``VH`` as themselves),
      and a band with no Presto channel (B01, B09, thermal, ...) is left out.
    * ``sensor``: whose band numbers the names in ``bands`` are (default ``sentinel2``; e.g.
      ``landsat7`` feeds ETM+ B1..B5 to B2, B3, B4, B8, B11).
    * ``month``: calendar month (1 = January ... 12) of the imagery; Presto's month index is month - 1.
    * ``latlon``: (latitude, longitude) in degrees of the scene, or None: no location token (Presto
      was trained with one; without it the vectors carry no location signal).
    * ``input_scale``: multiplies chip values before the normalisation, to bring them to the channels'
      native units (e.g. ``10000 / 255`` puts 8-bit DN on the reflectance x 10 000 scale: crude, no
      radiometric calibration). Default 1: chips are already in native units.

    Each pixel is one single-timestep series; Dynamic World is always "missing" (its token masked).
    A pixel is valid where ``valid`` says so and every used band is finite; a chip with no valid
    pixel gets zeros.
    """

    name = "presto"
    version = "1"
    description = "pretrained Presto (nasaharvest) per pixel, mean over valid pixels"
    dim_rule = "128"
    embedding_dim = EMBED_DIM
    published_weights = {PUBLISHED_WEIGHTS_SHA256: PUBLISHED_WEIGHTS_URL}
    flip_invariant = True  # pixels are encoded one by one and mean-pooled

    def __init__(
        self,
        *,
        weights: str = DEFAULT_WEIGHTS,
        band_map: dict | None = None,
        month: int = 6,
        latlon: tuple | None = None,
        input_scale: float = 1.0,
        bands: Sequence[str] | None = None,
        sensor: str = "sentinel2",
    ) -> None:
        if bands is not None:
            if band_map is not None:
                raise EncoderError("presto: pass either band_map or bands (with sensor), not both")
            if isinstance(bands, str) or not isinstance(bands, Sequence) or not bands:
                raise EncoderError(f"presto: bands={bands!r}; pass the list of chip band names, in chip order")
            sensor = check_sensor(sensor, encoder="presto")
            band_map = {str(b): presto_channel(str(b), sensor=sensor) for b in bands}
        self.sensor = check_sensor(sensor, encoder="presto")
        if isinstance(month, bool) or not isinstance(month, numbers.Integral) or not 1 <= month <= 12:
            raise EncoderError(f"presto: month={month!r}; pass the calendar month, a whole number 1..12")
        self.month = int(month)
        if latlon is not None:
            try:
                lat, lon = (float(v) for v in latlon)
            except (TypeError, ValueError) as exc:
                raise EncoderError(f"presto: latlon={latlon!r}; pass (latitude, longitude) in degrees") from exc
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise EncoderError(f"presto: latlon={latlon!r} is outside -90..90, -180..180 degrees")
            latlon = (lat, lon)
        self.latlon = latlon
        if isinstance(input_scale, bool) or not isinstance(input_scale, numbers.Real) or not (
            np.isfinite(input_scale) and input_scale > 0
        ):
            raise EncoderError(f"presto: input_scale={input_scale!r}; pass a finite number > 0")
        self.input_scale = float(input_scale)
        self.band_map = _check_band_map(band_map)
        self.weights = str(weights)
        self._net, self.dropped_keys = load_presto(self.weights)
        self._layout()

    # band layout ---------------------------------------------------------------------------------

    def _layout(self) -> None:
        if self.band_map is None:
            names = list(PRESTO_CHANNELS)
            channels: list[str | None] = list(PRESTO_CHANNELS)
        else:
            names = list(self.band_map)
            channels = list(self.band_map.values())
        given = {ch: i for i, ch in enumerate(channels) if ch is not None}  # channel -> chip band index
        self._compute_ndvi = "NDVI" not in given and "B8" in given and "B4" in given
        provided = set(given) | ({"NDVI"} if self._compute_ndvi else set())
        groups_used = [name for name, idx in CHANNEL_GROUPS if all(PRESTO_CHANNELS[i] in provided for i in idx)]
        used_channels = {PRESTO_CHANNELS[i] for name, idx in CHANNEL_GROUPS if name in groups_used for i in idx}
        if self._compute_ndvi:
            used_channels |= {"B8", "B4"}  # NDVI needs them even if their own groups are incomplete
        self.n_bands = len(names)
        self.groups_used = groups_used
        #: chip bands that reach no token (unmapped, or in an incomplete channel group)
        self.unused_bands = [n for n, ch in zip(names, channels) if ch is None or ch not in used_channels]
        self._source = np.array([given.get(ch, -1) for ch in PRESTO_CHANNELS], dtype=np.intp)  # chip band per channel
        self._needed = sorted({given[ch] for ch in used_channels if ch in given})  # chip bands that must be finite
        self._mask = np.array([ch not in provided for ch in PRESTO_CHANNELS], dtype=bool)
        if not groups_used:
            raise EncoderError(
                "presto: the band map completes no Presto channel group "
                f"({'; '.join(f'{n}: ' + ', '.join(PRESTO_CHANNELS[i] for i in idx) for n, idx in CHANNEL_GROUPS)}); "
                "map every channel of at least one group"
            )

    # public API ----------------------------------------------------------------------------------

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        pixels, valid = self._check_input(pixels, valid)
        n, b, h, w = pixels.shape
        if b != self.n_bands:
            raise EncoderError(
                f"presto: chips have {b} bands, the band map describes {self.n_bands}; pass chips with one band "
                "per band_map entry, in its order"
            )
        out = np.zeros((n, EMBED_DIM), dtype=np.float32)
        if n == 0:
            return out
        flat = pixels.reshape(n, b, h * w)
        ok = np.isfinite(flat[:, self._needed]).all(axis=1)  # (n, h*w)
        if valid is not None:
            ok &= valid.reshape(n, h * w)
        counts = ok.sum(axis=1)
        chip_idx, pix_idx = np.nonzero(ok)  # chip-major order
        if chip_idx.size == 0:
            return self._check_output(out, b)
        values = flat[chip_idx, :, pix_idx]  # (P, b)
        series = np.zeros((values.shape[0], len(PRESTO_CHANNELS)), dtype=np.float32)
        have = self._source >= 0
        series[:, have] = values[:, self._source[have]]
        vectors = self._run(series)  # (P, 128) float32
        sums = np.zeros((n, EMBED_DIM), dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, chip_idx[1:] != chip_idx[:-1]])
        chips = chip_idx[starts]
        sums[chips] = np.add.reduceat(vectors.astype(np.float64), starts, axis=0)
        has = counts > 0
        out[has] = (sums[has] / counts[has, None]).astype(np.float32)
        return self._check_output(out, b)

    def _run(self, series: np.ndarray) -> np.ndarray:
        """Raw (P, 17) single-timestep series -> (P, 128), in fixed-shape chunks."""
        model = self.model
        device = torch.device(self.device)
        chunk = CHUNK if device.type == "cpu" else DEVICE_CHUNK
        if self.input_scale != 1.0:
            series = series * np.float32(self.input_scale)
        normed = normalize(series, compute_ndvi=self._compute_ndvi)
        mask = torch.from_numpy(np.broadcast_to(self._mask, (chunk, 1, len(PRESTO_CHANNELS))).copy()).to(device)
        latlons = None
        if self.latlon is not None:
            latlons = torch.tensor([self.latlon], dtype=torch.float32, device=device).expand(chunk, 2)
        dw = torch.full((chunk, 1), DW_MISSING, dtype=torch.long, device=device)
        total = normed.shape[0]
        result = np.empty((total, EMBED_DIM), dtype=np.float32)
        buf = np.zeros((chunk, 1, len(PRESTO_CHANNELS)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, total, chunk):
                stop = min(start + chunk, total)
                buf[: stop - start, 0] = normed[start:stop]
                buf[stop - start :] = 0.0
                x = torch.from_numpy(buf).to(device)
                y = model(x, mask, dw, latlons, self.month - 1)
                result[start:stop] = y[: stop - start].cpu().numpy()
        return result

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
        expected = list(PRESTO_CHANNELS) if self.band_map is None else list(self.band_map)
        names = [b["name"] for b in inputs]
        if names != expected:
            raise EncoderError(
                f"presto: contract for bands {names}, the band map describes {expected}; pass the bands in "
                "band_map order"
            )
        return self._contract_document(
            framework="pytorch",
            weights_sha256=self.weights_sha256(),
            weights_href=self.weights_href(),
            architecture="Presto (pretrained, nasaharvest)",
            pooling="mean over valid pixels",
            parameters={
                "band_map": None if self.band_map is None else dict(self.band_map),
                "month": self.month,
                "latlon": None if self.latlon is None else list(self.latlon),
                "input_scale": self.input_scale,
            },
            inputs=inputs,
            chip_size=chip_size,
            stride=stride,
            gsd=gsd,
            normalization={"method": "custom", "description": "Presto fixed shift/divisor per channel group"},
            dim=EMBED_DIM,
            description=self.description,
        )
