"""Where an archive query's time goes: wall time of each stage of single ivf-rabitq queries.

    .venv/bin/python benchmarks/archive_stages.py PRODUCT [--load] [--drop] [--queries 30] [--candidates N] [--no-split]

PRODUCT has a built ivf-rabitq index (``benchmarks/search_archive.py --out PRODUCT`` makes one and
keeps its queries beside it, which this script reuses; otherwise random queries). ``--load`` holds
the codes in memory first (``Product.load_index``), ``--drop`` drops the re-rank rows and the search
cache from the page cache after the first query, ``--no-split`` scans one query's lists in one
faiss call. Prints the wall p50 and, per stage, the p50 and mean of its wall time a query (timers
wrapped around search's own functions; stages on threads are timed around their whole map).
"""
import argparse
import os
import time
from collections import defaultdict
import glob
from pathlib import Path
import numpy as np
import eoembed
import eoembed._archive as archive
import eoembed._search as search_module
from eoembed._search import cache_dir

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("folder", help="a product with a built ivf-rabitq index")
ap.add_argument("--load", action="store_true", help="hold the codes in memory first")
ap.add_argument("--candidates", type=int, help="the pool a query (default the index's own)")
ap.add_argument("--queries", type=int, default=30)
ap.add_argument("--drop", action="store_true", help="re-rank rows and search cache dropped from the page cache")
ap.add_argument("--no-split", action="store_true", help="one query's lists in one faiss call")
args = ap.parse_args()
if args.no_split:
    archive.SPLIT_QUERY_LISTS = False
folder = Path(args.folder)
product = eoembed.open(folder)
if args.load:
    print(product.load_index())
stage = defaultdict(list)
current = {}

def timed(name, fn):
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            current[name] = current.get(name, 0.0) + time.perf_counter() - s
    return wrapper

orig_map = archive.ArchiveSearcher._map
# A stage on threads: timed around its whole map, by the name of the work mapped.
archive.ArchiveSearcher._map = staticmethod(
    lambda work, shards, queries: timed("map:" + work.__name__, orig_map)(work, shards, queries))
archive.prefetch_array_rows = timed("prefetch rerank rows", archive.prefetch_array_rows)
archive.rerank_pool = timed("rerank score", archive.rerank_pool)
search_module.prefetch_table_rows = timed("prefetch metadata", search_module.prefetch_table_rows)
search_module.metadata_rows = timed("read metadata", search_module.metadata_rows)
archive.Shard.coarse_search = timed("coarse", archive.Shard.coarse_search)
archive.MergedCodes.candidates = timed("merged estimate", archive.MergedCodes.candidates)
search_module.hits_table = timed("hits table", search_module.hits_table)

truth = sorted(glob.glob(str(folder.parent / f".{folder.name}.truth-*.npz")))
if truth:
    qs = np.load(truth[-1])["queries"][: args.queries + 1].astype(np.float32)
else:
    qs = np.random.default_rng(7).normal(size=(args.queries + 1, product.dim)).astype(np.float32)
opts = {"k": 10, "mode": "ivf-rabitq"}
if args.candidates:
    opts["candidates"] = args.candidates
product.search(qs[0], **opts)  # opens
if args.drop:  # the re-rank rows and the metadata cache dropped from the page cache
    files = list((folder / "index").glob("*.npy")) + [p for p in cache_dir(product).rglob("*") if p.is_file()]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
walls = []
for q in qs[1:]:
    current.clear()
    started = time.perf_counter()
    product.search(q, **opts)
    walls.append(time.perf_counter() - started)
    for k, v in current.items():
        stage[k].append(v)
print(f"wall p50 {np.median(walls)*1e3:.2f} ms (mean {np.mean(walls)*1e3:.2f})")
for k, v in stage.items():
    print(f"  {k:24s} p50 {np.median(v)*1e3:6.2f} ms  mean {np.mean(v)*1e3:6.2f}")
