"""Offline JSON Schema validation of STAC documents.

Every schema is looked up by its URL in local copies, never on the network: the public schemas
vendored under ``eoembed/spec/external/<host>/<path>`` (found through :mod:`importlib.resources`,
so an installed wheel works the same as a checkout), the project's own ``spec/schemas/*.json``
(indexed by their ``$id``), and optionally ``extra_roots`` laid out the same way as ``external/``.
A URL with no local copy is an error (:class:`~eoembed._errors.SpecError`) or, for an extension
listed in ``stac_extensions``, one :class:`SchemaIssue`; nothing is ever fetched.

STAC 1.0.0 core references inside extension schemas: several extensions (the embeddings extension
v0.0.1 among them) ``$ref`` the STAC 1.0.0 core item/collection schemas, whose ``stac_version`` is
``const: "1.0.0"``, so a STAC 1.1.0 document can never pass them unmodified. When a document is STAC
1.1.0, :func:`validate_stac` therefore validates its extension schemas with every
``https://schemas.stacspec.org/v1.0.0/...`` URL resolved to the matching 1.1.0 core schema: the
extension's own field rules apply in full and the core rules are those of the document's actual
version. :func:`validate_stac_strict` (``strict_core_refs=True``) skips that mapping; on a valid
STAC 1.1.0 document its only extra complaints are the ``stac_version`` const of the 1.0.0 core.

The vendored ``schemas.stacspec.org/v1.1.0`` copies are patched: the public mirror serves the
1.1.0-beta.1 text there (``$id`` and ``stac_version`` const ``1.1.0-beta.1``); see
``spec/external/README.md``.

Errors under ``oneOf``/``anyOf`` are reported from the branch that fits best (fewest leaf errors)
rather than as one opaque "not valid under any of the given schemas", so an issue's path points at
the offending field.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlsplit

import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft7Validator, FormatChecker, ValidationError
from jsonschema.validators import validator_for

from eoembed._errors import SpecError

try:  # Python >= 3.11
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

__all__ = [
    "SchemaIssue",
    "load_schema",
    "registry",
    "schema_root",
    "stac_core_url",
    "validate_json",
    "validate_stac",
    "validate_stac_strict",
]

STAC_VERSIONS = ("1.0.0", "1.1.0")
_STAC_CORE_HOST = "schemas.stacspec.org"
_STAC_CORE = f"https://{_STAC_CORE_HOST}/"  # the `schema` of issues found before any schema applies
_KIND_BY_TYPE = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}
_MAX_MESSAGE = 300


# --------------------------------------------------------------------------- lookup by URL


def schema_root() -> Traversable:
    """The vendored public schemas, laid out as ``<host>/<path>`` (package data of eoembed.spec)."""
    return files("eoembed.spec") / "external"


def _key(url: str) -> str:
    """Scheme-less, fragment-less lookup key: ``host/path`` (``http`` and ``https`` are the same)."""
    bare = urldefrag(url)[0].rstrip("#")
    parts = urlsplit(bare)
    if parts.scheme in ("http", "https") and parts.netloc:
        return parts.netloc.lower() + parts.path
    return bare


def _segments(url: str) -> list[str] | None:
    parts = urlsplit(urldefrag(url)[0])
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    segments = [parts.netloc.lower(), *[s for s in parts.path.split("/") if s]]
    if any(s in (".", "..") for s in segments) or len(segments) < 2:
        return None
    return segments


def _walk(node: Traversable) -> Iterable[Traversable]:
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        elif child.is_file():
            yield child


def _parse(node: Traversable) -> Any:
    try:
        return json.loads(node.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError(f"schema file {node} cannot be read as JSON: {err}") from err


def _id_index(root: Traversable) -> dict[str, Traversable]:
    """Files under ``root`` by their own ``$id`` (for files not stored at their URL's path)."""
    index: dict[str, Traversable] = {}
    if not root.is_dir():
        return index
    for node in _walk(root):
        if node.name.endswith(".md"):
            continue
        try:
            contents = json.loads(node.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(contents, dict) and isinstance(contents.get("$id"), str):
            index.setdefault(_key(contents["$id"]), node)
    return index


@functools.lru_cache(maxsize=1)
def _vendored_ids() -> dict[str, Traversable]:
    return _id_index(schema_root())


@functools.lru_cache(maxsize=16)
def _extra_ids(root: Path) -> dict[str, Traversable]:
    return _id_index(root)


@functools.lru_cache(maxsize=1)
def _own_schemas() -> dict[str, Traversable]:
    """The project's own ``spec/schemas/*.json`` and those of earlier versions kept in
    ``spec/schemas/v*/``, by ``$id`` (a trailing ``#`` is ignored)."""
    folder = files("eoembed.spec") / "schemas"
    index: dict[str, Traversable] = {}
    if not folder.is_dir():
        return index
    for node in _walk(folder):
        if node.name.endswith(".json"):
            contents = _parse(node)
            if isinstance(contents, dict) and isinstance(contents.get("$id"), str):
                index[_key(contents["$id"])] = node
    return index


def _find(url: str, extra_roots: tuple[Path, ...]) -> Traversable | None:
    key = _key(url)
    own = _own_schemas().get(key)
    if own is not None:
        return own
    segments = _segments(url)
    roots: list[tuple[Traversable, dict[str, Traversable]]] = [(schema_root(), _vendored_ids())]
    roots += [(root, _extra_ids(root)) for root in extra_roots]
    for root, ids in roots:
        if segments is not None:
            node = root.joinpath(*segments)
            if node.is_file():
                return node
        if key in ids:
            return ids[key]
    return None


@functools.lru_cache(maxsize=256)
def _contents(node: Traversable) -> Any:
    return _parse(node)


def _load(url: str, extra_roots: tuple[Path, ...] = ()) -> dict:
    node = _find(url, extra_roots)
    if node is None:
        raise SpecError(
            f"schema {url} is not available offline; vendor it under spec/external/<host>/<path> "
            "(see spec/external/README.md) or pass extra_roots= a folder laid out the same way"
        )
    contents = _contents(node)
    if not isinstance(contents, dict):
        raise SpecError(f"schema {url} ({node}) is not a JSON object")
    return contents


def load_schema(url: str) -> dict:
    """The schema published at ``url``, from the local copies only (a fresh copy each call).

    Raises :class:`~eoembed._errors.SpecError` when there is no local copy.
    """
    return copy.deepcopy(_load(url))


def _available(url: str, extra_roots: tuple[Path, ...]) -> bool:
    return _find(url, extra_roots) is not None


# --------------------------------------------------------------------------- registry


def stac_core_url(kind: str, version: str) -> str:
    """``https://schemas.stacspec.org/v<version>/<kind>-spec/json-schema/<kind>.json``."""
    return f"https://{_STAC_CORE_HOST}/v{version}/{kind}-spec/json-schema/{kind}.json"


def _remap_core(url: str, stac_core_version: str | None) -> str:
    """Point a STAC 1.0.0 core schema URL at the ``stac_core_version`` core (see module doc)."""
    if stac_core_version is None or stac_core_version == "1.0.0":
        return url
    parts = urlsplit(url)
    prefix = "/v1.0.0/"
    if parts.netloc.lower() == _STAC_CORE_HOST and parts.path.startswith(prefix):
        return parts._replace(path=f"/v{stac_core_version}/" + parts.path[len(prefix) :]).geturl()
    return url


def _roots(extra_roots: Sequence[Path | str]) -> tuple[Path, ...]:
    return tuple(Path(root).resolve() for root in extra_roots)


@functools.lru_cache(maxsize=32)
def _registry(extra_roots: tuple[Path, ...], stac_core_version: str | None) -> referencing.Registry:
    # A Registry is immutable: what one validation retrieves is not kept for the next, so each
    # resource is cached here or every document would load and parse every schema again.
    @functools.lru_cache(maxsize=None)
    def retrieve(uri: str) -> referencing.Resource:
        contents = _load(_remap_core(uri, stac_core_version), extra_roots)
        return referencing.Resource.from_contents(
            contents, default_specification=referencing.jsonschema.DRAFT7
        )

    return referencing.Registry(retrieve=retrieve)


def registry(
    *, extra_roots: Sequence[Path | str] = (), stac_core_version: str | None = None
) -> referencing.Registry:
    """A :class:`referencing.Registry` that retrieves every URL from the local copies (cached).

    ``extra_roots``: more folders laid out as ``<host>/<path>``, searched after the vendored copies.
    ``stac_core_version``: when given (``"1.1.0"``), STAC 1.0.0 core schema URLs resolve to that
    version's core schemas (see the module docstring).
    """
    if stac_core_version is not None and stac_core_version not in STAC_VERSIONS:
        raise SpecError(
            f"stac_core_version {stac_core_version!r} is not supported; use one of {STAC_VERSIONS}"
        )
    return _registry(_roots(extra_roots), stac_core_version)


# --------------------------------------------------------------------------- formats

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$"
)


def _check_date_time(value: object) -> bool:
    """RFC 3339 ``date-time`` (jsonschema skips it when rfc3339-validator is not installed)."""
    if not isinstance(value, str):
        return True
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time (e.g. 2024-01-31T12:00:00Z)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    _dt.datetime(year, month, day, hour, minute, min(second, 59))  # raises ValueError if invalid
    if second > 60 or (match.group(9) and (int(match.group(10)) > 23 or int(match.group(11)) > 59)):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time (seconds or offset out of range)")
    return True


_FORMAT_CHECKER = FormatChecker()
_FORMAT_CHECKER.checks("date-time", raises=ValueError)(_check_date_time)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class SchemaIssue:
    """One violation: which schema, where in the document, what is wrong."""

    schema: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message} [{self.schema}]"


def _pointer(parts: Iterable[object]) -> str:
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _leaves(error: ValidationError) -> list[ValidationError]:
    """Replace a failed ``oneOf``/``anyOf`` by the errors of its best-fitting branch(es)."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[object, list[ValidationError]] = {}
        for sub in error.context:
            branch = sub.relative_schema_path[0] if sub.relative_schema_path else None
            branches.setdefault(branch, []).extend(_leaves(sub))
        fewest = min(len(found) for found in branches.values())
        return [leaf for found in branches.values() if len(found) == fewest for leaf in found]
    return [error]


def _required_values(schema: object, out: list[str]) -> list[str]:
    """``name='value'`` for each ``properties/<name>/const`` in a schema (not following $ref)."""
    if isinstance(schema, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if isinstance(sub, dict) and "const" in sub:
                out.append(f"{name}={sub['const']!r}")
        for keyword in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(keyword) or ():
                _required_values(sub, out)
    return out


def _message(error: ValidationError) -> str:
    if error.validator == "contains":
        wanted = _required_values(error.validator_value, [])
        detail = f" ({', '.join(wanted)})" if wanted else ""
        return f"no item matches the required schema{detail}"
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 25] + " ... " + message[-20:]
    return message


def validate_json(
    instance: Any,
    schema_url: str,
    *,
    extra_roots: Sequence[Path | str] = (),
    stac_core_version: str | None = None,
) -> list[SchemaIssue]:
    """All violations of the schema at ``schema_url`` by ``instance``, sorted by path.

    The draft (07, 2019-09, 2020-12) is the one the schema declares in ``$schema`` (draft-07 when
    it declares none); ``format: date-time`` is checked. Raises
    :class:`~eoembed._errors.SpecError` when ``schema_url`` has no local copy; a ``$ref`` inside it
    that has none becomes an issue.
    """
    roots = _roots(extra_roots)
    target = _remap_core(schema_url, stac_core_version)
    schema = _load(target, roots)
    cls = validator_for(schema, default=Draft7Validator)
    reg = registry(extra_roots=roots, stac_core_version=stac_core_version)
    # Validate through a $ref so that relative refs resolve against the URL the schema was found at.
    validator = cls({"$ref": target}, registry=reg, format_checker=_FORMAT_CHECKER)
    try:
        errors = list(validator.iter_errors(instance))
    except referencing.exceptions.Unresolvable as err:
        cause = err.__cause__ or err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return [SchemaIssue(schema_url, "", f"cannot resolve a $ref: {cause}")]
    issues = {
        SchemaIssue(schema_url, _pointer(leaf.absolute_path), _message(leaf))
        for error in errors
        for leaf in _leaves(error)
    }
    return sorted(issues, key=lambda i: (i.path, i.schema, i.message))


def validate_stac(
    document: dict,
    *,
    extra_roots: Sequence[Path | str] = (),
    strict_core_refs: bool = False,
) -> list[SchemaIssue]:
    """Validate a STAC item, collection or catalog against its core schema and every extension.

    The core schema is chosen by ``type`` and ``stac_version`` (1.0.0 or 1.1.0); each URL in
    ``stac_extensions`` is validated too, and one with no local copy yields one issue (nothing is
    fetched). For STAC 1.1.0 documents, extension ``$ref``s to STAC 1.0.0 core schemas resolve to
    the 1.1.0 ones unless ``strict_core_refs`` (see the module docstring).
    """
    if not isinstance(document, dict):
        return [SchemaIssue(_STAC_CORE, "", f"a STAC document is a JSON object, not {type(document).__name__}")]
    issues: list[SchemaIssue] = []
    kind = _KIND_BY_TYPE.get(document.get("type"))  # type: ignore[arg-type]
    version = document.get("stac_version")
    if kind is None:
        issues.append(
            SchemaIssue(_STAC_CORE, "type", f"type {document.get('type')!r} is not one of {sorted(_KIND_BY_TYPE)}")
        )
    if version not in STAC_VERSIONS:
        issues.append(
            SchemaIssue(_STAC_CORE, "stac_version", f"stac_version {version!r} is not one of {STAC_VERSIONS}")
        )
    if issues:
        return issues
    issues += validate_json(document, stac_core_url(kind, version), extra_roots=extra_roots)

    core_as = None if strict_core_refs or version == "1.0.0" else version
    extensions = document.get("stac_extensions", [])
    if not isinstance(extensions, list):
        extensions = []  # the core schema already reports it
    roots = _roots(extra_roots)
    for index, url in enumerate(extensions):
        if not isinstance(url, str):
            continue  # the core schema already reports it
        if not _available(_remap_core(url, core_as), roots):
            issues.append(
                SchemaIssue(
                    url,
                    f"stac_extensions/{index}",
                    f"extension schema {url} is not available offline; vendor it under "
                    "spec/external/<host>/<path> (nothing is fetched from the network)",
                )
            )
            continue
        issues += validate_json(document, url, extra_roots=roots, stac_core_version=core_as)
    return sorted(issues, key=lambda i: (i.path, i.schema, i.message))


def validate_stac_strict(document: dict, *, extra_roots: Sequence[Path | str] = ()) -> list[SchemaIssue]:
    """:func:`validate_stac` without mapping STAC 1.0.0 core ``$ref``s to the document's version."""
    return validate_stac(document, extra_roots=extra_roots, strict_core_refs=True)
