"""Search indexes as product assets: int8 codes, 1-bit codes, faiss HNSW and IVF.

One index file per data file, under ``PRODUCT/index/``, declared as an asset of that data file's
STAC item (``index-int8-cosine``, ``index-binary``, ``index-hnsw-l2``...) with an ``eoembed:index``
object saying what it is and which data file (by SHA-256) it was built from. An index whose data
file changed is ignored by search. Building never touches data files, the manifest or the
collection, so the product stays valid; indexes are an optional acceleration.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ._damage import damaged, read_json, reading
from ._errors import SearchError
from ._optional import require
from ._paths import inside

if TYPE_CHECKING:
    from ._read import Product

INDEX_DIR = "index"
KINDS = ("int8", "binary", "hnsw", "ivf", "ivf-rabitq")  # ivf-rabitq: sdk/_archive.py
LISTED_KINDS = KINDS + ("stored", "float16")  # the re-rank rows built with ivf-rabitq
_EXTENSIONS = {"int8": "npy", "binary": "npy", "hnsw": "faiss", "ivf": "faiss"}
_MEDIA_TYPES = {"npy": "application/x-npy", "faiss": "application/octet-stream"}


def asset_key(kind: str, metric: str) -> str:
    """Asset name of an index: 1-bit codes serve every metric (they only pick candidates), and so do
    the stored codes (the data file's own values)."""
    return f"index-{kind}" if kind in ("binary", "stored") else f"index-{kind}-{metric}"


def int8_codes(vectors: np.ndarray, norms: np.ndarray, metric: str) -> tuple[np.ndarray, float]:
    """Symmetric per-tensor int8 codes (unit vectors first for cosine) and their scale."""
    codes = np.empty(vectors.shape, dtype=np.int8)
    step = 1 << 16

    def block(start: int) -> np.ndarray:  # blocks: the float32 source may be memory-mapped
        out = np.asarray(vectors[start : start + step], dtype=np.float32)
        if metric == "cosine":
            out = out / np.maximum(norms[start : start + step], 1e-30)[:, None]
        # Nodata rows (NaN, the sqrt method's -128) get code 0; search never returns them.
        return np.nan_to_num(out, nan=0.0, copy=metric != "cosine")

    scale = max((float(np.abs(block(start)).max(initial=0.0)) for start in range(0, len(vectors), step)), default=0.0)
    scale = scale / 127 if scale > 0 else 1.0
    for start in range(0, len(vectors), step):
        codes[start : start + step] = np.clip(np.rint(block(start) / scale), -127, 127)
    return codes, scale


def binary_flat(bits: np.ndarray):
    """A faiss exact Hamming index over packed sign bits (n, D/8), selecting by counting."""
    faiss = require("faiss", extra="search")

    index = faiss.IndexBinaryFlat(bits.shape[1] * 8)
    # Counting selection: one counter per Hamming distance (D + 1 of them) instead of a heap of
    # `candidates`; ties at the cut keep the lowest ids, so the candidates are deterministic.
    index.use_heap = False
    index.add(np.ascontiguousarray(bits))
    return index


#: The default candidate count of a 1-bit scan is calibrated once on rows of the data used as
#: queries: for their exact top-k (k up to NEIGHBOURS) it keeps enough candidates that RECALL of
#: the neighbours make it through the scan, times SAFETY for queries unlike the rows.
CALIBRATION_QUERIES = 128
CALIBRATION_NEIGHBOURS = 100
CALIBRATION_RECALL = 0.999
CALIBRATION_SAFETY = 1.5


def binary_codes(index) -> np.ndarray:
    """The packed codes (n, D/8) held by a faiss binary flat index (a copy)."""
    faiss = require("faiss", extra="search")

    return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)


def hamming_ranks(codes: np.ndarray, query_bits: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """For each query (row of ``query_bits``) and each of its neighbours (row ids of ``codes``), the
    candidates a Hamming scan must keep to include that neighbour: the rows at its distance or closer."""
    faiss = require("faiss", extra="search")

    codes = np.ascontiguousarray(codes)
    distances = np.empty(len(codes), dtype=np.int32)
    out = np.empty(neighbours.shape, dtype=np.int64)
    for i, bits in enumerate(np.ascontiguousarray(query_bits)):
        faiss.hammings(faiss.swig_ptr(bits), faiss.swig_ptr(codes), 1, len(codes), codes.shape[1], faiss.swig_ptr(distances))
        at_or_below = np.cumsum(np.bincount(distances, minlength=8 * codes.shape[1] + 1))
        out[i] = at_or_below[distances[neighbours[i]]]  # ties counted against the neighbour
    return out


def calibrated_candidates(ranks: np.ndarray, *, k: int, rows: int) -> int | None:
    """Candidates for a top-``k`` 1-bit scan from :func:`hamming_ranks` of calibration queries; None
    when the calibration does not reach ``k`` neighbours."""
    if ranks.size == 0 or k > ranks.shape[1]:
        return None
    needed = float(np.quantile(ranks[:, :k], CALIBRATION_RECALL, method="higher"))
    return int(min(rows, max(100, 10 * k, np.ceil(CALIBRATION_SAFETY * needed))))


@contextmanager
def faiss_threads(queries: int) -> Iterator[None]:
    """faiss's OpenMP threads capped at one per query for the block, then restored: faiss's flat and
    index scans split work by query, so for one query extra threads only add fork/join waits.
    OpenMP keeps this setting per calling thread, so concurrent searches do not see each other's."""
    faiss = require("faiss", extra="search")

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, min(queries, before)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _faiss_metric(metric: str) -> int:
    faiss = require("faiss", extra="search")

    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _unit_if_cosine(vectors: np.ndarray, norms: np.ndarray, metric: str) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32)
    return out / np.maximum(norms, 1e-30)[:, None] if metric == "cosine" else np.ascontiguousarray(out)


def build_hnsw(vectors: np.ndarray, norms: np.ndarray, metric: str, *, m: int = 32, ef_construction: int = 80):
    faiss = require("faiss", extra="search")

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, _faiss_metric(metric))
    index.hnsw.efConstruction = ef_construction
    index.add(_unit_if_cosine(vectors, norms, metric))
    return index


def build_ivf(vectors: np.ndarray, norms: np.ndarray, metric: str, *, nlist: int | None = None, seed: int = 0):
    faiss = require("faiss", extra="search")

    data = _unit_if_cosine(vectors, norms, metric)
    n, dim = data.shape
    nlist = nlist or int(max(1, min(4 * np.sqrt(n), n // 39)))
    quantizer = faiss.IndexFlatIP(dim) if metric != "l2" else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, _faiss_metric(metric))
    rng = np.random.default_rng(seed)
    sample = data[np.sort(rng.choice(n, size=min(n, 256 * nlist), replace=False))]
    index.cp.seed = seed
    index.train(sample)
    index.add(data)
    return index


# -- assets -------------------------------------------------------------------------------------


def _items_by_file(product: "Product") -> dict[str, Path]:
    """Data file path (relative) -> its STAC item file; every href must stay inside the product."""
    out = {}
    root = product.path
    links = product.collection.get("links", [])
    if not isinstance(links, list):
        raise damaged(root / "collection.json", f"has links of type {type(links).__name__}, not a list", column="links")
    for number, link in enumerate(links):
        if not isinstance(link, dict) or link.get("rel") != "item":
            continue
        item_path = inside(root, link.get("href"), where=f"{root / 'collection.json'} links[{number}]")
        item = read_json(item_path)
        asset = item.get("assets", {}).get("embeddings", {}) if isinstance(item.get("assets"), dict) else {}
        href = asset.get("href") if isinstance(asset, dict) else None
        if href:
            base = item_path.parent.relative_to(root).as_posix()
            data = inside(root, href, base=base, where=f"{item_path} assets.embeddings")
            out[data.relative_to(root).as_posix()] = item_path
    return out


def _data_sha256(product: "Product", index: int) -> str:
    return product.manifest.column("sha256")[index].as_py()


def _index_asset(product: "Product", file_index: int, key: str) -> tuple[Path, dict[str, Any]] | None:
    rel = product.manifest.column("path")[file_index].as_py()
    item_path = product._item_paths.get(rel)
    if item_path is None:
        return None
    asset = read_json(item_path).get("assets", {}).get(key)
    if not asset or asset.get("eoembed:index", {}).get("data_sha256") != _data_sha256(product, file_index):
        return None  # absent, or built from an earlier version of the data file
    base = item_path.parent.relative_to(product.path).as_posix()
    return inside(product.path, asset.get("href"), base=base, where=f"{item_path} assets.{key}"), asset["eoembed:index"]


def _local_copy(product: "Product", path, meta: dict[str, Any]) -> Path:
    """``path`` itself when local; an index asset of a product at a URL is fetched once into the
    product's cache in the user's cache folder (keyed by the manifest), never written to the product."""
    if isinstance(path, Path):
        return path
    from ._search import cache_dir

    target = cache_dir(product) / "indexes" / f"{meta.get('data_sha256', '')[:16]}-{path.name}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        path.fs.get_file(path.path, str(partial))
        os.replace(partial, target)
    return target


def load_index(product: "Product", file_index: int, *, kind: str, metric: str):
    """The index of one data file when its item declares a current one, else None."""
    found = _index_asset(product, file_index, asset_key(kind, metric))
    if found is None:
        return None
    path, meta = found
    rows = int(product.manifest.column("rows")[file_index].as_py())
    with reading(path):
        local = _local_copy(product, path, meta)
        if kind in ("int8", "binary"):
            codes = np.load(local, mmap_mode="r" if kind == "int8" else None, allow_pickle=False)
            width = product.dim if kind == "int8" else product.dim // 8
            if codes.shape != (rows, width) or codes.dtype != (np.int8 if kind == "int8" else np.uint8):
                raise damaged(path, f"holds {codes.dtype} codes of shape {codes.shape}; the {kind} index of "
                              f"{product.files[file_index]} has shape ({rows}, {width})")
            return (codes, float(meta["scale"])) if kind == "int8" else codes
        faiss = require("faiss", extra="search")

        index = faiss.read_index(str(local))
    if index.ntotal != rows or index.d != product.dim:
        raise damaged(path, f"indexes {index.ntotal} vectors of dimension {index.d}; "
                      f"{product.files[file_index]} holds {rows} of dimension {product.dim}")
    return index


def _write_index(path: Path, kind: str, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    if kind in ("int8", "binary"):
        with open(partial, "wb") as handle:
            np.save(handle, value)
    else:
        faiss = require("faiss", extra="search")

        faiss.write_index(value, str(partial))
    os.replace(partial, path)


def _declare(item_path: Path, key: str, asset: dict[str, Any]) -> None:
    item = json.loads(item_path.read_text(encoding="utf-8"))
    item.setdefault("assets", {})[key] = asset
    partial = item_path.with_name(f".{item_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    partial.write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, item_path)


def build_index(product: "Product", *, kind: str, metric: str | None = None, recall_queries: int = 100,
                k: int = 10, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Build ``kind`` for every data file, declare it in the items, and measure recall@k.

    Recall is measured on ``recall_queries`` rows of the product used as queries, against exact
    search; it is written into each asset's ``eoembed:index`` and returned with the build time.
    """
    from ._search import Searcher, check_options, search
    from ._write import sha256_file

    if kind not in KINDS:
        raise SearchError(f"index kind {kind!r} is not one of {list(KINDS)}")
    if kind == "ivf-rabitq":  # streamed over the stored rows: no decoded cache
        from ._archive import build_archive_index

        return build_archive_index(product, metric=metric, recall_queries=recall_queries, k=k, seed=seed, **options)
    metric = check_options(product, k=k, metric=metric, mode="exact")
    searcher = Searcher(product)
    searcher.warm()
    item_paths = product._item_paths
    built = []
    started = time.perf_counter()
    for file_index, rel in enumerate(product.manifest.column("path").to_pylist()):
        cache = searcher.cache(file_index)
        stem = Path(rel).stem
        ext = _EXTENSIONS[kind]
        name = f"{stem}.{kind}.{ext}" if kind == "binary" else f"{stem}.{kind}-{metric}.{ext}"
        target = product.path / INDEX_DIR / name
        meta: dict[str, Any] = {"kind": kind, "metric": metric, "data_sha256": _data_sha256(product, file_index),
                                "rows": cache.rows}
        if kind == "int8":
            codes, scale = int8_codes(cache.vectors, cache.norms, metric)
            meta["scale"] = scale
            _write_index(target, kind, codes)
        elif kind == "binary":
            _write_index(target, kind, np.packbits(cache.vectors > 0, axis=1))
        elif kind == "hnsw":
            meta["m"] = options.get("m", 32)
            _write_index(target, kind, build_hnsw(cache.vectors, cache.norms, metric, m=meta["m"]))
        else:
            index = build_ivf(cache.vectors, cache.norms, metric, nlist=options.get("nlist"), seed=seed)
            meta["nlist"] = int(index.nlist)
            _write_index(target, kind, index)
        built.append((item_paths[rel], target, meta))
    seconds = time.perf_counter() - started
    # Declare first (search reads the assets), then measure recall and record it.
    for item_path, target, meta in built:
        _declare(item_path, asset_key(kind, metric), _asset(item_path, target, meta))
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(product.num_rows, size=min(recall_queries, product.num_rows), replace=False))
    queries = _rows_as_vectors(searcher, picks)
    fresh = Searcher(product)
    exact = search(product, queries, k=k, metric=metric, mode="exact", searcher=fresh)
    approx = search(product, queries, k=k, metric=metric, mode=kind, searcher=fresh)
    recall = recall_at_k(exact, approx)
    for item_path, target, meta in built:
        meta["recall_at_10" if k == 10 else f"recall_at_{k}"] = recall
        meta["recall_queries"] = len(picks)
        _declare(item_path, asset_key(kind, metric), _asset(item_path, target, meta))
    return {"kind": kind, "metric": metric, "files": len(built), "build_seconds": seconds, f"recall_at_{k}": recall,
            "recall_queries": len(picks), "bytes": int(sum(t.stat().st_size for _, t, _ in built))}


def _asset(item_path: Path, target: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from ._write import sha256_file

    ext = target.suffix.lstrip(".")
    return {
        "href": os.path.relpath(target, item_path.parent).replace(os.sep, "/"),
        "type": _MEDIA_TYPES[ext],
        "roles": ["index"],
        "title": f"{meta['kind']} search index ({meta['metric']})",
        "file:size": target.stat().st_size,
        "file:checksum": "1220" + sha256_file(target),
        "eoembed:index": meta,
    }


def _rows_as_vectors(searcher, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), searcher.product.dim), dtype=np.float32)
    starts = np.cumsum([0] + [searcher.cache(i).rows for i in searcher.file_indexes])
    for j, row in enumerate(rows):
        f = int(np.searchsorted(starts, row, side="right") - 1)
        out[j] = searcher.cache(f).vectors[row - starts[f]]
    return out


def recall_at_k(exact, approx) -> float:
    """Mean share of each query's exact top-k chip ids that the approximate search also returned."""
    truth: dict[int, set] = {}
    for q, c in zip(exact.column("query").to_pylist(), exact.column("chip_id").to_pylist()):
        truth.setdefault(q, set()).add(c)
    got: dict[int, set] = {}
    for q, c in zip(approx.column("query").to_pylist(), approx.column("chip_id").to_pylist()):
        got.setdefault(q, set()).add(c)
    return float(np.mean([len(truth[q] & got.get(q, set())) / len(truth[q]) for q in truth]))


def list_indexes(product: "Product", kinds: Sequence[str] = LISTED_KINDS) -> list[dict[str, Any]]:
    """The current index assets of the product (one entry per data file and asset)."""
    out = []
    for rel, item_path in product._item_paths.items():
        for key, asset in read_json(item_path).get("assets", {}).items():
            if key.startswith("index-") and asset.get("eoembed:index", {}).get("kind") in kinds:
                out.append({"file": rel, "asset": key, **asset["eoembed:index"]})
    return out
