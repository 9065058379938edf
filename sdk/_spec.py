"""The spec in code: its version, URLs and the footer schema, all read from spec/schemas.

The version is written once, as the `const` of `spec_version` in footer.schema.json; everything here
derives from that file so code and spec cannot disagree. The schemas of earlier versions that readers
still accept are kept unchanged under ``spec/schemas/v{version}/``: a footer is checked against the
schema of the version it declares, so a product stays exactly as valid as when it was written.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

from ._errors import SpecError, UnknownFieldError

FOOTER_KEY = b"eoembed"
STAC_VERSION = "1.1.0"
EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
TABLE_EXTENSION = "https://stac-extensions.github.io/table/v1.2.0/schema.json"


@lru_cache(maxsize=None)
def spec_schema(name: str, version: str | None = None) -> dict[str, Any]:
    """A schema of ours by file name (``footer`` or ``stac-extension``), from package data: this
    version's, or an earlier ``version``'s that readers still accept."""
    folder = files("eoembed.spec") / "schemas"
    if version is not None and version != SPEC_VERSION:
        if version not in READABLE_SPEC_VERSIONS:
            raise SpecError(f"eoembed spec {version!r} is not one this reader knows; it reads {list(READABLE_SPEC_VERSIONS)}")
        folder = folder / f"v{version}"
    return json.loads((folder / f"{name}.schema.json").read_text(encoding="utf-8"))


def _earlier_versions() -> tuple[str, ...]:
    folder = files("eoembed.spec") / "schemas"
    found = [node.name[1:] for node in folder.iterdir() if node.is_dir() and node.name.startswith("v")]
    return tuple(sorted(found, key=lambda v: tuple(int(p) for p in v.split("."))))


SPEC_VERSION: str = spec_schema("footer")["definitions"]["spec_version"]["const"]
# Versions a reader opens and a validator checks (each against its own schemas); writers write SPEC_VERSION.
READABLE_SPEC_VERSIONS: tuple[str, ...] = (*_earlier_versions(), SPEC_VERSION)
FOOTER_SCHEMA_ID: str = spec_schema("footer")["$id"]
STAC_EXTENSION: str = spec_schema("stac-extension")["$id"]


def stac_extension_url(version: str) -> str:
    """The ``$id`` of the eoembed STAC extension schema of a readable spec version."""
    return STAC_EXTENSION if version == SPEC_VERSION else spec_schema("stac-extension", version)["$id"]


@lru_cache(maxsize=None)
def _footer_validator(version: str = SPEC_VERSION):
    import jsonschema

    from ._schemas import _FORMAT_CHECKER  # RFC 3339 date-time without an extra dependency

    schema = spec_schema("footer", version)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=_FORMAT_CHECKER)


def footer_errors(footer: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every violation of a footer as (path, kind, message): the schema of the version it declares
    (this version's when it declares none this reader knows), then the rules across fields that JSON
    Schema cannot express. Empty when valid."""
    out = []
    version = footer.get("spec_version") if isinstance(footer, dict) else None
    validator = _footer_validator(version if version in READABLE_SPEC_VERSIONS else SPEC_VERSION)
    for error in validator.iter_errors(footer):
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        out.append((path, error.validator, error.message))
    if not out:
        out = _cross_field_errors(footer)
    return sorted(out)


def _cross_field_errors(footer: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    model, embedding = footer["model"], footer["embedding"]
    quant = embedding["quantization"]
    dim = embedding["dim"]
    if model["output"]["dim"] != dim:
        out.append(("embedding/dim", "consistency", f"embedding.dim {dim} differs from model.output.dim {model['output']['dim']}"))
    if quant["dtype"] != embedding["dtype"]:
        out.append(("embedding/dtype", "consistency", f"embedding.dtype {embedding['dtype']!r} differs from quantization.dtype {quant['dtype']!r}"))
    if quant["method"] == "binary" and dim % 8:
        out.append(("embedding/dim", "consistency", f"binary codes need a dimension divisible by 8, got {dim}"))
    if quant["method"] == "binary" and not embedding["normalized"]:
        # De-quantised 1-bit codes are unit vectors by the formula, whatever the source vectors were.
        out.append(("embedding/normalized", "consistency", "binary codes de-quantise to unit vectors: normalized must be true"))
    for key in ("scale", "offset"):
        if key in quant and len(quant[key]) not in (1, dim):
            out.append((f"embedding/quantization/{key}", "consistency", f"{key} has {len(quant[key])} values; give 1 or {dim}"))
        if key in quant and quant["method"] != "linear":
            out.append((f"embedding/quantization/{key}", "consistency", f"{key} is only defined for method 'linear', not {quant['method']!r}"))
    if "pixel" in footer and quant["method"] == "binary":
        out.append(("pixel", "consistency", "pixel products store float32, float16 or int8 codes (linear, per-row, sqrt); "
                    "binary codes are for chip search indexes"))
    bands = len(model["input"]["bands"])
    for key in ("mean", "std", "min", "max"):
        values = model["input"]["normalization"].get(key)
        if values is not None and len(values) != bands:
            out.append((f"model/input/normalization/{key}", "consistency", f"{key} has {len(values)} values for {bands} bands"))
    return out


def check_footer(footer: dict[str, Any], *, where: str = "eoembed metadata") -> None:
    """Raise :class:`SpecError` (or :class:`UnknownFieldError`) for the first violations."""
    errors = footer_errors(footer)
    if not errors:
        return
    unknown = [e for e in errors if e[1] == "additionalProperties"]
    if unknown:
        path, _, message = unknown[0]
        raise UnknownFieldError(
            f"{where}: {message} at {path}; eoembed spec {SPEC_VERSION} defines no such field "
            "(remove it, or keep custom data outside the eoembed prefix)"
        )
    lines = "; ".join(f"{path}: {message}" for path, _, message in errors[:5])
    raise SpecError(f"{where} does not follow eoembed spec {SPEC_VERSION}: {lines}")
