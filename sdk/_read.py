"""Open products: metadata, streaming Arrow reads, numpy / torch arrays and SQL.

Readers ignore fields outside the ``eoembed:`` prefix they do not know, and reject products written
for another major spec version, half-written staging folders and ``eoembed:`` fields the spec does
not define.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import _quantize
from ._damage import damaged, read_json, reading
from ._errors import ProductNotFoundError, SpecError
from ._optional import require
from ._paths import inside, is_url
from ._store import location, open_input, read_metadata, size_of
from ._spec import FOOTER_KEY, READABLE_SPEC_VERSIONS, SPEC_VERSION, check_footer
from ._stac import MANIFEST
from ._write import REQUIRED_COLUMNS, STAGING_MARK

# Manifest columns a reader needs: the Arrow type test each must pass and the type the spec names.
_MANIFEST_COLUMNS = {"path": (pa.types.is_string, "string"), "rows": (pa.types.is_integer, "int64"),
                     "bytes": (pa.types.is_integer, "int64"), "sha256": (pa.types.is_string, "string")}

_FOOTER_SECTIONS = ("model", "embedding", "grid", "provenance")


def _resolve(path: str | os.PathLike):
    path = location(path)  # a local Path, or a UPath for a URL (StoreError for an unknown scheme)
    if not isinstance(path, Path):
        return _resolve_remote(path)
    if path.is_file() and path.name == "collection.json":
        path = path.parent
    if not path.exists():
        raise ProductNotFoundError(f"{path} does not exist; give a product folder or its collection.json")
    if STAGING_MARK in path.name:
        raise ProductNotFoundError(
            f"{path} is a half-written staging folder of an interrupted write, not a product; delete it and write again"
        )
    if not (path / "collection.json").exists():
        raise ProductNotFoundError(f"{path} has no collection.json: it is not an eoembed product")
    return path


def _resolve_remote(path):
    """A product at a URL: folders are only prefixes there, so its collection.json decides."""
    from ._errors import StoreError

    if path.name == "collection.json":
        path = path.parent
    if STAGING_MARK in path.name:
        raise ProductNotFoundError(f"{path} is a half-written staging folder of an interrupted write, not a product")
    try:
        found = size_of(path / "collection.json") is not None
    except Exception as error:  # the store's own errors (access denied, unreachable endpoint...)
        raise StoreError(f"{path} cannot be reached ({type(error).__name__}: {error}); check the URL, "
                         "the credentials (AWS_*, profiles) and AWS_ENDPOINT_URL") from error
    if not found:
        raise ProductNotFoundError(f"{path} has no collection.json: it is not an eoembed product (or not yet: "
                                   "a copy writes it last)")
    return path


def _footer_of(path: Path, schema: pa.Schema) -> dict[str, Any]:
    metadata = schema.metadata or {}
    if FOOTER_KEY not in metadata:
        raise SpecError(f"{path} has no '{FOOTER_KEY.decode()}' footer key: it is not an eoembed data file")
    with reading(path, column=f"footer key {FOOTER_KEY.decode()}"):
        footer = json.loads(metadata[FOOTER_KEY])
    if not isinstance(footer, dict):
        raise damaged(path, f"the '{FOOTER_KEY.decode()}' footer key holds a JSON {type(footer).__name__}, not an object")
    return footer


def read_footer(path: str | os.PathLike) -> dict[str, Any]:
    """The ``eoembed`` footer object of one data file (raises SpecError when absent)."""
    path = location(path)
    with reading(path):
        schema = read_metadata(path).schema.to_arrow_schema()
    return _footer_of(path, schema)


def conform(data: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.RecordBatch | pa.Table:
    """``data`` with exactly the columns of ``schema``: a column a data file lacks (an optional one)
    becomes nulls."""
    if data.schema.equals(schema, check_metadata=False):
        return data
    arrays = [data.column(f.name) if f.name in data.schema.names else pa.nulls(data.num_rows, f.type) for f in schema]
    kind = pa.RecordBatch if isinstance(data, pa.RecordBatch) else pa.Table
    return kind.from_arrays(arrays, schema=schema)


def _check_vector_type(path: Path, field: pa.DataType, quant: _quantize.Quantization) -> None:
    """The ``embedding`` column must be fixed_size_list<dtype>[W] as the footer declares."""
    width, dtype = quant.stored_width(), np.dtype(quant.dtype)
    if not pa.types.is_fixed_size_list(field) or field.list_size != width or field.value_type.to_pandas_dtype() != dtype:
        raise damaged(path, f"holds {field} vectors, but the footer declares fixed_size_list<{quant.dtype}>[{width}]",
                      column="embedding")


class Product:
    """An eoembed product on disk. Cheap to create: data files are read only when asked.

    Opening checks the manifest against the data files' sizes, row counts and Parquet footers;
    ``verify=True`` also checks every file's SHA-256 (a full read).
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False) -> None:
        self.path = _resolve(path)
        self.collection: dict[str, Any] = read_json(self.path / "collection.json")
        version = self.collection.get("eoembed:spec_version")
        if version not in READABLE_SPEC_VERSIONS:
            raise SpecError(
                f"{self.path} was written for eoembed spec {version!r}; this reader implements {SPEC_VERSION} "
                f"and reads {', '.join(READABLE_SPEC_VERSIONS)}: upgrade eoembed or convert the product"
            )
        if "eoembed:pixel" in self.collection:
            raise SpecError(f"{self.path} is a pixel product (tiles, not chips); open it with eoembed.open, which gives "
                            "a PixelProduct (read, sample, to_numpy)")
        self.metadata: dict[str, Any] = {"spec_version": version, "license": self.collection.get("license")}
        for section in _FOOTER_SECTIONS:
            if f"eoembed:{section}" not in self.collection:
                raise SpecError(f"{self.path / 'collection.json'} lacks 'eoembed:{section}'")
            self.metadata[section] = self.collection[f"eoembed:{section}"]
        unknown = sorted(k for k in self.collection if k.startswith("eoembed:") and k[8:] not in _FOOTER_SECTIONS + ("spec_version",))
        if unknown:
            from ._errors import UnknownFieldError

            raise UnknownFieldError(f"{self.path / 'collection.json'} has {unknown}, which spec {SPEC_VERSION} does not define")
        check_footer(self.metadata, where=str(self.path / "collection.json"))
        self._con = None
        self._attached: dict[str, Product] = {}
        self._check_links()
        self._schemas = self._check_data_files(verify=verify)

    def _check_data_files(self, *, verify: bool) -> list[pa.Schema]:
        """Each data file must be as the manifest says (size, rows; sha256 with ``verify``), have the
        columns readers use, and carry the collection's contract (provenance may differ).

        Only Parquet footers are read, so opening stays cheap. Returns each file's Arrow schema."""
        from ._errors import ModelContractMismatchError
        from ._write import contract_difference, sha256_file

        manifest = self.manifest
        schemas = []
        for index, path in enumerate(self.files):
            size = size_of(path)
            if size is None:
                raise ProductNotFoundError(f"{path} is listed in the manifest but missing; the product is incomplete")
            expected = {name: manifest.column(name)[index].as_py() for name in ("rows", "bytes", "sha256")}
            where = f"{self.path / MANIFEST} row {index}"
            if size != expected["bytes"]:
                raise damaged(path, f"has {size} bytes, but {where} says {expected['bytes']} (truncated or replaced?)")
            if verify and sha256_file(path) != expected["sha256"]:
                raise damaged(path, f"has another SHA-256 than {where} says ({expected['sha256']})")
            with reading(path):
                metadata = read_metadata(path)
                rows, schema = metadata.num_rows, metadata.schema.to_arrow_schema()
            if rows != expected["rows"]:
                raise damaged(path, f"holds {rows} rows, but {where} says {expected['rows']}")
            footer = _footer_of(path, schema)
            self._check_columns(path, schema)
            self._check_statistics(path, metadata)
            for section in ("spec_version", "license", "model", "embedding", "grid"):
                if footer.get(section) != self.metadata.get(section):
                    if section == "model":
                        diff = contract_difference(self.metadata["model"], footer.get("model") or {})
                        raise ModelContractMismatchError(
                            f"{path} was made by another model than collection.json says ({diff}); run `eoembed validate`"
                        )
                    raise SpecError(f"{path}: footer '{section}' disagrees with collection.json; run `eoembed validate`")
            schemas.append(schema)
        return schemas

    def _check_statistics(self, path: Path, metadata: pq.FileMetaData) -> None:
        """Row-group statistics already in the footer expose infinite vectors and per-row scales
        that are not > 0 or finite without reading data (NaN is not in statistics: decode finds it)."""
        quant = self.quantization
        scale = (quant.scale_column or "scale") if quant.method == "per-row" else None
        wanted = {}
        for j in range(metadata.num_columns):
            column = metadata.schema.column(j)
            if column.physical_type not in ("FLOAT", "DOUBLE"):
                continue
            if column.path.startswith("embedding."):
                wanted[j] = ("embedding", "holds a vector with infinity", lambda lo, hi: np.isfinite([lo, hi]).all())
            elif column.path == scale:
                wanted[j] = (scale, "has a per-row scale that is not finite and > 0",
                             lambda lo, hi: lo > 0 and np.isfinite(hi))
        for group in range(metadata.num_row_groups):
            for j, (name, problem, ok) in wanted.items():
                stats = metadata.row_group(group).column(j).statistics
                if stats is not None and stats.has_min_max and not ok(stats.min, stats.max):
                    raise damaged(path, f"{problem} (row group {group}: min {stats.min}, max {stats.max})", column=name)

    def _check_links(self) -> None:
        """Links and assets of the collection that name product files must stay inside it; links
        with a scheme are references outside the product (source imagery, licences) and are kept."""
        where = self.path / "collection.json"
        internal = {"root", "self", "parent", "collection", "item", "emb:model"}
        with reading(where):
            hrefs = [(f"links[{i}]", link["rel"], link["href"]) for i, link in enumerate(self.collection.get("links", []))]
            hrefs += [(f"assets.{key}", key, asset["href"]) for key, asset in self.collection.get("assets", {}).items()]
        for place, rel, href in hrefs:
            if not (isinstance(href, str) and is_url(href) and rel not in internal):
                inside(self.path, href, where=f"{where} {place}")

    def _check_columns(self, path: Path, schema: pa.Schema) -> None:
        """The columns every reader relies on, with the types the footer declares."""
        names = set(schema.names)
        time_columns = {"datetime"} if "datetime" in names else {"start_datetime", "end_datetime"}
        missing = [c for c in (*REQUIRED_COLUMNS, *sorted(time_columns)) if c not in names]
        if missing:
            raise damaged(path, f"lacks the REQUIRED column(s) {missing}", column=missing[0])
        _check_vector_type(path, schema.field("embedding").type, self.quantization)
        bbox = schema.field("bbox").type
        if not pa.types.is_struct(bbox) or {bbox.field(i).name for i in range(bbox.num_fields)} < {"xmin", "ymin", "xmax", "ymax"}:
            raise damaged(path, f"has a bbox column of type {bbox}, not struct<xmin, ymin, xmax, ymax>", column="bbox")
        if self.quantization.method == "per-row":
            column = self.quantization.scale_column or "scale"
            if column not in names or not pa.types.is_floating(schema.field(column).type):
                found = schema.field(column).type if column in names else "no such column"
                raise damaged(path, f"per-row quantisation needs a float scale column ({found})", column=column)

    def __repr__(self) -> str:
        e = self.embedding
        return f"<eoembed.Product {self.path} rows={self.num_rows} dim={e['dim']} dtype={e['dtype']} model={self.model['name']}>"

    # -- metadata ---------------------------------------------------------------------------------

    @property
    def model(self) -> dict[str, Any]:
        return self.metadata["model"]

    @property
    def embedding(self) -> dict[str, Any]:
        return self.metadata["embedding"]

    @cached_property
    def model_weights(self) -> Path | str | None:
        """The model's weights: a file inside the product, the http(s) URL of their published
        source, or None for an encoder without weights (its model asset names the code package)."""
        where = self.path / "collection.json"
        links = [link for link in self.collection.get("links", []) if isinstance(link, dict) and link.get("rel") == "emb:model"]
        if not links:
            raise damaged(where, "has no emb:model link to the model item", column="links")
        item_path = inside(self.path, links[0].get("href"), where=f"{where} emb:model link")
        item = read_json(item_path)
        with reading(item_path, column="assets.model"):
            asset = item["assets"]["model"]
            href, roles = asset["href"], asset.get("roles", [])
        if "mlm:weights" not in roles:
            return None
        if isinstance(href, str) and href.startswith(("https://", "http://")):
            return href
        base = item_path.parent.relative_to(self.path).as_posix()
        path = inside(self.path, href, base=base, where=f"{item_path} assets.model")
        if not path.is_file():
            raise damaged(path, f"is missing, but {item_path.name} names it as the model's weights")
        return path

    @property
    def dim(self) -> int:
        return int(self.embedding["dim"])

    @cached_property
    def quantization(self) -> _quantize.Quantization:
        return _quantize.Quantization.from_dict(self.embedding["quantization"], dim=self.dim)

    @cached_property
    def manifest(self) -> pa.Table:
        """One row per data file (path, rows, bytes, sha256...), checked: no nulls, no repeated path."""
        path = self.path / MANIFEST
        with reading(path):
            table = pq.read_table(open_input(path))
        for name, (is_type, spec_type) in _MANIFEST_COLUMNS.items():
            if name not in table.column_names:
                raise damaged(path, f"lacks the REQUIRED column {name!r}", column=name)
            column = table.column(name)
            if not is_type(column.type):
                raise damaged(path, f"has type {column.type}, where the spec says {spec_type}", column=name)
            if column.null_count:
                row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
                raise damaged(path, "is null", row=row, column=name)
        if table.num_rows == 0:
            raise damaged(path, "lists no data file (a product holds at least one)")
        for name in ("rows", "bytes"):
            values = np.asarray(table.column(name), dtype=np.int64)
            if (values < 0).any():
                row = int(np.flatnonzero(values < 0)[0])
                raise damaged(path, f"holds {values[row]}, a negative count", row=row, column=name)
        seen: dict[str, int] = {}
        for row, rel in enumerate(table.column("path").to_pylist()):
            if rel in seen:
                raise damaged(path, f"lists {rel!r} again (first at row {seen[rel]}); every data file is listed once",
                              row=row, column="path")
            seen[rel] = row
        return table

    @cached_property
    def files(self) -> list[Path]:
        manifest = self.path / MANIFEST
        return [inside(self.path, rel, where=f"{manifest} row {row}, column 'path'")
                for row, rel in enumerate(self.manifest.column("path").to_pylist())]

    def files_overlapping(self, bbox: Sequence[float] | None = None,
                          interval: tuple[int | None, int | None] | None = None) -> list[int]:
        """Indexes of the data files whose manifest extent meets ``bbox`` (xmin, ymin, xmax, ymax) and
        ``interval`` (start, end in microseconds since 1970, None open): the only ones a filtered
        read must open."""
        keep = np.ones(self.manifest.num_rows, dtype=bool)
        if bbox is not None and "bbox" in self.manifest.column_names:
            box = self.manifest.column("bbox").combine_chunks()
            x0, y0, x1, y1 = (np.asarray(box.field(n).fill_null(np.nan)) for n in ("xmin", "ymin", "xmax", "ymax"))
            # A file without a stated extent (NaN) is kept: the comparisons below are False for it.
            keep &= ~((x0 > bbox[2]) | (x1 < bbox[0]) | (y0 > bbox[3]) | (y1 < bbox[1]))
        if interval is not None and {"start_datetime", "end_datetime"} <= set(self.manifest.column_names):
            from ._search import _as_us

            start, end = (_as_us(self.manifest.column(n).fill_null(0)) for n in ("start_datetime", "end_datetime"))
            if interval[0] is not None:
                keep &= end >= interval[0]
            if interval[1] is not None:
                keep &= start <= interval[1]
        return [int(i) for i in np.flatnonzero(keep)]

    @property
    def num_rows(self) -> int:
        return int(sum(self.manifest.column("rows").to_pylist()))

    def __len__(self) -> int:
        return self.num_rows

    @property
    def crs(self) -> str:
        """The CRS of ``geometry`` and ``bbox``: always OGC:CRS84 (lon/lat); ``native_crs`` holds each chip's own."""
        return "OGC:CRS84"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in lon/lat over every chip."""
        return tuple(float(v) for v in self.collection["extent"]["spatial"]["bbox"][0])

    @property
    def stac_collection(self):
        """collection.json as a ``pystac.Collection`` (``collection`` is the plain dict)."""
        from ._export import stac_collection

        return stac_collection(self)

    @property
    def items(self) -> list:
        """The STAC item of each data file as ``pystac.Item`` objects."""
        from ._export import stac_items

        return stac_items(self)

    # -- rows -------------------------------------------------------------------------------------

    def _file_batches(self, *, columns: Sequence[str] | None = None,
                      batch_size: int = 65536) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
        """(data file, its first row in the batch, batch) over every data file, read errors named."""
        for path in self.files:
            first = 0
            with reading(path):
                # No pre-buffering: it would load most of a file at once, and reads must stream.
                handle = pq.ParquetFile(open_input(path), pre_buffer=False)
                for batch in handle.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
                    yield path, first, batch
                    first += batch.num_rows

    def iter_batches(self, *, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        for _, _, batch in self._file_batches(columns=columns, batch_size=batch_size):
            yield batch

    @cached_property
    def schema(self) -> pa.Schema:
        """The stored columns of the product: every file's, those a file lacks read as nulls."""
        schemas = [s.remove_metadata() for s in self._schemas]
        schema = schemas[0] if all(s.equals(schemas[0]) for s in schemas) else pa.unify_schemas(schemas)
        return schema.with_metadata(self._schemas[0].metadata)

    def to_arrow(self, *, columns: Sequence[str] | None = None, batch_size: int = 65536) -> pa.RecordBatchReader:
        """A streaming reader over every data file (stored columns; vectors as stored)."""
        schema = self.schema
        if columns:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise SpecError(f"column(s) {unknown} are not in {self.path}; choose from {schema.names}")
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)

        batches = (conform(batch, schema) for _, _, batch in self._file_batches(columns=columns, batch_size=batch_size))
        return pa.RecordBatchReader.from_batches(schema, batches)

    @cached_property
    def metadata_schema(self) -> pa.Schema:
        """The product's columns but the stored vector ones (what search and datasets return)."""
        vector_columns = self._vector_columns()
        return pa.schema([f for f in self.schema if f.name not in vector_columns])

    def _vector_columns(self) -> list[str]:
        quant = self.quantization
        return ["embedding"] + ([quant.scale_column or "scale"] if quant.method == "per-row" else [])

    def decode(self, batch: pa.RecordBatch | pa.Table, *, dequantize: bool = True,
               source: str | os.PathLike | None = None, first_row: int = 0) -> np.ndarray:
        """The vectors of one batch: float32 (n, D) de-quantised, or the stored codes.

        Vectors that are null, of another type than the footer declares, with a per-row scale that is
        not finite and > 0, or that decode to NaN or infinity are refused with a DamagedProductError
        naming ``source`` and the row (``first_row`` is the batch's first row in that file). The
        ``sqrt`` method's nodata code (-128) is the one NaN the spec allows.
        """
        source = source or self.path
        quant = self.quantization
        column = batch.column("embedding")
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        _check_vector_type(source, column.type, quant)
        values = column.flatten()  # respects a slice's offset, where .values would not
        if column.null_count or values.null_count:
            nulls = np.asarray(column.is_null()) if column.null_count else \
                np.asarray(values.is_null()).reshape(len(column), -1).any(axis=1)
            raise damaged(source, "has a null vector or a null element in one", row=first_row + int(np.flatnonzero(nulls)[0]),
                          column="embedding")
        codes = values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
        if not dequantize:
            return codes
        row_scale = None
        if quant.method == "per-row":
            name = quant.scale_column or "scale"
            row_scale = np.asarray(batch.column(name).fill_null(np.nan), dtype=np.float32)
            bad = ~(np.isfinite(row_scale) & (row_scale > 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise damaged(source, f"has the per-row scale {row_scale[row]} (it must be finite and > 0)",
                              row=first_row + row, column=name)
        vectors = _quantize.dequantize(codes, quant, row_scale=row_scale)
        if quant.method != "sqrt":
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise damaged(source, "holds a vector with NaN or infinity", row=first_row + row, column="embedding")
        return vectors

    def to_numpy(self, *, dequantize: bool = True) -> np.ndarray:
        """All vectors in product order: float32 (n, D) de-quantised, or the stored codes."""
        quant = self.quantization
        if dequantize:
            out = np.empty((self.num_rows, self.dim), dtype=np.float32)
        else:
            out = np.empty((self.num_rows, quant.stored_width()), dtype=np.dtype(quant.dtype))
        row = 0
        for path, first, batch in self._file_batches(columns=self._vector_columns()):
            block = self.decode(batch, dequantize=dequantize, source=path, first_row=first)
            if row + len(block) > len(out):
                raise damaged(path, f"holds more rows than the manifest's {len(out)} in all", row=first)
            out[row : row + len(block)] = block
            row += len(block)
        if row != len(out):
            raise SpecError(f"{self.path}: the manifest lists {len(out)} rows but the data files hold {row}")
        return out

    def to_torch(self, *, dequantize: bool = True):
        """All vectors as a torch tensor (shares memory with :meth:`to_numpy`'s array)."""
        torch = require("torch", extra="learn")

        return torch.from_numpy(self.to_numpy(dequantize=dequantize))

    def to_pandas(self, *, columns: Sequence[str] | None = None, dequantize: bool = True):
        """Every row as a pandas DataFrame (``embedding``: one float32 array per row)."""
        from ._export import to_pandas

        return to_pandas(self, columns=list(columns) if columns else None, dequantize=dequantize)

    def to_geopandas(self, *, columns: Sequence[str] | None = None, dequantize: bool = True):
        """Every row as a geopandas GeoDataFrame on ``geometry`` (OGC:CRS84)."""
        from ._export import to_geopandas

        return to_geopandas(self, columns=list(columns) if columns else None, dequantize=dequantize)

    def preview(self, out: str | os.PathLike, **options: Any):
        """Draw the first three principal components as RGB (PNG figure or COG); see :func:`eoembed.preview`."""
        from ._preview import preview

        return preview(self, out, **options)

    # -- SQL --------------------------------------------------------------------------------------

    def connect(self):
        """A sandboxed DuckDB connection with the view ``embeddings`` (``embedding`` as de-quantised
        FLOAT[D]) and the attached products' views; it can open their data files and nothing else."""
        if self._con is None:
            from ._query import open_views

            self._con = open_views({"embeddings": self, **self._attached})
        return self._con

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run one read-only query over the view ``embeddings`` (and attached views) in the sandbox of
        :meth:`connect`; values go in ``params`` (bound, never interpolated). Anything else raises
        SqlRefusedError."""
        from ._query import run

        return run(self.connect(), query, params, products={"embeddings": self, **self._attached})

    def attach(self, name: str, other: "Product | str | os.PathLike") -> "Product":
        """Add another product to this one's SQL connection as view ``name`` (join on ``chip_id``).

        The sandbox is locked to the files it was opened with, so the connection is reopened."""
        from ._query import check_view_name

        other = other if isinstance(other, Product) else Product(other)
        self._attached[check_view_name(name)] = other
        self.close()
        return self

    # -- search -----------------------------------------------------------------------------------

    @cached_property
    def _searcher(self):
        from ._search import Searcher

        return Searcher(self)

    @cached_property
    def _archive_searcher(self):
        from ._archive import ArchiveSearcher

        return ArchiveSearcher(self)

    @cached_property
    def _item_paths(self) -> dict[str, Path]:
        from ._index import _items_by_file

        return _items_by_file(self)

    def search(
        self,
        query: Any,
        *,
        k: int = 10,
        bbox: Sequence[float] | str | Any | None = None,
        datetime: Any = None,
        where: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        metric: Literal["cosine", "l2", "ip"] | None = None,
        mode: Literal["exact", "int8", "binary", "hnsw", "ivf", "ivf-rabitq"] = "exact",
        candidates: int | None = None,
        nprobe: int | None = None,
    ) -> pa.Table:
        """The k nearest chips: a pyarrow Table with ``chip_id``, ``distance``, then the metadata, best first.

        ``query`` is a vector (D,), a chip id, a ``(lon, lat)`` tuple (the chip covering that
        point), or a list / (m, D) array of them (the table then starts with ``query``, its index).
        ``bbox`` (xmin, ymin, xmax, ymax), or a shapely geometry / GeoJSON mapping (its bounds), keeps chips intersecting it, ``datetime`` (an ISO time or
        ``START/END``, ``..`` open) chips whose time overlaps it, ``where`` a SQL predicate over the
        ``embeddings`` view with bound ``params``. ``metric`` defaults to the product's. ``mode``:
        ``exact`` (one pass over the float32 vectors), ``int8`` / ``binary`` (a compressed scan of
        ``candidates`` rows, re-ranked exactly; binary's default count is calibrated once on the
        product's own rows), ``hnsw`` / ``ivf`` (a built faiss index, re-ranked), ``ivf-rabitq`` (the
        archive index: memory-mapped RaBitQ codes and float16 re-rank rows, no decoded cache; filters
        become ID selectors). ``nprobe``: lists probed by ``ivf`` / ``ivf-rabitq`` (default 16).
        Distances: cosine ``1 - cos``, l2 Euclidean, ip ``-<x, q>``. Filtered searches are exact but for ``ivf-rabitq``.
        """
        from ._search import search

        return search(self, query, k=k, bbox=bbox, datetime=datetime, where=where, params=params,
                      metric=metric, mode=mode, candidates=candidates,
                      **({} if nprobe is None else {"nprobe": nprobe}))  # lists probed by ivf / ivf-rabitq

    def load_index(self, *, metric: Literal["cosine", "l2", "ip"] | None = None, comm: Any = None) -> dict[str, Any]:
        """Read the ``ivf-rabitq`` index's codes into memory, for a process that serves many queries.

        ``mode="ivf-rabitq"`` otherwise maps them, and a query whose lists' pages the kernel has
        dropped waits on the disk for them. Held in memory, the shards' codes in one faiss index
        that a query probes in one call, they take the index files' size (about 35 B a row at 1
        bit, 63 B at 2 bits, for 128-d) and are never dropped; the re-rank rows and the metadata
        stay mapped; the hits are the same. Under MPI (``comm``) each rank reads its own shards
        only. Returns the shards, bytes and seconds this process read."""
        from ._search import _PRODUCT_METRIC, assign_files

        metric = metric or _PRODUCT_METRIC.get(self.embedding.get("metric", "cosine"), "cosine")
        searcher = self._archive_searcher
        if comm is not None:
            searcher = searcher.for_files(assign_files(self, comm.Get_rank(), comm.Get_size()))
        return searcher.load_codes(metric)

    def build_index(self, *, kind: Literal["int8", "binary", "hnsw", "ivf", "ivf-rabitq"], metric: str | None = None, **options: Any) -> dict[str, Any]:
        """Build a search index asset for every data file; returns build time and measured recall@10.

        ``ivf-rabitq`` (the archive index, streamed over the stored rows) takes ``nlist``, ``sample``
        (training rows drawn from the whole product) and ``batch_size`` (rows decoded at a time)."""
        from ._index import build_index

        report = build_index(self, kind=kind, metric=metric, **options)
        self.__dict__.pop("_searcher", None)
        self.__dict__.pop("_archive_searcher", None)
        return report

    def dataset(self, *, bbox=None, datetime=None, where: str | None = None, params=None,
                columns: Sequence[str] = ("chip_id",), streaming: bool = False):
        """A torch Dataset (or IterableDataset with ``streaming``) of (vector, metadata dict) pairs."""
        from ._dataset import make_dataset

        return make_dataset(self, bbox=bbox, datetime=datetime, where=where, params=params, columns=columns, streaming=streaming)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> "Product":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_product(path: str | os.PathLike, *, verify: bool = False) -> Product:
    """Open a product folder (or its collection.json); ``verify`` also checks every file's SHA-256."""
    return Product(path, verify=verify)


def sql(query: str, params: Sequence[Any] | dict[str, Any] | None = None, *, products: dict[str, Any]) -> pa.Table:
    """Run one read-only query over several products at once, each a view named by its key (join them
    on ``chip_id``), in a sandbox that may open their data files only."""
    from ._query import open_views, run

    # Open (and so check) every product before paying for a connection.
    views = {name: path if isinstance(path, Product) else Product(path) for name, path in products.items()}
    con = open_views(views)
    try:
        return run(con, query, params, products=views)
    finally:
        con.close()
