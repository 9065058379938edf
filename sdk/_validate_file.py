"""Validation of one data file: the GeoParquet, footer and embedding checks a product's checker
runs on each of its files (and ``eoembed validate FILE.parquet`` on one), and the report they fill.

Checks stream over record batches, so memory does not grow with the row count. The product checker
(:mod:`eoembed._validate`) and the tile checker (:mod:`eoembed._validate_tiles`) both build on
:class:`_DataFileChecker`; neither is imported here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import QuantizationError
from ._geometry import _TYPE_NAMES, bbox_bounds
from ._optional import available
from ._spec import FOOTER_KEY, SPEC_VERSION, footer_errors

Severity = Literal["error", "warning"]
_SECTIONS = ("model", "embedding", "grid", "license", "spec_version", "pixel")
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



@lru_cache(maxsize=64)
def _to_crs84(name: str):
    """A transformer from a native CRS to lon/lat (building one costs about 10 ms)."""
    from pyproj import Transformer

    return Transformer.from_crs(name, "OGC:CRS84", always_xy=True)


@lru_cache(maxsize=256)
def _stac_issues(text: str) -> tuple[Any, ...]:
    """Schema issues of a STAC document by its JSON text: the products of a catalogue repeat
    documents (and the schema walk is most of a small product's validation time)."""
    from ._schemas import validate_stac

    return tuple(validate_stac(json.loads(text)))


def _lookup(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return False, None
        document = document[key]
    return True, document


def _instant(text: str) -> datetime | None:
    """An RFC 3339 time with a zone as an aware datetime; None for any other string."""
    if len(text) < 20 or text[4] != "-" or text[10] != "T":
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _same(stated: Any, actual: Any) -> bool:
    """JSON values equal, numbers to 1e-9 relative (bounds go through float text), times as instants."""
    if isinstance(stated, bool) or isinstance(actual, bool):
        return type(stated) is type(actual) and stated == actual
    if isinstance(stated, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(stated, actual, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(stated, str) and isinstance(actual, str):
        if stated == actual:
            return True
        a, b = _instant(stated), _instant(actual)
        return a is not None and a == b
    if isinstance(stated, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(stated) == len(actual) and all(_same(a, b) for a, b in zip(stated, actual))
    if isinstance(stated, dict) and isinstance(actual, dict):
        return stated.keys() == actual.keys() and all(_same(stated[k], actual[k]) for k in stated)
    return stated == actual


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row_boxes(batch: pa.Table) -> np.ndarray | None:
    """The rows' bbox covering as an (n, 4) float array (null fields NaN); None without a usable one."""
    if "bbox" not in batch.column_names:
        return None
    box = batch.column("bbox").combine_chunks()
    if not pa.types.is_struct(box.type) or not all(box.type.get_field_index(k) >= 0 for k in ("xmin", "ymin", "xmax", "ymax")):
        return None
    return bbox_bounds(box)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _stored_rows_problem(path: Path, record, checker: "_DataFileChecker") -> str | None:
    """Why a ``stored`` re-rank file does not hold the data file's codes, or None."""
    from ._quantize import Quantization, dequantize

    embedding = record.footer["embedding"]
    quant = Quantization.from_dict(embedding["quantization"], dim=int(embedding["dim"]))
    try:
        stored = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        return f"it cannot be read as a NumPy array ({error})"
    width, dtype = quant.stored_width(), np.dtype(quant.dtype)
    if stored.shape != (record.rows, width) or stored.dtype != dtype:
        return f"it is a {stored.dtype} array of shape {stored.shape}, expected {dtype} ({record.rows}, {width})"
    if quant.method == "per-row":
        return "stored re-rank rows cannot hold per-row-scaled codes; rebuild the ivf-rabitq index with rerank float16"
    sample = checker.sample
    if sample is None:
        return None
    again = dequantize(np.asarray(stored[: len(sample)]), quant)
    bad = ~((again == sample) | (np.isnan(again) & np.isnan(sample))).all(axis=1)
    if bad.any():
        return f"row {int(np.flatnonzero(bad)[0])} holds codes other than the data file's"
    return None


def _index_problem(key: str, path: Path, meta: dict[str, Any], record, checker: "_DataFileChecker") -> str | None:
    """Why an index file does not hold what the current data file gives, or None."""
    from ._index import asset_key

    kind, metric = meta.get("kind"), meta.get("metric")
    if asset_key(str(kind), str(metric)) != key:
        return f"the asset key is {key!r} but eoembed:index says kind {kind!r}, metric {metric!r}"
    if meta.get("data_sha256") != record.sha256:
        return f"data_sha256 is {meta.get('data_sha256')}, the data file's SHA-256 is {record.sha256}"
    if meta.get("rows") != record.rows:
        return f"rows is {meta.get('rows')}, the data file holds {record.rows}"
    sample = checker.sample
    dim = int(record.footer["embedding"]["dim"])
    if kind == "stored":  # the re-rank rows of ivf-rabitq: the data file's codes, byte for byte
        return _stored_rows_problem(path, record, checker)
    if kind in ("int8", "binary", "float16"):
        try:
            stored = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            return f"it cannot be read as a NumPy array ({error})"
        width, dtype = {"int8": (dim, np.int8), "binary": (dim // 8, np.uint8), "float16": (dim, np.float16)}[kind]
        if stored.shape != (record.rows, width) or stored.dtype != dtype:
            return f"it is a {stored.dtype} array of shape {stored.shape}, expected {np.dtype(dtype)} ({record.rows}, {width})"
        if sample is None:
            return None
        rows = ~np.isnan(sample).any(axis=1)
        vectors = sample[rows]
        if kind == "binary":
            again = np.packbits(vectors > 0, axis=1)
            bad = (again != stored[: len(sample)][rows]).any(axis=1)
        elif kind == "float16":  # the re-rank rows of ivf-rabitq: unit vectors for cosine
            if metric == "cosine":
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1), 1e-30)[:, None]
            held = stored[: len(sample)][rows].astype(np.float64)
            bad = (np.abs(held - vectors) > 1e-3 * np.maximum(1.0, np.abs(vectors))).any(axis=1)
        else:
            if metric == "cosine":
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1), 1e-30)[:, None]
            scale = meta.get("scale")
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
                return f"scale {scale!r} is not a positive number"
            again = np.clip(np.rint(vectors / float(scale)), -127, 127)
            # One code of slack: the index is built from float32 norms, this check uses its own.
            bad = (np.abs(again - stored[: len(sample)][rows].astype(np.float64)) > 1).any(axis=1)
        if bad.any():
            return f"row {int(np.flatnonzero(rows)[np.flatnonzero(bad)[0]])} holds codes the data does not give"
        return None
    if not available("faiss"):  # without faiss, search cannot use the index either
        return None
    import faiss

    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)  # archive indexes may exceed memory
    except RuntimeError as error:
        return f"faiss cannot read it ({str(error).splitlines()[0]})"
    if index.ntotal != record.rows or index.d != dim:
        return f"it holds {index.ntotal} vectors of dimension {index.d}, the data file {record.rows} of {dim}"
    wanted = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if index.metric_type != wanted:
        return f"its faiss metric is {index.metric_type}, metric {metric!r} needs {wanted}"
    return None


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
        self.schema: pa.Schema | None = None
        self.footer_valid = False
        self._geo_meta: dict[str, Any] | None = None
        # Facts gathered while streaming, which the metadata is checked against afterwards.
        self.sample: np.ndarray | None = None  # de-quantised vectors of the first rows
        self.sources: set[str] = set()
        self._times: dict[str, tuple[np.datetime64, np.datetime64]] = {}
        self._actual_bounds = [math.inf, math.inf, -math.inf, -math.inf]
        self._actual_types: set[str] = set()
        self._derives_ids: bool | None = None  # whether the file's chip ids follow their derivation

    def record(self, *, size: int, sha256: str):
        """The manifest facts of this file as the writer would record them, from its rows."""
        from ._write import _FileRecord

        if self.rows is None or self.footer is None or not self.footer_valid:
            return None
        names = self.schema.names if self.schema is not None else []
        first, last = ("datetime", "datetime") if "datetime" in names else ("start_datetime", "end_datetime")
        if self.rows and (first not in self._times or last not in self._times or not math.isfinite(self._actual_bounds[0])):
            return None
        start = end = datetime(1970, 1, 1, tzinfo=timezone.utc)
        if self.rows:
            start = self._times[first][0].astype(datetime).replace(tzinfo=timezone.utc)
            end = self._times[last][1].astype(datetime).replace(tzinfo=timezone.utc)
        return _FileRecord(path=self.name, rows=self.rows, bytes=size, sha256=sha256, bbox=tuple(self._actual_bounds),
                           start=start, end=end, geometry_types=sorted(self._actual_types), footer=self.footer,
                           sources=sorted(self.sources))

    def add(self, code: str, message: str, **kw: Any) -> None:
        self.report.add(code, message, file=self.name, **kw)

    def run(self) -> None:
        try:
            handle = pq.ParquetFile(self.path, pre_buffer=False)  # stream: no whole-file read-ahead
        except (pa.ArrowException, OSError) as error:
            self.add("STR010", f"not a readable Parquet file: {error}")
            return
        self.rows = handle.metadata.num_rows
        schema = self.schema = handle.schema_arrow
        metadata = schema.metadata or {}
        geo = self._check_geo(metadata, schema)
        self.footer = self._check_footer(metadata)
        if self.footer is not None and geo is not None and geo["_crs"] is not None and not _is_crs84(geo["_crs"]):
            self.add("GEO003", f"geometry CRS is {geo['_crs'].name}; eoembed footprints are in OGC:CRS84 (lon/lat degrees)",
                     column=geo["_primary"])
        quant = self._check_embedding_type(schema)
        self._check_time_types(schema)
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
        errors = footer_errors(footer)
        for path, _, message in errors:
            self.add("JSN002", f"eoembed footer: {message}", column=path)
        # Metadata is rebuilt from a footer only when it follows the schema (JSN002 says why not).
        self.footer_valid = not errors
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
        self._check_stats_present(handle)
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

    def _check_stats_present(self, handle: pq.ParquetFile) -> None:
        """The columns readers filter on (bbox, times) carry min/max statistics in every row group."""
        meta = handle.metadata
        filtered = ("bbox.xmin", "bbox.ymin", "bbox.xmax", "bbox.ymax", "datetime", "start_datetime", "end_datetime")
        index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if not group.num_rows:
                continue
            for name in filtered:
                if name not in index:
                    continue
                stats = group.column(index[name]).statistics
                if stats is None or (not stats.has_min_max and stats.null_count < group.num_rows):
                    self.add("STR013", f"column {name} has no min/max statistics; readers cannot skip row groups by bbox "
                             "or time (write the file with statistics)", row_group=g, column=name)
                    return

    # rows ---------------------------------------------------------------------------------------

    def _stream(self, handle: pq.ParquetFile, geo: dict[str, Any] | None, quant) -> None:
        import shapely

        names = handle.schema_arrow.names
        wanted = [c for c in ("chip_id", "geometry", "bbox", "embedding", "datetime", "start_datetime", "end_datetime",
                              "source_id", "grid_cell", "pixel_bbox", "native_crs", "native_footprint", "valid_fraction") if c in names]
        if quant is not None and quant.method == "per-row":
            wanted.append(quant.scale_column or "scale")
        primary = geo["_primary"] if geo else None
        if primary and primary not in wanted:
            wanted.append(primary)
        crs = geo["_crs"] if geo else None
        first = 0
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
                self._check_required_values(part, quant, first + offset, g, once)
                if self.footer is not None:
                    self._check_derived_columns(part, first + offset, g, once)
                    self._check_native_footprints(part, first + offset, g, once)
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
            elif self.footer is not None and not _same([x0, y0, x1, y1], [lo_x, lo_y, hi_x, hi_y]):
                # eoembed writers state the exact bounds; a looser box misleads every spatial filter.
                self.add("GEO006", f"declared bbox {declared} is larger than the geometries' bounds "
                         f"[{lo_x}, {lo_y}, {hi_x}, {hi_y}]; state the exact bounds", column=geo["_primary"])
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
            cover = _row_boxes(batch)
            if cover is None:
                once("GEO004", "covering bbox struct lacks xmin/ymin/xmax/ymax fields", row_group=g, column="bbox")
                return
            tol = 1e-9 * np.maximum(1.0, np.abs(bounds))
            bad = ~missing & ~(np.abs(cover - bounds) <= tol).all(axis=1)  # NaN compares false: it is caught too
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
        column = batch.column("embedding").combine_chunks()
        width = column.type.list_size
        if column.null_count:
            row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
            once("EMB002", "embedding is null", row=first + row, row_group=g, column="embedding")
            return
        codes = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        row_scale = None
        if quant.method == "per-row":
            row_scale = np.asarray(batch.column(quant.scale_column or "scale").to_numpy(zero_copy_only=False), dtype=np.float32)
        self._check_codes(codes, row_scale, quant, first, g, once)

    def _check_codes(self, codes: np.ndarray, row_scale: np.ndarray | None, quant, first: int, g: int | None, once) -> None:
        """The checks of stored vectors ``(n, W)`` (a chip file's rows, a tile's pixels with data):
        per-row scales, finiteness, round trip, zero vectors, norms."""
        from ._quantize import dequantize

        if row_scale is not None:
            name = quant.scale_column or "scale"
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
        if first == 0:
            self.sample = np.asarray(vectors[:256], dtype=np.float32)
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

    def _check_time_types(self, schema: pa.Schema) -> None:
        for name in ("datetime", "start_datetime", "end_datetime"):
            if name in schema.names and pa.types.is_timestamp(schema.field(name).type):
                zone = schema.field(name).type.tz
                if zone not in ("UTC", "Etc/UTC", "+00:00"):
                    self.add("IDT007", f"{name} is {schema.field(name).type}: "
                             f"{'no time zone' if zone is None else f'time zone {zone}'}; "
                             "eoembed times are timestamp[us, tz=UTC] (write them as UTC)", column=name)

    def _check_times(self, batch: pa.Table, first: int, g: int, once) -> None:
        start, end = self.temporal or (None, None)
        columns = {}
        for name in ("datetime", "start_datetime", "end_datetime"):
            if name not in batch.column_names:
                continue
            values = batch.column(name).to_numpy(zero_copy_only=False)
            if values.dtype.kind != "M":
                once("IDT002", f"{name} is {batch.schema.field(name).type}, expected a UTC timestamp", row_group=g, column=name)
                continue
            values = columns[name] = values.astype("datetime64[us]")
            known = values[~np.isnat(values)]
            if len(known):
                lo, hi = known.min(), known.max()
                seen = self._times.get(name)
                self._times[name] = (min(lo, seen[0]), max(hi, seen[1])) if seen else (lo, hi)
            bad = np.zeros(len(values), dtype=bool)
            if start is not None:
                bad |= values < start
            if end is not None:
                bad |= values > end
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("IDT002", f"{name} {values[row]} lies outside the collection's temporal extent [{start}, {end}]",
                     row=first + row, row_group=g, column=name)
        if "start_datetime" in columns and "end_datetime" in columns:
            after = columns["start_datetime"] > columns["end_datetime"]
            if after.any():
                row = int(np.flatnonzero(after)[0])
                once("IDT006", f"start_datetime {columns['start_datetime'][row]} is after end_datetime "
                     f"{columns['end_datetime'][row]}; swap them or fix the dates", row=first + row, row_group=g, column="start_datetime")

    def _check_required_values(self, batch: pa.Table, quant, first: int, g: int, once) -> None:
        """REQUIRED columns hold a value in every row (embedding and geometry have their own codes)."""
        names = ["chip_id", "bbox", "datetime", "start_datetime", "end_datetime", "source_id", "grid_cell"]
        if quant is not None and quant.method == "per-row":
            names.append(quant.scale_column or "scale")
        for name in names:
            if name not in batch.column_names:
                continue
            column = batch.column(name).combine_chunks()
            nulls = np.asarray(column.is_null())
            if pa.types.is_struct(column.type):
                for index in range(column.type.num_fields):
                    nulls = nulls | np.asarray(column.field(index).is_null())
            if nulls.any():
                row = int(np.flatnonzero(nulls)[0])
                once("IDT005", f"{name} is null in {int(nulls.sum())} rows of this row group; it is REQUIRED in every row",
                     row=first + row, row_group=g, column=name)
        if "source_id" in batch.column_names:
            import pyarrow.compute as pc

            self.sources.update(v for v in pc.unique(batch.column("source_id")).to_pylist() if v is not None)
        if "valid_fraction" in batch.column_names:
            fraction = batch.column("valid_fraction").to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~np.isnan(fraction) & ~((fraction >= 0) & (fraction <= 1))
            bad |= np.isnan(fraction) & np.asarray(batch.column("valid_fraction").is_valid())
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                once("IDT010", f"valid_fraction is {fraction[row]}; it is a fraction of pixels, in [0, 1]",
                     row=first + row, row_group=g, column="valid_fraction")

    def _grid(self):
        """The footer's grid when this version can rebuild it, else None (cells are then opaque labels)."""
        if not hasattr(self, "_grid_object"):
            from ._errors import GridError
            from ._grid import grid_from_definition

            try:
                definition = self.footer["grid"]["definition"]
                self._grid_object = grid_from_definition(definition) if definition.get("kind") in ("majortom", "utm") else None
            except (GridError, KeyError, TypeError, AttributeError):
                self._grid_object = None
        return self._grid_object

    def _check_derived_columns(self, batch: pa.Table, first: int, g: int, once) -> None:
        """grid_cell is the cell of the bbox centre; chip_id, where the file derives it, is its derivation."""
        from ._chipid import chip_ids
        from ._errors import GridError

        names = batch.column_names
        cover = _row_boxes(batch)
        if cover is None or "grid_cell" not in names or not batch.num_rows:
            return
        grid = self._grid()
        derives_ids = self._derives_ids is not False and {"chip_id", "pixel_bbox", "source_id"} <= set(names)
        if grid is None and not derives_ids:
            return
        lon, lat = (cover[:, 0] + cover[:, 2]) / 2, (cover[:, 1] + cover[:, 3]) / 2
        cells = np.asarray(batch.column("grid_cell").to_pylist(), dtype=object)
        if grid is not None and np.isfinite(lon).all() and np.isfinite(lat).all():
            try:
                derived = np.asarray(grid.cell_of(lon, lat), dtype=object)
            except GridError as error:
                once("IDT008", f"a bbox centre lies outside grid {grid.id}: {error}", row_group=g, column="grid_cell")
            else:
                bad = derived != cells
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    once("IDT008", f"grid_cell is {cells[row]!r}, but the bbox centre ({lon[row]:.6f}, {lat[row]:.6f}) lies in "
                         f"{derived[row]!r} of grid {grid.id}", row=first + row, row_group=g, column="grid_cell")
        if not derives_ids:
            return
        times = (batch.column("datetime").to_pylist() if "datetime" in names else
                 list(zip(batch.column("start_datetime").to_pylist(), batch.column("end_datetime").to_pylist()))
                 if "end_datetime" in names else None)
        pixels = batch.column("pixel_bbox").combine_chunks()
        if times is None or pixels.null_count or not pa.types.is_fixed_size_list(pixels.type) or pixels.type.list_size != 4:
            return
        offsets = pixels.flatten().to_numpy(zero_copy_only=False).reshape(-1, pixels.type.list_size)
        ids = np.asarray(batch.column("chip_id").to_pylist(), dtype=object)
        sources = batch.column("source_id").to_pylist()

        def derived(rows: slice) -> np.ndarray:
            return np.asarray(chip_ids(
                grid_id=self.footer["grid"]["id"], grid_cells=cells[rows].tolist(), col_offs=offsets[rows, 0],
                row_offs=offsets[rows, 1], chip_size=int(self.footer["model"]["input"]["chip_size_px"]),
                times=times[rows], source_ids=sources[rows]), dtype=object)

        try:
            if self._derives_ids is None:
                # Producers may supply their own ids: the first rows tell whether this file derives them.
                self._derives_ids = bool((derived(slice(0, 64)) == ids[:64]).any())
            if not self._derives_ids:
                return
            expected = derived(slice(None))
        except (KeyError, TypeError, ValueError):
            return  # an unusable footer is reported by the schema checks
        match = expected == ids
        if not match.all():
            row = int(np.flatnonzero(~match)[0])
            once("IDT009", f"chip_id is {ids[row]!r}, but its derivation from grid, grid_cell, pixel_bbox, chip size, "
                 f"time and source_id gives {expected[row]!r}", row=first + row, row_group=g, column="chip_id")

    def _check_native_footprints(self, batch: pa.Table, first: int, g: int, once) -> None:
        """The native footprint, taken back to lon/lat, lies on the row's footprint (catches swapped lon/lat)."""
        import shapely
        from pyproj.exceptions import CRSError

        names = batch.column_names
        cover = _row_boxes(batch)
        if not {"native_crs", "native_footprint"} <= set(names) or cover is None or not batch.num_rows:
            return
        try:
            native = shapely.from_wkb(batch.column("native_footprint").to_numpy(zero_copy_only=False), on_invalid="ignore")
        except (TypeError, ValueError):
            return  # not WKB: nothing to compare against
        crs_names = np.asarray(batch.column("native_crs").to_pylist(), dtype=object)
        bounds = shapely.bounds(native)
        for name in {n for n in crs_names.tolist() if isinstance(n, str)}:
            rows = (crs_names == name) & np.isfinite(bounds).all(axis=1) & np.isfinite(cover).all(axis=1)
            if not rows.any():
                continue
            try:
                transformer = _to_crs84(name)
            except CRSError as error:
                once("GEO013", f"native_crs {name!r} cannot be parsed: {error}", row_group=g, column="native_crs")
                continue
            lon, lat = transformer.transform((bounds[rows, 0] + bounds[rows, 2]) / 2, (bounds[rows, 1] + bounds[rows, 3]) / 2)
            c = cover[rows]
            pad = 0.01 * np.maximum(c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]) + 1e-9
            off = ~((lon >= c[:, 0] - pad) & (lon <= c[:, 2] + pad) & (lat >= c[:, 1] - pad) & (lat <= c[:, 3] + pad))
            if off.any():
                k = int(np.flatnonzero(off)[0])
                row = int(np.flatnonzero(rows)[k])
                once("GEO013", f"native_footprint ({name}) lies at lon/lat ({lon[k]:.6f}, {lat[k]:.6f}), outside the row's bbox "
                     f"{c[k].tolist()}: swapped lon/lat, or the footprints of another chip", row=first + row, row_group=g, column="geometry")
