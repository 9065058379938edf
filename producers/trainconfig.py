"""The configuration of ``eoembed train``: a TOML file, checked before any rank starts work.

    inputs = ["../../shared/data/imagery/nc_landsat7_landclass96/landsat_multiband.tif"]
    out = "runs/nc-autoencoder"
    chip_size = 8
    objective = "autoencoder"      # or "masked-autoencoder", "distill", "pca"
    dim = 64                       # the bottleneck D (<= 1024)
    epochs = 10
    batch_size = 64                # global: split over the ranks
    lr = 1e-3
    seed = 0

Distillation compresses the concatenated features of several frozen encoders (the form that won the
Embed2Scale challenge); ``pca`` is the training-free entry of that challenge (the teachers' features
reduced by a PCA fitted on the training chips, e.g. rcf averaged over seasons):

    objective = "distill"
    teachers = [{name = "stats"}, {name = "rcf", options = {features = 512}, weight = 2.0}]

Every error names the key, the value and what to give instead.
"""

from __future__ import annotations

import numbers
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from eoembed._errors import TrainingConfigError

from .embed2scale import S2_OFFSET

OBJECTIVES = ("autoencoder", "masked-autoencoder", "distill", "pca")
TEACHER_OBJECTIVES = ("distill", "pca")  # the objectives that read frozen teachers' features
MAX_DIM = 1024
TEACHER_KEYS = ("name", "options", "weight")
PRECISIONS = ("auto", "none", "bf16", "fp16")
# Keys that may change between a run and its resumption (the rest must match the checkpoint's).
RESUMABLE_CHANGES = ("epochs", "progress", "teacher_cache")


@dataclass
class TrainConfig:
    inputs: list[str]
    out: str
    chip_size: int = 8
    stride: int | None = None
    bands: list[str] | None = None  # encoder inputs: band names or 1-based indexes, "new=old" renames
    nodata: float | None = None
    s1_root: str | None = None
    s2_offset: int = S2_OFFSET  # Embed2Scale files: S2 stored this far above reflectance x 10 000
    mask_clouds: bool = True  # Embed2Scale files: pixels the cloud mask does not call clear are invalid
    min_valid_fraction: float = 0.9
    max_chips: int = 4096  # chips sampled from the inputs (a seeded draw of chip windows)
    objective: str = "autoencoder"
    dim: int = 64
    widths: list[int] = field(default_factory=lambda: [32, 64])
    mask_ratio: float = 0.5  # masked-autoencoder: share of 2x2 pixel blocks hidden from the encoder
    # distill / pca: frozen encoders whose concatenated, standardised features are compressed to dim;
    # each {name, options = {...}, weight = 1.0} (weight: the teacher's share of the loss)
    teachers: list[dict[str, Any]] | None = None
    teacher: str | None = None  # shorthand for one teacher: teachers = [{name = teacher, options = teacher_options}]
    teacher_options: dict[str, Any] = field(default_factory=dict)
    teacher_cache: str | None = None  # folder keeping the teachers' features between runs (default OUT/teacher-features)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    augment: bool = True  # seeded flips and quarter turns
    mixed_precision: str = "auto"  # auto: bf16 on a GPU, none on the CPU
    name: str | None = None  # model name recorded in products (default compressor-OBJECTIVE)
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(key: str, value: Any, want: str) -> TrainingConfigError:
    return TrainingConfigError(f"training config: {key} = {value!r}; {want}")


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(key, value, f"give a whole number >= {minimum}")
    return int(value)


def _float(key: str, value: Any, low: float, high: float | None = None, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(key, value, "give a number")
    value = float(value)
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high) or value != value:
        bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise _fail(key, value, f"give a number {bound}")
    return value


def check_config(config: TrainConfig) -> TrainConfig:
    """Raise :class:`TrainingConfigError` for the first bad value; returns ``config``."""
    if not isinstance(config.inputs, list) or not config.inputs or not all(isinstance(p, str) for p in config.inputs):
        raise _fail("inputs", config.inputs, "give a list of image paths (GeoTIFFs, BigEarthNet folders, cubes)")
    if not isinstance(config.out, str) or not config.out:
        raise _fail("out", config.out, "give the folder for checkpoints and the trained encoder")
    config.chip_size = _int("chip_size", config.chip_size, 2)
    if config.stride is not None:
        config.stride = _int("stride", config.stride, 1)
    if config.objective not in OBJECTIVES:
        raise _fail("objective", config.objective, f"give one of {', '.join(OBJECTIVES)}")
    config.dim = _int("dim", config.dim, 1)
    if config.dim > MAX_DIM:
        raise _fail("dim", config.dim, f"give at most {MAX_DIM} values per chip")
    if not isinstance(config.widths, list) or not config.widths:
        raise _fail("widths", config.widths, "give a list of channel counts, one per downsampling stage, e.g. [32, 64]")
    config.widths = [_int("widths[]", w, 1) for w in config.widths]
    factor = 2 ** len(config.widths)
    if config.chip_size % factor:
        raise _fail("chip_size", config.chip_size,
                    f"{len(config.widths)} stages halve the chip {len(config.widths)} times: give a multiple of {factor} "
                    "or fewer widths")
    config.mask_ratio = _float("mask_ratio", config.mask_ratio, 0.0, 0.95)
    if not isinstance(config.teacher_options, dict):
        raise _fail("teacher_options", config.teacher_options, "give a table of the teacher's options")
    config.teachers = _teachers(config)
    if config.teacher_cache is not None and (not isinstance(config.teacher_cache, str) or not config.teacher_cache):
        raise _fail("teacher_cache", config.teacher_cache, "give a folder path for the teachers' features")
    config.epochs = _int("epochs", config.epochs, 1)
    config.batch_size = _int("batch_size", config.batch_size, 1)
    config.max_chips = _int("max_chips", config.max_chips, 1)
    config.lr = _float("lr", config.lr, 0.0, 10.0, open_low=True)
    config.weight_decay = _float("weight_decay", config.weight_decay, 0.0, 1.0)
    config.min_valid_fraction = _float("min_valid_fraction", config.min_valid_fraction, 0.0, 1.0)
    config.seed = _int("seed", config.seed, 0)
    config.s2_offset = _int("s2_offset", config.s2_offset, 0)
    for key in ("augment", "mask_clouds"):
        if not isinstance(getattr(config, key), bool):
            raise _fail(key, getattr(config, key), "give true or false")
    if config.mixed_precision not in PRECISIONS:
        raise _fail("mixed_precision", config.mixed_precision, f"give one of {', '.join(PRECISIONS)}")
    if config.bands is not None and (not isinstance(config.bands, list) or not all(isinstance(b, str) for b in config.bands)):
        raise _fail("bands", config.bands, "give a list of band names or 1-based indexes as strings, e.g. [\"B1\", \"3\"]")
    if config.max_chips < config.batch_size:
        raise _fail("max_chips", config.max_chips, f"sample at least batch_size = {config.batch_size} chips")
    return config


def _teachers(config: TrainConfig) -> list[dict[str, Any]] | None:
    """The teachers in one form, [{name, options, weight}], each name checked against the registry."""
    if config.teachers is not None and config.teacher is not None:
        raise _fail("teacher", config.teacher, "give either teacher (one) or teachers (a list), not both")
    given = config.teachers
    if given is None and config.teacher is not None:
        given = [{"name": config.teacher, "options": dict(config.teacher_options)}]
    if config.objective not in TEACHER_OBJECTIVES:
        return given
    if given is None:
        raise _fail("teachers", None, f"{config.objective} needs teacher encoders, e.g. teachers = "
                    "[{name = \"stats\"}, {name = \"rcf\"}] (or teacher = \"rcf\")")
    if not isinstance(given, list) or not given:
        raise _fail("teachers", given, "give a list of tables {name = ..., options = {...}, weight = 1.0}")
    from .encoders import list_encoders

    known = [e["name"] for e in list_encoders()]
    teachers = []
    for i, entry in enumerate(given):
        key = "teacher" if config.teacher is not None else f"teachers[{i}]"
        if not isinstance(entry, dict):
            raise _fail(key, entry, "give a table {name = ..., options = {...}, weight = 1.0}")
        unknown = sorted(set(entry) - set(TEACHER_KEYS))
        if unknown:
            raise _fail(f"{key}.{unknown[0]}", entry[unknown[0]], f"a teacher has only the keys {', '.join(TEACHER_KEYS)}")
        name = entry.get("name")
        user_model = isinstance(name, str) and name.split(":", 1)[0] in ("checkpoint", "torchscript", "module")
        if not isinstance(name, str) or not (name in known or user_model):
            raise _fail(f"{key}.name" if config.teacher is None else key, name,
                        f"give a registered encoder: {', '.join(known)} (or checkpoint:PATH, torchscript:PATH, "
                        "module:package.module:callable)")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise _fail(f"{key}.options", options, "give a table of the teacher's options")
        weight = _float(f"{key}.weight", entry.get("weight", 1.0), 0.0, open_low=True)
        teachers.append({"name": name, "options": dict(options), "weight": weight})
    return teachers


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML training config; relative input paths are relative to the file, ``out`` to the working
    folder (as for ``eoembed produce``). ``overrides`` (e.g. the CLI's ``--out``) win."""
    path = Path(path)
    try:
        settings = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TrainingConfigError(f"training config {path} does not exist") from error
    except tomllib.TOMLDecodeError as error:
        raise TrainingConfigError(f"training config {path} is not valid TOML: {error}") from error
    return config_from_dict(settings, base=path.parent, where=str(path), **overrides)


def config_from_dict(settings: dict[str, Any], *, base: Path | None = None, where: str = "training config",
                     **overrides: Any) -> TrainConfig:
    settings = {**settings, **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TrainingConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    for required in ("inputs", "out"):
        if required not in settings:
            raise TrainingConfigError(f"{where}: {required!r} is missing; give the image inputs and the out folder")
    if base is not None:
        if isinstance(settings["inputs"], list):
            settings["inputs"] = [p if not isinstance(p, str) or Path(p).is_absolute() else str(base / p)
                                  for p in settings["inputs"]]
        value = settings.get("s1_root")  # like the inputs; `out` stays relative to the working folder
        if isinstance(value, str) and not Path(value).is_absolute():
            settings["s1_root"] = str(base / value)
    return check_config(TrainConfig(**settings))
