"""Similarity search over a product: exact, int8 or 1-bit scan with exact re-rank, or a faiss index.

The cost of an exact search is one pass over the (filtered) vectors. Vectors are decoded once into a
*decoded-vector cache*: per data file a memory-mapped float32 ``.npy`` of shape (n, D), with the
rows' bbox and time, kept beside the product (never inside it, so the product stays byte-identical
and valid):

* ``$EOEMBED_CACHE_DIR/<sha of the product path>/<key>/`` when that variable is set, else
* ``PARENT/.NAME.eoembed-cache/<key>/`` when the product's parent folder is writable, else
* ``~/.cache/eoembed/<sha of the product path>/<key>/``;

and for a product at a URL always the user's cache folder (platformdirs:
``$EOEMBED_CACHE_DIR`` or ``<user cache dir>/eoembed/<sha of the URL>/<key>/``), never the product;

``<key>`` is the first 16 hex digits of the SHA-256 of ``manifest.parquet``: a rewritten product has
a new manifest, so its cache is rebuilt (and stale keys are removed).

Kernels are library ones: BLAS (numpy matmul) for float32, numkong (usearch's SIMD kernels) for
int8 dot products, faiss for Hamming scans of 1-bit codes and for HNSW / IVF indexes. Top-k uses an
exact threshold from a strided sample, then partitions only the rows above it. A 1-bit scan covers
all of a searcher's files in one pass; its default candidate count is calibrated once on the data
and kept in the cache as ``binary-ranks-<metric>-<files>.npy``.

Distances (smaller is better): cosine ``1 - cos``, l2 the Euclidean distance, ip ``-<x, q>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._damage import reading
from ._errors import ChipNotFoundError, DimensionMismatchError, SearchError
from ._mapped import RandomAccessTable, prefetch_table_rows
from ._optional import require
from ._store import open_input

if TYPE_CHECKING:
    from ._read import Product

Metric = Literal["cosine", "l2", "ip"]
Mode = Literal["exact", "int8", "binary", "hnsw", "ivf", "ivf-rabitq"]
METRICS = ("cosine", "l2", "ip")
MODES = ("exact", "int8", "binary", "hnsw", "ivf", "ivf-rabitq")  # ivf-rabitq: sdk/_archive.py
_PRODUCT_METRIC = {"cosine": "cosine", "euclidean": "l2", "dot": "ip", "hamming": "cosine"}
BLOCK_ROWS = 1024  # rows per bbox/time summary block; rows are Hilbert-sorted, so blocks are compact
_CHUNK_ROWS = 1 << 18  # rows scored at once for batches of queries (bounds the score matrix)
# Ask for the pages of the hits' metadata before reading it (prefetch_metadata); off only to measure
# what it saves (benchmarks/search_archive.py --compare no-metadata-prefetch).
PREFETCH_HIT_METADATA = True


# -- cache --------------------------------------------------------------------------------------


def _path_key(path) -> str:
    from ._store import is_remote

    return hashlib.sha256(str(path if is_remote(path) else path.resolve()).encode()).hexdigest()[:16]


def cache_dir(product: "Product") -> Path:
    """The decoded-vector cache folder of ``product`` (see the module docstring)."""
    from ._stac import MANIFEST

    digest = hashlib.sha256((product.path / MANIFEST).read_bytes()).hexdigest()[:16]
    env = os.environ.get("EOEMBED_CACHE_DIR")
    if env:
        root = Path(env) / _path_key(product.path)
    elif not isinstance(product.path, Path):  # at a URL: the user's cache, keyed by the URL
        platformdirs = require("platformdirs", extra="remote")
        root = Path(platformdirs.user_cache_dir("eoembed")) / _path_key(product.path)
    elif os.access(product.path.parent, os.W_OK):
        root = product.path.parent / f".{product.path.name}.eoembed-cache"
    else:
        root = Path.home() / ".cache" / "eoembed" / _path_key(product.path)
    folder = root / digest
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in root.iterdir():  # caches of earlier versions of the product
            if stale.is_dir() and stale.name != digest and len(stale.name) == 16:
                shutil.rmtree(stale, ignore_errors=True)
    return folder


def _save_atomic(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.npy")
    np.save(partial, array)
    os.replace(partial, path)


def _time_columns(schema: pa.Schema) -> list[str]:
    return ["datetime"] if "datetime" in schema.names else ["start_datetime", "end_datetime"]


def _as_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), dtype=np.int64)


class FileRows:
    """What the shared query and result code reads of one data file's search state: its row count
    (``vectors``' length) and its metadata, mapped for random reads."""

    vectors: np.ndarray
    metadata_file: RandomAccessTable

    @property
    def rows(self) -> int:
        return len(self.vectors)

    @property
    def metadata(self) -> pa.Table:
        return self.metadata_file.table

    @property
    def metadata_batches(self) -> tuple[list[pa.RecordBatch], np.ndarray]:
        """The metadata's record batches and the first row of each."""
        return self.metadata_file.batches, self.metadata_file.batch_starts


@dataclass
class FileCache(FileRows):
    """The decoded rows of one data file: vectors (memory-mapped), bbox, times and block summaries."""

    index: int
    path: Path
    vectors: np.ndarray  # (n, D) float32, memory-mapped
    bbox: np.ndarray  # (n, 4) float64
    times: np.ndarray  # (n, 2) int64 microseconds since 1970 (start, end)
    norms: np.ndarray  # (n,) float32 Euclidean norms
    block_bbox: np.ndarray  # (blocks, 4): union of the block's rows
    block_times: np.ndarray  # (blocks, 2): earliest start, latest end
    metadata_file: RandomAccessTable  # every stored column but the vector, memory-mapped Arrow IPC
    searchable: np.ndarray | None = None  # rows without nodata (NaN, sqrt's -128); None when all are


def _build_file_cache(product: "Product", path: Path, target: Path) -> None:
    """Decode one data file into ``target``.{vectors,bbox,times}.npy (atomic per array)."""
    with reading(path):
        _decode_into(product, path, target)


def _decode_into(product: "Product", path: Path, target: Path) -> None:
    handle = pq.ParquetFile(open_input(path), pre_buffer=False)
    rows = handle.metadata.num_rows
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp.npy")
    vectors = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, product.dim))
    bbox = np.empty((rows, 4), dtype=np.float64)
    times = np.empty((rows, 2), dtype=np.int64)
    time_columns = _time_columns(handle.schema_arrow)
    vector_columns = product._vector_columns()
    meta_names = [n for n in handle.schema_arrow.names if n not in vector_columns]
    meta_partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp.arrow")
    meta_schema = pa.schema([handle.schema_arrow.field(n) for n in meta_names])
    meta_writer = pa.ipc.new_file(str(meta_partial), meta_schema)
    try:
        row = 0
        for batch in handle.iter_batches(batch_size=65536):
            n = batch.num_rows
            meta_writer.write_batch(batch.select(meta_names))
            vectors[row : row + n] = product.decode(batch, source=path, first_row=row)
            box = batch.column("bbox")
            for i, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
                bbox[row : row + n, i] = box.field(name).to_numpy(zero_copy_only=False)
            times[row : row + n, 0] = _as_us(batch.column(time_columns[0]))
            times[row : row + n, 1] = _as_us(batch.column(time_columns[-1]))
            row += n
        vectors.flush()
        del vectors
        meta_writer.close()
    except BaseException:
        meta_writer.close()
        for leftover in (partial, meta_partial):  # a refused file leaves no half-built cache behind
            leftover.unlink(missing_ok=True)
        raise
    os.replace(meta_partial, target.with_name(target.name + ".metadata.arrow"))
    _save_atomic(target.with_name(target.name + ".bbox.npy"), bbox)
    _save_atomic(target.with_name(target.name + ".times.npy"), times)
    os.replace(partial, target.with_name(target.name + ".vectors.npy"))


def _blocks(values: np.ndarray, reduce_min: Sequence[bool]) -> np.ndarray:
    n = len(values)
    pad = (-n) % BLOCK_ROWS
    out = np.empty(((n + pad) // BLOCK_ROWS, values.shape[1]), dtype=values.dtype)
    for i, use_min in enumerate(reduce_min):
        column = values[:, i]
        if pad:
            column = np.concatenate([column, np.repeat(column[-1:], pad)])
        column = column.reshape(-1, BLOCK_ROWS)
        out[:, i] = column.min(axis=1) if use_min else column.max(axis=1)
    return out


def load_file_cache(product: "Product", index: int, folder: Path | None = None) -> FileCache:
    """The cache of data file ``index``, built first when absent."""
    folder = folder or cache_dir(product)
    path = product.files[index]
    target = folder / f"{index:05d}"
    if not target.with_name(target.name + ".vectors.npy").exists():
        _build_file_cache(product, path, target)
    with reading(target.with_name(target.name + ".*"), advice=f"delete the decoded-vector cache {folder} to rebuild it"):
        vectors = np.load(target.with_name(target.name + ".vectors.npy"), mmap_mode="r")
        bbox = np.load(target.with_name(target.name + ".bbox.npy"))
        times = np.load(target.with_name(target.name + ".times.npy"))
        metadata = RandomAccessTable(target.with_name(target.name + ".metadata.arrow"))
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)).astype(np.float32)
    nodata = np.isnan(norms)  # the sqrt method's nodata code decodes to NaN; such rows are never hits
    return FileCache(
        index=index, path=path, vectors=vectors, bbox=bbox, times=times, norms=norms,
        searchable=np.flatnonzero(~nodata) if nodata.any() else None,
        block_bbox=_blocks(bbox, (True, True, False, False)), block_times=_blocks(times, (True, False)),
        metadata_file=metadata,
    )


# -- filters ------------------------------------------------------------------------------------


def parse_bbox(bbox: Any) -> tuple[float, float, float, float] | None:
    """(xmin, ymin, xmax, ymax) in lon/lat from a tuple, ``"x0,y0,x1,y1"``, a shapely geometry or a
    GeoJSON-like mapping (a geometry, a Feature or anything with ``bbox``): a geometry gives its bounds."""
    if bbox is None:
        return None
    if hasattr(bbox, "__geo_interface__") and not isinstance(bbox, dict):
        bbox = bbox.__geo_interface__
    if isinstance(bbox, dict):
        bbox = _mapping_bounds(bbox)
    if isinstance(bbox, str):
        bbox = bbox.split(",")
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError) as error:
        raise SearchError(f"bbox {bbox!r} must be four numbers xmin,ymin,xmax,ymax (lon/lat degrees)") from error
    if len(values) != 4 or not all(np.isfinite(values)):
        raise SearchError(f"bbox {bbox!r} must be four finite numbers xmin,ymin,xmax,ymax (lon/lat degrees)")
    xmin, ymin, xmax, ymax = values
    if xmin > xmax or ymin > ymax:
        raise SearchError(f"bbox {list(values)} has xmin > xmax or ymin > ymax; give xmin,ymin,xmax,ymax")
    if not (-180 <= xmin <= 180 and -180 <= xmax <= 180 and -90 <= ymin <= 90 and -90 <= ymax <= 90):
        raise SearchError(f"bbox {list(values)} lies outside lon [-180, 180] / lat [-90, 90]")
    return values


def _mapping_bounds(mapping: dict) -> Any:
    """The bounds of a GeoJSON-like geometry or Feature (its own ``bbox`` member when it has one)."""
    if "bbox" in mapping:
        box = list(mapping["bbox"])
        return [box[0], box[1], box[3], box[4]] if len(box) == 6 else box  # 3-D: drop the heights
    import shapely.geometry

    shape = mapping.get("geometry", mapping) if mapping.get("type") == "Feature" else mapping
    try:
        return shapely.geometry.shape(shape).bounds
    except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.ShapelyError) as error:
        raise SearchError(f"bbox mapping {str(mapping)[:80]!r} is not a GeoJSON geometry or Feature ({error}); "
                          "give xmin,ymin,xmax,ymax or a shapely geometry") from None


def _to_us(value: Any) -> int | None:
    if value is None or value == "..":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as error:
            raise SearchError(f"datetime {value!r} is not ISO 8601 (e.g. 2020-05-18 or 2020-05-18T10:00:00Z)") from error
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise SearchError(f"datetime {value!r} must be an ISO 8601 string or a datetime")


def parse_datetime(value: Any) -> tuple[int | None, int | None] | None:
    """An instant or an interval (``START/END``, either side ``..``) as microseconds; None for no filter."""
    if value is None:
        return None
    if isinstance(value, str):
        from ._when import TimeFormatError, parse_interval

        try:
            start, stop = parse_interval(value)  # a bare date is its whole day
        except TimeFormatError as error:
            raise SearchError(str(error)) from None
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise SearchError(f"datetime {value!r} must be one time or (start, end)")
        start, stop = value
    else:
        start = stop = value
    interval = (_to_us(start), _to_us(stop))
    if interval[0] is not None and interval[1] is not None and interval[0] > interval[1]:
        raise SearchError(f"datetime {value!r} starts after it ends")
    return interval


def _rows_in(cache: FileCache, bbox, interval) -> np.ndarray | None:
    """Positions of the rows passing bbox / time, testing only blocks whose summary may pass."""
    if bbox is None and interval is None:
        return None
    keep = np.ones(len(cache.block_bbox), dtype=bool)
    if bbox is not None:
        b = cache.block_bbox
        keep &= (b[:, 2] >= bbox[0]) & (b[:, 0] <= bbox[2]) & (b[:, 3] >= bbox[1]) & (b[:, 1] <= bbox[3])
    if interval is not None:
        t = cache.block_times
        if interval[0] is not None:
            keep &= t[:, 1] >= interval[0]
        if interval[1] is not None:
            keep &= t[:, 0] <= interval[1]
    blocks = np.flatnonzero(keep)
    if len(blocks) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = (blocks[:, None] * BLOCK_ROWS + np.arange(BLOCK_ROWS)).reshape(-1)
    rows = rows[rows < cache.rows]
    ok = np.ones(len(rows), dtype=bool)
    if bbox is not None:
        b = cache.bbox[rows]
        ok &= (b[:, 2] >= bbox[0]) & (b[:, 0] <= bbox[2]) & (b[:, 3] >= bbox[1]) & (b[:, 1] <= bbox[3])
    if interval is not None:
        t = cache.times[rows]
        if interval[0] is not None:
            ok &= t[:, 1] >= interval[0]
        if interval[1] is not None:
            ok &= t[:, 0] <= interval[1]
    return rows[ok]


def where_rows(product: "Product", where: str, params: Sequence[Any] | dict[str, Any] | None) -> dict[int, np.ndarray]:
    """Row positions per data file of the rows matching ``where``, one boolean expression over the
    ``embeddings`` view (:func:`~eoembed._query.filter_query`), in a sandboxed connection."""
    from ._query import filter_query, open_views, run

    query = filter_query(where, select="filename, file_row_number")
    con = open_views({"embeddings": product}, row_ids=True)
    try:
        table = run(con, query, params)
    finally:
        con.close()
    index = {str(p): i for i, p in enumerate(product.files)}
    files = np.asarray([index[name] for name in table.column("filename").to_pylist()], dtype=np.int64)
    rows = np.asarray(table.column("file_row_number"), dtype=np.int64)
    return {int(f): np.sort(rows[files == f]) for f in np.unique(files)}


# -- kernels ------------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores (unordered). Exact: the k-th largest of a strided sample
    is a lower bound of the k-th largest overall, so only rows above it are partitioned."""
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if n > 64 * k and n > 16384:
        sample = scores[::16]
        if len(sample) > k:
            threshold = np.partition(sample, len(sample) - k)[len(sample) - k]
            candidates = np.flatnonzero(scores >= threshold)
            if len(candidates) > k:
                return candidates[np.argpartition(scores[candidates], len(candidates) - k)[len(candidates) - k :]]
            return candidates
    return np.argpartition(scores, n - k)[n - k :]


def _prepare_queries(queries: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        if (norms == 0).any():
            raise SearchError(f"query {int(np.flatnonzero(norms[:, 0] == 0)[0])} is the zero vector: cosine is undefined")
        return (queries / norms).astype(np.float32)
    return queries


def exact_scores(vectors: np.ndarray, norms: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Scores (higher is better) of ``vectors`` (n, D) against prepared ``queries`` (m, D): (n, m)."""
    return scores_of_products(vectors @ queries.T, norms, metric)


def scores_of_products(scores: np.ndarray, norms: np.ndarray, metric: str) -> np.ndarray:
    """Scores from the dot products (n, m) of n rows of Euclidean ``norms`` with m prepared queries (in place)."""
    if metric == "cosine":
        scores /= np.maximum(norms, np.float32(1e-30))[:, None]
    elif metric == "l2":
        scores *= 2
        scores -= (norms * norms)[:, None]
    return scores


def to_distance(scores: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return 1.0 - scores
    if metric == "l2":
        return np.sqrt(np.maximum(0.0, np.sum(queries * queries, axis=1)[None, :] - scores))
    return -scores


@dataclass
class Hits:
    """The best rows of one query: scores (higher is better), file index and row in the file."""

    scores: np.ndarray
    files: np.ndarray
    rows: np.ndarray

    @staticmethod
    def empty() -> "Hits":
        return Hits(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def best(self, k: int) -> "Hits":
        # Ties broken by file and row, so every split of the files gives the same answer.
        order = np.lexsort((self.rows, self.files, -self.scores.astype(np.float64)))[:k]
        return Hits(self.scores[order], self.files[order], self.rows[order])

    @staticmethod
    def merge(parts: Sequence["Hits"], k: int) -> "Hits":
        parts = [p for p in parts if len(p.scores)]
        if not parts:
            return Hits.empty()
        return Hits(
            np.concatenate([p.scores for p in parts]), np.concatenate([p.files for p in parts]),
            np.concatenate([p.rows for p in parts]),
        ).best(k)


class Searcher:
    """Search state of one product (or of a subset of its files, for one MPI rank)."""

    def __init__(self, product: "Product", *, files: Sequence[int] | None = None) -> None:
        self.product = product
        self.file_indexes = list(range(len(product.files))) if files is None else list(files)
        self._caches: dict[int, FileCache] = {}
        self._codes: dict[tuple[str, str, int], Any] = {}
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = cache_dir(self.product)
        return self._folder

    def cache(self, index: int) -> FileCache:
        if index not in self._caches:
            self._caches[index] = load_file_cache(self.product, index, self.folder)
        return self._caches[index]

    def warm(self) -> None:
        for index in self.file_indexes:
            self.cache(index)

    # -- per file --

    def _exact(self, cache: FileCache, queries: np.ndarray, metric: str, k: int, rows: np.ndarray | None) -> list[Hits]:
        vectors, norms = cache.vectors, cache.norms
        if cache.searchable is not None:
            rows = cache.searchable if rows is None else np.intersect1d(rows, cache.searchable, assume_unique=True)
        if rows is not None:
            if len(rows) == 0:
                return [Hits.empty() for _ in queries]
            vectors, norms = vectors[rows], norms[rows]
        found: list[list[Hits]] = [[] for _ in queries]
        step = _CHUNK_ROWS if len(queries) > 1 else max(len(vectors), 1)
        for start in range(0, len(vectors), step):
            scores = exact_scores(vectors[start : start + step], norms[start : start + step], queries, metric)
            for q in range(len(queries)):
                column = np.ascontiguousarray(scores[:, q])
                best = top_k(column, k)
                positions = best + start
                found[q].append(Hits(column[best], np.full(len(best), cache.index), rows[positions] if rows is not None else positions))
        return [Hits.merge(parts, k) for parts in found]

    def _rerank(self, queries: np.ndarray, metric: str, k: int, candidates: Sequence[np.ndarray],
                files: Sequence[int], starts: np.ndarray) -> list[Hits]:
        """Exact top-k of each query among its candidate ids (-1 pads), ids numbering the rows of
        ``files`` one after the other: file ``files[j]`` holds ids ``starts[j]`` to ``starts[j + 1]``."""
        out = []
        for q, ids in enumerate(candidates):
            ids = np.sort(ids[ids >= 0])  # file order: gathers walk the cache forwards
            bounds = np.searchsorted(ids, starts)
            scores, file_of, rows = [], [], []
            for j, index in enumerate(files):
                if bounds[j] == bounds[j + 1]:
                    continue
                cache = self.cache(index)
                local = ids[bounds[j] : bounds[j + 1]] - starts[j]
                # einsum, not BLAS: a product this small would wake OpenBLAS's threads, which then
                # spin on the cores a batch's scan runs on.
                products = np.einsum("ij,j->i", cache.vectors[local], queries[q])[:, None]
                scores.append(scores_of_products(products, cache.norms[local], metric)[:, 0])
                file_of.append(np.full(len(local), index))
                rows.append(local)
            if not scores:
                out.append(Hits.empty())
                continue
            hits = Hits(np.concatenate(scores), np.concatenate(file_of), np.concatenate(rows))
            keep = ~np.isnan(hits.scores)  # nodata rows (NaN vectors) are never hits
            if len(hits.scores) > 4 * k:  # every row tied with the k-th best stays, so ties go by file and row
                kth = hits.scores[keep][top_k(hits.scores[keep], k)].min(initial=np.inf)
                keep &= hits.scores >= kth
            out.append(Hits(hits.scores[keep], hits.files[keep], hits.rows[keep]).best(k))
        return out

    def _int8_codes(self, cache: FileCache, metric: str) -> tuple[np.ndarray, float]:
        key = ("int8", metric, cache.index)
        if key not in self._codes:
            from ._index import load_index, int8_codes

            stored = load_index(self.product, cache.index, kind="int8", metric=metric)
            self._codes[key] = stored if stored is not None else int8_codes(cache.vectors, cache.norms, metric)
        return self._codes[key]

    def _binary_index(self):
        """One faiss Hamming index over the 1-bit codes of all this searcher's files in file order, and
        the first id of each file: one scan and one candidate count for the whole product (or rank)."""
        key = ("binary", "", -1)
        if key not in self._codes:
            from ._index import binary_flat, load_index

            codes = []
            for index in self.file_indexes:
                stored = load_index(self.product, index, kind="binary", metric="cosine")
                codes.append(stored if stored is not None else np.packbits(self.cache(index).vectors > 0, axis=1))
            starts = np.cumsum([0] + [len(c) for c in codes])
            width = (self.product.dim + 7) // 8
            self._codes[key] = (binary_flat(np.concatenate(codes) if codes else np.zeros((0, width), np.uint8)), starts)
        return self._codes[key]

    def _binary_ranks(self, metric: str) -> np.ndarray:
        """Hamming ranks of the exact neighbours of sample rows (see ``_index.hamming_ranks``), computed
        once per product version, metric and set of files, and kept in the decoded-vector cache."""
        key = ("binary-ranks", metric, -1)
        if key in self._codes:
            return self._codes[key]
        from ._index import CALIBRATION_NEIGHBOURS, CALIBRATION_QUERIES, binary_codes, hamming_ranks

        files = hashlib.sha256(",".join(map(str, self.file_indexes)).encode()).hexdigest()[:16]
        path = self.folder / f"binary-ranks-{metric}-{files}.npy"
        if path.exists():
            with reading(path, advice=f"delete the decoded-vector cache {self.folder} to rebuild it"):
                self._codes[key] = np.load(path, allow_pickle=False)
            return self._codes[key]
        index, starts = self._binary_index()
        rows = int(starts[-1])
        neighbours = min(CALIBRATION_NEIGHBOURS, rows - 1)
        # Evenly spaced rows with data, as queries; each one's own row is not its neighbour.
        picks = np.unique(np.linspace(0, rows - 1, min(CALIBRATION_QUERIES, rows)).astype(np.int64))
        vectors = self._vectors_at(picks, starts)
        picks, vectors = picks[np.isfinite(vectors).all(axis=1)], vectors[np.isfinite(vectors).all(axis=1)]
        ranks = np.zeros((0, 0), dtype=np.int64)
        if neighbours >= 1 and len(picks):
            queries = _prepare_queries(vectors, metric)
            hits = self.search(queries, metric=metric, k=neighbours + 1, mode="exact", candidates=0)
            ids = np.full((len(picks), neighbours), -1, dtype=np.int64)
            for i, h in enumerate(hits):
                found = starts[np.searchsorted(self.file_indexes, h.files)] + h.rows
                found = found[found != picks[i]][:neighbours]
                ids[i, : len(found)] = found
            complete = (ids >= 0).all(axis=1)  # queries with fewer neighbours (nodata rows) drop out
            ranks = hamming_ranks(binary_codes(index), np.packbits(queries[complete] > 0, axis=1), ids[complete])
        _save_atomic(path, ranks)
        self._codes[key] = ranks
        return ranks

    def _vectors_at(self, ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Cached vectors of ids numbered through this searcher's files one after the other."""
        out = np.empty((len(ids), self.product.dim), dtype=np.float32)
        which = np.searchsorted(starts, ids, side="right") - 1
        for j in np.unique(which):
            out[which == j] = self.cache(self.file_indexes[j]).vectors[ids[which == j] - starts[j]]
        return out

    def binary_candidates(self, metric: str, k: int) -> int:
        """The default candidate count of a 1-bit scan for top-k: calibrated on this searcher's data."""
        from ._index import calibrated_candidates

        _, starts = self._binary_index()
        count = calibrated_candidates(self._binary_ranks(metric), k=k, rows=int(starts[-1]))
        return count if count is not None else default_candidates("binary", k)

    def _binary_search(self, queries: np.ndarray, *, metric: str, k: int, candidates: int | None) -> list[Hits]:
        from ._index import faiss_threads

        index, starts = self._binary_index()
        if index.ntotal == 0:  # an MPI rank without files
            return [Hits.empty() for _ in queries]
        if candidates is None:
            candidates = self.binary_candidates(metric, k)
        bits = np.packbits(queries > 0, axis=1)
        with faiss_threads(len(queries)):  # one query: one thread (3x faster on two busy cores)
            _, ids = index.search(bits, min(max(candidates, k), index.ntotal))
        return self._rerank(queries, metric, k, ids, self.file_indexes, starts)

    def _faiss_index(self, cache: FileCache, kind: str, metric: str):
        key = (kind, metric, cache.index)
        if key not in self._codes:
            from ._index import load_index

            stored = load_index(self.product, cache.index, kind=kind, metric=metric)
            if stored is None:
                raise SearchError(
                    f"{self.product.path} has no {kind} index for metric {metric} on {cache.path.name}; "
                    f"build one with `eoembed index build {self.product.path} --kind {kind} --metric {metric}`"
                )
            self._codes[key] = stored
        return self._codes[key]

    def search_file(self, index: int, queries: np.ndarray, *, metric: str, k: int, mode: str,
                    candidates: int, rows: np.ndarray | None, nprobe: int = 16, ef_search: int = 64) -> list[Hits]:
        cache = self.cache(index)
        if rows is not None or mode == "exact":
            # A filtered search scans only the selected rows, exactly, whatever the mode.
            return self._exact(cache, queries, metric, k, rows)
        c = min(max(candidates, k), cache.rows)
        if mode == "int8":
            numkong = require("numkong", extra="search")

            codes, scale = self._int8_codes(cache, metric)
            query_codes = quantize_queries(queries, scale, metric)
            kind = "sqeuclidean" if metric == "l2" else "dot"
            # int8 dot products of D <= 1024 values are integers below 2**24: exact in float32
            exact_in = "float32" if codes.shape[1] <= 1024 else "float64"
            scores = np.asarray(numkong.cdist(query_codes, codes, metric=kind, out_dtype=exact_in))
            if metric == "l2":
                scores = -scores
            return self._rerank(queries, metric, k, [top_k(s, c) for s in scores], [index], np.array([0, cache.rows]))
        index_ = self._faiss_index(cache, mode, metric)
        faiss = require("faiss", extra="search")

        if mode == "ivf":
            faiss.extract_index_ivf(index_).nprobe = nprobe
        else:
            index_.hnsw.efSearch = max(ef_search, c)
        from ._index import faiss_threads

        with faiss_threads(len(queries)):  # cosine queries are unit already
            _, ids = index_.search(np.ascontiguousarray(queries, dtype=np.float32), c)
        return self._rerank(queries, metric, k, ids, [index], np.array([0, cache.rows]))

    def search(self, queries: np.ndarray, *, metric: str, k: int, mode: str, candidates: int | None,
               bbox=None, interval=None, where_map: dict[int, np.ndarray] | None = None, **options: Any) -> list[Hits]:
        """Top-k per query over this searcher's files (scores, file index, row); ``candidates`` None
        for the mode's default."""
        if mode == "binary" and bbox is None and interval is None and where_map is None:
            return self._binary_search(queries, metric=metric, k=k, candidates=candidates)
        candidates = candidates or default_candidates(mode, k)
        def one_file(index: int) -> list[Hits]:
            cache = self.cache(index)
            rows = _rows_in(cache, bbox, interval)
            if where_map is not None:
                selected = where_map.get(index, np.zeros(0, np.int64))
                rows = selected if rows is None else np.intersect1d(rows, selected, assume_unique=True)
            return self.search_file(index, queries, metric=metric, k=k, mode=mode, candidates=candidates,
                                    rows=rows, **options)

        # Files whose manifest extent misses the filter are never decoded (nor fetched, at a URL).
        overlapping = set(self.product.files_overlapping(bbox, interval))
        indexes = [i for i in self.file_indexes if i in overlapping]
        for index in indexes:  # caches are built one at a time (they write files)
            self.cache(index)
        threads = min(len(indexes), len(os.sched_getaffinity(0)))
        if mode != "int8" or threads < 2:
            # BLAS already spreads an exact scan over the cores; faiss scans measured slower from
            # several Python threads than one after the other.
            per_file = [one_file(index) for index in indexes]
        else:
            # numkong's int8 scan runs on one core and releases the GIL: one file a thread.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                per_file = list(pool.map(one_file, indexes))
        if not per_file:
            return [Hits.empty() for _ in range(len(queries))]
        return [Hits.merge([hits[q] for hits in per_file], k) for q in range(len(queries))]


def quantize_queries(queries: np.ndarray, scale: float, metric: str) -> np.ndarray:
    """int8 query codes: the index's scale for l2 (distances must share units), the query's own for dot."""
    if metric == "l2":
        return np.clip(np.rint(queries / scale), -127, 127).astype(np.int8)
    own = np.maximum(np.abs(queries).max(axis=1, keepdims=True), 1e-30) / 127
    return np.clip(np.rint(queries / own), -127, 127).astype(np.int8)


# -- queries ------------------------------------------------------------------------------------


def _is_point(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float, np.floating)) for v in value)


def _split_items(query: Any, dim: int) -> tuple[list[Any], bool]:
    if isinstance(query, str) or _is_point(query):
        return [query], False
    if isinstance(query, np.ndarray) and query.dtype.kind in "fiu":
        if query.ndim == 1:
            return [query], False
        if query.ndim == 2:
            return list(query), True
        raise DimensionMismatchError(f"query array has shape {query.shape}; give (D,) or (m, D) with D={dim}")
    numbers = (int, float, np.floating, np.integer)
    if isinstance(query, (list, tuple)) and query and all(isinstance(v, numbers) for v in query) and len(query) != 2:
        return [np.asarray(query, dtype=np.float32)], False
    if isinstance(query, (list, tuple)) and query:
        return list(query), True
    raise SearchError(f"query {query!r} must be a vector, a chip id, a (lon, lat) tuple, or a list of them")


def _chip_rows(searcher: Searcher, chip_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(file index, row) of the chip ids found in this searcher's files."""
    import pyarrow.compute as pc

    wanted = pa.array(sorted(set(chip_ids)), pa.string())
    found: dict[str, tuple[int, int]] = {}
    for index in searcher.file_indexes:
        with reading(searcher.product.files[index], column="chip_id"):
            column = pq.read_table(open_input(searcher.product.files[index]), columns=["chip_id"]).column("chip_id")
        for row in np.flatnonzero(np.asarray(pc.is_in(column, value_set=wanted))):
            found.setdefault(column[int(row)].as_py(), (index, int(row)))
        if len(found) == len(wanted):
            break
    return found


def _point_row(searcher: Searcher, lon: float, lat: float) -> tuple[float, int, int] | None:
    """(squared centre distance, file, row) of the chip covering (lon, lat) whose centre is nearest."""
    best = None
    for index in searcher.file_indexes:
        cache = searcher.cache(index)
        rows = _rows_in(cache, (lon, lat, lon, lat), None)
        if len(rows):
            b = cache.bbox[rows]
            d = ((b[:, 0] + b[:, 2]) / 2 - lon) ** 2 + ((b[:, 1] + b[:, 3]) / 2 - lat) ** 2
            i = int(np.argmin(d))
            if best is None or d[i] < best[0]:
                best = (float(d[i]), index, int(rows[i]))
    return best


def local_queries(searcher: Searcher, items: Sequence[Any]) -> list[tuple[float, np.ndarray | None]]:
    """Each query item as (rank, vector) from this searcher's files: rank 0 for a found chip or a
    given vector, the centre distance for a point, (inf, None) when not found here."""
    product = searcher.product
    dim = product.dim
    ids = [q for q in items if isinstance(q, str)]
    by_id = _chip_rows(searcher, ids) if ids else {}
    out: list[tuple[float, np.ndarray | None]] = []
    for i, q in enumerate(items):
        if isinstance(q, str):
            where = by_id.get(q)
            out.append((0.0, np.array(searcher.cache(where[0]).vectors[where[1]])) if where else (np.inf, None))
        elif _is_point(q):
            parse_bbox((q[0], q[1], q[0], q[1]))
            where = _point_row(searcher, float(q[0]), float(q[1]))
            out.append((where[0], np.array(searcher.cache(where[1]).vectors[where[2]])) if where else (np.inf, None))
        else:
            v = np.asarray(q, dtype=np.float32).reshape(-1)
            if v.shape[0] != dim:
                raise DimensionMismatchError(f"query {i} has dimension {v.shape[0]}, but {product.path} holds {dim}-d vectors")
            if not np.isfinite(v).all():
                raise SearchError(f"query {i} holds a non-finite value")
            out.append((0.0, v))
    return out


def combine_queries(product: "Product", items: Sequence[Any], parts: Sequence[list[tuple[float, np.ndarray | None]]]) -> np.ndarray:
    """One vector per item from every rank's local answers (the best rank wins; ties to the lowest)."""
    vectors = np.empty((len(items), product.dim), dtype=np.float32)
    for i, q in enumerate(items):
        rank, vector = min((part[i] for part in parts), key=lambda a: a[0])
        if vector is None:
            if isinstance(q, str):
                raise ChipNotFoundError(f"chip id {q!r} is not in {product.path}; list ids with "
                                        f"`eoembed query {product.path} \"SELECT chip_id FROM embeddings LIMIT 10\"`")
            with reading(product.path / "collection.json"):
                extent = product.collection["extent"]["spatial"]["bbox"][0]
            raise ChipNotFoundError(f"no chip of {product.path} covers the point {tuple(q)}; the product covers {extent}")
        if not np.isfinite(vector).all():
            raise SearchError(f"query {q!r} of {product.path} is a chip without data (its vector holds nodata); "
                              "search from another chip or a vector")
        vectors[i] = vector
    return vectors


def resolve_queries(searcher: Searcher, query: Any) -> tuple[np.ndarray, bool]:
    """Query vectors (m, D) float32 and whether the query was a batch."""
    items, batch = _split_items(query, searcher.product.dim)
    return combine_queries(searcher.product, items, [local_queries(searcher, items)]), batch


#: The package each compressed mode scans with; exact search is numpy alone.
_MODE_PACKAGE = {"int8": "numkong", "binary": "faiss", "hnsw": "faiss", "ivf": "faiss", "ivf-rabitq": "faiss"}


def check_options(product: "Product", *, k: int, metric: str | None, mode: str) -> str:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SearchError(f"k must be a positive integer, got {k!r}")
    metric = metric or _PRODUCT_METRIC.get(product.embedding.get("metric", "cosine"), "cosine")
    if metric not in METRICS:
        raise SearchError(f"metric {metric!r} is not one of {list(METRICS)}")
    if mode not in MODES:
        raise SearchError(f"mode {mode!r} is not one of {list(MODES)}")
    if mode in _MODE_PACKAGE:  # before any index lookup: without the extra, no index helps
        require(_MODE_PACKAGE[mode], extra="search")
    return metric


def hits_table(searcher: Searcher, hits: Sequence[Hits], queries: np.ndarray, metric: str, *, batch: bool) -> pa.Table:
    """``chip_id``, ``distance`` and the metadata columns of the hits, best first (``query`` first for batches)."""
    prefetch_metadata(searcher, hits)
    tables = []
    for q, h in enumerate(hits):
        distance = to_distance(h.scores.astype(np.float64)[:, None], queries[q : q + 1].astype(np.float64), metric)[:, 0]
        meta = metadata_rows(searcher, h.files, h.rows)
        columns = {"chip_id": meta.column("chip_id"), "distance": pa.array(distance, pa.float64())}
        if batch:
            columns = {"query": pa.array(np.full(len(distance), q), pa.int32()), **columns}
        for name in meta.column_names:
            if name != "chip_id":
                columns[name] = meta.column(name)
        tables.append(pa.table(columns))
    if not tables:
        return pa.table({"chip_id": pa.array([], pa.string()), "distance": pa.array([], pa.float64())})
    return pa.concat_tables(tables)


def prefetch_metadata(searcher: Searcher, hits: Sequence[Hits]) -> None:
    """Ask for the pages of every hit's metadata, of all queries, before any is read: a hit's row
    spans about a dozen pages, one in each column buffer, read one fault at a time otherwise (100M
    rows, 10 hits not in memory: 8.1 ms by faults, 3.7 ms asked for first; 68-89 ms when each fault
    read ahead 32 pages)."""
    if not hits or not PREFETCH_HIT_METADATA:
        return
    files = np.concatenate([h.files for h in hits])
    rows = np.concatenate([h.rows for h in hits])
    prefetch_table_rows([(searcher.cache(int(f)).metadata_file, rows[files == f]) for f in np.unique(files).tolist()])


def metadata_rows(searcher: Searcher, files: np.ndarray, rows: np.ndarray) -> pa.Table:
    """Every stored column but the vector, for the given (file, row) pairs, in that order."""
    from ._read import conform

    schema = searcher.product.metadata_schema
    if len(files) == 0:
        return conform(searcher.cache(searcher.file_indexes[0]).metadata.slice(0, 0), schema)
    # One-row slices of the cached record batches: zero-copy, where ``take`` on the whole chunked
    # metadata would first concatenate every chunk of the file (milliseconds per hit at 1M rows).
    slices = []
    for f, r in zip(files.tolist(), rows.tolist()):
        batches, starts = searcher.cache(int(f)).metadata_batches
        b = int(np.searchsorted(starts, r, side="right")) - 1
        slices.append(batches[b].slice(r - int(starts[b]), 1))
    if all(searcher.cache(int(f)).metadata.schema.equals(schema) for f in np.unique(files)):
        return pa.Table.from_batches(slices).combine_chunks()
    # Files that differ in optional columns: a column a file lacks is null in its rows.
    return pa.Table.from_batches([conform(s, schema) for s in slices]).combine_chunks()


def search(product: "Product", query: Any, *, k: int = 10, bbox=None, datetime=None, where: str | None = None,
           params: Sequence[Any] | dict[str, Any] | None = None, metric: str | None = None, mode: str = "exact",
           candidates: int | None = None, searcher: Searcher | None = None, **options: Any) -> pa.Table:
    """See :meth:`eoembed.Product.search`."""
    metric = check_options(product, k=k, metric=metric, mode=mode)
    box, interval = parse_bbox(bbox), parse_datetime(datetime)
    # The archive index answers from memory-mapped shards, never the decoded-vector cache.
    searcher = searcher or (product._archive_searcher.using(metric) if mode == "ivf-rabitq" else product._searcher)
    queries, batch = resolve_queries(searcher, query)
    prepared = _prepare_queries(queries, metric)
    where_map = where_rows(product, where, params) if where else None
    hits = searcher.search(prepared, metric=metric, k=k, mode=mode, candidates=candidates,
                           bbox=box, interval=interval, where_map=where_map, **options)
    return hits_table(searcher, hits, prepared, metric, batch=batch)


def default_candidates(mode: str, k: int) -> int:
    """Rows re-ranked exactly after a compressed scan: 1-bit codes need more than int8 (a 1-bit scan
    calibrates its count on the data, :meth:`Searcher.binary_candidates`; this is its fallback)."""
    return {"int8": max(100, 10 * k), "binary": max(2000, 200 * k)}.get(mode, max(100, 10 * k))  # ivf-rabitq: _archive


def distributed_search(product: "Product", query: Any, *, comm=None, k: int = 10, bbox=None, datetime=None,
                       where: str | None = None, params=None, metric: str | None = None, mode: str = "exact",
                       candidates: int | None = None, **options: Any) -> pa.Table | None:
    """Search with the data files split across MPI ranks; rank 0 returns the table, others None.

    Every rank decodes and scans only its own files (so the product may exceed one node's memory),
    resolves the queries it can from them, and sends its top-k to rank 0, which keeps the best k.
    """
    MPI = require("mpi4py.MPI", extra="mpi")

    comm = comm or MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    metric = check_options(product, k=k, metric=metric, mode=mode)
    box, interval = parse_bbox(bbox), parse_datetime(datetime)
    if mode == "ivf-rabitq":  # each rank opens only its own shards, once per product
        searcher = product._archive_searcher.for_files(assign_files(product, rank, size)).using(metric)
    else:
        searcher = Searcher(product, files=assign_files(product, rank, size))
    items, batch = _split_items(query, product.dim)
    local = local_queries(searcher, items)
    queries = combine_queries(product, items, comm.allgather(local))
    prepared = _prepare_queries(queries, metric)
    where_map = None
    if where:
        from ._errors import EoembedError

        if rank == 0:
            try:
                where_map = where_rows(product, where, params)
            except EoembedError as error:  # a refused or failing filter: every rank raises it, none waits
                where_map = error
        where_map = comm.bcast(where_map, root=0)
        if isinstance(where_map, EoembedError):
            raise where_map
    if mode == "ivf-rabitq":  # one candidate pool over every rank's shards
        options["exchange"] = lambda local: np.concatenate(comm.allgather(local), axis=1)
    hits = searcher.search(prepared, metric=metric, k=k, mode=mode, candidates=candidates,
                           bbox=box, interval=interval, where_map=where_map, **options)
    # Each rank attaches the metadata of its own hits, so rank 0 never decodes another rank's files.
    table = hits_table(searcher, hits, prepared, metric, batch=True)
    keys = (np.concatenate([h.scores for h in hits]), np.concatenate([h.files for h in hits]), np.concatenate([h.rows for h in hits]))
    gathered = comm.gather((table, keys), root=0)
    if rank != 0:
        return None
    table = pa.concat_tables([t for t, _ in gathered])
    scores, files, rows = (np.concatenate([part[1][i] for part in gathered]) for i in range(3))
    queries_of = np.asarray(table.column("query"), dtype=np.int64)
    order = np.lexsort((rows, files, -scores.astype(np.float64), queries_of))
    keep = [i for q in range(len(prepared)) for i in order[queries_of[order] == q][:k]]
    table = table.take(pa.array(keep, pa.int64()))
    return table if batch else table.drop_columns(["query"])


def assign_files(product: "Product", rank: int, size: int) -> list[int]:
    """Data files of one rank: contiguous runs of about equal row counts."""
    rows = np.asarray(product.manifest.column("rows"), dtype=np.int64)
    ends = np.cumsum(rows)
    owner = np.minimum((ends - rows / 2) * size // max(int(ends[-1]), 1), size - 1).astype(int)
    return [int(i) for i in np.flatnonzero(owner == rank)]
