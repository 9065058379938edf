"""Frozen teachers of ``eoembed train``: several registered encoders whose concatenated features a
compressor learns to reproduce through its bottleneck (``distill``) or a PCA reduces (``pca``).

Each teacher's features are standardised per feature with the statistics of the un-augmented
training chips and scaled by ``sqrt(weight_share / dim)``, so the squared error summed over all
columns is the weighted mean of the teachers' mean squared errors, whatever their sizes (25 stats
values do not drown in 512 rcf values). Those scaled features are the *targets*.

The targets are computed once, before the first step, never per step: for every chip and every flip
or quarter turn that training can draw (one view for a :attr:`~.encoders.Encoder.flip_invariant`
teacher, or without augmentation), each rank encoding its share of the chips. Teachers that are
fitted (rcf) are fitted once on rank 0 and their state is broadcast, so every rank holds the same
teachers; their states travel in the checkpoint of a ``pca`` compressor, which runs them to produce.

With a cache folder (by default ``OUT/teacher-features``) each teacher's features of each view are
kept as ``.npy`` files named by a digest of the teacher (name, version, options, weights SHA-256),
the chips' fingerprint and the view, so a resumed run, or another run on the same chips, reads them
instead of encoding again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .encoders import Encoder, get_encoder
from .trainset import ChipSample, apply_transforms

VIEWS = 8  # the flips and quarter turns of trainset.epoch_transforms


def _fittable(encoder: Encoder) -> bool:
    return hasattr(encoder, "fit") and hasattr(encoder, "state") and hasattr(type(encoder), "from_state")


def state_for_checkpoint(state: dict | None) -> dict | None:
    """A fitted encoder's state with numpy arrays as tensors (checkpoints load with weights_only=True)."""
    if state is None:
        return None
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


class Teachers:
    """The teachers of one run: encoders, the statistics that standardise their features, their card."""

    def __init__(self, specs: Sequence[dict], encoders: Sequence[Encoder], *, mean: np.ndarray, std: np.ndarray,
                 descriptions: list[dict], identity_features: np.ndarray | None = None) -> None:
        self.specs = [dict(s) for s in specs]
        self.encoders = list(encoders)
        self.dims = [int(d["dim"]) for d in descriptions]
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        total_weight = sum(float(s["weight"]) for s in self.specs)
        self.scale = np.concatenate([np.full(dim, np.sqrt(float(s["weight"]) / total_weight / dim), np.float32)
                                     for s, dim in zip(self.specs, self.dims)])
        self.descriptions = descriptions
        self.dim = int(sum(self.dims))
        self._identity_features = identity_features  # raw features of the un-augmented training chips
        self._store: _FeatureStore | None = None

    @classmethod
    def fit(cls, comm, specs: Sequence[dict], sample: ChipSample, *, chip_size: int, device: str,
            cache: str | os.PathLike | None = None) -> "Teachers":
        """Build the teachers on every rank (fitted ones fitted on rank 0 on the training chips) and take
        the standardisation from the un-augmented chips; ``cache`` keeps their features between runs."""
        encoders, states = [], []
        for spec in specs:
            encoder = get_encoder(spec["name"], **spec["options"])
            state = None
            if _fittable(encoder):
                if comm.Get_rank() == 0:
                    state = encoder.fit(sample.pixels, sample.valid).state()
                state = comm.bcast(state, root=0)
                encoder = type(encoder).from_state(state)
            encoders.append(encoder.to(device))
            states.append(state)
        bands = [b["name"] for b in sample.bands]
        sources = [b["source"] for b in sample.bands]
        descriptions = []
        for spec, encoder, state in zip(specs, encoders, states):
            contract = encoder.contract(bands=bands, chip_size=chip_size, stride=chip_size, gsd=sample.gsd,
                                        band_sources=sources)
            descriptions.append({"name": spec["name"], "options": dict(spec["options"]), "weight": float(spec["weight"]),
                                 "version": contract["version"], "dim": int(contract["output"]["dim"]),
                                 "weights_sha256": contract["weights_sha256"], "state": state})
        store = _FeatureStore(comm, sample, cache)
        raw = np.concatenate([store.features(e, d, 0) for e, d in zip(encoders, descriptions)], axis=1)
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std <= 1e-12] = 1.0
        teachers = cls(specs, encoders, mean=mean, std=std, descriptions=descriptions, identity_features=raw)
        teachers._store = store
        return teachers

    @classmethod
    def from_checkpoint(cls, document: dict, *, device: str = "cpu") -> "Teachers":
        """The teachers a ``pca`` checkpoint recorded, with their fitted states."""
        encoders, specs = [], []
        for entry in document["teachers"]:
            encoder = get_encoder(entry["name"], **entry["options"])
            if entry.get("state") is not None:
                encoder = type(encoder).from_state(entry["state"])
            encoders.append(encoder.to(device))
            specs.append({"name": entry["name"], "options": entry["options"], "weight": entry["weight"]})
        state = document["encoder_state"]
        return cls(specs, encoders, mean=state["teacher_mean"].numpy(), std=state["teacher_std"].numpy(),
                   descriptions=[{k: v for k, v in e.items()} for e in document["teachers"]])

    def card(self) -> list[dict]:
        """What a model card records of each teacher: name, options, version, weight, dim, weights checksum."""
        return [{k: v for k, v in d.items() if k != "state"} for d in self.descriptions]

    def checkpoint_entries(self) -> list[dict]:
        return [{**d, "state": state_for_checkpoint(d["state"])} for d in self.descriptions]

    def _scaled(self, raw: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
        """Raw features (of the teachers in ``columns``) as targets: standardised and weight-scaled."""
        return ((raw - self.mean[columns]) / self.std[columns] * self.scale[columns]).astype(np.float32)

    def identity_targets(self) -> np.ndarray:
        """The targets of the un-augmented training chips (only on teachers built by :meth:`fit`)."""
        assert self._identity_features is not None
        return self._scaled(self._identity_features)

    def targets(self, pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """(n, dim) float32: the chips' standardised, weight-scaled teacher features."""
        return self._scaled(_concatenated(self.encoders, pixels, valid))

    def target_views(self, *, augment: bool) -> "TargetViews":
        """The targets of every training chip under every flip/turn training can draw, computed once
        (only on teachers built by :meth:`fit`)."""
        per_teacher, start = [], 0
        for encoder, description, dim in zip(self.encoders, self.descriptions, self.dims):
            columns = slice(start, start + dim)
            start += dim
            views = 1 if encoder.flip_invariant or not augment else VIEWS
            found = [self._identity_features[:, columns] if code == 0 else self._store.features(encoder, description, code)
                     for code in range(views)]
            per_teacher.append(np.stack([self._scaled(raw, columns) for raw in found]))
        return TargetViews(per_teacher)


class TargetViews:
    """Precomputed targets, one array (views, chips, dim) per teacher."""

    def __init__(self, per_teacher: list[np.ndarray]) -> None:
        self.per_teacher = per_teacher

    def take(self, index: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(len(index), dim) targets of chips ``index`` under their flip/turn ``codes``."""
        return np.concatenate([views[codes if len(views) > 1 else 0, index] for views in self.per_teacher], axis=1)


class _FeatureStore:
    """Raw features of the training chips per teacher and view: encoded by all ranks together, or read
    from the cache folder, where rank 0 writes them atomically."""

    def __init__(self, comm, sample: ChipSample, cache: str | os.PathLike | None) -> None:
        self.comm, self.sample = comm, sample
        self.cache = Path(cache) if cache is not None else None
        self.fingerprint = sample.fingerprint()

    def _path(self, description: dict, code: int) -> Path | None:
        if self.cache is None:
            return None
        key = {k: description[k] for k in ("name", "version", "options", "weights_sha256", "dim")}
        digest = hashlib.sha256(json.dumps({**key, "chips": self.fingerprint, "view": code}, sort_keys=True,
                                           default=str).encode()).hexdigest()[:32]
        return self.cache / f"{description['name'].replace(':', '-').replace('/', '-')}-{digest}.npy"

    def features(self, encoder: Encoder, description: dict, code: int) -> np.ndarray:
        path = self._path(description, code)
        found = None  # rank 0 decides and shares: the ranks may not see one file system
        if path is not None and self.comm.Get_rank() == 0 and path.is_file():
            found = np.load(path)
            found = found if found.shape == (len(self.sample), description["dim"]) else None
        found = self.comm.bcast(found, root=0)
        if found is not None:
            return found
        raw = _encode_shared(self.comm, lambda p, v: encoder.encode(p, v).astype(np.float32),
                             *_view(self.sample, code))
        if path is not None and self.comm.Get_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp"
            with open(tmp, "wb") as handle:
                np.save(handle, raw)
            os.replace(tmp, path)
        return raw


def _concatenated(encoders: Sequence[Encoder], pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    return np.concatenate([e.encode(pixels, valid).astype(np.float32) for e in encoders], axis=1)


def _view(sample: ChipSample, code: int) -> tuple[np.ndarray, np.ndarray]:
    if code == 0:
        return sample.pixels, sample.valid
    codes = np.full(len(sample), code, dtype=np.int8)
    pixels, valid = apply_transforms([sample.pixels, sample.valid], codes)
    return pixels, valid


def _encode_shared(comm, encode, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``encode`` over all chips, each rank taking one contiguous share; every rank gets the whole result.
    Encoders give a chip the same vector whatever batch it comes in, so the result does not depend on
    the rank count."""
    shares = np.array_split(np.arange(len(pixels)), comm.Get_size())
    mine = shares[comm.Get_rank()]
    part: Any = encode(pixels[mine], valid[mine]) if len(mine) else None
    parts = [p for p in comm.allgather(part) if p is not None]
    return np.concatenate(parts)
