"""Training chips: a seeded sample of chip windows from real imagery, read with the producer's
readers, band mappings and tiling, plus the per-band normalisation and the seeded augmentations.

Everything here depends only on the configuration and the seed, never on the rank count, so every
rank builds the same sample and a resumed run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eoembed._errors import ImageryError, TrainingConfigError

from .tile import chip_windows
from .trainconfig import TrainConfig


@dataclass
class ChipSample:
    pixels: np.ndarray  # float32 (n, bands, size, size), as read (not standardised)
    valid: np.ndarray  # bool (n, size, size)
    bands: list[dict]  # [{"name", "source"}] in chip order
    mean: np.ndarray  # float32 (bands,) over valid pixels
    std: np.ndarray  # float32 (bands,)
    gsd: float
    windows_drawn: int

    def __len__(self) -> int:
        return len(self.pixels)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.pixels.tobytes())
        digest.update(self.valid.tobytes())
        return digest.hexdigest()

    def standardize(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Per-band z-scores; invalid pixels become 0 (the band mean), as the checkpoint encoder does."""
        x = (pixels - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return np.where(valid[:, None] & np.isfinite(x), x, 0.0).astype(np.float32)


def open_training_inputs(config: TrainConfig) -> list:
    """The inputs as scenes, stacks, cubes or samples, with the band selection and nodata of the config applied."""
    from .distribute import open_inputs, select_bands

    opened = [scene for path in config.inputs for scene in open_inputs(
        path, s1_root=config.s1_root, s2_offset=config.s2_offset, mask_clouds=config.mask_clouds)]
    scenes = []
    for scene in opened:
        if isinstance(scene, dict):  # an item of a collection that could not be opened
            raise ImageryError(f"{scene['input']}: {scene['reason']}")
        if config.bands:
            scene = select_bands(scene, config.bands)
        if config.nodata is not None:
            scene = dataclasses.replace(scene, nodata=float(config.nodata))
        if scenes and tuple(scene.band_names) != tuple(scenes[0].band_names):
            raise ImageryError(f"{scene.path} has bands {list(scene.band_names)}, but {scenes[0].path} has "
                               f"{list(scenes[0].band_names)}; one encoder takes one band layout (select them with bands = [...])")
        scenes.append(scene)
    return scenes


def sample_chips(config: TrainConfig) -> ChipSample:
    """Draw up to ``max_chips`` chip windows from all inputs (seeded, without replacement), read them and
    keep those whose valid fraction reaches ``min_valid_fraction``."""
    from .produce import chip_batches

    scenes = open_training_inputs(config)
    stride = config.stride or config.chip_size
    per_scene = [chip_windows(s.width, s.height, chip_size=config.chip_size, stride=stride) for s in scenes]
    total = sum(len(w) for w in per_scene)
    if total == 0:
        raise ImageryError(f"the inputs are smaller than chip_size = {config.chip_size} px: no chip to train on")
    rng = np.random.default_rng([config.seed, 0x5A4D])
    chosen = np.arange(total) if total <= config.max_chips else np.sort(rng.choice(total, config.max_chips, replace=False))
    pixels, valid, start = [], [], 0
    for scene, windows in zip(scenes, per_scene):
        mine = chosen[(chosen >= start) & (chosen < start + len(windows))] - start
        start += len(windows)
        if len(mine) == 0:
            continue
        for batch in chip_batches(scene, chip_size=config.chip_size, stride=stride, batch_size=512,
                                  min_valid_fraction=config.min_valid_fraction, windows=[windows[i] for i in mine]):
            pixels.append(batch.pixels)
            valid.append(batch.valid)
    if not pixels:
        raise ImageryError(f"no sampled chip has a valid fraction >= min_valid_fraction = {config.min_valid_fraction}; "
                           "lower it, or set nodata correctly")
    pixels_arr = np.ascontiguousarray(np.concatenate(pixels), dtype=np.float32)
    valid_arr = np.concatenate(valid) & np.isfinite(pixels_arr).all(axis=1)
    if len(pixels_arr) < config.batch_size:
        raise TrainingConfigError(f"training config: only {len(pixels_arr)} usable chips were sampled, fewer than "
                                  f"batch_size = {config.batch_size}; add inputs, raise max_chips or lower batch_size")
    mean, std = band_statistics(pixels_arr, valid_arr)
    first = scenes[0]
    sources = list(first.band_sources) if hasattr(first, "band_sources") else [Path(first.path).name] * first.count
    bands = [{"name": str(n), "source": str(s)} for n, s in zip(first.band_names, sources)]
    return ChipSample(pixels=pixels_arr, valid=valid_arr, bands=bands, mean=mean, std=std,
                      gsd=float(abs(first.res[0])), windows_drawn=int(len(chosen)))


def band_statistics(pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over valid pixels (float64 sums); a constant band gets std 1."""
    weight = valid[:, None].astype(np.float64)
    count = max(float(weight.sum()), 1.0)
    x = np.where(valid[:, None], pixels, 0.0).astype(np.float64)
    mean = (x * weight).sum(axis=(0, 2, 3)) / count
    var = (((x - mean[None, :, None, None]) ** 2) * weight).sum(axis=(0, 2, 3)) / count
    std = np.sqrt(var)
    std[std <= 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def epoch_transforms(seed: int, epoch: int, n: int, *, augment: bool) -> np.ndarray:
    """One of the 8 flips/quarter turns per chip for this epoch (0 = unchanged)."""
    if not augment:
        return np.zeros(n, dtype=np.int8)
    return np.random.default_rng([seed, epoch, 1]).integers(0, 8, n).astype(np.int8)


def epoch_block_masks(seed: int, epoch: int, n: int, size: int, ratio: float) -> np.ndarray:
    """Masked autoencoder: per chip, the 2x2 pixel blocks hidden from the encoder (True = hidden)."""
    blocks = max(1, size // 2)
    hidden = np.random.default_rng([seed, epoch, 2]).random((n, blocks, blocks)) < ratio
    return np.repeat(np.repeat(hidden, 2, axis=1), 2, axis=2)[:, :size, :size]


def apply_transforms(arrays: list[np.ndarray], codes: np.ndarray) -> list[np.ndarray]:
    """Apply each chip's flip/turn code to every array (the last two axes are rows and columns).
    Chips are turned in groups of one code, so a batch costs eight array operations, not one per chip."""
    out = [a.copy() for a in arrays]
    for code in np.unique(codes):
        if code == 0:
            continue
        chosen = np.flatnonzero(codes == code)
        for a in out:
            turned = np.rot90(a[chosen], int(code) % 4, axes=(-2, -1))
            a[chosen] = turned[..., ::-1] if code >= 4 else turned
    return out
