"""Validate products, data files and collections against the eoembed spec.

Each finding has a stable code, a severity, the file, the row (or row group), the column and a
one-line reason. Checks stream over record batches, so memory does not grow with the row count;
chip-id uniqueness is checked by DuckDB, which spills to disk when it must.

Code families: STR structure and manifest, JSN JSON metadata, GEO GeoParquet, EMB embeddings,
IDT identity and time. ``spec/README.md`` lists every code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import ProductNotFoundError, QuantizationError
from ._geometry import _TYPE_NAMES
from ._spec import FOOTER_KEY, SPEC_VERSION, footer_errors

Severity = Literal["error", "warning"]
_SECTIONS = ("model", "embedding", "grid", "license", "spec_version")
_SLICE_ROWS = 16384
_NORM_TOLERANCE = {"none": 1e-3, "linear": 2e-2, "per-row": 2e-2, "sqrt": 5e-2, "binary": 1e-5}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    file: str | None = None
    row: int | None = None
    row_group: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file or "(product)"
        if self.row_group is not None:
            where += f" row group {self.row_group}"
        if self.row is not None:
            where += f" row {self.row}"
        if self.column:
            where += f" column {self.column}"
        return f"{self.code} {self.severity}: {where}: {self.message}"


@dataclass
class Report:
    target: str
    findings: list[Finding] = field(default_factory=list)
    max_errors: int | None = None
    truncated: bool = False

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def codes(self) -> list[str]:
        return sorted({f.code for f in self.findings})

    def add(self, code: str, message: str, *, severity: Severity = "error", **where: Any) -> None:
        if self.max_errors is not None and len(self.errors) >= self.max_errors and severity == "error":
            self.truncated = True
            return
        self.findings.append(Finding(code, severity, message, **where))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "valid": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "truncated": self.truncated,
            "findings": [asdict(f) for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        head = f"{self.target}: {'valid' if self.ok else 'INVALID'} ({len(self.errors)} errors, {len(self.warnings)} warnings)"
        return "\n".join([head] + [f"  {f}" for f in self.findings])


def validate(path: str | Path, *, max_errors: int | None = None, check_checksums: bool = True) -> Report:
    """Validate a product folder, its ``collection.json`` or a single data file.

    Raises :class:`ProductNotFoundError` when ``path`` does not exist or is not any of those.
    """
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

    def run(self) -> None:
        collection = self._load_json("collection.json")
        if collection is None:
            return
        self._check_stac(collection, "collection.json")
        expected = self._expected_sections(collection)
        temporal = _temporal_extent(collection)

        manifest = self._manifest()
        listed: dict[str, dict[str, Any]] = {}
        if manifest is not None:
            for row in manifest.to_pylist():
                rel = row["path"]
                if rel in listed:
                    self.report.add("STR004", f"{rel} is listed twice in manifest.parquet", file="manifest.parquet", column="path")
                listed[rel] = row
                if self._inside("manifest.parquet", rel, where="manifest.parquet") is None:
                    continue
        on_disk = {p.relative_to(self.root).as_posix() for p in self.root.rglob("*.parquet") if p.name != "manifest.parquet"}
        for rel in sorted(on_disk - set(listed)):
            self.report.add("STR003", f"{rel} is a data file not listed in manifest.parquet", file=rel)

        items = self._items(collection)
        model_hrefs = [link["href"] for link in collection.get("links", []) if link.get("rel") == "emb:model"]
        if not model_hrefs:
            self.report.add("STR001", "collection.json has no emb:model link to a model item", file="collection.json")
        for href in model_hrefs:
            target = self._inside("collection.json", href, where="collection.json")
            if target is not None:
                rel = target.relative_to(self.root.resolve()).as_posix()
                model_item = self._load_json(rel)
                if model_item is not None:
                    self._check_stac(model_item, rel)

        # Uniqueness first: DuckDB's memory is released before the streaming checks take theirs.
        existing = [self.root / rel for rel in listed if (self.root / rel).exists()]
        if existing:
            _check_unique_chip_ids(self.report, existing, self.root)
        footers = []
        for rel, row in sorted(listed.items()):
            path = self.root / rel
            if not path.exists():
                self.report.add("STR002", f"{rel} is listed in manifest.parquet but missing", file=rel)
                continue
            size = path.stat().st_size
            if size != row["bytes"]:
                self.report.add("STR005", f"size is {size} bytes, the manifest says {row['bytes']}", file=rel)
            if self.check_checksums:
                from ._write import sha256_file

                digest = sha256_file(path)
                if digest != row["sha256"]:
                    self.report.add("STR006", f"sha256 is {digest}, the manifest says {row['sha256']}", file=rel)
            if rel not in items:
                self.report.add("STR009", "no STAC item has an 'embeddings' asset pointing at this file", file=rel)
            else:
                item_rel, item = items[rel]
                asset = item["assets"]["embeddings"]
                if asset.get("file:size") not in (None, size):
                    self.report.add("STR005", f"{item_rel} says file:size {asset.get('file:size')}, the file has {size}", file=rel)
            checker = _DataFileChecker(self.report, path, name=rel, expected=expected, temporal=temporal)
            checker.run()
            if checker.rows is not None and checker.rows != row["rows"]:
                self.report.add("STR007", f"holds {checker.rows} rows, the manifest says {row['rows']}", file=rel)
            if checker.footer is not None:
                footers.append((rel, checker.footer))
        self._check_one_model(footers)

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
        for link in collection.get("links", []):
            if link.get("rel") != "item":
                continue
            target = self._inside("collection.json", link["href"], where="collection.json")
            if target is None:
                continue
            rel = target.relative_to(self.root.resolve()).as_posix()
            item = self._load_json(rel)
            if item is None:
                continue
            self._check_stac(item, rel)
            asset = item.get("assets", {}).get("embeddings")
            if not asset:
                continue
            data = self._inside(rel, asset.get("href", ""), where=rel)
            if data is not None:
                out[data.relative_to(self.root.resolve()).as_posix()] = (rel, item)
        return out

    def _check_stac(self, document: dict[str, Any], rel: str) -> None:
        from ._schemas import validate_stac

        for issue in validate_stac(document):
            self.report.add("JSN001", f"{issue.schema}: {issue.message}", file=rel, column=issue.path or None)

    def _expected_sections(self, collection: dict[str, Any]) -> dict[str, Any]:
        expected = {"spec_version": collection.get("eoembed:spec_version"), "license": collection.get("license")}
        for section in ("model", "embedding", "grid", "provenance"):
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


def _temporal_extent(collection: dict[str, Any]) -> tuple[np.datetime64 | None, np.datetime64 | None] | None:
    try:
        start, end = collection["extent"]["temporal"]["interval"][0]
    except (KeyError, IndexError, TypeError, ValueError):
        return None

    def parse(value):
        return None if value is None else np.datetime64(value.replace("Z", ""), "us")

    return parse(start), parse(end)


def _is_crs84(crs) -> bool:
    import pyproj

    return crs == pyproj.CRS("OGC:CRS84") or crs.equals(pyproj.CRS("OGC:CRS84"), ignore_axis_order=False)


def _check_unique_chip_ids(report: Report, files: list[Path], root: Path) -> None:
    from ._query import connect

    import tempfile

    con = connect(extensions=())
    spill = tempfile.TemporaryDirectory(prefix="eoembed-validate-")
    try:
        # Bounded memory whatever the row count: DuckDB spills the hash table to disk past the limit.
        con.execute(f"SET memory_limit = '128MB'; SET threads = 1; SET temp_directory = '{spill.name}'; "
                    "SET preserve_insertion_order = false")
        paths = [str(p) for p in files]
        rows = con.execute(
            "SELECT chip_id, count(*) AS n, min(filename) AS f FROM read_parquet($files, filename = true) "
            "GROUP BY chip_id HAVING count(*) > 1 ORDER BY n DESC, chip_id LIMIT 20",
            {"files": paths},
        ).fetchall()
    except Exception as error:  # a file without chip_id is reported by the file checks
        if "chip_id" not in str(error):
            report.add("IDT001", f"chip_id uniqueness could not be checked: {error}")
        return
    finally:
        con.close()
        spill.cleanup()
    for chip, count, filename in rows:
        rel = Path(filename).relative_to(root).as_posix() if Path(filename).is_relative_to(root) else filename
        report.add("IDT001", f"chip_id {chip!r} occurs {count} times; chip ids must be unique in a product", file=rel, column="chip_id")


# -- data file level ------------------------------------------------------------------------------


class _DataFileChecker:
    """GeoParquet, footer and embedding checks for one Parquet file, streamed by row group."""

    def __init__(self, report: Report, path: Path, *, name: str, expected: dict[str, Any] | None, temporal) -> None:
        self.report = report
        self.path = path
        self.name = name
        self.expected = expected
        self.temporal = temporal
        self.rows: int | None = None
        self.footer: dict[str, Any] | None = None
        self._geo_meta: dict[str, Any] | None = None

    def add(self, code: str, message: str, **kw: Any) -> None:
        self.report.add(code, message, file=self.name, **kw)

    def run(self) -> None:
        try:
            handle = pq.ParquetFile(self.path, pre_buffer=False)  # stream: no whole-file read-ahead
        except (pa.ArrowException, OSError) as error:
            self.add("STR010", f"not a readable Parquet file: {error}")
            return
        self.rows = handle.metadata.num_rows
        schema = handle.schema_arrow
        metadata = schema.metadata or {}
        geo = self._check_geo(metadata, schema)
        self.footer = self._check_footer(metadata)
        if self.footer is not None and geo is not None and geo["_crs"] is not None and not _is_crs84(geo["_crs"]):
            self.add("GEO003", f"geometry CRS is {geo['_crs'].name}; eoembed footprints are in OGC:CRS84 (lon/lat degrees)",
                     column=geo["_primary"])
        quant = self._check_embedding_type(schema)
        self._check_row_group_stats(handle, geo)
        self._stream(handle, geo, quant)
        if self.footer is None:
            self._probe_foreign_vectors(handle)

    # GeoParquet metadata ----------------------------------------------------------------------

    def _check_geo(self, metadata: dict[bytes, bytes], schema: pa.Schema) -> dict[str, Any] | None:
        if b"geo" not in metadata:
            self.add("GEO001", "no 'geo' key in the Parquet footer: not GeoParquet")
            return None
        try:
            geo = json.loads(metadata[b"geo"])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self.add("GEO001", f"'geo' metadata is not valid JSON: {error}")
            return None
        if geo.get("version") != "1.1.0":
            self.add("GEO002", f"GeoParquet version is {geo.get('version')!r}; eoembed requires 1.1.0")
        primary = geo.get("primary_column")
        columns = geo.get("columns") or {}
        if primary not in columns or primary not in schema.names:
            self.add("GEO002", f"primary column {primary!r} is not described in 'geo' or not in the table")
            return None
        meta = columns[primary]
        if meta.get("encoding") != "WKB":
            self.add("GEO003", f"geometry encoding is {meta.get('encoding')!r}; eoembed requires WKB", column=primary)
        if not pa.types.is_binary(schema.field(primary).type) and not pa.types.is_large_binary(schema.field(primary).type):
            self.add("GEO003", f"geometry column type is {schema.field(primary).type}, expected binary WKB", column=primary)
        if "crs" not in meta:
            self.add("GEO003", "no 'crs' for the geometry column; eoembed requires the CRS as PROJJSON", column=primary, severity="warning")
        elif meta["crs"] is None:
            self.add("GEO003", "'crs' is null (unknown CRS); eoembed requires OGC:CRS84 as PROJJSON", column=primary)
        if meta.get("edges", "planar") != "planar":
            self.add("GEO011", f"edges are {meta.get('edges')!r}; eoembed footprints are planar in OGC:CRS84", column=primary)
        if "epoch" in meta:
            self.add("GEO011", f"'epoch' {meta['epoch']} is set; eoembed footprints carry no coordinate epoch", column=primary)
        covering = (meta.get("covering") or {}).get("bbox")
        if not covering:
            self.add("GEO004", "no covering 'bbox' column declared", column=primary)
        else:
            col = covering.get("xmin", [None])[0]
            if col not in schema.names:
                self.add("GEO004", f"covering column {col!r} is not in the table", column=col)
            elif not pa.types.is_struct(schema.field(col).type):
                self.add("GEO004", f"covering column {col!r} is {schema.field(col).type}, expected a struct of doubles", column=col)
        geo["_primary"] = primary
        geo["_crs"] = self._crs(meta)
        self._geo_meta = meta
        return geo

    def _crs(self, meta: dict[str, Any]):
        import pyproj

        crs = meta.get("crs", "absent")
        if crs == "absent":
            return pyproj.CRS("OGC:CRS84")
        if crs is None:
            return None
        try:
            return pyproj.CRS.from_json_dict(crs) if isinstance(crs, dict) else pyproj.CRS(crs)
        except pyproj.exceptions.CRSError as error:
            ident = crs.get("id") if isinstance(crs, dict) else None
            if isinstance(ident, dict) and "authority" in ident and "code" in ident:
                try:
                    resolved = pyproj.CRS.from_authority(str(ident["authority"]), str(ident["code"]))
                except pyproj.exceptions.CRSError:
                    resolved = None
                if resolved is not None:
                    self.add("GEO003", f"'crs' is not complete PROJJSON ({str(error).split(':')[-1].strip()}); "
                             f"read as {ident['authority']}:{ident['code']} from its id", severity="warning")
                    return resolved
            self.add("GEO003", f"'crs' cannot be parsed: {error}")
            return None

    # eoembed footer ---------------------------------------------------------------------------

    def _check_footer(self, metadata: dict[bytes, bytes]) -> dict[str, Any] | None:
        if FOOTER_KEY not in metadata:
            self.add("JSN004", f"no '{FOOTER_KEY.decode()}' footer key: conformant Parquet, but not an eoembed data file "
                     f"(spec {SPEC_VERSION} needs the model contract, embedding, grid, provenance and licence there)")
            return None
        try:
            footer = json.loads(metadata[FOOTER_KEY])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self.add("JSN004", f"'eoembed' footer is not valid JSON: {error}")
            return None
        for path, _, message in footer_errors(footer):
            self.add("JSN002", f"eoembed footer: {message}", column=path)
        if self.expected is not None:
            for section in _SECTIONS:
                if footer.get(section) != self.expected.get(section):
                    self.add("JSN005", f"footer '{section}' disagrees with collection.json's eoembed:{section}" if section not in ("license",) else "footer licence disagrees with collection.json's licence")
        return footer

    def _check_embedding_type(self, schema: pa.Schema):
        from ._quantize import Quantization

        required = ["chip_id", "geometry", "bbox", "source_id", "grid_cell", "embedding"]
        missing = [c for c in required if c not in schema.names]
        if "datetime" not in schema.names and not {"start_datetime", "end_datetime"} <= set(schema.names):
            missing.append("datetime (or start_datetime + end_datetime)")
        if missing:
            self.add("IDT004", f"required columns missing: {missing}")
        if self.footer is None or "embedding" not in schema.names:
            return None
        try:
            embedding = self.footer["embedding"]
            quant = Quantization.from_dict(embedding["quantization"], dim=int(embedding["dim"]))
        except (KeyError, TypeError, ValueError, QuantizationError) as error:
            self.add("EMB005", f"quantization in the footer is unusable: {error}", column="embedding")
            return None
        kind = schema.field("embedding").type
        if not pa.types.is_fixed_size_list(kind):
            self.add("EMB001", f"embedding column is {kind}; spec {SPEC_VERSION} requires FixedSizeList<{quant.dtype}>[{quant.stored_width()}]", column="embedding")
            return None
        if kind.list_size != quant.stored_width() or str(kind.value_type) != {"float32": "float", "float16": "halffloat"}.get(quant.dtype, quant.dtype):
            self.add("EMB001", f"embedding column is {kind}, but the footer declares dim {quant.dim} as {quant.dtype} "
                     f"(FixedSizeList<{quant.dtype}>[{quant.stored_width()}])", column="embedding")
            return None
        if embedding.get("dtype") != quant.dtype:
            self.add("EMB001", f"embedding.dtype {embedding.get('dtype')!r} differs from quantization.dtype {quant.dtype!r}", column="embedding")
        if quant.method == "per-row" and (quant.scale_column or "scale") not in schema.names:
            self.add("EMB006", f"per-row quantization needs the scale column {quant.scale_column!r}, which is missing", column=quant.scale_column)
            return None
        return quant

    # row-group statistics ----------------------------------------------------------------------

    def _check_row_group_stats(self, handle: pq.ParquetFile, geo: dict[str, Any] | None) -> None:
        if geo is None:
            return
        declared = geo["columns"][geo["_primary"]].get("bbox")
        names = handle.schema_arrow.names
        if not declared or "bbox" not in names:
            return
        meta = handle.metadata
        index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        lo = [math.inf, math.inf]
        hi = [-math.inf, -math.inf]
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for axis, (low_name, high_name) in enumerate((("bbox.xmin", "bbox.xmax"), ("bbox.ymin", "bbox.ymax"))):
                for name, is_low in ((low_name, True), (high_name, False)):
                    if name not in index:
                        continue
                    stats = group.column(index[name]).statistics
                    if stats is None or not stats.has_min_max:
                        continue
                    if is_low:
                        lo[axis] = min(lo[axis], stats.min)
                    else:
                        hi[axis] = max(hi[axis], stats.max)
        x0, y0, x1, y1 = declared[:4] if len(declared) == 4 else (declared[0], declared[1], declared[3], declared[4])
        eps = 1e-9
        if lo[0] < x0 - eps or lo[1] < y0 - eps or hi[0] > x1 + eps or hi[1] > y1 + eps:
            self.add("GEO006", f"declared bbox {declared} does not contain the row-group statistics "
                     f"[{lo[0]}, {lo[1]}, {hi[0]}, {hi[1]}]", column="bbox")

    # rows ---------------------------------------------------------------------------------------

    def _stream(self, handle: pq.ParquetFile, geo: dict[str, Any] | None, quant) -> None:
        import shapely

        names = handle.schema_arrow.names
        wanted = [c for c in ("geometry", "bbox", "embedding", "datetime", "start_datetime", "end_datetime") if c in names]
        if quant is not None and quant.method == "per-row":
            wanted.append(quant.scale_column or "scale")
        primary = geo["_primary"] if geo else None
        if primary and primary not in wanted:
            wanted.append(primary)
        crs = geo["_crs"] if geo else None
        first = 0
        self._actual_bounds = [math.inf, math.inf, -math.inf, -math.inf]
        self._actual_types: set[str] = set()
        seen_codes: set[tuple[str, int | None]] = set()

        def once(code: str, message: str, **kw: Any) -> None:
            # One finding per code and row group keeps reports readable on big files.
            key = (code, kw.get("row_group"))
            if key not in seen_codes:
                seen_codes.add(key)
                self.add(code, message, **kw)

        for g in range(handle.metadata.num_row_groups):
            try:
                batch = handle.read_row_group(g, columns=wanted)
            except (pa.ArrowException, OSError) as error:
                once("STR010", f"row group cannot be read: {error}", row_group=g)
                first += handle.metadata.row_group(g).num_rows
                continue
            n = batch.num_rows
            # Check in slices: geometry objects and float64 norms of a whole row group are large.
            for offset in range(0, n, _SLICE_ROWS):
                part = batch.slice(offset, _SLICE_ROWS)
                if primary and primary in part.column_names:
                    self._check_geometries(part, primary, crs, first + offset, g, once, shapely)
                if quant is not None and "embedding" in part.column_names:
                    self._check_vectors(part, quant, first + offset, g, once)
                self._check_times(part, first + offset, g, once)
            first += n
        if geo is not None:
            self._check_declared_extent(geo)

    def _check_declared_extent(self, geo: dict[str, Any]) -> None:
        """The declared bbox must contain the geometries; declared types must name every actual type."""
        meta = geo["columns"][geo["_primary"]]
        declared = meta.get("bbox")
        lo_x, lo_y, hi_x, hi_y = self._actual_bounds
        if declared and math.isfinite(lo_x):
            x0, y0, x1, y1 = declared[:4] if len(declared) == 4 else (declared[0], declared[1], declared[3], declared[4])
            tol = 1e-9 * max(1.0, abs(lo_x), abs(hi_x), abs(lo_y), abs(hi_y))
            if lo_x < x0 - tol or lo_y < y0 - tol or hi_x > x1 + tol or hi_y > y1 + tol:
                self.add("GEO006", f"declared bbox {declared} does not contain the geometries, whose bounds are "
                         f"[{lo_x}, {lo_y}, {hi_x}, {hi_y}]", column=geo["_primary"])
        types = meta.get("geometry_types")
        if types and self._actual_types and not self._actual_types <= set(types):
            self.add("GEO009", f"geometry_types declares {types} but the column holds {sorted(self._actual_types)}",
                     column=geo["_primary"])

    def _check_geometries(self, batch: pa.Table, primary: str, crs, first: int, g: int, once, shapely) -> None:
        self._check_wkb_headers(batch.column(primary).combine_chunks(), first, g, once, primary)
        wkb = batch.column(primary).to_numpy(zero_copy_only=False)
        try:
            geoms = shapely.from_wkb(wkb, on_invalid="raise")
        except Exception as error:  # shapely raises GEOSException subclasses
            once("GEO003", f"geometry WKB cannot be parsed: {error}", row_group=g, column=primary)
            return
        missing = shapely.is_missing(geoms)
        if missing.any():
            once("GEO012", "geometry is null; every eoembed chip needs a footprint", row=first + int(np.flatnonzero(missing)[0]), row_group=g, column=primary)
        bounds = shapely.bounds(geoms)
        present = geoms[~missing]
        if len(present):
            finite = bounds[~missing]
            self._actual_bounds = [min(self._actual_bounds[0], float(np.nanmin(finite[:, 0]))), min(self._actual_bounds[1], float(np.nanmin(finite[:, 1]))),
                                   max(self._actual_bounds[2], float(np.nanmax(finite[:, 2]))), max(self._actual_bounds[3], float(np.nanmax(finite[:, 3])))]
            names = np.array([_TYPE_NAMES[t] for t in shapely.get_type_id(present)], dtype=object)
            has_z = shapely.has_z(present)
            names[has_z] = names[has_z] + " Z"
            self._actual_types.update(set(names.tolist()))
            self._check_orientation(present, first, g, once, primary)
        invalid = ~shapely.is_valid(geoms) & ~missing
        if invalid.any():
            row = int(np.flatnonzero(invalid)[0])
            once("GEO008", f"invalid geometry: {shapely.is_valid_reason(geoms[row])}", row=first + row, row_group=g, column=primary)
        if crs is not None:
            self._check_crs_range(bounds[~missing], crs, first, g, once, primary)
        if "bbox" in batch.column_names:
            box = batch.column("bbox").combine_chunks()
            try:
                cover = np.stack([box.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")], axis=1)
            except KeyError:
                once("GEO004", "covering bbox struct lacks xmin/ymin/xmax/ymax fields", row_group=g, column="bbox")
                return
            tol = 1e-9 * np.maximum(1.0, np.abs(bounds))
            bad = ~missing & (np.abs(cover - bounds) > tol).any(axis=1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("GEO005", f"bbox {cover[row].tolist()} does not match the geometry's bounds {bounds[row].tolist()}",
                     row=first + row, row_group=g, column="bbox")

    @staticmethod
    def _check_wkb_headers(column: pa.Array, first: int, g: int, once, name: str) -> None:
        """ISO WKB only: EWKB flag bits (SRID, Z, M) in the type word are not GeoParquet."""
        from ._geometry import wkb_type_words

        if not pa.types.is_binary(column.type) or len(column) == 0:
            return
        words = wkb_type_words(column)
        ewkb = (words & np.uint32(0xE0000000)) != 0
        if ewkb.any():
            row = int(np.flatnonzero(ewkb)[0])
            once("GEO003", f"geometry is EWKB (type word 0x{int(words[row]):08x} carries SRID/Z/M flags); "
                 "GeoParquet requires ISO WKB", row=first + row, row_group=g, column=name)

    def _check_orientation(self, geoms, first: int, g: int, once, column: str) -> None:
        import shapely

        meta = self._geo_meta
        if not meta or meta.get("orientation") != "counterclockwise":
            return
        polygons = shapely.get_parts(geoms[np.isin(shapely.get_type_id(geoms), (3, 6))])
        if not len(polygons):
            return
        clockwise = ~shapely.is_ccw(shapely.get_exterior_ring(polygons))
        if clockwise.any():
            once("GEO010", "orientation 'counterclockwise' is declared but an exterior ring is clockwise",
                 row_group=g, column=column)

    def _check_crs_range(self, bounds: np.ndarray, crs, first: int, g: int, once, column: str) -> None:
        if len(bounds) == 0:
            return
        if crs.is_geographic:
            bad = (bounds[:, 0] < -180) | (bounds[:, 2] > 180) | (bounds[:, 1] < -90) | (bounds[:, 3] > 90)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("GEO007", f"coordinates {bounds[row].tolist()} are outside the range of {crs.name} (lon -180..180, lat -90..90)",
                     row=first + row, row_group=g, column=column)
            return
        area = crs.area_of_use
        try:
            from pyproj import Transformer

            to_crs = Transformer.from_crs("OGC:CRS84", crs, always_xy=True)
            xs, ys = to_crs.transform([area.west, area.east, area.west, area.east], [area.south, area.south, area.north, area.north])
            limit = (min(xs), min(ys), max(xs), max(ys))
        except Exception:  # a CRS without area of use: nothing to compare against
            limit = None
        if limit is not None and all(np.isfinite(limit)):
            pad = 0.05 * max(limit[2] - limit[0], limit[3] - limit[1])
            bad = (bounds[:, 0] < limit[0] - pad) | (bounds[:, 2] > limit[2] + pad) | (bounds[:, 1] < limit[1] - pad) | (bounds[:, 3] > limit[3] + pad)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("GEO007", f"coordinates {bounds[row].tolist()} lie outside the area of use of {crs.name}",
                     row=first + row, row_group=g, column=column)
                return
        # Degrees stored under a projected CRS: every coordinate fits lon/lat ranges and the
        # footprints are centimetres wide in the declared units, which no EO chip is.
        unit = crs.axis_info[0].unit_name if crs.axis_info else ""
        in_degree_range = (np.abs(bounds[:, [0, 2]]) <= 180).all() and (np.abs(bounds[:, [1, 3]]) <= 90).all()
        widths = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        if in_degree_range and "metre" in unit and np.median(widths) < 1.0:
            once("GEO007", f"declared CRS {crs.name} is projected (metres) but every coordinate lies within lon/lat degree ranges "
                 f"and footprints are {np.median(widths):.4g} m wide: the coordinates look like degrees (declare OGC:CRS84)",
                 row=first, row_group=g, column=column)

    def _check_vectors(self, batch: pa.Table, quant, first: int, g: int, once) -> None:
        from ._quantize import dequantize

        column = batch.column("embedding").combine_chunks()
        width = column.type.list_size
        if column.null_count:
            row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
            once("EMB002", "embedding is null", row=first + row, row_group=g, column="embedding")
            return
        codes = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        row_scale = None
        if quant.method == "per-row":
            name = quant.scale_column or "scale"
            row_scale = np.asarray(batch.column(name).to_numpy(zero_copy_only=False), dtype=np.float32)
            bad = ~np.isfinite(row_scale) | (row_scale <= 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("EMB006", f"per-row scale is {row_scale[row]}; it must be finite and > 0", row=first + row, row_group=g, column=name)
                return
        if codes.dtype.kind == "f":
            finite = np.isfinite(codes).all(axis=1)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                once("EMB002", "vector holds NaN or infinity", row=first + row, row_group=g, column="embedding")
                return
        vectors = dequantize(codes, quant, row_scale=row_scale)
        self._check_round_trip(codes, vectors, quant, row_scale, first, g, once)
        if quant.method == "sqrt":
            vectors = np.nan_to_num(vectors, nan=0.0)  # -128 is the declared nodata code
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        declared_nodata = bool(self.footer and self.footer.get("embedding", {}).get("nodata_zero_vector"))
        zero = norms == 0
        if zero.any() and not declared_nodata:
            row = int(np.flatnonzero(zero)[0])
            once("EMB003", "all-zero vector, but embedding.nodata_zero_vector is not declared", row=first + row, row_group=g, column="embedding")
        if self.footer and self.footer.get("embedding", {}).get("normalized"):
            tol = _NORM_TOLERANCE.get(quant.method, 1e-3)
            off = ~zero & (np.abs(norms - 1.0) > tol)
            if off.any():
                row = int(np.flatnonzero(off)[0])
                once("EMB004", f"norm is {norms[row]:.5f}, but normalized=true is declared (tolerance {tol})",
                     row=first + row, row_group=g, column="embedding")

    def _check_round_trip(self, codes: np.ndarray, vectors: np.ndarray, quant, row_scale, first: int, g: int, once) -> None:
        """Re-quantising de-quantised codes must give the same codes; otherwise the codes cannot
        have come from the declared method (e.g. -128 under symmetric int8, scales that do not fit)."""
        from ._quantize import quantize

        if quant.method in ("none", "binary"):
            return
        sample = slice(0, min(len(codes), 256))
        values = vectors[sample]
        if quant.method == "sqrt":
            keep = ~np.isnan(values).any(axis=1)
            values, expected = values[keep], codes[sample][keep]
        else:
            expected = codes[sample]
        if quant.method == "per-row":
            # The per-row quantiser derives each row's scale again; compare codes under the stored scale.
            again = np.clip(np.rint(values / row_scale[sample][:, None]), -127, 127).astype(np.int8)
        else:
            again, _ = quantize(values, quant)
        bad = (again != expected).any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            col = int(np.flatnonzero(again[row] != expected[row])[0])
            once("EMB007", f"stored code {expected[row, col]} at index {col} does not survive de-quantisation and "
                 f"re-quantisation under method {quant.method!r} (gives {again[row, col]})",
                 row=first + row, row_group=g, column="embedding")

    def _probe_foreign_vectors(self, handle: pq.ParquetFile) -> None:
        """Describe the vector columns of a file that is not an eoembed data file: what would keep
        them from being eoembed embeddings (warnings; NaN is an error anywhere)."""
        schema = handle.schema_arrow
        for vector_field in schema:
            kind = vector_field.type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
                continue
            if not pa.types.is_floating(kind.value_type):
                continue
            dims: set[int] = set()
            norms: list[np.ndarray] = []
            nan_row = None
            first = 0
            nulls = 0
            for batch in handle.iter_batches(columns=[vector_field.name], batch_size=65536):
                column = batch.column(0)
                nulls += column.null_count
                if column.null_count:
                    column = column.filter(column.is_valid())
                lengths = column.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(kind) else np.full(len(column), kind.list_size)
                dims.update(np.unique(lengths).tolist())
                if len(set(lengths.tolist())) == 1 and len(column):
                    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)
                    finite = np.isfinite(values).all(axis=1)
                    if not finite.all() and nan_row is None:
                        nan_row = first + int(np.flatnonzero(~finite)[0])
                    norms.append(np.linalg.norm(values[finite], axis=1))
                first += len(column)
            if nulls:
                self.add("EMB002", f"column {vector_field.name!r} has {nulls} null vectors", column=vector_field.name)
            if not first:
                self.add("EMB008", f"column {vector_field.name!r} ({kind}) holds no vectors", severity="warning", column=vector_field.name)
                continue
            if not pa.types.is_fixed_size_list(kind):
                self.add("EMB001", f"column {vector_field.name!r} is {kind} with lengths {sorted(dims)}; eoembed stores vectors as "
                         "FixedSizeList<float32|float16|int8|uint8>[D] in a column named 'embedding'",
                         severity="warning", column=vector_field.name)
            if nan_row is not None:
                self.add("EMB002", f"column {vector_field.name!r} holds NaN or infinity", row=nan_row, column=vector_field.name)
            if norms:
                all_norms = np.concatenate(norms)
                if len(all_norms) and np.abs(all_norms - 1).max() > 1e-3:
                    self.add("EMB004", f"column {vector_field.name!r}: vectors are not unit length (L2 norm {all_norms.min():.4g} to "
                             f"{all_norms.max():.4g}, median {np.median(all_norms):.4g}); declare normalized=false or normalise "
                             "them before comparing by cosine", severity="warning", column=vector_field.name)

    def _check_times(self, batch: pa.Table, first: int, g: int, once) -> None:
        if not self.temporal:
            return
        start, end = self.temporal
        for name in ("datetime", "start_datetime", "end_datetime"):
            if name not in batch.column_names:
                continue
            values = batch.column(name).to_numpy(zero_copy_only=False)
            if values.dtype.kind != "M":
                once("IDT002", f"{name} is {batch.schema.field(name).type}, expected a UTC timestamp", row_group=g, column=name)
                continue
            values = values.astype("datetime64[us]")
            bad = np.zeros(len(values), dtype=bool)
            if start is not None:
                bad |= values < start
            if end is not None:
                bad |= values > end
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("IDT002", f"{name} {values[row]} lies outside the collection's temporal extent [{start}, {end}]",
                     row=first + row, row_group=g, column=name)
