"""Similarity search against the memory-bandwidth floor: one table of medians from one run.

    .venv/bin/python benchmarks/search_1m.py [--rows 1000000] [--dim 128] [--clusters 1000]
        [--queries 20] [--batch 100] [--repeats 5] [--out DIR] [--skip-hnsw] [--scans-only]

A product of clustered unit vectors (``--clusters`` Gaussian clusters) is written with random lon/lat
boxes over a region, then timed (medians over ``--queries`` query vectors taken from the product):

* floor           one numpy pass (sum) over the same float32 bytes already in memory;
* exact           ``Product.search(v, k=10)`` on the warm decoded-vector cache (goal <= 1.5x floor);
* int8 + rerank   ``mode="int8"`` (goal >= 2x faster than exact, recall@10 >= 0.99);
* 1-bit + rerank  ``mode="binary"`` with its default (calibrated) candidates (goal >= 8x faster than
                  exact, recall@10 >= 0.99);
  these three are timed side by side, round after round (so load on a shared machine hits them
  alike), one query at a time and as a batch of ``--batch`` queries, with recall@10 on the batch;
* bbox 1%         exact search restricted to a box holding about 1% of rows (goal >= 10x faster);
* DuckDB SQL      top-10 by array_cosine_similarity over the product's Parquet (goal <= 0.5 s);
* cold            first query on a freshly opened product: once building the cache, once with it on disk;
* index builds    ``eoembed index build`` times for int8, binary, ivf and hnsw, with recall@10.

Ratios come from this one run only. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np  # BLAS threads are fixed at its first use, after --threads is read

REGION = (-10.0, 35.0, 30.0, 60.0)
BOX_DEG = 0.01
MODEL = {
    "name": "benchmark-clusters", "version": "1", "framework": "numpy", "weights_sha256": None,
    "architecture": "Gaussian clusters", "pooling": "none",
    "input": {"bands": [{"name": "B1", "source": "synthetic"}], "chip_size_px": 100, "stride_px": 100,
              "gsd_m": 10.0, "normalization": {"method": "none"}},
}


def write_product(path: Path, *, rows: int, dim: int, clusters: int, seed: int = 0, batch: int = 100_000,
                  **writer_options) -> None:
    import eoembed

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    model = dict(MODEL, output={"dim": dim})
    with eoembed.ProductWriter(path, model=model, normalize=True, **writer_options) as writer:
        for first in range(0, rows, batch):
            n = min(batch, rows - first)
            labels = rng.integers(0, clusters, n)
            vectors = centres[labels] + 0.25 / np.sqrt(dim) * rng.normal(size=(n, dim)).astype(np.float32)
            lon = rng.uniform(REGION[0], REGION[2] - BOX_DEG, n)
            lat = rng.uniform(REGION[1], REGION[3] - BOX_DEG, n)
            writer.write({
                "embedding": vectors, "bounds": np.stack([lon, lat, lon + BOX_DEG, lat + BOX_DEG], axis=1),
                "datetime": np.datetime64("2021-01-01T00:00:00", "us") + rng.integers(0, 365 * 86400, n).astype("timedelta64[s]"),
                "source_id": "synthetic", "grid_cell": "none",
                "chip_id": [f"chip-{i:09d}" for i in range(first, first + n)],
            })


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def batch_queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of the product moved a little off their row: near neighbours exist, no exact match."""
    picks = vectors[rng.choice(len(vectors), count, replace=False)]
    return (picks + 0.05 / np.sqrt(vectors.shape[1]) * rng.normal(size=picks.shape)).astype(np.float32)


SCAN_MODES = ("exact", "int8", "binary")


def compare_scans(product, queries: np.ndarray, batch: np.ndarray, *, repeats: int) -> dict[str, dict[str, float]]:
    """Per mode: median ms a query one at a time and in a batch, recall@10 on the batch, and the
    one-time cost of the first search (codes, calibration). Modes take turns in every round."""
    from eoembed._index import recall_at_k

    out: dict[str, dict[str, float]] = {}
    for mode in SCAN_MODES:
        start = time.perf_counter()
        product.search(queries[0], k=10, mode=mode)
        out[mode] = {"first_ms": (time.perf_counter() - start) * 1e3}
    single: dict[str, list[float]] = {mode: [] for mode in SCAN_MODES}
    batched: dict[str, list[float]] = {mode: [] for mode in SCAN_MODES}
    for _ in range(repeats):
        for mode in SCAN_MODES:
            start = time.perf_counter()
            for q in queries:
                product.search(q, k=10, mode=mode)
            single[mode].append((time.perf_counter() - start) / len(queries))
            start = time.perf_counter()
            product.search(batch, k=10, mode=mode)
            batched[mode].append((time.perf_counter() - start) / len(batch))
    exact = product.search(batch, k=10)
    for mode in SCAN_MODES:
        out[mode].update(single_ms=statistics.median(single[mode]) * 1e3, batch_ms=statistics.median(batched[mode]) * 1e3,
                         recall_at_10=recall_at_k(exact, product.search(batch, k=10, mode=mode)))
    out["binary"]["candidates"] = product._searcher.binary_candidates("cosine", 10)
    return out


def print_scans(scans, *, rows: int, dim: int, clusters: int, queries: int, repeats: int) -> None:
    exact = scans["exact"]
    print(f"\n{rows} rows, {dim}-d, {clusters} clusters; medians of {repeats} rounds; single: {queries} queries one "
          f"at a time; batch: one call")
    print(f"{'mode':8s} {'single ms':>10s} {'x exact':>8s} {'batch ms/q':>11s} {'x exact':>8s} {'recall@10':>10s} "
          f"{'first call ms':>14s}")
    for mode, r in scans.items():
        print(f"{mode:8s} {r['single_ms']:10.2f} {exact['single_ms'] / r['single_ms']:8.2f} {r['batch_ms']:11.2f} "
              f"{exact['batch_ms'] / r['batch_ms']:8.2f} {r['recall_at_10']:10.4f} {r['first_ms']:14.0f}")
    print(f"binary default candidates (calibrated on the data): {scans['binary']['candidates']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100, help="queries in the batch timed for throughput")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scans-only", action="store_true", help="only the exact / int8 / 1-bit table")
    parser.add_argument("--out", help="product folder (kept); default a temporary folder")
    parser.add_argument("--skip-hnsw", action="store_true", help="skip the HNSW build (minutes at 1M rows)")
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads (default: the libraries' own choice)")
    args = parser.parse_args()
    if args.threads:
        import os

        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)

    import eoembed
    from eoembed._search import Searcher

    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="search-bench-")) / "product"
    if not (folder / "collection.json").exists():
        start = time.perf_counter()
        write_product(folder, rows=args.rows, dim=args.dim, clusters=args.clusters)
        print(f"wrote {args.rows} rows in {time.perf_counter() - start:.1f} s to {folder}")
    cache = folder.parent / f".{folder.name}.eoembed-cache"
    shutil.rmtree(cache, ignore_errors=True)

    product = eoembed.open(folder)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    product.search(np.ones(args.dim, np.float32), k=10)
    cold_build = time.perf_counter() - start
    product = eoembed.open(folder)  # cache on disk, nothing mapped or loaded in this process
    start = time.perf_counter()
    product.search(np.ones(args.dim, np.float32), k=10)
    cold_cached = time.perf_counter() - start

    vectors_in_memory = product.to_numpy()
    queries = vectors_in_memory[rng.choice(len(vectors_in_memory), args.queries, replace=False)]
    queries = (queries + 0.05 / np.sqrt(args.dim) * rng.normal(size=queries.shape)).astype(np.float32)

    def each(**options):
        return lambda: [product.search(q, k=10, **options) for q in queries]

    def per_query(fn) -> float:
        return median_ms(fn, args.repeats) / args.queries

    floor = median_ms(lambda: vectors_in_memory.sum(), max(args.repeats, 5))
    searcher: Searcher = product._searcher
    searcher.warm()
    prepared = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    kernel = per_query(lambda: [searcher.search(q[None], metric="cosine", k=10, mode="exact", candidates=100) for q in prepared])
    scans = compare_scans(product, queries, batch_queries(vectors_in_memory, args.batch, rng), repeats=args.repeats)
    print_scans(scans, rows=args.rows, dim=args.dim, clusters=args.clusters, queries=args.queries, repeats=args.repeats)
    if args.scans_only:
        return
    exact, int8, binary = (scans[mode]["single_ms"] for mode in ("exact", "int8", "binary"))
    recall_int8, recall_binary = scans["int8"]["recall_at_10"], scans["binary"]["recall_at_10"]

    # A box holding about 1% of the rows: 10% of the region's width and height.
    w, h = REGION[2] - REGION[0], REGION[3] - REGION[1]
    box = (REGION[0] + 0.45 * w, REGION[1] + 0.45 * h, REGION[0] + 0.55 * w, REGION[1] + 0.55 * h)
    in_box = product.sql("SELECT count(*) AS n FROM embeddings WHERE bbox.xmax >= ? AND bbox.xmin <= ? AND bbox.ymax >= ? "
                         "AND bbox.ymin <= ?", [box[0], box[2], box[1], box[3]]).column("n")[0].as_py()
    bbox_ms = per_query(each(bbox=box))

    sql = ("SELECT chip_id, array_cosine_similarity(embedding, ?::FLOAT[%d]) AS s FROM embeddings ORDER BY s DESC LIMIT 10" % args.dim)
    product.sql(sql, [queries[0].tolist()])
    sql_ms = median_ms(lambda: product.sql(sql, [queries[1].tolist()]), max(1, args.repeats // 2))
    sql_ids = product.sql(sql, [queries[0].tolist()]).column("chip_id").to_pylist()
    sql_agrees = set(sql_ids) == set(product.search(queries[0], k=10).column("chip_id").to_pylist())

    builds = {}
    for kind in ("int8", "binary", "ivf") + (() if args.skip_hnsw else ("hnsw",)):
        report = product.build_index(kind=kind, recall_queries=50)
        builds[kind] = report
    ivf = per_query(each(mode="ivf"))
    hnsw = None if args.skip_hnsw else per_query(each(mode="hnsw"))

    rows = [
        ("floor: numpy sum over float32 in memory", floor, "", ""),
        ("exact kernel (BLAS + top-k, no table)", kernel, f"{kernel / floor:.2f}x floor", ""),
        ("exact top-10 (search, table)", exact, f"{exact / floor:.2f}x floor", "met" if exact <= 1.5 * floor else "NOT met (<= 1.5x floor)"),
        ("int8 scan + re-rank", int8, f"{exact / int8:.2f}x faster, recall {recall_int8:.3f}",
         "met" if exact / int8 >= 2 and recall_int8 >= 0.99 else "NOT met (>= 2x, recall >= 0.99)"),
        ("1-bit scan + re-rank", binary, f"{exact / binary:.2f}x faster, recall {recall_binary:.3f}",
         "met" if exact / binary >= 8 and recall_binary >= 0.99 else "NOT met (>= 8x, recall >= 0.99)"),
        (f"bbox {100 * in_box / args.rows:.2f}% of rows", bbox_ms, f"{exact / bbox_ms:.1f}x faster",
         "met" if exact / bbox_ms >= 10 else "NOT met (>= 10x)"),
        ("DuckDB SQL top-10 array_cosine_similarity", sql_ms, "same ids as search" if sql_agrees else "ids differ",
         "met" if sql_ms <= 500 else "NOT met (<= 500 ms)"),
        ("IVF search (built index) + re-rank", ivf, f"recall {builds['ivf']['recall_at_10']:.3f}", ""),
    ]
    if hnsw is not None:
        rows.append(("HNSW search (built index) + re-rank", hnsw, f"recall {builds['hnsw']['recall_at_10']:.3f}", ""))
    rows += [
        ("cold first query: decode + write cache", cold_build * 1e3, "", ""),
        ("cold first query: cache on disk", cold_cached * 1e3, "", ""),
    ]
    rows += [(f"index build {kind}", r["build_seconds"] * 1e3, f"recall@10 {r['recall_at_10']:.3f}, {r['bytes'] / 2**20:.0f} MiB", "")
             for kind, r in builds.items()]
    print(f"\n{args.rows} rows, {args.dim}-d, {args.clusters} clusters; medians over {args.queries} queries x {args.repeats}")
    print(f"{'what':44s} {'ms':>10s}  {'ratio':30s} goal")
    for name, ms, ratio, goal in rows:
        print(f"{name:44s} {ms:10.2f}  {ratio:30s} {goal}")
    if not args.out:
        shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
