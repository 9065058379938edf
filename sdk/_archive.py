"""Archive-scale search: per data file (shard) an IVF + RaBitQ index and a re-rank file.

Search with ``mode="ivf-rabitq"`` never decodes a data file's vectors. Per shard it memory-maps

* ``index/{stem}.ivf-rabitq-{metric}.faiss``: a faiss ``IndexIVFRaBitQ`` whose ids are row numbers;
  every shard of a product shares one coarse quantiser (trained once on a sample of the whole
  product), so a query's nearest lists are found once and probed in every shard;
* ``index/{stem}.stored.npy`` (the default): the data file's stored codes, byte for byte (int8 for an
  int8 product: 1 byte a value), de-quantised at the candidates' rows as the footer says, so the
  re-rank is exact; or ``index/{stem}.float16-{metric}.npy`` (the rows as float16, unit vectors for
  cosine; the only form for per-row-scaled codes). Either is read only at the candidates' rows to
  re-rank them (1-bit RaBitQ estimates alone miss close neighbours). At archive scale the re-rank
  rows are the largest part of the index: the stored codes of an int8 product take half the float16
  bytes and score exactly what exact search scores;

and keeps the non-vector columns as memory-mapped Arrow IPC beside the product (the search cache
folder), for the hits' metadata and bbox / time filters. A filter becomes a faiss ID selector over
the selected rows (a selection no larger than the candidate pool is re-ranked whole).

One pool of ``candidates`` rows a query is re-ranked over the whole product, not a pool a shard:
every shard estimates, the pool is cut at the ``candidates``-th best estimate over all shards (under
MPI the ranks exchange their best estimates first), and each shard re-ranks only its rows above the
cut. The rows read stay ``candidates`` a query however many shards there are, and any split of the
files across ranks re-ranks the same rows and gives the same hits (the estimates of a row depend on
its shard alone). By default the pool grows with the product, from facts of the whole product
(:func:`default_candidates`): with the rows a query's probed lists hold and with the square root of
the product's rows, an eighth as large for each bit of the codes past the first. Building streams
over the stored rows in batches (two passes: the training sample, then the codes); memory is bounded by one shard's
codes, never the product's float32 vectors.
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
import uuid
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._damage import damaged, read_json, reading
from ._errors import SearchError
from ._geometry import bbox_bounds
from ._mapped import RandomAccessRows, RandomAccessTable, prefetch_array_rows
from ._optional import require
from ._search import FileRows, Hits, _as_us, _blocks, _rows_in, _time_columns, cache_dir, exact_scores, top_k

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from ._read import Product

KIND = "ivf-rabitq"
RERANK_KINDS = ("stored", "float16")  # the forms of the re-rank rows


def default_nlist(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: about 2 sqrt(n), at least 39 training rows a list."""
    return int(max(1, min(round(2 * np.sqrt(rows)), rows // 39)))


# Above this many lists a flat coarse quantiser costs more than the lists it finds (every stored
# row is compared with every centroid while building): an HNSW graph over the centroids instead.
FLAT_COARSE_MAX_LISTS = 4096


# The pool of 1-bit estimates grows with the product in two ways, measured on clustered 128-d rows,
# 16 lists probed: with the rows the probed lists hold (ONE_BIT_SHARE of them: on 10M rows, 16 of
# 2,048 lists, 78k rows, 400 candidates gave recall@10 0.962 and 782 gave 0.986), and with the
# product's rows themselves, whose neighbours crowd closer to a query's as it grows, so that more
# rows tie with its 10th within the estimates' error (ONE_BIT_ROOT times the square root of the
# rows: on 100M rows, 16 of 20,000 lists, 80k rows, 800 candidates gave 0.930, 1,600 gave 0.970).
ONE_BIT_SHARE = 0.01
ONE_BIT_ROOT = 0.16
# Each bit a dimension after the first divides the pool by this: on one 5M-row shard, 2-bit
# estimates gave recall@10 0.978 from 100 candidates, 1-bit ones 0.963 from 400; on 100M rows
# (16 of 20,000 lists) 2-bit gave 0.992-0.993 from 400 and 0.988 from 200, where 1-bit gave 0.970
# from 1,600: an eighth of the 1-bit pool ranks better than the 1-bit pool itself.
POOL_DIVISOR_A_BIT = 8

# A shard's first estimates: FIRST_PASS_SHARES times its even share of the pool, at least
# FIRST_PASS_MIN (ArchiveSearcher.search). On 20 shards of 250k clustered rows, 85k codes probed,
# one thread: 80 estimates a shard took 1.9 ms, 782 took 4.5 ms and 3,906 took 10.9 ms.
FIRST_PASS_SHARES = 2
FIRST_PASS_MIN = 32

# Ask for the pages of a query's re-rank rows before reading them (see sdk/_mapped.py);
# off only to measure what it saves (benchmarks/search_archive.py --compare no-prefetch).
PREFETCH_RERANK_ROWS = True

# Codes held in memory (MergedCodes): split one query's probed lists over the cores; off only to
# measure what it saves (benchmarks/search_archive.py --compare no-list-split).
SPLIT_QUERY_LISTS = True


def default_candidates(k: int, bits: int = 1, *, probed_rows: float = 0, rows: float = 0) -> int:
    """Rows re-ranked a query (one pool over every shard of a product of ``rows`` rows, whose probed
    lists hold ``probed_rows``): for 1-bit estimates at least 40 a hit, ``ONE_BIT_SHARE`` of the
    probed rows and ``ONE_BIT_ROOT`` sqrt(rows); finer codes (``bits`` a dimension) rank well enough
    that an eighth of that a bit suffices, at least 10 a hit."""
    one_bit = max(400, 40 * k, int(np.ceil(ONE_BIT_SHARE * probed_rows)), int(np.ceil(ONE_BIT_ROOT * np.sqrt(rows))))
    if bits == 1:
        return one_bit
    return max(100, 10 * k, int(np.ceil(one_bit / POOL_DIVISOR_A_BIT ** (bits - 1))))


def _prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    """What the index holds: unit vectors for cosine, the vectors themselves otherwise."""
    if metric != "cosine":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-30)).astype(np.float32)


def _stream(product: "Product", *, batch_size: int, codes: bool = False):
    """(file index, first row of the batch, decoded float32 vectors[, stored codes]) over the stored
    rows, batch by batch."""
    numbers = {str(path): i for i, path in enumerate(product.files)}
    for path, first, batch in product._file_batches(columns=product._vector_columns(), batch_size=batch_size):
        vectors = product.decode(batch, source=path, first_row=first)
        if codes:
            yield numbers[str(path)], first, vectors, product.decode(batch, dequantize=False, source=path, first_row=first)
        else:
            yield numbers[str(path)], first, vectors


class StreamingTopK:
    """Exact top-k of prepared queries, fed block by block (a brute force that never holds the product)."""

    def __init__(self, queries: np.ndarray, *, k: int, metric: str) -> None:
        self.queries, self.k, self.metric = queries, k, metric
        self.hits = [Hits.empty() for _ in queries]

    def update(self, vectors: np.ndarray, file_index: int, first_row: int) -> None:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)).astype(np.float32)
        scores = exact_scores(vectors, norms, self.queries, self.metric)
        scores[~np.isfinite(scores)] = -np.inf  # nodata rows are never hits
        for q in range(len(self.queries)):
            column = np.ascontiguousarray(scores[:, q])
            best = top_k(column, self.k)
            best = best[np.isfinite(column[best])]
            found = Hits(column[best], np.full(len(best), file_index), first_row + best)
            self.hits[q] = Hits.merge([self.hits[q], found], self.k)


def exact_top_k(product: "Product", queries: np.ndarray, *, k: int, metric: str, batch_size: int = 65536) -> list[Hits]:
    """Exact top-k of prepared ``queries`` by one streaming pass over the stored vectors."""
    truth = StreamingTopK(queries, k=k, metric=metric)
    for file_index, first, vectors in _stream(product, batch_size=batch_size):
        truth.update(vectors, file_index, first)
    return truth.hits


# -- build --------------------------------------------------------------------------------------


def _faiss_metric(faiss, metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _gather(product: "Product", picks: np.ndarray, *, batch_size: int) -> np.ndarray:
    """The float32 vectors of the product rows ``picks`` (sorted global row numbers), decoding only them."""
    out = np.empty((len(picks), product.dim), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(np.asarray(product.manifest.column("rows"), dtype=np.int64))])
    numbers = {str(path): i for i, path in enumerate(product.files)}
    done = 0
    for path, first, batch in product._file_batches(columns=product._vector_columns(), batch_size=batch_size):
        start = starts[numbers[str(path)]] + first
        stop = np.searchsorted(picks, start + batch.num_rows)
        if stop > done:
            local = pa.array(picks[done:stop] - start)
            out[done:stop] = product.decode(batch.take(local), source=path, first_row=first)
            done = stop
    return out


def _no_nodata(vectors: np.ndarray) -> np.ndarray:
    """Rows without data (NaN, the sqrt method's nodata) as zero vectors: indexed, never hits."""
    return np.nan_to_num(vectors, nan=0.0, copy=False)


def _coarse_quantizer(faiss, dim: int, nlist: int, metric: str):
    """The index's coarse quantiser: exact (flat) up to :data:`FLAT_COARSE_MAX_LISTS` lists, an HNSW
    graph over the centroids above (k-means itself still trains against a flat index)."""
    if nlist <= FLAT_COARSE_MAX_LISTS:
        return "flat", (faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim))
    graph = faiss.IndexHNSWFlat(dim, 32, _faiss_metric(faiss, metric))
    graph.hnsw.efConstruction, graph.hnsw.efSearch = 80, 64
    return "hnsw32", graph


def build_archive_index(product: "Product", *, metric: str | None = None, nlist: int | None = None,
                        sample: int | None = None, bits: int = 1, rerank: str | None = None, batch_size: int = 65536,
                        recall_queries: int = 100, k: int = 10, seed: int = 0, nprobe: int = 16) -> dict[str, Any]:
    """Build the ``ivf-rabitq`` index and the re-rank file of every data file, streaming.

    ``rerank`` is the form of the re-rank rows: ``stored`` (the default: the stored codes, exact) or
    ``float16`` (the default where the codes need a per-row scale column).

    The coarse quantiser is trained on ``sample`` rows drawn uniformly from the whole product; the
    codes hold ``bits`` bits a dimension (1: RaBitQ's binary codes; up to 8: its extended codes, whose
    finer estimates let fewer candidates be re-ranked). Recall@k is measured on ``recall_queries``
    product rows against a streaming exact top-k made during the same pass that writes the codes.
    """
    faiss = require("faiss", extra="search")
    from ._index import _asset, _declare, _write_index, asset_key
    from ._search import check_options

    metric = check_options(product, k=k, metric=metric, mode="exact")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SearchError(f"batch_size must be a positive integer, got {batch_size!r}")
    total, dim = product.num_rows, product.dim
    nlist = default_nlist(total) if nlist is None else nlist
    if isinstance(nlist, bool) or not isinstance(nlist, int) or not 1 <= nlist <= total:
        raise SearchError(f"nlist {nlist!r} must be an integer from 1 to the product's {total} rows; "
                          f"the default for {total} rows is {default_nlist(total)}")
    sample = min(total, max(40 * nlist, 10_000)) if sample is None else sample
    if isinstance(sample, bool) or not isinstance(sample, int) or not nlist <= sample <= total:
        raise SearchError(f"sample {sample!r} must be an integer from nlist ({nlist}) to the product's {total} rows")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SearchError(f"bits {bits!r} must be an integer from 1 to 8 (bits a dimension in the codes)")
    per_row = product.quantization.method == "per-row"
    rerank = ("float16" if per_row else "stored") if rerank is None else rerank
    if rerank not in RERANK_KINDS:
        raise SearchError(f"rerank {rerank!r} must be one of {', '.join(RERANK_KINDS)} (the form of the re-rank rows)")
    if rerank == "stored" and per_row:
        raise SearchError("rerank 'stored' cannot hold per-row-scaled codes (their scale is a column of its own); "
                          "use rerank 'float16'")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=sample, replace=False))
    query_rows = np.sort(rng.choice(total, size=min(recall_queries, total), replace=False))

    started = time.perf_counter()
    union = np.union1d(picks, query_rows)
    gathered = _gather(product, union, batch_size=batch_size)
    training = _no_nodata(_prepared(gathered[np.isin(union, picks)], metric))
    queries = _prepared(gathered[np.isin(union, query_rows)], metric)
    queries = queries[np.isfinite(queries).all(axis=1)]
    del gathered
    coarse, quantizer = _coarse_quantizer(faiss, dim, nlist, metric)
    template = faiss.IndexIVFRaBitQ(quantizer, dim, nlist, _faiss_metric(faiss, metric), True, bits)
    template.cp.seed, template.cp.niter = seed, 10
    flat = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    template.clustering_index = flat  # k-means against exact distances, whatever the quantiser
    template.train(training)
    template.clustering_index = None
    del training
    trained = faiss.serialize_index(template)
    quantizer_id = hashlib.sha256(trained.tobytes()).hexdigest()[:16]
    train_seconds = time.perf_counter() - started

    truth = StreamingTopK(queries, k=k, metric=metric)
    shards: dict[int, Any] = {}
    reranks: dict[int, np.ndarray] = {}
    paths: dict[int, tuple[Path, Path]] = {}
    rows_of = np.asarray(product.manifest.column("rows"), dtype=np.int64)
    item_paths = product._item_paths
    built = []

    def finish(file_index: int) -> None:
        """Write one shard's two files (the codes of one shard are all this build holds)."""
        index_path, rerank_path = paths.pop(file_index)
        reranks.pop(file_index).flush()
        os.replace(rerank_path.with_name(f".{rerank_path.name}.partial.npy"), rerank_path)
        _write_index(index_path, KIND, shards.pop(file_index))
        built.append((file_index, index_path, rerank_path))

    add_started = time.perf_counter()
    try:
        for file_index, first, vectors, codes in _stream(product, batch_size=batch_size, codes=True):
            if file_index not in shards:
                for done in list(shards):
                    finish(done)
                stem = Path(product.manifest.column("path")[file_index].as_py()).stem
                folder = product.path / "index"
                folder.mkdir(exist_ok=True)
                paths[file_index] = (folder / f"{stem}.{KIND}-{metric}.faiss", folder / rerank_name(stem, rerank, metric))
                shards[file_index] = faiss.deserialize_index(trained)
                partial = paths[file_index][1].with_name(f".{paths[file_index][1].name}.partial.npy")
                shape = (int(rows_of[file_index]), dim if rerank == "float16" else product.quantization.stored_width())
                dtype = np.float16 if rerank == "float16" else np.dtype(product.quantization.dtype)
                reranks[file_index] = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
            prepared = _prepared(vectors, metric)
            truth.update(prepared, file_index, first)
            # float16 keeps nodata as NaN, the stored codes their own nodata: never re-ranked either way.
            reranks[file_index][first : first + len(prepared)] = prepared if rerank == "float16" else codes
            ids = np.arange(first, first + len(prepared), dtype=np.int64)
            shards[file_index].add_with_ids(_no_nodata(prepared), ids)
        for done in list(shards):
            finish(done)
    except BaseException:
        for _, rerank_path in paths.values():  # a failed build leaves no half-written file behind
            rerank_path.with_name(f".{rerank_path.name}.partial.npy").unlink(missing_ok=True)
        raise
    add_seconds = time.perf_counter() - add_started

    metas = {}
    for file_index, index_path, rerank_path in built:
        rel = product.manifest.column("path")[file_index].as_py()
        base = {"metric": metric, "data_sha256": product.manifest.column("sha256")[file_index].as_py(),
                "rows": int(rows_of[file_index])}
        metas[file_index] = ({"kind": KIND, **base, "nlist": nlist, "sample": sample, "bits": bits, "coarse": coarse,
                              "rerank": rerank, "quantizer": quantizer_id},
                             {"kind": rerank, **base})
        _declare(item_paths[rel], asset_key(rerank, metric), _asset(item_paths[rel], rerank_path, metas[file_index][1]))
        _declare(item_paths[rel], asset_key(KIND, metric), _asset(item_paths[rel], index_path, metas[file_index][0]))
    report = {"kind": KIND, "metric": metric, "files": len(built), "rows": total, "nlist": nlist, "sample": sample,
              "bits": bits, "coarse": coarse, "rerank": rerank,
              "train_seconds": train_seconds, "add_seconds": add_seconds, "build_seconds": train_seconds + add_seconds,
              "peak_rss_bytes": peak_rss_bytes(), "bytes": int(sum(p.stat().st_size for _, a, b in built for p in (a, b)))}
    if not len(queries):
        return report
    found = ArchiveSearcher(product).search(queries, metric=metric, k=k, mode=KIND, nprobe=nprobe)
    recall = recall_of(truth.hits, found)
    key = "recall_at_10" if k == 10 else f"recall_at_{k}"
    for file_index, index_path, _ in built:
        rel = product.manifest.column("path")[file_index].as_py()
        meta = {**metas[file_index][0], key: recall, "recall_queries": len(queries)}
        _declare(item_paths[rel], asset_key(KIND, metric), _asset(item_paths[rel], index_path, meta))
    return {**report, key: recall, "recall_queries": len(queries), "nprobe": nprobe}


def rerank_name(stem: str, rerank: str, metric: str) -> str:
    """File name of a data file's re-rank rows: the stored codes serve every metric."""
    return f"{stem}.stored.npy" if rerank == "stored" else f"{stem}.{rerank}-{metric}.npy"


def best_estimates(estimates: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` largest values, best first (-inf pads a row with fewer)."""
    if estimates.shape[1] < count:
        pad = np.full((len(estimates), count - estimates.shape[1]), -np.inf, dtype=np.float32)
        estimates = np.concatenate([estimates, pad], axis=1)
    best = -np.partition(-estimates, count - 1, axis=1)[:, :count]
    return -np.sort(-best, axis=1)


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def recall_of(truth: Sequence[Hits], found: Sequence[Hits]) -> float:
    """Mean share of each query's exact top-k (file, row) pairs that ``found`` also holds."""
    shares = []
    for exact, approx in zip(truth, found):
        want = set(zip(exact.files.tolist(), exact.rows.tolist()))
        got = set(zip(approx.files.tolist(), approx.rows.tolist()))
        shares.append(len(want & got) / max(len(want), 1))
    return float(np.mean(shares)) if shares else 1.0


# -- search -------------------------------------------------------------------------------------


def _current_asset(product: "Product", file_index: int, key: str) -> tuple[Path, dict[str, Any]]:
    """The asset ``key`` of one data file, refused with what to do when absent or stale."""
    from ._index import _index_asset, _local_copy

    found = _index_asset(product, file_index, key)
    rebuild = f"build it with `eoembed index build {product.path} --kind {KIND}`"
    if found is None:
        rel = product.manifest.column("path")[file_index].as_py()
        item_path = product._item_paths.get(rel)
        asset = read_json(item_path).get("assets", {}).get(key) if item_path else None
        if asset:
            raise SearchError(f"the {key} asset of {product.files[file_index]} was built from an earlier version of "
                              f"that data file (data_sha256 {asset.get('eoembed:index', {}).get('data_sha256')!r}, "
                              f"the manifest says {product.manifest.column('sha256')[file_index].as_py()!r}); {rebuild} again")
        raise SearchError(f"{product.files[file_index]} has no {key} asset; {rebuild}")
    path, meta = found
    with reading(path):
        return _local_copy(product, path, meta), meta


def _metadata_table(product: "Product", file_index: int, folder: Path) -> RandomAccessTable:
    """The data file's non-vector columns as memory-mapped Arrow IPC in the cache folder (written
    once, from those columns alone; the exact search's cache writes the same file)."""
    target = folder / f"{file_index:05d}.metadata.arrow"
    path = product.files[file_index]
    if not target.exists():
        with reading(path):
            handle = pq.ParquetFile(path, pre_buffer=False)
            vector_columns = product._vector_columns()
            names = [n for n in handle.schema_arrow.names if n not in vector_columns]
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp.arrow")
            try:
                with pa.ipc.new_file(str(partial), pa.schema([handle.schema_arrow.field(n) for n in names])) as out:
                    for batch in handle.iter_batches(batch_size=65536, columns=names):
                        out.write_batch(batch)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, target)
    with reading(target, advice=f"delete the search cache {folder} to rebuild it"):
        return RandomAccessTable(target)


class Shard(FileRows):
    """One data file's archive index, re-rank rows and metadata, all memory-mapped.

    Offers what the shared query and result code reads of a decoded-vector cache (``vectors``,
    ``metadata``, ``bbox``, ``times`` and block summaries); bbox and times are built on first use."""

    def __init__(self, product: "Product", index: int, *, metric: str, folder: Path) -> None:
        from ._index import asset_key

        faiss = require("faiss", extra="search")
        self.index, self.path, self.metric = index, product.files[index], metric
        rows = int(product.manifest.column("rows")[index].as_py())
        index_path, self.meta = _current_asset(product, index, asset_key(KIND, metric))
        rerank = self.meta.get("rerank", "float16")  # indexes built before stored re-rank rows were float16
        if rerank not in RERANK_KINDS:
            raise damaged(index_path, f"names re-rank rows {rerank!r}; this reader knows {', '.join(RERANK_KINDS)}: "
                          f"rebuild the {KIND} index")
        rerank_path, _ = _current_asset(product, index, asset_key(rerank, metric))
        self.quantization = product.quantization if rerank == "stored" else None
        self.index_bytes = index_path.stat().st_size
        self.merged: MergedCodes | None = None  # set once its codes are copied into memory (load_index)
        with reading(index_path):
            self.ivf = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)
        if self.ivf.ntotal != rows or self.ivf.d != product.dim:
            raise damaged(index_path, f"indexes {self.ivf.ntotal} vectors of dimension {self.ivf.d}; "
                          f"{self.path} holds {rows} of dimension {product.dim}; {KIND} indexes must be rebuilt")
        with reading(rerank_path):
            self.rerank_file = RandomAccessRows(rerank_path)
        self.vectors = self.rerank_file.array
        quant = product.quantization
        shape, dtype = ((rows, product.dim), np.float16) if rerank == "float16" else ((rows, quant.stored_width()), np.dtype(quant.dtype))
        if self.vectors.shape != shape or self.vectors.dtype != dtype:
            raise damaged(rerank_path, f"holds {self.vectors.dtype} rows of shape {self.vectors.shape}; the re-rank "
                          f"file of {self.path} is {np.dtype(dtype)} {shape}; rebuild the {KIND} index")
        self.metadata_file = _metadata_table(product, index, folder)

    @cached_property
    def bbox(self) -> np.ndarray:
        self.metadata_file.prefetch_columns(["bbox"])
        return bbox_bounds(self.metadata.column("bbox"))

    @cached_property
    def times(self) -> np.ndarray:
        names = _time_columns(self.metadata.schema)
        self.metadata_file.prefetch_columns(names)
        return np.stack([_as_us(self.metadata.column(names[0])), _as_us(self.metadata.column(names[-1]))], axis=1)

    @cached_property
    def block_bbox(self) -> np.ndarray:
        return _blocks(self.bbox, (True, True, False, False))

    @cached_property
    def block_times(self) -> np.ndarray:
        return _blocks(self.times, (True, False))

    def coarse_search(self, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest lists of each query (an HNSW quantiser looks wider than it probes)."""
        faiss = require("faiss", extra="search")
        quantizer = faiss.downcast_index(self.ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = max(64, 2 * nprobe)
        return quantizer.search(queries, nprobe)

    def candidates(self, queries: np.ndarray, coarse: tuple[np.ndarray, np.ndarray], *, count: int,
                   rows: np.ndarray | None, nprobe: int, qb: int, pool: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` best RaBitQ estimates per query, among ``rows`` when given: (estimates as
        similarities, larger better, -inf where none; row numbers, -1 where none), each (queries,
        count). A selection of no more than ``pool`` rows (default ``count``) is the candidate pool
        whole: all of its rows, estimated +inf."""
        faiss = require("faiss", extra="search")

        pool = count if pool is None else pool
        if rows is not None and len(rows) <= pool:
            return whole_selection(len(queries), rows, count)
        if self.merged is not None:
            raise SearchError(f"internal: the codes of {self.path} were merged with other shards'; search them there")
        params = faiss.IVFRaBitQSearchParameters()
        params.nprobe, params.qb = nprobe, qb
        if rows is not None:
            selected = np.zeros(self.rows, dtype=bool)
            selected[rows] = True
            bitmap = np.packbits(selected, bitorder="little")  # faiss reads bit (id & 7) of byte id >> 3
            params.sel = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bitmap))
        return _estimates(self.ivf, queries, coarse, min(count, self.rows), params)

    def rerank_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The re-rank file's codes at ``rows``: (the rows sorted, so the mapping is read in file
        order; their codes as that file holds them)."""
        rows = np.sort(rows)
        return rows, self.vectors[rows]


def _estimates(ivf, queries: np.ndarray, coarse: tuple[np.ndarray, np.ndarray], count: int,
               params) -> tuple[np.ndarray, np.ndarray]:
    """faiss's ``count`` best RaBitQ estimates a query over the preassigned lists ``coarse``
    (distances, list numbers): (similarities, larger better, -inf where none; ids, -1 where none)."""
    faiss = require("faiss", extra="search")

    distances, lists = coarse
    scores = np.empty((len(queries), count), dtype=np.float32)
    found = np.empty((len(queries), count), dtype=np.int64)
    # The C++ call: faiss's Python wrapper of search_preassigned takes no search parameters.
    ivf.search_preassigned_c(len(queries), faiss.swig_ptr(queries), count, faiss.swig_ptr(lists),
                             faiss.swig_ptr(distances), faiss.swig_ptr(scores), faiss.swig_ptr(found), False, params)
    if ivf.metric_type == faiss.METRIC_L2:
        scores = -scores  # distances: smaller is better
    scores[found < 0] = -np.inf
    return scores, found


def whole_selection(queries: int, rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A selection no larger than the pool is the candidate pool whole: all of its rows, each
    query, estimated +inf (as :meth:`Shard.candidates` returns them)."""
    found = np.full((queries, max(count, len(rows))), -1, dtype=np.int64)
    found[:, : len(rows)] = rows
    return np.where(found >= 0, np.inf, -np.inf).astype(np.float32), found


class MergedCodes:
    """The codes of several shards copied from their mapped files into one faiss index in memory
    (``Product.load_index``), its ids the shards' rows numbered on from shard to shard.

    Held in memory (anonymous pages, which the kernel does not evict where there is no swap), no
    query waits on a code page from disk. One call estimates a query over every shard: the probed
    lists' query terms are computed once, not once a shard, and no work is handed a shard at a time
    (on 20 shards of 50k rows, one faiss call took 0.4 ms where a call a shard took 1.2 ms and
    search's loop around them 3.9 ms). The estimates are the shards' own (the same codes against
    the same lists), so the pool and the hits are those of the shards searched apart."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        faiss = require("faiss", extra="search")

        self.shards = list(shards)
        self.starts = np.cumsum([0] + [s.rows for s in self.shards[:-1]]).astype(np.int64)
        first = self.shards[0].ivf
        nlist, code_size = int(first.nlist), int(first.code_size)
        sizes = np.asarray([[shard.ivf.invlists.list_size(i) for i in range(nlist)] for shard in self.shards],
                           dtype=np.int64).reshape(len(self.shards), nlist)
        # Every list allocated at its final size, then filled from the mapped files a shard at a
        # time: memory grows to the codes once (faiss's merge_from grows each list by doubling, up
        # to 1.6 times the codes).
        merged = faiss.ArrayInvertedLists(nlist, code_size)
        for i, total in enumerate(sizes.sum(axis=0).tolist()):
            if total:
                merged.resize(i, total)
        at = np.zeros(nlist, dtype=np.int64)
        for j, shard in enumerate(self.shards):
            lists, start = shard.ivf.invlists, int(self.starts[j])
            for i in np.flatnonzero(sizes[j]).tolist():
                n = int(sizes[j, i])
                ids = faiss.rev_swig_ptr(lists.get_ids(i), n) + start
                merged.update_entries(i, int(at[i]), n, faiss.swig_ptr(ids), lists.get_codes(i))
                at[i] += n
        self.ivf = first  # shard 0's index (its quantiser and RaBitQ terms), over the merged lists
        self.ivf.replace_invlists(merged, True)  # frees (unmaps) its mapped lists
        merged.this.disown()  # the index owns and frees them
        self.ivf.ntotal = int(sizes.sum())
        for shard in self.shards:  # the other shards' mapped indexes are freed with their last reference
            shard.merged, shard.ivf = self, self.ivf
        self.position = {shard.index: j for j, shard in enumerate(self.shards)}

    def candidates(self, queries: np.ndarray, coarse: tuple[np.ndarray, np.ndarray], *, count: int,
                   selection: dict[int, np.ndarray | None], nprobe: int, qb: int) -> list[tuple[Shard, np.ndarray, np.ndarray]]:
        """The ``count`` best estimates a query over the shards in ``selection`` (shard index ->
        its selected rows, None for all), split into (shard, estimates, rows) as
        :meth:`Shard.candidates` gives them; each shard's part holds every row of that shard that
        is among the ``count`` best of them all."""
        faiss = require("faiss", extra="search")

        bitmap = None
        selector = None
        if len(selection) < len(self.shards) or any(rows is not None for rows in selection.values()):
            selected = np.zeros(int(self.ivf.ntotal), dtype=bool)
            for index, rows in selection.items():
                j = self.position[index]
                start = int(self.starts[j])
                if rows is None:
                    selected[start : start + self.shards[j].rows] = True
                else:
                    selected[start + rows] = True
            bitmap = np.packbits(selected, bitorder="little")  # faiss reads bit (id & 7) of byte id >> 3
            selector = faiss.IDSelectorBitmap(int(self.ivf.ntotal), faiss.swig_ptr(bitmap))
        count = min(count, int(self.ivf.ntotal))

        def scan(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            params = faiss.IVFRaBitQSearchParameters()
            params.nprobe, params.qb = len(columns), qb
            if selector is not None:
                params.sel = selector
            part = (np.ascontiguousarray(coarse[0][:, columns]), np.ascontiguousarray(coarse[1][:, columns]))
            return _estimates(self.ivf, queries, part, count, params)

        # A batch: faiss spreads its queries over the cores. A query: its probed lists split into a
        # part a core, each on a thread with one faiss thread (faiss's own split of one query's
        # lists waited on its threads for milliseconds when the cores were busy, measured).
        workers = min(_cores(), coarse[1].shape[1]) if SPLIT_QUERY_LISTS else 1
        if len(queries) >= workers or workers == 1:
            scores, found = scan(np.arange(coarse[1].shape[1]))
        else:
            from ._index import faiss_threads

            def alone(columns):
                with faiss_threads(1):
                    return scan(columns)

            parts = list(_shard_pool().map(alone, np.array_split(np.arange(coarse[1].shape[1]), workers)))
            scores, found = np.concatenate([a for a, _ in parts], axis=1), np.concatenate([b for _, b in parts], axis=1)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :count]
            scores, found = np.take_along_axis(scores, best, axis=1), np.take_along_axis(found, best, axis=1)
        del bitmap  # faiss read it during the calls only
        owner = np.searchsorted(self.starts, found, side="right") - 1
        parts = []
        for index in selection:
            j = self.position[index]
            mine = (owner == j) & (found >= 0)
            parts.append((self.shards[j], np.where(mine, scores, -np.inf).astype(np.float32),
                          np.where(mine, found - self.starts[j], -1)))
        return parts


def rerank_pool(query: np.ndarray, parts: Sequence[tuple[Shard, np.ndarray, np.ndarray]], *, k: int,
                metric: str) -> Hits:
    """The exact top-k of one prepared query among its candidate pool, ``parts`` holding each shard's
    (shard, rows, re-rank codes) (rows that decode to NaN are nodata). The shards of one build share
    one re-rank form, so the whole pool is decoded and scored in one pass instead of a pass a shard.
    Every value is computed a row at a time (no matrix product, whose blocking depends on the rows
    beside a row), so a row's score does not depend on the other rows of the pool: any split of the
    shards over ranks gives the same scores and hits."""
    from ._quantize import dequantize
    from ._search import scores_of_products

    parts = [part for part in parts if len(part[1])]
    if not parts:
        return Hits.empty()
    forms = {(part[0].quantization, part[2].dtype, part[2].shape[1]) for part in parts}

    def decoded(codes: np.ndarray, quantization) -> np.ndarray:
        # The stored codes de-quantised exactly as exact search decodes them; float16 rows as they are.
        return np.asarray(codes, dtype=np.float32) if quantization is None else dequantize(codes, quantization)

    if len(forms) == 1:
        vectors = decoded(np.concatenate([part[2] for part in parts]), parts[0][0].quantization)
    else:  # not one build: each part in its own form
        vectors = np.concatenate([decoded(part[2], part[0].quantization) for part in parts])
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    scores = scores_of_products(np.einsum("ij,j->i", vectors, query)[:, None], norms, metric)[:, 0]
    files = np.concatenate([np.full(len(part[1]), part[0].index, dtype=np.int64) for part in parts])
    rows = np.concatenate([part[1] for part in parts]).astype(np.int64, copy=False)
    keep = np.isfinite(scores)
    return Hits(scores[keep], files[keep], rows[keep]).best(k)


def _selected_rows(shard: Shard, bbox, interval, where_map: dict[int, np.ndarray] | None) -> np.ndarray | None:
    """The rows of ``shard`` that the filters keep (None: all of them)."""
    rows = _rows_in(shard, bbox, interval)
    if where_map is not None:
        selected = where_map[shard.index]
        rows = selected if rows is None else np.intersect1d(rows, selected, assume_unique=True)
    return rows


_SHARD_POOL: "ThreadPoolExecutor | None" = None


@lru_cache(maxsize=1)
def _cores() -> int:
    """The threads a query may work on: the cores, or fewer where OpenMP is told so (as for MPI
    ranks sharing a node, ``OMP_NUM_THREADS=1``); counted once, ``os.cpu_count`` took 60 us a call
    here, twice a query."""
    faiss = require("faiss", extra="search")
    return max(1, min(os.cpu_count() or 1, int(faiss.omp_get_max_threads())))


def _shard_pool() -> "ThreadPoolExecutor":
    """The threads that work the shards of a query, one a core, made once a process: starting threads
    for every query cost more than a small query's work (measured)."""
    global _SHARD_POOL
    if _SHARD_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _SHARD_POOL = ThreadPoolExecutor(_cores(), thread_name_prefix="eoembed-shard")
    return _SHARD_POOL


class ArchiveSearcher:
    """Search state over the shards of a product (or of one MPI rank's files); the same interface as
    :class:`eoembed._search.Searcher`, with no decoded-vector cache."""

    def __init__(self, product: "Product", *, files: Sequence[int] | None = None, metric: str | None = None) -> None:
        self.product = product
        self.file_indexes = list(range(len(product.files))) if files is None else list(files)
        self._shards: dict[tuple[int, str], Shard] = {}
        self._folder: Path | None = None
        self._build_facts: dict[str, dict[str, Any]] = {}  # metric -> the index build's meta (nlist, bits)
        self.using(metric)

    def using(self, metric: str | None) -> "ArchiveSearcher":
        """This searcher with ``metric`` (default the product's) for the shards that :meth:`cache` opens."""
        from ._search import _PRODUCT_METRIC

        self.metric = metric or _PRODUCT_METRIC.get(self.product.embedding.get("metric", "cosine"), "cosine")
        return self

    def for_files(self, files: Sequence[int]) -> "ArchiveSearcher":
        """A searcher over ``files`` only (one MPI rank's) sharing this one's open shards, so repeated
        searches do not reopen them."""
        other = ArchiveSearcher(self.product, files=files, metric=self.metric)
        other._shards, other._build_facts = self._shards, self._build_facts
        return other

    def cache(self, index: int, metric: str | None = None) -> Shard:
        metric = metric or self.metric
        if (index, metric) not in self._shards:
            if self._folder is None:
                self._folder = cache_dir(self.product)
            self._shards[(index, metric)] = Shard(self.product, index, metric=metric, folder=self._folder)
        return self._shards[(index, metric)]

    def load_codes(self, metric: str | None = None) -> dict[str, Any]:
        """Read this searcher's shards' codes into memory (see :meth:`eoembed.Product.load_index`)."""
        started = time.perf_counter()
        shards = [self.cache(i, metric) for i in self.file_indexes]
        alone = [s for s in shards if s.merged is None]
        if alone:
            MergedCodes(alone)
        return {"shards": len(shards), "bytes": int(sum(s.index_bytes for s in shards)),
                "seconds": time.perf_counter() - started}

    def search(self, queries: np.ndarray, *, metric: str, k: int, mode: str = KIND, candidates: int | None = None,
               bbox=None, interval=None, where_map: dict[int, np.ndarray] | None = None, nprobe: int = 16,
               qb: int = 8, exchange: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Hits]:
        """Top-k per prepared query over this searcher's shards (scores, file index, row).

        ``exchange`` (MPI) takes this searcher's best ``candidates`` estimates a query, (queries,
        candidates), and returns every rank's side by side, so that all ranks cut one pool."""
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise SearchError(f"nprobe must be a positive integer, got {nprobe!r}")
        overlapping = set(self.product.files_overlapping(bbox, interval))
        indexes = [i for i in self.file_indexes if i in overlapping and (where_map is None or i in where_map)]
        count = candidates or self._default_candidates(k, metric, nprobe)
        if not indexes:
            if exchange is not None:  # the other ranks still cut their pool (twice) against this one's
                for _ in range(2):
                    exchange(np.full((len(queries), count), -np.inf, dtype=np.float32))
            return [Hits.empty() for _ in queries]
        shards = [self.cache(i, metric) for i in indexes]
        mixed = sorted({s.meta.get("quantizer") for s in shards})
        if len(mixed) > 1:
            raise SearchError(f"the {KIND} indexes of {self.product.path} were trained separately (quantisers {mixed}); "
                              f"rebuild them together with `eoembed index build {self.product.path} --kind {KIND}`")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(int(nprobe), shards[0].ivf.nlist)
        distances, lists = shards[0].coarse_search(queries, nprobe)  # shared by every shard
        coarse = (np.ascontiguousarray(distances, dtype=np.float32), np.ascontiguousarray(lists, dtype=np.int64))

        # Two passes that cut the pool exactly where one pass of ``count`` estimates a shard would:
        # each shard first gives its best ``first`` (its share of the pool, twice over), which keeps
        # faiss's result heaps small (their upkeep, not the scan, is most of a shard's time when
        # ``count`` is large); a shard whose ``first``-th estimate still reaches the pool's cut may
        # hold more rows above it and gives its best ``count`` for those queries.
        first = self._first_pass(count)

        def estimate(shard: Shard) -> tuple[Shard, np.ndarray | None, np.ndarray, np.ndarray] | None:
            rows = _selected_rows(shard, bbox, interval, where_map)
            if rows is not None and len(rows) == 0:
                return None
            return (shard, rows, *shard.candidates(queries, coarse, count=first, rows=rows, nprobe=nprobe, qb=qb,
                                                   pool=count))

        def pool_cut(entries: list) -> np.ndarray:
            local = np.full((len(queries), count), -np.inf, dtype=np.float32)
            if entries:
                local = best_estimates(np.concatenate([e[2] for e in entries], axis=1), count)
            return best_estimates(exchange(local) if exchange is not None else local, count)[:, -1]

        # Shards whose codes were merged in memory are estimated together, one call a group.
        groups: dict[int, tuple[MergedCodes, dict[int, np.ndarray | None]]] = {}
        entries, complete = [], set()
        for shard in (s for s in shards if s.merged is not None):
            rows = _selected_rows(shard, bbox, interval, where_map)
            if rows is not None and len(rows) <= count:  # the whole selection is the candidate pool
                if len(rows):
                    complete.add(len(entries))
                    entries.append((shard, rows, *whole_selection(len(queries), rows, count)))
                continue
            groups.setdefault(id(shard.merged), (shard.merged, {}))[1][shard.index] = rows
        for merged, selection in groups.values():
            for shard, estimates, found in merged.candidates(queries, coarse, count=count, selection=selection,
                                                             nprobe=nprobe, qb=qb):
                complete.add(len(entries))
                entries.append((shard, selection[shard.index], estimates, found))
        plain = [s for s in shards if s.merged is None]
        entries += [e for e in (self._map(estimate, plain, len(queries)) if plain else []) if e is not None]
        cut = pool_cut(entries)  # at or below the exact cut: the lists are a subset of one pass's
        again = []
        for position, (shard, rows, estimates, found) in enumerate(entries):
            width = estimates.shape[1]
            if position in complete or width >= min(count, shard.rows) or (rows is not None and len(rows) <= count):
                continue  # every row that could be in the pool is in the list
            short = np.flatnonzero((found[:, -1] >= 0) & (estimates[:, -1] >= cut))
            if len(short):
                again.append((position, short))

        def widen(job: tuple[int, np.ndarray]) -> tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray]]:
            position, short = job
            shard, rows = entries[position][:2]
            part = (np.ascontiguousarray(coarse[0][short]), np.ascontiguousarray(coarse[1][short]))
            return position, short, shard.candidates(queries[short], part, count=count, rows=rows, nprobe=nprobe, qb=qb)

        for position, short, (wide, wide_found) in self._map(widen, again, len(queries)) if again else []:
            shard, rows, estimates, found = entries[position]
            grown = np.full((len(queries), wide.shape[1]), -np.inf, dtype=np.float32)
            grown_found = np.full((len(queries), wide.shape[1]), -1, dtype=np.int64)
            grown[:, : estimates.shape[1]], grown_found[:, : found.shape[1]] = estimates, found
            grown[short], grown_found[short] = wide, wide_found
            entries[position] = (shard, rows, grown, grown_found)
        if again or exchange is not None:  # every rank cuts twice, whether its own lists grew or not
            cut = pool_cut(entries)

        # Each shard's rows above the cut, a list a query; their pages are asked for all at once,
        # every shard's, before any is read, so the disk reads them together.
        picks = [(shard, [rows[(est >= c) & (rows >= 0)] for est, rows, c in zip(estimates, found, cut)])
                 for shard, _, estimates, found in entries]
        if PREFETCH_RERANK_ROWS:
            prefetch_array_rows([(shard.rerank_file, np.concatenate(wanted)) for shard, wanted in picks])

        def gather(entry: tuple[Shard, list[np.ndarray]]) -> tuple[Shard, list[tuple[np.ndarray, np.ndarray]]]:
            shard, wanted = entry  # threads: reads may still wait on disk
            return shard, [shard.rerank_rows(rows) for rows in wanted]

        pools = self._map(gather, picks, len(queries)) if picks else []
        return [rerank_pool(queries[q], [(shard, *picked[q]) for shard, picked in pools], k=k, metric=metric)
                for q in range(len(queries))]

    def _first_pass(self, count: int) -> int:
        """Estimates a shard gives first: twice its even share of a pool of ``count`` over the
        product's data files (not this rank's: every split of the files asks the same)."""
        return int(min(count, max(FIRST_PASS_MIN, np.ceil(FIRST_PASS_SHARES * count / len(self.product.files)))))

    def _default_candidates(self, k: int, metric: str, nprobe: int) -> int:
        """The pool of a query from facts of the whole product (its rows, and the lists and bits of
        its one build, read from the first data file's index asset), so that every rank, whatever
        its share of the shards, cuts a pool of the same size."""
        from ._index import _index_asset, asset_key

        if metric not in self._build_facts:  # read once: at a URL each read is a request
            key = asset_key(KIND, metric)
            self._build_facts[metric] = next((found[1] for i in range(len(self.product.files))
                                              if (found := _index_asset(self.product, i, key)) is not None), {})
        meta = self._build_facts[metric]
        nlist = int(meta.get("nlist", 0))
        probed = self.product.num_rows * min(nprobe, nlist) / nlist if nlist else 0
        return default_candidates(k, int(meta.get("bits", 1)), probed_rows=probed, rows=self.product.num_rows)

    @staticmethod
    def _map(work, shards: list, queries: int) -> list:
        """``work`` over the shards: a few queries split the shards into one run a core, each run
        worked in turn on a thread with one faiss thread (faiss parallelises over queries, so one
        query would use one core); a batch takes the shards in turn, faiss spreading its queries
        over the cores. A run a thread, not a shard a thread: handing each of 20 shards to a thread
        cost more than the shards' own work for one query (measured)."""
        from ._index import faiss_threads

        workers = min(len(shards), _cores())
        if queries > workers or workers == 1:
            return [work(shard) for shard in shards]

        def run(part):
            with faiss_threads(1):  # OpenMP's thread count is per calling thread
                return [work(shard) for shard in part]

        bounds = np.linspace(0, len(shards), workers + 1).round().astype(int).tolist()
        parts = [shards[a:b] for a, b in zip(bounds, bounds[1:])]
        return [result for part in _shard_pool().map(run, parts) for result in part]
