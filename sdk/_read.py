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
from ._errors import ProductNotFoundError, SpecError
from ._spec import FOOTER_KEY, SPEC_VERSION, check_footer
from ._stac import MANIFEST
from ._write import STAGING_MARK

_FOOTER_SECTIONS = ("model", "embedding", "grid", "provenance")


def _compatibility(version: str) -> tuple[str, ...]:
    """Versions that must match for a reader to accept a product: major, and minor while major is 0."""
    parts = version.split(".")
    return tuple(parts[:2]) if parts[0] == "0" else tuple(parts[:1])


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
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


def read_footer(path: str | os.PathLike) -> dict[str, Any]:
    """The ``eoembed`` footer object of one data file (raises SpecError when absent)."""
    metadata = pq.read_schema(path).metadata or {}
    if FOOTER_KEY not in metadata:
        raise SpecError(f"{path} has no '{FOOTER_KEY.decode()}' footer key: it is not an eoembed data file")
    return json.loads(metadata[FOOTER_KEY])


class Product:
    """An eoembed product on disk. Cheap to create: data files are read only when asked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _resolve(path)
        self.collection: dict[str, Any] = json.loads((self.path / "collection.json").read_text(encoding="utf-8"))
        version = self.collection.get("eoembed:spec_version")
        if not isinstance(version, str) or _compatibility(version) != _compatibility(SPEC_VERSION):
            raise SpecError(
                f"{self.path} was written for eoembed spec {version!r}; this reader implements {SPEC_VERSION}: "
                "upgrade eoembed or convert the product"
            )
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
        self._check_data_footers()

    def _check_data_footers(self) -> None:
        """Each data file's footer must carry the collection's contract (provenance may differ)."""
        from ._errors import ModelContractMismatchError
        from ._write import contract_difference

        for path in self.files:
            if not path.exists():
                raise ProductNotFoundError(f"{path} is listed in the manifest but missing; the product is incomplete")
            footer = read_footer(path)
            for section in ("spec_version", "license", "model", "embedding", "grid"):
                if footer.get(section) != self.metadata.get(section):
                    if section == "model":
                        diff = contract_difference(self.metadata["model"], footer.get("model") or {})
                        raise ModelContractMismatchError(
                            f"{path} was made by another model than collection.json says ({diff}); run `eoembed validate`"
                        )
                    raise SpecError(f"{path}: footer '{section}' disagrees with collection.json; run `eoembed validate`")

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

    @property
    def dim(self) -> int:
        return int(self.embedding["dim"])

    @cached_property
    def quantization(self) -> _quantize.Quantization:
        return _quantize.Quantization.from_dict(self.embedding["quantization"], dim=self.dim)

    @cached_property
    def manifest(self) -> pa.Table:
        return pq.read_table(self.path / MANIFEST)

    @property
    def files(self) -> list[Path]:
        return [self.path / p for p in self.manifest.column("path").to_pylist()]

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

    def iter_batches(self, *, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        for path in self.files:
            # No pre-buffering: it would load most of a file at once, and reads must stream.
            handle = pq.ParquetFile(path, pre_buffer=False)
            yield from handle.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)

    def to_arrow(self, *, columns: Sequence[str] | None = None, batch_size: int = 65536) -> pa.RecordBatchReader:
        """A streaming reader over every data file (stored columns; vectors as stored)."""
        schema = pq.read_schema(self.files[0])
        if columns:
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        return pa.RecordBatchReader.from_batches(schema, self.iter_batches(columns=columns, batch_size=batch_size))

    def _vector_columns(self) -> list[str]:
        quant = self.quantization
        return ["embedding"] + ([quant.scale_column or "scale"] if quant.method == "per-row" else [])

    def decode(self, batch: pa.RecordBatch | pa.Table, *, dequantize: bool = True) -> np.ndarray:
        """The vectors of one batch: float32 (n, D) de-quantised, or the stored codes."""
        column = batch.column("embedding")
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        width = column.type.list_size
        codes = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        if not dequantize:
            return codes
        quant = self.quantization
        row_scale = None
        if quant.method == "per-row":
            row_scale = np.asarray(batch.column(quant.scale_column or "scale"), dtype=np.float32)
        return _quantize.dequantize(codes, quant, row_scale=row_scale)

    def to_numpy(self, *, dequantize: bool = True) -> np.ndarray:
        """All vectors in product order: float32 (n, D) de-quantised, or the stored codes."""
        quant = self.quantization
        if dequantize:
            out = np.empty((self.num_rows, self.dim), dtype=np.float32)
        else:
            out = np.empty((self.num_rows, quant.stored_width()), dtype=np.dtype(quant.dtype))
        row = 0
        for batch in self.iter_batches(columns=self._vector_columns()):
            block = self.decode(batch, dequantize=dequantize)
            out[row : row + len(block)] = block
            row += len(block)
        if row != len(out):
            raise SpecError(f"{self.path}: the manifest lists {len(out)} rows but the data files hold {row}")
        return out

    def to_torch(self, *, dequantize: bool = True):
        """All vectors as a torch tensor (shares memory with :meth:`to_numpy`'s array)."""
        import torch

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
        """A DuckDB connection with the view ``embeddings`` (``embedding`` as de-quantised FLOAT[D])."""
        if self._con is None:
            from ._query import connect, create_view

            self._con = connect()
            create_view(self._con, name="embeddings", files=self.files, quant=self.quantization)
        return self._con

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run SQL over the view ``embeddings``; values go in ``params`` (bound, never interpolated)."""
        from ._query import run

        return run(self.connect(), query, params)

    def attach(self, name: str, other: "Product | str | os.PathLike") -> "Product":
        """Add another product to this one's SQL connection as view ``name`` (join on ``chip_id``)."""
        from ._query import create_view

        other = other if isinstance(other, Product) else Product(other)
        create_view(self.connect(), name=name, files=other.files, quant=other.quantization)
        return self

    # -- search -----------------------------------------------------------------------------------

    @cached_property
    def _searcher(self):
        from ._search import Searcher

        return Searcher(self)

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
        mode: Literal["exact", "int8", "binary", "hnsw", "ivf"] = "exact",
        candidates: int | None = None,
    ) -> pa.Table:
        """The k nearest chips: a pyarrow Table with ``chip_id``, ``distance``, then the metadata, best first.

        ``query`` is a vector (D,), a chip id, a ``(lon, lat)`` tuple (the chip covering that
        point), or a list / (m, D) array of them (the table then starts with ``query``, its index).
        ``bbox`` (xmin, ymin, xmax, ymax), or a shapely geometry / GeoJSON mapping (its bounds), keeps chips intersecting it, ``datetime`` (an ISO time or
        ``START/END``, ``..`` open) chips whose time overlaps it, ``where`` a SQL predicate over the
        ``embeddings`` view with bound ``params``. ``metric`` defaults to the product's. ``mode``:
        ``exact`` (one pass over the float32 vectors), ``int8`` / ``binary`` (a compressed scan of
        ``candidates`` rows, re-ranked exactly), ``hnsw`` / ``ivf`` (a built faiss index, re-ranked).
        Distances: cosine ``1 - cos``, l2 Euclidean, ip ``-<x, q>``. Filtered searches are exact.
        """
        from ._search import search

        return search(self, query, k=k, bbox=bbox, datetime=datetime, where=where, params=params,
                      metric=metric, mode=mode, candidates=candidates)

    def build_index(self, *, kind: Literal["int8", "binary", "hnsw", "ivf"], metric: str | None = None, **options: Any) -> dict[str, Any]:
        """Build a search index asset for every data file; returns build time and measured recall@10."""
        from ._index import build_index

        report = build_index(self, kind=kind, metric=metric, **options)
        self.__dict__.pop("_searcher", None)
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


def open_product(path: str | os.PathLike) -> Product:
    """Open a product folder (or its collection.json)."""
    return Product(path)


def sql(query: str, params: Sequence[Any] | dict[str, Any] | None = None, *, products: dict[str, Any]) -> pa.Table:
    """Run SQL over several products at once, each a view named by its key (join them on ``chip_id``)."""
    from ._query import connect, create_view, run

    con = connect()
    try:
        for name, path in products.items():
            product = path if isinstance(path, Product) else Product(path)
            create_view(con, name=name, files=product.files, quant=product.quantization)
        return run(con, query, params)
    finally:
        con.close()
