"""The ``checkpoint:PATH`` encoder: a compressor trained by ``eoembed train`` (:mod:`..compressor`).

A distilled or autoencoder checkpoint runs its convolutional network on standardised chips; a
``pca`` checkpoint runs its frozen teachers and projects their features on the stored components.
The registry names it by prefix (``PREFIXED`` in :mod:`.registry`) and imports it only when asked.

    eoembed produce SCENES... --encoder checkpoint:runs/nc/encoder.pt --chip-size 8 --out out/p
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eoembed._errors import CheckpointError, EncoderError

from ..compressor import _torch, build_encoder_net, file_sha256, load_checkpoint
from .base import Encoder, _band_inputs, _check_geometry

__all__ = ["CheckpointEncoder"]


class CheckpointEncoder(Encoder):
    """A trained compressor as an encoder: ``get_encoder("checkpoint:PATH")``.

    Chips are standardised with the training sample's per-band mean and std; invalid pixels become
    the band mean (0 after standardisation), as in training. The weights' SHA-256 is the file's.
    """

    name = "checkpoint"
    version = "1"
    description = "an encoder trained by `eoembed train` (checkpoint:PATH)"
    dim_rule = "the trained bottleneck"

    def __init__(self, target: str, *, batch_size: int = 256) -> None:
        torch = _torch()
        kind, _, where = target.partition(":")
        if kind != "checkpoint" or not where:
            raise EncoderError(f"{target!r}: use checkpoint:PATH with the encoder.pt written by `eoembed train`")
        self.path = Path(where)
        document = load_checkpoint(self.path)
        self.document = document
        self.architecture = dict(document["architecture"])
        self.input = dict(document["input"])
        self.teachers = None
        if self.architecture.get("kind") == "teacher-pca":
            self._pca_from(document)
        else:
            self.net = build_encoder_net(**{k: self.architecture[k] for k in ("bands", "chip_size", "dim", "widths")})
            try:
                self.net.load_state_dict(document["encoder_state"], strict=True)
            except RuntimeError as error:
                raise CheckpointError(f"{self.path}: the weights do not fit the declared architecture ({error})") from error
            self.net.eval()
        self.sha256 = file_sha256(self.path)
        self.name = str(document.get("name") or f"compressor-{document['objective']}")
        self.version = str(document.get("model_version", "1"))
        self.batch_size = int(batch_size)
        norm = self.input["normalization"]
        if self.teachers is None:
            self._mean = np.asarray(norm["mean"], np.float32)[None, :, None, None]
            self._std = np.asarray(norm["std"], np.float32)[None, :, None, None]
        del torch

    def _pca_from(self, document: dict) -> None:
        from ..teachers import Teachers

        state = document["encoder_state"]
        self.teachers = Teachers.from_checkpoint(document)
        self._feature_mean = state["feature_mean"].numpy().astype(np.float64)
        self._components_t = state["components"].numpy().astype(np.float64).T.copy()
        if self._components_t.shape != (self.teachers.dim, int(self.architecture["dim"])):
            raise CheckpointError(f"{self.path}: {self._components_t.shape[1]} components of "
                                  f"{self._components_t.shape[0]} features do not fit teachers of {self.teachers.dim} "
                                  f"features and dim {self.architecture['dim']}; the file is damaged")

    def to(self, device: str) -> "CheckpointEncoder":
        self.device = str(device)
        if self.teachers is not None:
            self.teachers.encoders = [e.to(self.device) for e in self.teachers.encoders]
        else:
            self.net.to(self.device)
        return self

    def dim(self, n_bands: int) -> int:
        return int(self.architecture["dim"])

    def _check_chips(self, pixels: np.ndarray) -> None:
        bands, size = int(self.architecture["bands"]), int(self.architecture["chip_size"])
        if pixels.shape[1] != bands or pixels.shape[2] != size or pixels.shape[3] != size:
            raise EncoderError(
                f"{self.path} was trained on chips of {bands} bands x {size} x {size} px; these are "
                f"{pixels.shape[1]} x {pixels.shape[2]} x {pixels.shape[3]}: pass --chip-size {size} and the "
                f"training bands ({', '.join(b['name'] for b in self.input['bands'])})"
            )

    def standardize(self, pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Chips as the network sees them: standardised, invalid or non-finite pixels at 0."""
        x = (pixels - self._mean) / self._std
        ok = np.isfinite(x)
        if valid is not None:
            ok &= valid[:, None, :, :]
        return np.where(ok, x, 0.0).astype(np.float32)

    def encode(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        torch = _torch()
        pixels, valid = self._check_input(pixels, valid)
        self._check_chips(pixels)
        if self.teachers is not None:
            # float64 and no BLAS call: a chip's vector does not depend on the batch it came in
            centred = self.teachers.targets(pixels, valid).astype(np.float64) - self._feature_mean
            projected = np.einsum("nf,fd->nd", centred, self._components_t, optimize=False)
            return self._check_output(projected.astype(np.float32), pixels.shape[1])
        x = self.standardize(pixels, valid)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + self.batch_size])).to(self.device)
                outputs.append(self.net(chunk).float().cpu().numpy())
        out = np.concatenate(outputs) if outputs else np.zeros((0, self.dim(0)), np.float32)
        return self._check_output(out, pixels.shape[1])

    def contract(self, *, bands: Sequence[str], chip_size: int, stride: int, gsd: float,
                 band_sources: Sequence[str] | None = None) -> dict:
        chip_size, stride, gsd = _check_geometry(chip_size, stride, gsd)
        trained = [b["name"] for b in self.input["bands"]]
        if list(bands) != trained:
            raise EncoderError(
                f"{self.path} was trained on bands {trained}; the inputs offer {list(bands)}: select and name "
                f"them with --bands (e.g. --bands {','.join(trained)})"
            )
        if chip_size != int(self.architecture["chip_size"]):
            raise EncoderError(f"{self.path} was trained on {self.architecture['chip_size']} px chips; "
                               f"pass --chip-size {self.architecture['chip_size']} (not {chip_size})")
        objective = self.document["objective"]
        parameters: dict[str, Any] = {
            "objective": objective,
            "widths": list(self.architecture["widths"]),
            "training_gsd_m": float(self.input["gsd_m"]),
            "checkpoint": self.path.name,
            "dim": self.dim(len(bands)),
        }
        if self.document.get("teachers"):  # what the bottleneck was taught to keep
            parameters["teachers"] = [{k: v for k, v in t.items() if k != "state"} for t in self.document["teachers"]]
        parameters.update(self.document.get("summary", {}))
        if self.teachers is not None:
            names = ", ".join(t["name"] for t in parameters["teachers"])
            architecture = f"PCA to {self.dim(len(bands))} of frozen teachers' standardised features ({names})"
        else:
            architecture = (f"convolutional compressor ({', '.join(map(str, self.architecture['widths']))} channels, "
                            f"{objective})")
        return self._contract_document(
            framework="pytorch",
            weights_sha256=self.sha256,
            weights_href=self.path.absolute().as_uri(),  # the writer copies it into the product (publishable_weights)
            architecture=architecture,
            pooling="none",
            parameters=parameters,
            inputs=_band_inputs(bands, band_sources),
            chip_size=chip_size,
            stride=stride,
            gsd=gsd,
            normalization=_normalization(self.input["normalization"]),
            dim=self.dim(len(bands)),
            description=f"bottleneck of a compressor trained by eoembed ({objective})",
        )


def _normalization(saved: dict) -> dict:
    """The input normalisation a checkpoint declares (none: its teachers normalise the chips themselves)."""
    if saved.get("method") == "none":
        return {"method": "none"}
    return {"method": "standardize", "mean": [float(v) for v in saved["mean"]], "std": [float(v) for v in saved["std"]]}
