"""Offline JSON Schema validation of STAC documents (eoembed._schemas)."""

from __future__ import annotations

import copy
import glob
import json
import socket
from importlib.resources import files
from pathlib import Path

import pytest

from eoembed._errors import SpecError
from tests.conftest import REPO, SHARED
from eoembed._schemas import (
    SchemaIssue,
    load_schema,
    registry,
    schema_root,
    validate_json,
    validate_stac,
    validate_stac_strict,
)

EMB = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
ITEM_110 = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
COLLECTION_110 = "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json"
EXAMPLE_DIRS = ("stac-embeddings-v0.0.1", "mlm-v1.5.2")
EXAMPLE_NAMES = sorted(
    f"{folder}/{path.name}"
    for folder in EXAMPLE_DIRS
    for path in (SHARED / "reference" / "examples" / folder).glob("*.json")
) or [f"{folder}/<missing>" for folder in EXAMPLE_DIRS]


@pytest.fixture(scope="session")
def examples(shared: Path) -> Path:
    folder = shared / "reference" / "examples"
    for name in EXAMPLE_DIRS:
        assert (folder / name).is_dir(), f"{folder / name} is missing"
    return folder


def _read(examples: Path, name: str) -> dict:
    return json.loads((examples / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- vendored copies


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_public_examples_validate_with_vendored_schemas_only(examples: Path, name: str) -> None:
    """No extra_roots: every schema (and every $ref) comes from spec/external/."""
    document = _read(examples, name)
    assert validate_stac(document) == []


def test_every_example_extension_is_vendored(examples: Path) -> None:
    for path in sorted(examples.glob("*/*.json")):
        for url in json.loads(path.read_text(encoding="utf-8")).get("stac_extensions", []):
            assert load_schema(url)["$id"].rstrip("#") == url, url


def test_load_schema_reads_package_data_through_importlib_resources() -> None:
    root = schema_root()
    assert root == files("eoembed.spec") / "external"
    node = root.joinpath("stac-extensions.github.io", "embeddings", "v0.0.1", "schema.json")
    assert node.is_file()
    schema = load_schema(EMB)
    assert schema == json.loads(node.read_text(encoding="utf-8"))
    schema["title"] = "changed"  # a copy: the cache is not mutated
    assert load_schema(EMB)["title"] != "changed"
    # a file stored off its URL path is found by its $id; trailing '#' and http/https don't matter
    assert load_schema("http://json-schema.org/draft-07/schema#")["title"] == "Core schema meta-schema"
    assert load_schema(EMB + "#") == load_schema(EMB.replace("https:", "http:"))


def test_package_data_patterns_cover_every_vendored_schema() -> None:
    """pyproject ships external/**/*.json and external/**/*-schema: nothing vendored is left out."""
    spec = REPO / "spec"
    vendored = {p.relative_to(spec).as_posix() for p in (spec / "external").rglob("*") if p.is_file()}
    shipped = set()
    for pattern in ("external/**/*.json", "external/**/*-schema"):
        shipped |= {Path(p).as_posix() for p in glob.glob(pattern, root_dir=spec, recursive=True)}
    assert vendored - shipped - {"external/README.md"} == set()


def test_vendored_stac_110_core_is_the_release_not_the_beta() -> None:
    for kind in ("item", "collection", "catalog"):
        url = f"https://schemas.stacspec.org/v1.1.0/{kind}-spec/json-schema/{kind}.json"
        text = json.dumps(load_schema(url))
        assert "beta" not in text
        assert load_schema(url)["$id"] == url


def test_unknown_url_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="is not available offline"):
        load_schema("https://example.org/x/v1.0.0/schema.json")
    with pytest.raises(SpecError, match="is not available offline"):
        validate_json({}, "https://example.org/x/v1.0.0/schema.json")


def test_registry_is_cached_and_resolves_relative_refs() -> None:
    assert registry() is registry()
    resolver = registry().resolver()
    # STAC 1.1.0 core uses relative refs (common.json -> bands.json ...)
    resolved = resolver.lookup(ITEM_110)
    inner = resolved.resolver.lookup("common.json")
    assert inner.contents["title"] == "STAC Common Metadata"
    assert inner.resolver.lookup("bands.json").contents["title"] == "Bands Field"


def test_extra_roots_find_schemas_not_vendored(stac_mirror: Path) -> None:
    url = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
    with pytest.raises(SpecError):
        load_schema(url)
    issues = validate_json({"type": "Feature"}, url, extra_roots=[stac_mirror])
    assert issues  # resolved through the mirror and validated (this instance is not a SAR item)
    assert all(isinstance(issue, SchemaIssue) and issue.schema == url for issue in issues)


def _write_schema(root: Path, url: str, schema: dict) -> None:
    target = root.joinpath(*url.removeprefix("https://").split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(schema), encoding="utf-8")


def test_draft_2020_12_schema_is_validated_as_declared(tmp_path: Path) -> None:
    url = "https://example.org/eoembed-test/v2020/schema.json"
    _write_schema(
        tmp_path,
        url,
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": url,
            "type": "object",
            "properties": {"pair": {"type": "array", "prefixItems": [{"type": "string"}, {"$ref": "#/$defs/n"}]}},
            "$defs": {"n": {"type": "integer", "minimum": 1}},
        },
    )
    assert validate_json({"pair": ["a", 2]}, url, extra_roots=[tmp_path]) == []
    issues = validate_json({"pair": [1, 0]}, url, extra_roots=[tmp_path])
    assert [issue.path for issue in issues] == ["pair/0", "pair/1"]  # every error, sorted by path


def test_missing_transitive_ref_is_an_issue_not_a_fetch(tmp_path: Path) -> None:
    url = "https://example.org/eoembed-test/v1/schema.json"
    _write_schema(
        tmp_path,
        url,
        {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": "https://example.org/elsewhere.json"},
    )
    issues = validate_json({}, url, extra_roots=[tmp_path])
    assert len(issues) == 1
    assert "elsewhere.json is not available offline" in issues[0].message


def test_date_time_format_is_checked(examples: Path) -> None:
    item = _read(examples, "stac-embeddings-v0.0.1/item.json")
    item["properties"]["datetime"] = "2024-13-45 noon"
    issues = validate_stac(item)
    assert any(i.path == "properties/datetime" and "date-time" in i.message for i in issues), issues


# --------------------------------------------------------------------------- STAC 1.1.0 vs 1.0.0 refs


def _as_stac_110(document: dict) -> dict:
    converted = copy.deepcopy(document)
    converted["stac_version"] = "1.1.0"
    return converted


def test_stac_110_collection_passes_with_core_refs_mapped(examples: Path) -> None:
    collection = _as_stac_110(_read(examples, "stac-embeddings-v0.0.1/collection.json"))
    assert validate_json(collection, COLLECTION_110) == []
    assert validate_stac(collection) == []


def test_stac_110_item_passes_with_core_refs_mapped(examples: Path) -> None:
    item = _as_stac_110(_read(examples, "stac-embeddings-v0.0.1/item.json"))
    assert validate_json(item, ITEM_110) == []
    assert validate_stac(item) == []


def test_strict_core_refs_only_complain_about_stac_version(examples: Path) -> None:
    collection = _as_stac_110(_read(examples, "stac-embeddings-v0.0.1/collection.json"))
    issues = validate_stac_strict(collection)
    assert issues
    assert validate_stac(collection, strict_core_refs=True) == issues
    for issue in issues:
        assert issue.path == "stac_version", issue
        assert "'1.0.0' was expected" in issue.message, issue
    assert EMB in {issue.schema for issue in issues}


def test_unsupported_stac_version_is_one_issue(examples: Path) -> None:
    collection = _read(examples, "stac-embeddings-v0.0.1/collection.json")
    collection["stac_version"] = "0.9.0"
    issues = validate_stac(collection)
    assert [issue.path for issue in issues] == ["stac_version"]


# --------------------------------------------------------------------------- broken variants


def _set(doc: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


def _drop_model_link(doc: dict) -> None:
    doc["links"] = [link for link in doc["links"] if link.get("rel") != "emb:model"]


def _add_unknown_extension(doc: dict) -> None:
    doc["stac_extensions"].append("https://example.org/x/v1.0.0/schema.json")


def _drop_mlm_name(doc: dict) -> None:
    del doc["properties"]["mlm:name"]


COLLECTION = "stac-embeddings-v0.0.1/collection.json"
ITEM = "stac-embeddings-v0.0.1/item.json"
BROKEN = [
    pytest.param(COLLECTION, lambda d: _set(d, "emb:dimensions", 0), "emb:dimensions", "minimum", id="dimensions-0"),
    pytest.param(COLLECTION, lambda d: _set(d, "emb:type", "tile"), "emb:type", "'tile'", id="type-tile"),
    pytest.param(COLLECTION, _drop_model_link, "links", "emb:model", id="no-model-link"),
    pytest.param(
        COLLECTION,
        lambda d: _set(d, "emb:chip_layout.layout_type", "hex"),
        "emb:chip_layout/layout_type",
        "'hex'",
        id="layout-hex",
    ),
    pytest.param(
        ITEM,
        lambda d: _set(d, "properties.emb:quantization.scale", "x"),
        "properties/emb:quantization/scale",
        "'x'",
        id="quantization-scale-x",
    ),
    pytest.param(ITEM, lambda d: d.pop("id"), "", "'id' is a required property", id="core-no-id"),
    pytest.param(COLLECTION, _add_unknown_extension, "stac_extensions/3", "not available offline", id="unknown-ext"),
    pytest.param("mlm-v1.5.2/item_basic.json", _drop_mlm_name, "properties", "'mlm:name'", id="mlm-no-name"),
]


@pytest.mark.parametrize("as_110", [False, True], ids=["stac-1.0.0", "stac-1.1.0"])
@pytest.mark.parametrize(("name", "breaker", "path", "needle"), BROKEN)
def test_broken_variant_is_reported_at_its_field(
    examples: Path, name: str, breaker, path: str, needle: str, as_110: bool
) -> None:
    document = _read(examples, name)
    if as_110:
        document = _as_stac_110(document)
    assert validate_stac(document) == []
    breaker(document)
    issues = validate_stac(document)
    assert any(issue.path == path and needle in issue.message for issue in issues), issues


# --------------------------------------------------------------------------- never the network


def test_validation_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, examples: Path) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for path in sorted(examples.glob("*/*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        assert validate_stac(document) == []
        assert validate_stac(_as_stac_110(document)) == []
    unknown = _read(examples, COLLECTION)
    _add_unknown_extension(unknown)
    assert [i.path for i in validate_stac(unknown)] == ["stac_extensions/3"]
