"""The spec's examples, version and code table agree with the schemas and the validator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eoembed._quantize import Quantization
from eoembed._spec import SPEC_VERSION, footer_errors

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "spec"
EXAMPLES = SPEC / "examples"
INVALID = EXAMPLES / "invalid"
README = SPEC / "README.md"
VALIDATORS = (REPO / "sdk" / "_validate.py", REPO / "sdk" / "_validate_file.py", REPO / "sdk" / "_validate_tiles.py")

VALID_FILES = sorted(EXAMPLES.glob("*.json"))
INVALID_FILES = sorted(INVALID.glob("*.json"))

# Invalid example -> (substring of an error path, substring of that error's message).
EXPECTED = {
    "band-without-source.json": ("model/input/bands/3", "'source'"),
    "bands-empty.json": ("model/input/bands", "non-empty"),
    "chip-size-0.json": ("model/input/chip_size_px", "minimum"),
    "embedding-dim-0.json": ("embedding/dim", "minimum"),
    "grid-alignment-diagonal.json": ("grid/alignment", "'diagonal'"),
    "grid-cell-alignment-without-pixel-size.json": ("grid", "'pixel_size_m' is a required property"),
    "grid-kind-h3.json": ("grid/definition/kind", "'h3'"),
    "license-missing.json": ("(root)", "'license'"),
    "metric-manhattan.json": ("embedding/metric", "'manhattan'"),
    "model-unknown-field.json": ("model", "'checkpoint' was unexpected"),
    "model-unknown-names-no-contract-field.json": ("model/unknown/0", "'checkpoint_epoch' is not one of"),
    "normalization-method-unknown.json": ("model/input/normalization/method", "'zscore'"),
    "normalization-std-0.json": ("model/input/normalization/std/10", "minimum"),
    "provenance-missing-software-version.json": ("provenance", "'software_version'"),
    "quantization-binary-with-float32.json": ("embedding/quantization/dtype", "'uint8'"),
    "quantization-dtype-int8-with-none.json": ("embedding/quantization/dtype", "'int8'"),
    "quantization-linear-without-scale.json": ("embedding/quantization", "'scale' is a required property"),
    "quantization-scale-0.json": ("embedding/quantization/scale/0", "minimum"),
    "spec-version-9.9.9.json": ("spec_version", "was expected"),
    "top-level-unknown-field.json": ("(root)", "'extra' was unexpected"),
    "weights-sha256-abc.json": ("model/weights_sha256", "'abc'"),
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _leaf_paths(value, prefix=()):
    if isinstance(value, (dict, list)) and not value:
        yield prefix, value  # an empty container is a leaf too
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaf_paths(sub, prefix + (key,))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _leaf_paths(sub, prefix + (i,))
    else:
        yield prefix, value


# -- examples -------------------------------------------------------------------------------------


def test_examples_exist():
    assert {p.name for p in VALID_FILES} >= {"footer.json", "footer-int8-per-row.json"}
    assert len(INVALID_FILES) >= 8
    assert {p.name for p in INVALID_FILES} == set(EXPECTED), "keep EXPECTED in step with spec/examples/invalid"


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_example(path):
    footer = _load(path)
    assert footer_errors(footer) == []
    assert footer["spec_version"] == SPEC_VERSION
    # What the schema cannot say but the writer enforces.
    embedding = footer["embedding"]
    assert embedding["dim"] == footer["model"]["output"]["dim"]
    assert embedding["dtype"] == embedding["quantization"]["dtype"]
    Quantization.from_dict(embedding["quantization"], dim=embedding["dim"])
    norm = footer["model"]["input"]["normalization"]
    for key in ("mean", "std", "min", "max"):
        if key in norm:
            assert len(norm[key]) == len(footer["model"]["input"]["bands"])


def test_per_row_example_uses_the_scale_column():
    quant = _load(EXAMPLES / "footer-int8-per-row.json")["embedding"]["quantization"]
    assert quant["method"] == "per-row" and quant["dtype"] == "int8" and quant["scale_column"] == "scale"


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_invalid_example(path):
    errors = footer_errors(_load(path))
    assert errors, f"{path.name} should violate the footer schema"
    where, what = EXPECTED[path.name]
    assert any(where in p and what in m for p, _, m in errors), errors


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_invalid_example_changes_one_thing(path):
    base = dict(_leaf_paths(_load(EXAMPLES / "footer.json")))
    changed = dict(_leaf_paths(_load(path)))
    differing = {k for k in set(base) | set(changed) if base.get(k, object()) != changed.get(k, object())}
    # One change: one leaf set, added or removed, or one subtree (list emptied, object removed).
    roots = {k[: min(len(d) for d in differing)] for k in differing}
    assert len(roots) == 1 or len(differing) == 1, f"{path.name} changes {sorted(map(str, differing))}"


# -- the version is written once ------------------------------------------------------------------


def _schema(name: str) -> dict:
    return _load(SPEC / "schemas" / f"{name}.schema.json")


def _id_version(schema: dict) -> str:
    match = re.search(r"/v(\d+\.\d+\.\d+)/", schema["$id"])
    assert match, schema["$id"]
    return match.group(1)


def test_footer_schema_id_carries_its_const():
    schema = _schema("footer")
    assert _id_version(schema) == schema["definitions"]["spec_version"]["const"] == SPEC_VERSION


def test_stac_extension_schema_id_carries_the_same_version():
    assert _id_version(_schema("stac-extension")) == SPEC_VERSION


def test_readme_writes_the_version_at_most_once():
    text = README.read_text(encoding="utf-8")
    assert text.count(SPEC_VERSION) <= 1
    major_minor = ".".join(SPEC_VERSION.split(".")[:2])
    literal = re.compile(rf"(?<![\d.]){re.escape(major_minor)}(?!\d)")
    assert len(literal.findall(text)) <= 1, literal.findall(text)


# -- validation codes -----------------------------------------------------------------------------


def _codes_in_validator() -> set[str]:
    source = "\n".join(path.read_text(encoding="utf-8") for path in VALIDATORS)
    # Codes are passed first to add(), once() and _check_statements() (metadata against the data).
    return set(re.findall(r"\b(?:add|once|_check_statements)\(\s*\"([A-Z]{3}\d{3})\"", source))


def _codes_in_table() -> set[str]:
    text = README.read_text(encoding="utf-8")
    return set(re.findall(r"^\|\s*`?([A-Z]{3}\d{3})`?\s*\|", text, flags=re.M))


def test_validator_codes_are_found():
    assert len(_codes_in_validator()) >= 20


def test_every_validator_code_is_in_the_spec():
    missing = _codes_in_validator() - _codes_in_table()
    assert not missing, f"codes used in the validator modules but not in spec/README.md: {sorted(missing)}"


def test_every_spec_code_is_used():
    unused = _codes_in_table() - _codes_in_validator()
    assert not unused, f"codes in spec/README.md that the validator modules never report: {sorted(unused)}"
