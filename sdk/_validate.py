"""Validate products, data files and collections against the eoembed spec.

Each finding has a stable code, a severity, the file, the row (or row group), the column and a
one-line reason. Checks stream over record batches, so memory does not grow with the row count;
chip-id uniqueness is checked by DuckDB, which spills to disk when it must.

Code families: STR structure and manifest, JSN JSON metadata, GEO GeoParquet, EMB embeddings,
IDT identity and time. ``spec/README.md`` lists every code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import ProductNotFoundError
from ._spec import footer_errors
from ._stac import COLLECTION_STATEMENTS, ITEM_STATEMENTS, MODEL_ITEM_STATEMENTS, build_collection, build_item, build_model_item

# One data file's checks and the report live apart, so that the tile checker builds on them without
# importing this module back.
from ._validate_file import (Finding, Report, _check_unique_chip_ids, _DataFileChecker, _index_problem, _lookup, _same,
                             _short, _stac_issues, _temporal_extent, _utc)

__all__ = ["Finding", "Report", "validate"]


def validate(path: str | Path, *, max_errors: int | None = None, check_checksums: bool = True) -> Report:
    """Validate a product folder, its ``collection.json`` or a single data file.

    Raises :class:`ProductNotFoundError` when ``path`` does not exist or is not any of those. A URL
    (``s3://``, ``https://``...) is fetched into a temporary folder first: the checks read every byte.
    """
    from ._store import is_remote

    if is_remote(path):
        return _validate_remote(path, max_errors=max_errors, check_checksums=check_checksums)
    path = Path(path)
    if not path.exists():
        raise ProductNotFoundError(f"{path} does not exist")
    report = Report(str(path), max_errors=max_errors)
    if path.is_file() and path.suffix in (".parquet", ".gpq", ".geoparquet"):
        _DataFileChecker(report, path, name=path.name, expected=None, temporal=None).run()
        return report
    if path.is_file() and path.name == "collection.json":
        path = path.parent
    if not path.is_dir():
        raise ProductNotFoundError(f"{path} is neither a product folder, a collection.json nor a Parquet file")
    from ._write import STAGING_MARK

    if STAGING_MARK in path.name:
        report.add("STR001", "this is the staging folder of an unfinished write, not a published product; "
                   "delete it and write the product again", file=path.name)
        return report
    _ProductChecker(report, path, check_checksums=check_checksums).run()
    return report


def _validate_remote(path, **options: Any) -> Report:
    """Validate a product at a URL: checksums and vectors need every byte, so it is fetched into a
    temporary folder once and validated there; findings are reported under the URL."""
    import tempfile

    from ._copy import copy_file, download
    from ._store import location

    root = location(path)
    with tempfile.TemporaryDirectory(prefix="eoembed-validate-") as folder:
        if root.name.endswith((".parquet", ".gpq", ".geoparquet")):
            local = Path(folder) / root.name
            copy_file(root, local)
        else:
            root = root.parent if root.name == "collection.json" else root
            local = download(root, Path(folder) / (root.name or "product"))
        report = validate(local, **options)
    report.target = str(path)
    return report


# -- product level --------------------------------------------------------------------------------


class _ProductChecker:
    def __init__(self, report: Report, root: Path, *, check_checksums: bool) -> None:
        self.report = report
        self.root = root
        self.check_checksums = check_checksums

    def _load_json(self, rel: str) -> dict[str, Any] | None:
        target = self.root / rel
        try:
            document = json.loads(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.report.add("STR001", f"{rel} is missing", file=rel)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self.report.add("JSN003", f"{rel} is not valid JSON: {error}", file=rel)
        else:
            if isinstance(document, dict):
                return document
            self.report.add("JSN003", f"{rel} holds a JSON {type(document).__name__}, not an object", file=rel)
        return None

    def _inside(self, base: str, href: str, *, where: str) -> Path | None:
        """The local file an href points to, or None (with a finding) if it leaves the product."""
        from ._errors import UnsafePathError
        from ._paths import inside, is_url

        if is_url(href):
            return None  # a reference outside the product (e.g. emb:source-data): not a file to check
        try:  # the readers' resolver: what they refuse, the validator reports
            return inside(self.root, href, base=Path(base).parent.as_posix(), where=where).resolve()
        except UnsafePathError as error:
            self.report.add("STR008", str(error), file=where)
            return None

    def _linked(self, collection: dict[str, Any], relation: str) -> Iterator[tuple[str, Any]]:
        """(path, document) of each product-local JSON document the collection links as ``relation``."""
        for link in collection.get("links", []):
            if link.get("rel") != relation:
                continue
            target = self._inside("collection.json", str(link.get("href", "")), where="collection.json")
            if target is None:
                continue
            rel = target.relative_to(self.root.resolve()).as_posix()
            document = self._load_json(rel)
            if document is not None:
                yield rel, document

    def run(self) -> None:
        collection = self._load_json("collection.json")
        if collection is None:
            return
        self._check_stac(collection, "collection.json")
        expected = self._expected_sections(collection)
        temporal = _temporal_extent(collection)

        manifest = self._manifest()
        listed: dict[str, dict[str, Any]] = {}
        self._manifest_rows: list[str] = []
        if manifest is not None:
            for row in manifest.to_pylist():
                rel = row["path"]
                self._manifest_rows.append(rel)
                if rel in listed:
                    self.report.add("STR004", f"{rel} is listed twice in manifest.parquet", file="manifest.parquet", column="path")
                listed[rel] = row
                if self._inside("manifest.parquet", rel, where="manifest.parquet") is None:
                    continue
        pixel = expected.get("pixel") is not None
        data_files = [p for pattern in ("*.parquet", "*.zarr.zip", "*.tif") for p in self.root.rglob(pattern)]
        on_disk = {p.relative_to(self.root).as_posix() for p in data_files if p.name != "manifest.parquet"}
        for rel in sorted(on_disk - set(listed)):
            self.report.add("STR003", f"{rel} is a data file not listed in manifest.parquet", file=rel)

        items = self._items(collection)
        model_hrefs = [link["href"] for link in collection.get("links", []) if link.get("rel") == "emb:model"]
        if not model_hrefs:
            self.report.add("STR001", "collection.json has no emb:model link to a model item", file="collection.json")
        model_items = list(self._linked(collection, "emb:model"))
        for rel, model_item in model_items:
            self._check_stac(model_item, rel)

        # Uniqueness first: DuckDB's memory is released before the streaming checks take theirs.
        existing = [self.root / rel for rel in listed if (self.root / rel).exists()]
        if existing and not pixel:  # a pixel product's tiles have no chip ids
            _check_unique_chip_ids(self.report, existing, self.root)
        footers = []
        records: list[Any] = []
        self._row_sources: list[set[str]] = []
        complete = True  # every listed file could be read, so product-wide statements can be checked
        for rel, row in sorted(listed.items()):
            path = self.root / rel
            if not path.exists():
                self.report.add("STR002", f"{rel} is listed in manifest.parquet but missing", file=rel)
                complete = False
                continue
            size = path.stat().st_size
            if size != row["bytes"]:
                self.report.add("STR005", f"size is {size} bytes, the manifest says {row['bytes']}", file=rel)
            digest = row["sha256"]
            if self.check_checksums:
                from ._write import sha256_file

                digest = sha256_file(path)
                if digest != row["sha256"]:
                    self.report.add("STR006", f"sha256 is {digest}, the manifest says {row['sha256']}", file=rel)
            if rel not in items:
                self.report.add("STR009", "no STAC item has an 'embeddings' asset pointing at this file", file=rel)
            if pixel:
                from ._validate_tiles import TileChecker

                checker = TileChecker(self.report, path, name=rel, expected=expected, temporal=temporal)
            else:
                checker = _DataFileChecker(self.report, path, name=rel, expected=expected, temporal=temporal)
            checker.run()
            if checker.rows is not None and checker.rows != row["rows"]:
                self.report.add("STR007", f"holds {checker.rows} rows, the manifest says {row['rows']}", file=rel)
            if checker.footer is not None:
                footers.append((rel, checker.footer))
            record = checker.record(size=size, sha256=digest)
            if record is None:
                complete = False
                continue
            records.append(record)
            self._row_sources.append(checker.sources)
            if not record.rows:
                continue  # an empty file has no extent to state; STR012 reports an empty product
            self._check_manifest_row(rel, row, record)
            if rel in items:
                item_rel, item = items[rel]
                derived = build_item(record, collection_id=item.get("collection", ""), schema=checker.schema, model_href="")
                self._check_statements("JSN007", item_rel, item, derived, ITEM_STATEMENTS, what=rel)
                self._check_indexes(item_rel, item, record, checker)
        self._check_one_model(footers)
        if manifest is not None and sum(r.rows for r in records) == 0 and complete:
            self.report.add("STR012", "the product holds no chip; a product needs at least one (write the product again from chips)",
                            file="manifest.parquet")
        if complete and records and all(r.rows for r in records):
            self._check_product_statements(collection, records, model_items)

    # statements of the metadata against the data -------------------------------------------------

    def _check_statements(self, code: str, rel: str, document: dict[str, Any], derived: dict[str, Any],
                          paths: tuple[tuple[str, ...], ...], *, what: str) -> None:
        """Every field at ``paths`` that ``document`` states must equal what the data gives
        (``derived``, built from the data by the writer's own builders); absent fields are the
        schema's business."""
        for path in paths:
            found, stated = _lookup(document, path)
            if not found:
                continue
            _, actual = _lookup(derived, path)
            if not _same(stated, actual):
                name = "/".join(path)
                self.report.add(code, f"{name} is {_short(stated)}, but {what} gives {_short(actual)}; "
                                "correct the field (or write the product again)", file=rel, column=name)

    def _check_manifest_row(self, rel: str, row: dict[str, Any], record) -> None:
        stated = row.get("bbox")
        if stated is not None:
            box = [stated.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            if not _same(box, list(record.bbox)):
                self.report.add("STR011", f"manifest bbox is {box}, the rows' bounds are {list(record.bbox)}",
                                file="manifest.parquet", column="bbox", row=self._manifest_rows.index(rel))
        for column, actual in (("start_datetime", record.start), ("end_datetime", record.end)):
            value = row.get(column)
            if value is not None and _utc(value) != actual:
                self.report.add("STR011", f"manifest {column} of {rel} is {value}, the rows give {actual}",
                                file="manifest.parquet", column=column, row=self._manifest_rows.index(rel))

    def _check_product_statements(self, collection: dict[str, Any], records: list[Any],
                                  model_items: list[tuple[str, dict[str, Any]]]) -> None:
        derived = build_collection(records, collection_id=str(collection.get("id")), item_hrefs=[], model_href="", source_href="")
        self._check_statements("JSN006", "collection.json", collection, derived, COLLECTION_STATEMENTS,
                               what="the data files")
        bbox = derived["extent"]["spatial"]["bbox"][0]
        start, end = min(r.start for r in records), max(r.end for r in records)
        for rel, model_item in model_items:
            model = build_model_item(records[-1].footer, collection_id=str(model_item.get("collection")), bbox=bbox, start=start, end=end)
            self._check_statements("JSN008", rel, model_item, model, MODEL_ITEM_STATEMENTS,
                                   what="the model contract in the footers")
        grid = self._load_json("grid.json")
        if grid is not None and grid != records[-1].footer.get("grid"):
            self.report.add("JSN009", f"grid.json is {_short(grid)}, but the footers' grid is {_short(records[-1].footer.get('grid'))}; "
                            "grid.json repeats the footer's grid section", file="grid.json")
        for rel, sources in self._linked(collection, "emb:source-data"):
            listed = sources.get("source_ids") if isinstance(sources, dict) else None
            used = set().union(*self._row_sources)
            if not isinstance(listed, list) or set(listed) != used or len(listed) != len(set(listed)):
                missing = sorted(used - set(listed or []))[:5]
                extra = sorted(set(listed or []) - used)[:5]
                self.report.add("JSN009", f"source_ids must list each source_id of the rows once: missing {missing}, "
                                f"not in any row {extra}", file=rel, column="source_ids")

    def _check_indexes(self, item_rel: str, item: dict[str, Any], record, checker: "_DataFileChecker") -> None:
        """Index assets must exist, match their checksums and hold what the current data gives."""
        for key, asset in sorted(item.get("assets", {}).items()):
            if not isinstance(asset, dict) or ("eoembed:index" not in asset and "index" not in asset.get("roles", [])):
                continue
            target = self._inside(item_rel, str(asset.get("href", "")), where=item_rel)
            if target is None:
                continue
            rel = target.relative_to(self.root.resolve()).as_posix()
            if not target.is_file():
                self.report.add("IDX001", f"index asset {key!r} points at {rel}, which does not exist; build the index again "
                                "(Product.build_index) or remove the asset", file=item_rel, column=f"assets/{key}")
                continue
            size = target.stat().st_size
            if asset.get("file:size") not in (None, size):
                self.report.add("IDX002", f"{rel} has {size} bytes, asset {key!r} says file:size {asset.get('file:size')}",
                                file=item_rel, column=f"assets/{key}/file:size")
            if self.check_checksums and "file:checksum" in asset:
                from ._write import sha256_file

                digest = "1220" + sha256_file(target)
                if asset["file:checksum"] != digest:
                    self.report.add("IDX002", f"{rel} has checksum {digest}, asset {key!r} says {asset['file:checksum']}",
                                    file=item_rel, column=f"assets/{key}/file:checksum")
            meta = asset.get("eoembed:index")
            if isinstance(meta, dict):
                problem = _index_problem(key, target, meta, record, checker)
                if problem:
                    self.report.add("IDX003", f"index {rel} is not built from the current {record.path}: {problem}; "
                                    "build the index again (Product.build_index)", file=item_rel, column=f"assets/{key}")

    def _manifest(self) -> pa.Table | None:
        path = self.root / "manifest.parquet"
        if not path.exists():
            self.report.add("STR001", "manifest.parquet is missing", file="manifest.parquet")
            return None
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            self.report.add("STR001", f"manifest.parquet cannot be read: {error}", file="manifest.parquet")
            return None
        missing = [c for c in ("path", "rows", "bytes", "sha256") if c not in table.column_names]
        if missing:
            self.report.add("STR001", f"manifest.parquet lacks columns {missing}", file="manifest.parquet")
            return None
        return table

    def _items(self, collection: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Data file path -> (item path, item) for every item linked from the collection."""
        out = {}
        for rel, item in self._linked(collection, "item"):
            self._check_stac(item, rel)
            asset = item.get("assets", {}).get("embeddings")
            if not asset:
                continue
            data = self._inside(rel, asset.get("href", ""), where=rel)
            if data is not None:
                out[data.relative_to(self.root.resolve()).as_posix()] = (rel, item)
        return out

    def _check_stac(self, document: dict[str, Any], rel: str) -> None:
        for issue in _stac_issues(json.dumps(document, sort_keys=True)):
            self.report.add("JSN001", f"{issue.schema}: {issue.message}", file=rel, column=issue.path or None)

    def _expected_sections(self, collection: dict[str, Any]) -> dict[str, Any]:
        expected = {"spec_version": collection.get("eoembed:spec_version"), "license": collection.get("license")}
        for section in ("model", "embedding", "grid", "provenance", "pixel"):
            if section != "pixel" or "eoembed:pixel" in collection:
                expected[section] = collection.get(f"eoembed:{section}")
        for path, _, message in footer_errors(expected):
            self.report.add("JSN002", f"eoembed fields of collection.json: {message}", file="collection.json", column=path)
        return expected

    def _check_one_model(self, footers: list[tuple[str, dict[str, Any]]]) -> None:
        from ._write import contract_difference

        if not footers:
            return
        first_rel, first = footers[0]
        for rel, footer in footers[1:]:
            diff = contract_difference(first.get("model", {}), footer.get("model", {}))
            if diff:
                self.report.add("IDT003", f"model contract differs from {first_rel}: {diff}; a product holds one model", file=rel)


