"""The ``galileo`` encoder: the pretrained Galileo nano multi-source space-time transformer.

Galileo ("Galileo: Learning Global & Local Features of Many Remote Sensing Modalities", Tseng et
al., 2025; github.com/nasaharvest/galileo, MIT licence) encodes a pixel grid over time from many
sources. The model code below is written for eoembed from the architecture of the authors'
``single_file_galileo.py`` and the layout of the published ``data/models/nano/encoder.pt``; it loads
that state dict with every key and shape checked.

What :class:`GalileoNet` computes (nano: 128-d tokens, 4 blocks, 8 heads, MLP 512):

* inputs come in four kinds: space-time ``s_t_x`` ``(b, h, w, t, 13)`` (S1, S2, NDVI; 7 channel
  groups, :data:`SPACE_TIME_GROUPS`), space ``sp_x`` ``(b, h, w, 16)`` (SRTM, Dynamic World,
  WorldCereal), time ``t_x`` ``(b, t, 6)`` (ERA5, TerraClimate, VIIRS) and static ``st_x``
  ``(b, 18)`` (LandScan, location, static DW / WC); each has a mask per channel group
  (0 = seen, 1 = masked), at pixel level for the gridded kinds;
* each channel group of a gridded kind becomes one token per ``p x p`` patch (and timestep) through
  its own 8x8 convolution kernel, resized to ``p`` by the FlexiViT pseudo-inverse of the bicubic
  (antialiased) resize; time and static groups go through a linear layer. A patch's token is masked
  when the mask of its top-left pixel is;
* every token gets ``[group embedding | timestep encoding | month encoding | 2-D position
  encoding]`` (32 features each) added, zeros standing in for the parts a kind lacks. The 2-D
  encoding is sinusoidal in the patch's row and column times ``gsd * p / 10 m``;
* masked tokens are dropped (the batch padded to its longest sequence and the padding masked out of
  attention), 4 pre-norm transformer blocks run, the tokens are put back in place (masked ones as
  zeros) and a final LayerNorm applies to all. The pooled embedding is the mean of the unmasked
  tokens (the authors' ``Encoder.average_tokens``).

:class:`GalileoEncoder` maps a product's Sentinel-1 / Sentinel-2 bands and seasons onto the
space-time input, computes NDVI, normalises with the pretraining statistics (:data:`SHIFT`,
:data:`DIV`), masks what the product lacks and returns the pooled 128-d embedding of each chip.
"""

from __future__ import annotations

import json
import numbers
import os
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

from eoembed._errors import EncoderError

from .bands import SENSORS, check_sensor, s2_band
from .base import SHARED, PretrainedEncoder, _band_inputs, _check_geometry, read_state_dict
from .registry import register_encoder

if TYPE_CHECKING:  # torch is imported where the model runs, not when the encoder is registered
    import torch

__all__ = [
    "GalileoEncoder",
    "GalileoNet",
    "GalileoTokens",
    "SPACE_TIME_CHANNELS",
    "SPACE_TIME_GROUPS",
    "SHIFT",
    "DIV",
    "DEFAULT_WEIGHTS",
    "normalize",
    "ndvi",
    "load_galileo",
]

#: where the project keeps the published weights (nasaharvest/galileo data/models/nano/, MIT):
#: ``$EOEMBED_SHARED/data/weights/galileo-nano/encoder.pt`` with its ``config.json`` beside it
DEFAULT_WEIGHTS = str(SHARED / "data" / "weights" / "galileo-nano" / "encoder.pt")
#: the published weights at the commit they were taken from, named in a product's model item
PUBLISHED_WEIGHTS_URL = (
    "https://github.com/nasaharvest/galileo/raw/0f0b5b95ac81acef4b74cf4686dc877202f4541b/data/models/nano/encoder.pt"
)
PUBLISHED_WEIGHTS_SHA256 = "eab6acacf527886a508a555bc24efe4b4a2cf91b162e84cd1c4a1807e942180c"
CONFIG_FILENAME = "config.json"

#: the 13 space-time channels, in the order of ``s_t_x``'s last axis
SPACE_TIME_CHANNELS: tuple[str, ...] = (
    "VV", "VH",  # Sentinel-1, dB
    "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12",  # Sentinel-2, reflectance x 10 000
    "NDVI",  # (B8 - B4) / (B8 + B4)
)
#: space-time channel groups (one token each per patch and timestep), in the order of the learned
#: group embedding ``s_t_channel_embed`` and of the mask's last axis
SPACE_TIME_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("S1", (0, 1)),
    ("S2_RGB", (2, 3, 4)),
    ("S2_Red_Edge", (5, 6, 7)),
    ("S2_NIR_10m", (8,)),
    ("S2_NIR_20m", (9,)),
    ("S2_SWIR", (10, 11)),
    ("NDVI", (12,)),
)
#: the other kinds' groups and their channel counts; the encoder leaves all of them masked
SPACE_GROUPS: tuple[tuple[str, int], ...] = (("SRTM", 2), ("DW", 9), ("WC", 5))
TIME_GROUPS: tuple[tuple[str, int], ...] = (("ERA5", 2), ("TC", 3), ("VIIRS", 1))
STATIC_GROUPS: tuple[tuple[str, int], ...] = (("LS", 1), ("location", 3), ("DW_static", 9), ("WC_static", 5))
_NDVI = SPACE_TIME_CHANNELS.index("NDVI")
_RED, _NIR = SPACE_TIME_CHANNELS.index("B4"), SPACE_TIME_CHANNELS.index("B8")
_S2_CHANNELS = [i for i, c in enumerate(SPACE_TIME_CHANNELS) if c.startswith("B")]

# Pretraining statistics of the 13 space-time channels: nasaharvest/galileo config/normalization.json,
# key "13" (mean, std over 10 000 sampled training instances). The repository's Normalizer(std=True)
# (src/data/dataset.py), with which the published weights were trained, maps each S1/S2 channel
# linearly so that mean - 2 std -> 0 and mean + 2 std -> 1; NDVI is left as it is.
_MEAN = np.array([
    -11.728724389184965, -18.85558188024017, 1395.3408730676722, 1338.4026921784578, 1343.09883810357,
    1543.8607982512297, 2186.2022069512263, 2525.0932853316694, 2410.3377187373408, 2750.2854646886753,
    2234.911100061487, 1474.5311266077113, 0.2892116502999044,
])
_STD = np.array([
    4.887145774840316, 5.730270320384293, 917.7041440370853, 913.2988423581528, 1092.678723527555,
    1047.2206083460424, 1048.0101611156767, 1143.6903026819996, 1098.979177731649, 1204.472755085893,
    1145.9774063078878, 980.2429840007796, 0.2720939024500081,
])
#: normalised = (raw - SHIFT) / DIV, per space-time channel (float64, in the authors' arithmetic)
SHIFT = np.where(np.arange(13) == _NDVI, 0.0, _MEAN - 2 * _STD)
DIV = np.where(np.arange(13) == _NDVI, 1.0, (_MEAN + 2 * _STD) - (_MEAN - 2 * _STD))

EMBED_DIM = 128
BASE_GSD_M = 10.0  # the resolution the 2-D position encoding is relative to
#: chips per forward pass (the last pass is not padded: token counts differ between passes anyway)
CHUNK = 64
DEVICE_CHUNK = 1024


def normalize(raw: np.ndarray) -> np.ndarray:
    """Galileo's normalisation of raw space-time channels ``(..., 13)`` (S1 dB, S2 reflectance x 10 000,
    NDVI), computed in float64 and returned as float32."""
    return ((np.asarray(raw, dtype=np.float64) - SHIFT) / DIV).astype(np.float32)


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """(nir - red) / (nir + red) from raw values; 0 where nir + red <= 0 (as the authors' dataset does)."""
    red = np.asarray(red, dtype=np.float32)
    nir = np.asarray(nir, dtype=np.float32)
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (nir - red) / np.where(total > 0, total, 1), 0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


class GalileoTokens(NamedTuple):
    """Token outputs (after the final LayerNorm) and token masks of :meth:`GalileoNet.forward`."""

    s_t_x: "torch.Tensor"  # (b, h/p, w/p, t, 7, d)
    sp_x: "torch.Tensor"  # (b, h/p, w/p, 3, d)
    t_x: "torch.Tensor"  # (b, t, 3, d)
    st_x: "torch.Tensor"  # (b, 4, d)
    s_t_m: "torch.Tensor"  # (b, h/p, w/p, t, 7)
    sp_m: "torch.Tensor"  # (b, h/p, w/p, 3)
    t_m: "torch.Tensor"  # (b, t, 3)
    st_m: "torch.Tensor"  # (b, 4)


def sincos(positions: "torch.Tensor", dim: int) -> "torch.Tensor":
    """``[sin(pos w_k) | cos(pos w_k)]`` with ``w_k = 10000 ** (-k / (2 dim))``, k < dim/2: the authors'
    1-D encoding (its frequencies fall off half as fast as the usual ``k / (dim/2)``)."""
    import torch

    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=positions.device) / dim / 2.0)
    angle = positions.reshape(-1, 1).float() * omega
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).reshape(*positions.shape, dim)


def month_table(dim: int) -> "torch.Tensor":
    """Month-of-year encoding (12, dim): sin(2 pi m / 12) on the first half of the features, cos on the second."""
    import torch

    angle = torch.arange(12) / (12 / (2 * np.pi))
    half = angle[:, None].expand(12, dim // 2)
    return torch.cat([torch.sin(half), torch.cos(half)], dim=1)


def _expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Galileo encoder state dict with this ``model.encoder`` config, and its shape."""
    d, k = int(config["embedding_size"]), int(config["max_patch_size"])
    quarter, hidden = d // 4, int(d * config["mlp_ratio"])
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed": (int(config["max_sequence_length"]), quarter),
        "month_embed.weight": (12, quarter),
        "s_t_channel_embed": (len(SPACE_TIME_GROUPS), quarter),
        "sp_channel_embed": (len(SPACE_GROUPS), quarter),
        "t_channel_embed": (len(TIME_GROUPS), quarter),
        "st_channel_embed": (len(STATIC_GROUPS), quarter),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(int(config["depth"])):
        for layer, out, inp in (("attn.q", d, d), ("attn.k", d, d), ("attn.v", d, d), ("attn.proj", d, d),
                                ("mlp.fc1", hidden, d), ("mlp.fc2", d, hidden)):
            shapes[f"blocks.{i}.{layer}.weight"] = (out, inp)
            shapes[f"blocks.{i}.{layer}.bias"] = (out,)
        for norm in ("norm1", "norm2"):
            shapes[f"blocks.{i}.{norm}.weight"] = shapes[f"blocks.{i}.{norm}.bias"] = (d,)
    for kind, groups in (("space_time_embed", [(n, len(c)) for n, c in SPACE_TIME_GROUPS]), ("space_embed", SPACE_GROUPS)):
        for name, channels in groups:
            shapes[f"{kind}.{name}.proj.weight"] = (d, channels, k, k)
            shapes[f"{kind}.{name}.proj.bias"] = (d,)
    for kind, groups in (("time_embed", TIME_GROUPS), ("static_embed", STATIC_GROUPS)):
        for name, channels in groups:
            shapes[f"{kind}.{name}.weight"] = (d, channels)
            shapes[f"{kind}.{name}.bias"] = (d,)
    return shapes


class GalileoNet:
    """The Galileo encoder over a checked state dict (see the module docstring for what it computes).

    ``forward(s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, months, patch_size=p,
    input_resolution_m=10)`` takes the authors' input layout (normalised values; masks 0 = seen,
    1 = masked; ``months`` (b, t) 0 = January) and returns :class:`GalileoTokens`;
    :meth:`pooled` returns the mean of the unmasked output tokens, (b, d). Inference only (no
    dropout, no drop-path: the authors' eval mode). ``h`` must equal ``w`` and be a multiple of ``p``.
    """

    def __init__(self, state: Mapping[str, "torch.Tensor"], config: Mapping[str, Any]) -> None:
        import torch

        self.dim = int(config["embedding_size"])
        self.depth = int(config["depth"])
        self.heads = int(config["num_heads"])
        self.max_patch_size = int(config["max_patch_size"])
        self.max_timesteps = int(config["max_sequence_length"])
        self.params = {k: v.detach().to(torch.float32) for k, v in state.items()}
        # one matmul for q, k and v instead of three
        for i in range(self.depth):
            p = f"blocks.{i}.attn."
            self.params[p + "qkv.weight"] = torch.cat([self.params[p + x + ".weight"] for x in "qkv"])
            self.params[p + "qkv.bias"] = torch.cat([self.params[p + x + ".bias"] for x in "qkv"])
        self.device = "cpu"
        self._kernels: dict[tuple[str, int], torch.Tensor] = {}

    def to(self, device: str) -> "GalileoNet":
        self.params = {k: v.to(device) for k, v in self.params.items()}
        self._kernels = {}
        self.device = str(device)
        return self

    @property
    def num_parameters(self) -> int:
        """Parameters of the published state dict (the fused q/k/v copies not counted)."""
        return sum(v.numel() for k, v in self.params.items() if ".qkv." not in k)

    # pieces ---------------------------------------------------------------------------------------

    def _linear(self, x: "torch.Tensor", name: str) -> "torch.Tensor":
        import torch.nn.functional as F

        return F.linear(x, self.params[name + ".weight"], self.params[name + ".bias"])

    def _layer_norm(self, x: "torch.Tensor", name: str) -> "torch.Tensor":
        import torch.nn.functional as F

        return F.layer_norm(x, (self.dim,), self.params[name + ".weight"], self.params[name + ".bias"], eps=1e-5)

    def patch_kernel(self, name: str, patch_size: int) -> "torch.Tensor":
        """The group's convolution kernel resized to ``patch_size`` (FlexiViT): ``W' = pinv(R) W`` per
        output and input channel, ``R`` (k*k, p*p) holding the bicubic antialiased resize of each
        k x k basis image."""
        import torch
        import torch.nn.functional as F

        key = (name, patch_size)
        if key not in self._kernels:
            weight = self.params[f"{name}.proj.weight"]
            k = self.max_patch_size
            if patch_size == k:
                self._kernels[key] = weight
            else:
                basis = torch.eye(k * k, dtype=torch.float32).reshape(k * k, 1, k, k)
                resize = F.interpolate(basis, (patch_size, patch_size), mode="bicubic", antialias=True)
                pinv = torch.linalg.pinv(resize.reshape(k * k, patch_size * patch_size)).to(weight.device)
                out, inp = weight.shape[:2]
                resized = weight.reshape(out * inp, k * k) @ pinv.T
                self._kernels[key] = resized.reshape(out, inp, patch_size, patch_size).contiguous()
        return self._kernels[key]

    def _patches(self, x: "torch.Tensor", name: str, patch_size: int) -> "torch.Tensor":
        """(b, h, w, [t,] c) pixels -> (b, h/p, w/p, [t,] d) tokens of one channel group."""
        import torch.nn.functional as F

        timed = x.dim() == 5
        b, h, w = x.shape[:3]
        t = x.shape[3] if timed else 1
        images = (x.permute(0, 3, 4, 1, 2) if timed else x.permute(0, 3, 1, 2)[:, None]).reshape(b * t, -1, h, w)
        weight = self.patch_kernel(name, patch_size)
        y = F.conv2d(images, weight, self.params[f"{name}.proj.bias"], stride=patch_size)
        y = y.reshape(b, t, self.dim, h // patch_size, w // patch_size).permute(0, 3, 4, 1, 2)
        return y if timed else y[:, :, :, 0]

    def _position_2d(self, size: int, gsd_ratio: float) -> "torch.Tensor":
        """(size, size, d/4): [encoding of column * ratio | encoding of row * ratio] per patch."""
        import torch

        quarter = self.dim // 4
        pos = torch.arange(size, device=self.device, dtype=torch.float32) * gsd_ratio
        enc = sincos(pos, quarter // 2)  # (size, d/8)
        return torch.cat([enc[None, :, :].expand(size, size, -1), enc[:, None, :].expand(size, size, -1)], dim=-1)

    # forward --------------------------------------------------------------------------------------

    def _tokens(self, s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, months, patch_size, input_resolution_m):
        """Encoded input tokens (b, n, d) and their masks (b, n) bool, True = masked, in the order
        space-time (h, w, t, group), space (h, w, group), time (t, group), static (group)."""
        import torch

        b, h, w, t, _ = s_t_x.shape
        if h != w or h % patch_size or not 1 <= patch_size <= self.max_patch_size:
            raise EncoderError(
                f"galileo: inputs of {h}x{w} px with patch_size={patch_size}; pass square inputs whose side is a "
                f"multiple of the patch size (1..{self.max_patch_size})"
            )
        if not 1 <= t <= self.max_timesteps:
            raise EncoderError(f"galileo: {t} timesteps; the model takes 1..{self.max_timesteps}")
        p, q, d = patch_size, self.dim // 4, self.dim
        side = h // p
        s_t_m, sp_m = s_t_m[:, ::p, ::p] >= 1, sp_m[:, ::p, ::p] >= 1
        t_m, st_m = t_m >= 1, st_m >= 1

        def project(x, masks, kind, groups, embed):
            """One token per group (stacked before d); a group masked everywhere costs nothing."""
            tokens, first = [], 0
            for i, (name, channels) in enumerate(groups):
                if bool(masks[..., i].all()):  # its tokens are all dropped
                    tokens.append(torch.zeros(masks.shape[:-1] + (d,), device=x.device))
                else:
                    tokens.append(embed(x[..., first : first + channels], f"{kind}.{name}"))
                first += channels
            return torch.stack(tokens, dim=-2)

        def patches(pixels, name):
            return self._patches(pixels, name, p)

        s_t = project(s_t_x, s_t_m, "space_time_embed", [(n, len(c)) for n, c in SPACE_TIME_GROUPS], patches)
        sp = project(sp_x, sp_m, "space_embed", SPACE_GROUPS, patches)
        tt = project(t_x, t_m, "time_embed", TIME_GROUPS, self._linear)
        st = project(st_x, st_m, "static_embed", STATIC_GROUPS, self._linear)

        # encodings: [group | timestep | month | 2-D position], zeros where a kind has no such part
        position = self._position_2d(side, float(input_resolution_m) * p / BASE_GSD_M)  # (side, side, q)
        timestep = self.params["pos_embed"][:t]  # (t, q)
        month = self.params["month_embed.weight"][months.long()]  # (b, t, q)
        zeros = s_t.new_zeros
        g_st = len(SPACE_TIME_GROUPS)
        s_t_enc = torch.cat([
            self.params["s_t_channel_embed"].expand(b, side, side, t, g_st, q),
            timestep[None, None, None, :, None].expand(b, side, side, t, g_st, q),
            month[:, None, None, :, None].expand(b, side, side, t, g_st, q),
            position[None, :, :, None, None].expand(b, side, side, t, g_st, q),
        ], dim=-1)
        g_sp = len(SPACE_GROUPS)
        sp_enc = torch.cat([
            self.params["sp_channel_embed"].expand(b, side, side, g_sp, q),
            zeros(b, side, side, g_sp, 2 * q),
            position[None, :, :, None].expand(b, side, side, g_sp, q),
        ], dim=-1)
        g_t = len(TIME_GROUPS)
        t_enc = torch.cat([
            self.params["t_channel_embed"].expand(b, t, g_t, q),
            timestep[None, :, None].expand(b, t, g_t, q),
            month[:, :, None].expand(b, t, g_t, q),
            zeros(b, t, g_t, q),
        ], dim=-1)
        st_enc = torch.cat([self.params["st_channel_embed"].expand(b, len(STATIC_GROUPS), q),
                            zeros(b, len(STATIC_GROUPS), 3 * q)], dim=-1)
        x = torch.cat([(s_t + s_t_enc).reshape(b, -1, d), (sp + sp_enc).reshape(b, -1, d),
                       (tt + t_enc).reshape(b, -1, d), st + st_enc], dim=1)
        masked = torch.cat([s_t_m.reshape(b, -1), sp_m.reshape(b, -1), t_m.reshape(b, -1), st_m], dim=1)
        return x, masked, (side, t)

    def _block(self, x: "torch.Tensor", i: int, keep: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        b, n, d = x.shape
        pre = f"blocks.{i}."
        qkv = self._linear(self._layer_norm(x, pre + "norm1"), pre + "attn.qkv")
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # True = attend
        x = x + self._linear(attended.transpose(1, 2).reshape(b, n, d), pre + "attn.proj")
        hidden = F.gelu(self._linear(self._layer_norm(x, pre + "norm2"), pre + "mlp.fc1"))
        return x + self._linear(hidden, pre + "mlp.fc2")

    def _encode(self, *inputs, patch_size: int, input_resolution_m: float):
        """Output tokens (before the final LayerNorm) of the unmasked input tokens, packed to the front of each row:
        (b, L, d), their keep flags (b, L), their positions in the full sequence (b, L), the full
        length and the grid (side, t)."""
        import torch

        x, masked, grid = self._tokens(*inputs, patch_size, input_resolution_m)
        keep = ~masked
        order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices
        longest = int(keep.sum(dim=1).max())
        where = order[:, :longest]
        packed_keep = keep.gather(1, where)
        packed = x.gather(1, where[..., None].expand(-1, -1, self.dim))
        packed = torch.where(packed_keep[..., None], packed, torch.zeros((), dtype=packed.dtype, device=packed.device))
        for i in range(self.depth if longest else 0):  # no token seen in the whole batch: nothing to attend
            packed = self._block(packed, i, packed_keep)
        return packed, packed_keep, where, x.shape[1], grid

    def forward(self, s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, months, *, patch_size: int,
                input_resolution_m: float = BASE_GSD_M) -> GalileoTokens:
        import torch

        inputs = (s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, months)
        packed, keep, where, length, (side, t) = self._encode(*inputs, patch_size=patch_size,
                                                             input_resolution_m=input_resolution_m)
        b, d = packed.shape[0], self.dim
        full = packed.new_zeros(b, length, d)
        full.scatter_(1, where[..., None].expand(-1, -1, d), torch.where(keep[..., None], packed, 0.0))
        full = self._layer_norm(full, "norm")
        n_s_t, n_sp, n_t = side * side * t * len(SPACE_TIME_GROUPS), side * side * len(SPACE_GROUPS), t * len(TIME_GROUPS)
        parts = torch.split(full, [n_s_t, n_sp, n_t, len(STATIC_GROUPS)], dim=1)
        p = patch_size
        return GalileoTokens(
            parts[0].reshape(b, side, side, t, len(SPACE_TIME_GROUPS), d),
            parts[1].reshape(b, side, side, len(SPACE_GROUPS), d),
            parts[2].reshape(b, t, len(TIME_GROUPS), d),
            parts[3],
            s_t_m[:, ::p, ::p], sp_m[:, ::p, ::p], t_m, st_m,
        )

    __call__ = forward

    def pooled(self, *inputs, patch_size: int, input_resolution_m: float = BASE_GSD_M) -> "torch.Tensor":
        """(b, d): the mean of each row's unmasked output tokens (zeros for a row with none)."""
        packed, keep, _, _, _ = self._encode(*inputs, patch_size=patch_size, input_resolution_m=input_resolution_m)
        normed = self._layer_norm(packed, "norm")
        weights = keep.to(normed.dtype)[..., None]
        return (normed * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    @staticmethod
    def average_tokens(tokens: GalileoTokens) -> "torch.Tensor":
        """(b, d): the mean of the unmasked tokens of a :meth:`forward` output."""
        import torch

        b, d = tokens.st_x.shape[0], tokens.st_x.shape[-1]
        x = torch.cat([t.reshape(b, -1, d) for t in tokens[:4]], dim=1)
        seen = torch.cat([m.reshape(b, -1) for m in tokens[4:]], dim=1) < 1
        weights = seen.to(x.dtype)[..., None]
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def load_galileo(path: str | os.PathLike) -> GalileoNet:
    """A :class:`GalileoNet` holding the Galileo encoder weights at ``path`` (``encoder.pt``), built
    from the ``config.json`` beside it; every tensor's name and shape is checked."""
    path = Path(path)
    state = read_state_dict(path, encoder="galileo", expected="Galileo's encoder.pt")
    config_path = path.with_name(CONFIG_FILENAME)
    try:
        config = json.loads(config_path.read_text())["model"]["encoder"]
    except FileNotFoundError as exc:
        raise EncoderError(f"galileo: no {CONFIG_FILENAME} beside {str(path)!r}; put the model's config.json there") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise EncoderError(f"galileo: {str(config_path)!r} has no model.encoder section ({exc}); use the published config.json") from exc
    state = {k.replace(".backbone", ""): v for k, v in state.items()}  # some published files carry the prefix
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:5])}" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise EncoderError(f"galileo: {str(path)!r} does not match the Galileo encoder of {config_path.name} ({detail})")
    return GalileoNet(state, config)


# --------------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------------

def galileo_channel(band: str, *, sensor: str = "sentinel2") -> str | None:
    """The space-time channel a chip band of ``sensor`` feeds, or None: ``B04`` and ``B4`` -> ``B4`` on
    Sentinel-2, ``B3`` -> ``B4`` (red) on Landsat-7, ``red`` -> ``B4`` on any sensor, ``vv`` -> ``VV``."""
    name = band.strip().upper()
    if name in ("VV", "VH", "NDVI"):
        return name
    channel = s2_band(band, sensor=sensor)
    return channel if channel in SPACE_TIME_CHANNELS else None


def _split_label(band: str) -> tuple[str, str]:
    """``BAND@LABEL`` (a season stack's band name) -> (BAND, LABEL); a plain name has label ``""``."""
    name, at, label = str(band).rpartition("@")
    return (name, label) if at else (str(band), "")


def _month_of(value: Any, where: str) -> int:
    """The 0-based month (0 = January) of a date, date-time or ISO 8601 string."""
    if isinstance(value, (date, datetime)):
        return value.month - 1
    text = str(value).strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text else date.fromisoformat(text[:10])
    except ValueError as exc:
        raise EncoderError(f"galileo: {where} {value!r} is not an ISO 8601 date; give times as YYYY-MM-DD") from exc
    return when.month - 1


@register_encoder
class GalileoEncoder(PretrainedEncoder):
    """Pretrained Galileo nano (nasaharvest) over a chip's Sentinel-1 / Sentinel-2 seasons: the mean
    of its unmasked output tokens (128-d).

    Options:

    * ``weights``: path of Galileo's ``encoder.pt``, with its ``config.json`` beside it (read, never
      downloaded).
    * ``bands``: the chip band names, in chip order, as the product names them: ``BAND`` for one
      date, ``BAND@LABEL`` for a season stack (time-major, as :func:`~.stack.temporal_stack` and
      cubes name them). ``BAND`` is a Sentinel-2 band (``B02`` or ``B2`` ... ``B12``, ``B8A``),
      ``VV`` / ``VH`` (Sentinel-1, dB) or ``NDVI``; other bands (B01, B09, ...) reach no token
      (:attr:`unused_bands`). Default: the 12 S1/S2 channels in Galileo's order, one date.
      Sentinel-2 values are reflectance x 10 000 (L1C, as Galileo was pretrained; L2A is close).
    * ``sensor``: whose band numbers the ``B...`` names are (:data:`~.bands.SENSORS`; default
      ``sentinel2``). ``landsat7`` reads ``B1``..``B5`` as blue, green, red, NIR, SWIR1 and feeds them to
      B2, B3, B4, B8, B11 (:mod:`.bands`); bands named by common name (``red``, ``nir``, ...) need none.
    * ``input_scale``: multiplies chip values before the normalisation, to bring them to reflectance
      x 10 000 (e.g. ``10000 / 255`` for 8-bit DN: crude, no radiometric calibration); S1 and NDVI
      bands are left as they are. Default 1.
    * ``times``: the acquisition date of each timestep (ISO 8601), which gives its month. Default:
      the labels of ``bands`` when they are dates (``YYYY-MM-DD``).
    * ``patch_size``: pixels per token side (1..8); chips must be square, a multiple of it.
    * ``gsd_m``: the chips' pixel size in metres (the 2-D position encoding scales with it).

    A channel group (:data:`SPACE_TIME_GROUPS`) is seen at a timestep only when all its bands are
    given for that timestep (a missing band masks its group, as absent sources are masked); NDVI is
    computed from B4 and B8 when not given. A patch token is masked where any of its pixels is
    invalid or non-finite in the group's bands; every other Galileo input (SRTM, ERA5, Dynamic World,
    location, ...) is masked. A chip with no unmasked token gets zeros.
    """

    name = "galileo"
    version = "1"
    description = "pretrained Galileo nano (nasaharvest) over S1/S2 seasons, mean of unmasked tokens"
    dim_rule = "128"
    embedding_dim = EMBED_DIM
    published_weights = {PUBLISHED_WEIGHTS_SHA256: PUBLISHED_WEIGHTS_URL}

    def __init__(
        self,
        *,
        weights: str = DEFAULT_WEIGHTS,
        bands: Sequence[str] | None = None,
        times: Sequence[Any] | None = None,
        patch_size: int = 4,
        gsd_m: float = BASE_GSD_M,
        sensor: str = "sentinel2",
        input_scale: float = 1.0,
    ) -> None:
        self.sensor = check_sensor(sensor, encoder="galileo")
        if isinstance(input_scale, bool) or not isinstance(input_scale, numbers.Real) or not (
            np.isfinite(input_scale) and input_scale > 0
        ):
            raise EncoderError(f"galileo: input_scale={input_scale!r}; pass a finite number > 0")
        self.input_scale = float(input_scale)
        if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or not 1 <= patch_size <= 8:
            raise EncoderError(f"galileo: patch_size={patch_size!r}; pass a whole number of pixels 1..8")
        self.patch_size = int(patch_size)
        if isinstance(gsd_m, bool) or not isinstance(gsd_m, numbers.Real) or not (np.isfinite(gsd_m) and gsd_m > 0):
            raise EncoderError(f"galileo: gsd_m={gsd_m!r}; pass the chips' pixel size in metres (> 0)")
        self.gsd_m = float(gsd_m)
        if isinstance(bands, str) or (bands is not None and not isinstance(bands, Sequence)):
            raise EncoderError(f"galileo: bands={bands!r}; pass the list of chip band names, in chip order")
        self.bands = [str(b) for b in bands] if bands is not None else list(SPACE_TIME_CHANNELS[:_NDVI])
        self.weights = str(weights)
        self._net = load_galileo(self.weights)
        self._layout(times)

    # band layout ---------------------------------------------------------------------------------

    def _layout(self, times: Sequence[Any] | None) -> None:
        if not self.bands:
            raise EncoderError("galileo: bands is empty; pass the chip band names in chip order")
        labels: list[str] = []
        source: dict[tuple[int, int], int] = {}  # (timestep, channel) -> chip band index
        for index, band in enumerate(self.bands):
            name, label = _split_label(band)
            if label not in labels:
                labels.append(label)
            channel = galileo_channel(name, sensor=self.sensor)
            if channel is None:
                continue
            key = (labels.index(label), SPACE_TIME_CHANNELS.index(channel))
            if key in source:
                raise EncoderError(
                    f"galileo: bands {self.bands[source[key]]!r} and {band!r} both give {channel} at timestep "
                    f"{label or 0!r}; give each channel once per timestep"
                )
            source[key] = index
        if "" in labels and len(labels) > 1:
            raise EncoderError(
                f"galileo: bands {self.bands} mix plain names and BAND@LABEL names; label every band of a season stack"
            )
        if len(labels) > self._net.max_timesteps:
            raise EncoderError(f"galileo: {len(labels)} timesteps; the model takes at most {self._net.max_timesteps}")
        steps = len(labels)
        if times is None:
            if labels == [""]:
                raise EncoderError(
                    "galileo: the band names carry no date; pass times=[acquisition date] (ISO 8601), which gives "
                    "the month Galileo encodes"
                )
            times = labels
            where = "band label"
        else:
            if isinstance(times, (str, date)) or not isinstance(times, Sequence) or len(times) != steps:
                raise EncoderError(f"galileo: times={times!r}; pass one acquisition date per timestep ({steps})")
            where = "time"
        self.times = [str(t) for t in times]
        self.months = np.array([_month_of(t, where) for t in times], dtype=np.int64)
        self.labels = labels
        self._source = np.full((steps, len(SPACE_TIME_CHANNELS)), -1, dtype=np.intp)
        for (step, channel), index in source.items():
            self._source[step, channel] = index
        given = self._source >= 0
        # NDVI computed where both its bands are given and NDVI itself is not
        self._compute_ndvi = ~given[:, _NDVI] & given[:, _RED] & given[:, _NIR]
        provided = given.copy()
        provided[:, _NDVI] |= self._compute_ndvi
        self._group_given = np.array([[provided[s, list(idx)].all() for _, idx in SPACE_TIME_GROUPS]
                                      for s in range(steps)])  # (timesteps, groups)
        if not self._group_given.any():
            raise EncoderError(
                f"galileo: the bands {self.bands} complete no channel group at any timestep ("
                + "; ".join(f"{n}: {', '.join(SPACE_TIME_CHANNELS[i] for i in idx)}" for n, idx in SPACE_TIME_GROUPS)
                + f"); name the S1/S2 bands as B02..B12, B8A, VV, VH, by common name (blue, red, nir, ...), or pass "
                f"the sensor whose band numbers they are (sensor={self.sensor!r} now; one of {', '.join(SENSORS)})"
            )
        used = set()
        for step in range(steps):
            for g, (_, idx) in enumerate(SPACE_TIME_GROUPS):
                if self._group_given[step, g]:
                    used.update(int(self._source[step, c]) for c in idx if self._source[step, c] >= 0)
            if self._compute_ndvi[step] and self._group_given[step, -1]:
                used.update(int(self._source[step, c]) for c in (_RED, _NIR))
        #: chip bands that reach no token (not S1/S2, or in a group incomplete at their timestep)
        self.unused_bands = [b for i, b in enumerate(self.bands) if i not in used]
        self.groups_used = [[n for g, (n, _) in enumerate(SPACE_TIME_GROUPS) if self._group_given[s, g]]
                            for s in range(steps)]

    # public API ----------------------------------------------------------------------------------

    def inputs(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The model inputs of chips ``(n, bands, h, w)``: normalised ``s_t_x`` (n, h, w, t, 13), its
        pixel mask ``s_t_m`` (n, h, w, t, 7; 1 = masked, whole patches at a time), ``months`` (n, t)
        and the fully masked other kinds, as :meth:`GalileoNet.forward` takes them."""
        pixels, valid = self._check_input(pixels, valid)
        n, b, h, w = pixels.shape
        if b != len(self.bands):
            raise EncoderError(
                f"galileo: chips have {b} bands, the encoder's bands list {len(self.bands)}; pass chips with one band "
                "per bands entry, in its order"
            )
        p = self.patch_size
        if h != w or h % p:
            raise EncoderError(
                f"galileo: chips of {h}x{w} px; Galileo needs square chips whose side is a multiple of "
                f"patch_size={p} (choose --chip-size or the patch_size option to fit)"
            )
        steps, channels = self._source.shape
        raw = np.zeros((n, h, w, steps, channels), dtype=np.float32)
        have = self._source >= 0
        chw = np.moveaxis(pixels, 1, -1)  # (n, h, w, bands)
        raw[..., have] = chw[..., self._source[have]]
        if self.input_scale != 1.0:
            raw[..., _S2_CHANNELS] *= np.float32(self.input_scale)
        seen = np.isfinite(raw) & have  # per pixel and channel
        if valid is not None:
            seen &= valid[:, :, :, None, None]
        for step in np.flatnonzero(self._compute_ndvi):
            raw[:, :, :, step, _NDVI] = ndvi(raw[:, :, :, step, _RED], raw[:, :, :, step, _NIR])
            seen[:, :, :, step, _NDVI] = seen[:, :, :, step, _RED] & seen[:, :, :, step, _NIR]
        group_seen = np.stack([seen[..., list(idx)].all(axis=-1) for _, idx in SPACE_TIME_GROUPS], axis=-1)
        group_seen &= self._group_given  # (n, h, w, t, g)
        # a token is seen only when every pixel of its patch is
        patch = group_seen.reshape(n, h // p, p, w // p, p, steps, len(SPACE_TIME_GROUPS)).all(axis=(2, 4))
        group_seen = np.repeat(np.repeat(patch, p, axis=1), p, axis=2)
        s_t_x = normalize(np.where(seen, raw, 0.0))
        s_t_x[~seen] = 0.0  # what the mask hides never reaches the arithmetic
        return {
            "s_t_x": s_t_x,
            "sp_x": np.zeros((n, h, w, sum(c for _, c in SPACE_GROUPS)), dtype=np.float32),
            "t_x": np.zeros((n, steps, sum(c for _, c in TIME_GROUPS)), dtype=np.float32),
            "st_x": np.zeros((n, sum(c for _, c in STATIC_GROUPS)), dtype=np.float32),
            "s_t_m": (~group_seen).astype(np.float32),
            "sp_m": np.ones((n, h, w, len(SPACE_GROUPS)), dtype=np.float32),
            "t_m": np.ones((n, steps, len(TIME_GROUPS)), dtype=np.float32),
            "st_m": np.ones((n, len(STATIC_GROUPS)), dtype=np.float32),
            "months": np.broadcast_to(self.months, (n, steps)).copy(),
        }

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        import torch

        model = self.model
        device = torch.device(self.device)
        chunk = CHUNK if device.type == "cpu" else DEVICE_CHUNK
        n = np.asarray(pixels).shape[0]
        out = np.zeros((n, EMBED_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, chunk):
                valid_part = None if valid is None else valid[start : start + chunk]
                arrays = self.inputs(pixels[start : start + chunk], valid_part)
                tensors = [torch.from_numpy(arrays[k]).to(device) for k in _FORWARD_ORDER]
                out[start : start + chunk] = model.pooled(*tensors, patch_size=self.patch_size,
                                                          input_resolution_m=self.gsd_m).cpu().numpy()
        if n == 0:
            self.inputs(pixels, valid)  # the same checks of shape and bands
        return self._check_output(out, len(self.bands))

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
        names = [b["name"] for b in inputs]
        if names != self.bands:
            raise EncoderError(f"galileo: contract for bands {names}, the encoder's bands are {self.bands}; pass the "
                               "bands in the encoder's order")
        if not np.isclose(gsd, self.gsd_m, rtol=1e-6):
            raise EncoderError(f"galileo: the chips have {gsd} m pixels, the encoder was set for gsd_m={self.gsd_m}; "
                               f"pass gsd_m={gsd}")
        if chip_size % self.patch_size:
            raise EncoderError(f"galileo: chip_size={chip_size} is not a multiple of patch_size={self.patch_size}")
        return self._contract_document(
            framework="pytorch",
            weights_sha256=self.weights_sha256(),
            weights_href=self.weights_href(),
            architecture="Galileo nano (pretrained, nasaharvest)",
            pooling="mean over unmasked tokens",
            parameters={
                "bands": list(self.bands),
                "channel_order": list(SPACE_TIME_CHANNELS),
                "sensor": self.sensor,
                "input_scale": self.input_scale,
                "channels": {b: galileo_channel(_split_label(b)[0], sensor=self.sensor) for b in self.bands},
                "timesteps": list(self.labels),
                "times": list(self.times),
                "months": [int(m) + 1 for m in self.months],
                "patch_size": self.patch_size,
                "gsd_m": self.gsd_m,
            },
            inputs=inputs,
            chip_size=chip_size,
            stride=stride,
            gsd=gsd,
            normalization={"method": "custom", "description": "Galileo pretraining statistics: (x - (mean - 2 std)) / "
                           "(4 std) per S1/S2 channel (config/normalization.json); NDVI from B4, B8 unscaled"},
            dim=EMBED_DIM,
            description=self.description,
        )


#: the order in which :meth:`GalileoNet.forward` takes its inputs
_FORWARD_ORDER = ("s_t_x", "sp_x", "t_x", "st_x", "s_t_m", "sp_m", "t_m", "st_m", "months")
