"""Archive-scale search: the ivf-rabitq index against a streaming exact top-10, faiss side by side.

    .venv/bin/python benchmarks/search_archive.py --rows 1000000 --dim 128 [--out DIR] [--mpi]
        [--rows-per-file 1000000] [--clusters 1000] [--queries 100] [--nprobe 16] [--candidates N]
        [--nlist N] [--bits 1] [--rerank stored|float16] [--ivfpq-max-rows 10000000] [--hnsw-max-rows 1000000]
        [--usearch-max-rows 1000000] [--usearch-dtype f16] [--page-cache as-is|cold|codes-hot]
        [--compare no-prefetch,no-metadata-prefetch,one-pass,no-list-split] [--load-index] [--json FILE]

One run, one table:

* write     a real product of clustered unit vectors (int8 codes, ``--rows-per-file`` rows a data
            file = a shard) with eoembed's writer, streamed in batches: time and size on disk;
* build     ``eoembed index build --kind ivf-rabitq`` in its own process: time and its peak RSS;
* truth     exact top-10 of ``--queries`` queries (product rows plus noise) by one streaming brute
            force over the stored vectors (kept beside the product, ``.NAME.truth-*.npz``, and reused
            while the product's manifest and the queries are the same);
* serve     in a fresh process (under ``mpirun -n 2`` with ``--mpi``: each rank its own shards, top-k
            merged on rank 0; ``--page-cache`` sets what of the index is in memory first): single-query
            p50 / p99 of ``Product.search(mode="ivf-rabitq")`` (the full result table), batch-of-100
            throughput, recall@10, resident memory while serving; ``--compare`` serves again, from
            the same page-cache state each time, with parts of search turned off: ``no-prefetch``
            (the re-rank rows read by page faults, their pages not asked for first),
            ``no-metadata-prefetch`` (the same for the hits' metadata columns), ``one-pass``
            (every shard gives its estimates of the whole pool at once, not its share first),
            ``no-list-split`` (with ``--load-index``: a query's probed lists scanned in one faiss
            call, not split over the cores); ``--load-index`` serves with the codes read into
            memory first (``Product.load_index``), not mapped;
* faiss     IVF-PQ (same nlist and nprobe, PQ dim/4, float32 re-rank of as many rows as the archive
            index re-ranks a query) and HNSW32 (efSearch 64) in memory, where the
            float32 matrix fits (``--ivfpq-max-rows``, ``--hnsw-max-rows``), with their in-memory size;
* usearch   its HNSW (``--usearch-dtype`` vectors, default f16; connectivity 16, expansion 64) in
            memory (``--usearch-max-rows``).

Timings on a shared 2-core machine are noisy; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


# What --compare turns off, by name, for the table.
VARIANTS = {"search": "as search does", "no-prefetch": "re-rank rows read by page faults",
            "no-metadata-prefetch": "hits' metadata read by page faults",
            "one-pass": "each shard's whole pool estimated at once",
            "no-list-split": "one query's lists in one faiss call (codes in memory)"}


def rss() -> dict[str, int]:
    """This process's resident memory now and at its peak (bytes), from /proc."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


# -- serving (its own process, so its memory is its own) -----------------------------------------


def serve(args: argparse.Namespace) -> None:
    import eoembed
    import eoembed._archive as archive
    from eoembed._search import distributed_search

    if args.variant == "no-prefetch":
        archive.PREFETCH_RERANK_ROWS = False
    elif args.variant == "no-metadata-prefetch":
        import eoembed._search as search_module

        search_module.PREFETCH_HIT_METADATA = False
    elif args.variant == "no-list-split":
        archive.SPLIT_QUERY_LISTS = False
    elif args.variant == "one-pass":
        archive.FIRST_PASS_SHARES = float("inf")
    data = np.load(args.serve_queries)
    queries, truth = data["queries"], data["truth"]
    options = {"k": 10, "mode": "ivf-rabitq", "nprobe": args.nprobe}
    if args.candidates:
        options["candidates"] = args.candidates
    product = eoembed.open(args.serve)
    comm = None
    if args.mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD

    def search(q):
        if comm is None:
            return product.search(q, **options)
        return distributed_search(product, q, comm=comm, **options)

    started = time.perf_counter()
    loaded = product.load_index(comm=comm) if args.load_index else None  # the codes read into memory
    search(queries[0])  # opens the shards (and writes their metadata cache on a first run)
    open_seconds = time.perf_counter() - started
    single = []
    for q in queries:
        if comm is not None:
            comm.Barrier()
        started = time.perf_counter()
        search(q)
        single.append(time.perf_counter() - started)
    batch = min(100, len(queries))
    started = time.perf_counter()
    search(queries[:batch])
    batch_seconds = time.perf_counter() - started
    table = search(queries)  # every query's hits, for recall
    memory = rss() if comm is None else comm.gather(rss(), root=0)
    if comm is not None and comm.Get_rank() != 0:
        return
    got: dict[int, set] = {}
    for q, chip in zip(table.column("query").to_pylist(), table.column("chip_id").to_pylist()):
        got.setdefault(q, set()).add(chip)
    recall = float(np.mean([len(set(truth[q]) & got.get(q, set())) / 10 for q in range(len(queries))]))
    memory = [memory] if isinstance(memory, dict) else memory
    Path(args.serve_json).write_text(json.dumps({
        "open_seconds": open_seconds, "p50_ms": percentile_ms(single, 50), "p99_ms": percentile_ms(single, 99),
        "batch_qps": batch / batch_seconds, "recall_at_10": recall, "ranks": len(memory), "rss": memory,
        "loaded": loaded,
    }))


# -- the run -------------------------------------------------------------------------------------


def set_page_cache(folder: Path, state: str) -> float | None:
    """Before serving: ``cold`` drops the index, re-rank and search-cache (metadata) files from the
    page cache (the kernel drops the clean pages that no process maps); ``codes-hot`` drops them and
    reads the index files (codes and ids) once, as a server that keeps its codes in memory would at
    start. Returns the seconds the codes took to read (None for ``cold``)."""
    import eoembed
    from eoembed._search import cache_dir

    index = sorted((folder / "index").glob("*"))
    for path in index + [p for p in cache_dir(eoembed.open(folder)).rglob("*") if p.is_file()]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if state == "cold":
        return None
    started = time.perf_counter()
    for path in (p for p in index if p.suffix == ".faiss"):
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    return time.perf_counter() - started


def serve_in_process(folder: Path, queries: np.ndarray, truth_ids: np.ndarray, args: argparse.Namespace,
                     variant: str) -> dict:
    """The serving figures of a fresh process (two ranks with ``--mpi``)."""
    with tempfile.TemporaryDirectory() as scratch:
        np.savez(Path(scratch) / "q.npz", queries=queries, truth=truth_ids)
        command = [sys.executable, __file__, "--serve", str(folder), "--serve-queries", str(Path(scratch) / "q.npz"),
                   "--serve-json", str(Path(scratch) / "serve.json"), "--nprobe", str(args.nprobe), "--variant", variant]
        command += ["--candidates", str(args.candidates)] if args.candidates else []
        command += ["--load-index"] if args.load_index else []
        env = dict(os.environ)
        if args.mpi:
            command = [str(BIN / "mpirun"), "-n", "2"] + command + ["--mpi"]
            env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode:
            sys.exit(f"serving failed:\n{run.stderr}")
        return json.loads((Path(scratch) / "serve.json").read_text())


def du(paths) -> int:
    return int(sum(p.stat().st_size for p in paths))


def query_set(product, count: int, seed: int = 1) -> np.ndarray:
    """``count`` product rows plus a little noise (near-duplicates of real chips), unit length."""
    from eoembed._archive import _gather

    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(product.num_rows, size=count, replace=False))
    queries = _gather(product, picks, batch_size=65536)
    queries = queries + 0.05 / np.sqrt(product.dim) * rng.normal(size=queries.shape).astype(np.float32)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def chip_ids(product, hits) -> np.ndarray:
    """The chip ids of each query's exact hits (files read one column at a time)."""
    import pyarrow.parquet as pq

    wanted = {int(f) for h in hits for f in h.files}
    columns = {f: pq.read_table(product.files[f], columns=["chip_id"]).column("chip_id") for f in sorted(wanted)}
    return np.array([[columns[int(f)][int(r)].as_py() for f, r in zip(h.files, h.rows)] for h in hits])


def faiss_baselines(product, queries: np.ndarray, truth_ids: np.ndarray, args, nlist: int) -> list[dict]:
    """faiss IVF-PQ (+ float32 re-rank), faiss HNSW32 and usearch's HNSW over the whole matrix in
    memory, each where it fits."""
    import faiss

    from eoembed._archive import default_candidates

    out = []
    if product.num_rows > max(args.ivfpq_max_rows, args.hnsw_max_rows, args.usearch_max_rows):
        return out
    vectors = product.to_numpy()  # the product is unit-normalised: inner product = cosine
    ids = np.asarray(product.to_arrow(columns=["chip_id"]).read_all().column("chip_id").to_pylist())  # product order
    dim = vectors.shape[1]

    def measure(name, index, build_seconds, setup, memory_bytes=None):
        setup(index)
        index.search(queries[:1], 10)
        single = []
        for q in queries:
            started = time.perf_counter()
            index.search(q[None], 10)
            single.append(time.perf_counter() - started)
        started = time.perf_counter()
        _, found = index.search(queries[:100], 10)
        qps = min(100, len(queries)) / (time.perf_counter() - started)
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(ids[f[f >= 0]]) & set(t)) / 10 for f, t in zip(found, truth_ids)]))
        out.append({"name": name, "build_seconds": build_seconds, "p50_ms": percentile_ms(single, 50),
                    "p99_ms": percentile_ms(single, 99), "batch_qps": qps, "recall_at_10": recall,
                    "memory_bytes": memory_bytes or len(faiss.serialize_index(index))})

    if product.num_rows <= args.ivfpq_max_rows:
        started = time.perf_counter()
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, dim // 4, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        base.train(vectors[np.sort(rng.choice(len(vectors), min(len(vectors), 40 * nlist), replace=False))])
        index = faiss.IndexRefineFlat(base)
        index.add(vectors)
        # As many rows re-ranked per query as the archive index re-ranks: one pool a query, all shards.
        reranked = args.candidates or default_candidates(10, args.bits, probed_rows=product.num_rows * args.nprobe / nlist,
                                                        rows=product.num_rows)
        measure(f"faiss IVF{nlist},PQ{dim // 4}, nprobe {args.nprobe}, float32 re-rank of {reranked}", index,
                time.perf_counter() - started,
                lambda i: (setattr(faiss.extract_index_ivf(i.base_index), "nprobe", args.nprobe), setattr(i, "k_factor", reranked / 10)))
        del index, base
    if product.num_rows <= args.hnsw_max_rows:
        started = time.perf_counter()
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(vectors)
        measure("faiss HNSW32 efSearch 64", index, time.perf_counter() - started,
                lambda i: setattr(i.hnsw, "efSearch", 64))
        del index
    if product.num_rows <= args.usearch_max_rows:
        from usearch.index import Index

        started = time.perf_counter()
        graph = Index(ndim=dim, metric="ip", dtype=args.usearch_dtype, connectivity=16, expansion_add=128, expansion_search=64)
        graph.add(np.arange(len(vectors)), vectors)
        measure(f"usearch HNSW ({args.usearch_dtype}, connectivity 16, expansion 64)", UsearchAsFaiss(graph), time.perf_counter() - started,
                lambda i: None, memory_bytes=graph.memory_usage)
    return out


class UsearchAsFaiss:
    """A usearch index behind faiss's ``search(queries, k) -> (distances, ids)``, for one measuring loop."""

    def __init__(self, graph) -> None:
        self.graph = graph

    def search(self, queries: np.ndarray, k: int):
        matches = self.graph.search(queries, k)
        keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
        return None, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000, help="rows a data file (= a shard)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nlist", type=int, help="default: the index's own (about 2 sqrt(rows))")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--bits", type=int, default=1, help="bits a dimension in the RaBitQ codes (1 to 8)")
    parser.add_argument("--rerank", choices=["stored", "float16"], help="the re-rank rows (default: the index's own)")
    parser.add_argument("--candidates", type=int, help="rows re-ranked a query over all shards (default: the index's own)")
    parser.add_argument("--mpi", action="store_true", help="serve under mpirun -n 2 (each rank its own shards)")
    parser.add_argument("--ivfpq-max-rows", type=int, default=10_000_000)
    parser.add_argument("--hnsw-max-rows", type=int, default=1_000_000)
    parser.add_argument("--usearch-max-rows", type=int, default=1_000_000)
    parser.add_argument("--usearch-dtype", default="f16", choices=["f32", "f16", "i8"], help="usearch's vector type")
    parser.add_argument("--out", help="product folder (kept and reused); default a temporary folder")
    parser.add_argument("--reuse-index", action="store_true", help="serve the product's existing ivf-rabitq index")
    parser.add_argument("--page-cache", default="as-is", choices=["as-is", "cold", "codes-hot"],
                        help="the index and search-cache files' pages before serving: as left by the run, dropped, or the "
                             "all dropped and the codes read once")
    parser.add_argument("--compare", default="", help="serve also with these parts of search turned off, "
                        "comma-separated: no-prefetch, no-metadata-prefetch, one-pass, no-list-split")
    parser.add_argument("--load-index", action="store_true", help="serve with the codes read into memory first "
                        "(Product.load_index), not mapped")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-queries", help=argparse.SUPPRESS)
    parser.add_argument("--serve-json", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="search", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)

    import eoembed
    from eoembed._archive import default_nlist, exact_top_k

    sys.path.insert(0, str(HERE))
    from search_1m import write_product

    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="archive-bench-")) / "product"
    figures: dict = {"rows": args.rows, "dim": args.dim, "rows_per_file": args.rows_per_file, "queries": args.queries}
    if not (folder / "collection.json").exists():
        started = time.perf_counter()
        write_product(folder, rows=args.rows, dim=args.dim, clusters=args.clusters, quantization="int8",
                      max_rows_per_file=args.rows_per_file)
        figures["write_seconds"] = time.perf_counter() - started
    product = eoembed.open(folder)
    figures["data_bytes"] = du(product.files)
    figures["files"] = len(product.files)

    build = [str(BIN / "eoembed"), "index", "build", str(folder), "--kind", "ivf-rabitq", "--metric", "cosine"]
    if args.nlist:
        build += ["--nlist", str(args.nlist)]
    build += ["--bits", str(args.bits)] + (["--rerank", args.rerank] if args.rerank else [])
    if not args.reuse_index:
        run = subprocess.run(build, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"index build failed:\n{run.stderr}")
        figures["build"] = json.loads(run.stdout)
    index_files = list((folder / "index").glob("*"))
    figures["index_bytes"] = {"ivf-rabitq": du(p for p in index_files if ".ivf-rabitq-" in p.name),
                              "rerank": du(p for p in index_files if p.name.endswith(".stored.npy") or ".float16-" in p.name)}

    product = eoembed.open(folder)
    queries = query_set(product, args.queries)
    # The exact top-10 of a product's query set is kept beside it (keyed by the product's manifest
    # and the queries), so that serving again with other options does not repeat the brute force.
    manifest = hashlib.sha256((folder / "manifest.parquet").read_bytes()).hexdigest()[:16]
    kept = folder.parent / f".{folder.name}.truth-{manifest}-{args.queries}.npz"
    stored = np.load(kept) if kept.exists() else None
    if stored is not None and np.array_equal(stored["queries"], queries):
        truth_ids, figures["truth_seconds"] = stored["truth"], float(stored["seconds"])
        figures["truth_reused"] = str(kept)
    else:
        started = time.perf_counter()
        truth = exact_top_k(product, queries, k=10, metric="cosine")
        figures["truth_seconds"] = time.perf_counter() - started
        truth_ids = chip_ids(product, truth)
        np.savez(kept, queries=queries, truth=truth_ids, seconds=figures["truth_seconds"])

    figures["page_cache"] = args.page_cache
    variants = ["search"] + [v for v in args.compare.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"--compare {args.compare}: unknown {', '.join(sorted(unknown))}; the variants are "
                 f"{', '.join(v for v in VARIANTS if v != 'search')}")
    figures["serve_variants"] = {}
    for variant in variants:
        if args.page_cache != "as-is":  # each serving starts from the same page-cache state
            figures["codes_read_seconds"] = set_page_cache(folder, args.page_cache)
        figures["serve_variants"][variant] = serve_in_process(folder, queries, truth_ids, args, variant)
    figures["serve"] = figures["serve_variants"]["search"]
    from eoembed._search import cache_dir

    figures["cache_bytes"] = du(p for p in cache_dir(product).rglob("*") if p.is_file())
    figures["baselines"] = [] if args.mpi else faiss_baselines(product, queries, truth_ids, args,
                                                               args.nlist or default_nlist(product.num_rows))
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def report(f: dict) -> None:
    gb = 1e9
    rows = f["rows"]
    build, serve = f.get("build"), f["serve"]
    print(f"\n## search_archive: {rows:,} x {f['dim']} in {f['files']} data files (shards)"
          f"{', mpirun -n ' + str(serve['ranks']) if serve['ranks'] > 1 else ''}\n")
    if "write_seconds" in f:
        print(f"write (eoembed writer, streamed, int8): {f['write_seconds']:.1f} s, {f['data_bytes'] / gb:.2f} GB on disk "
              f"({f['data_bytes'] / rows:.0f} B/row)")
    else:
        print(f"product reused: {f['data_bytes'] / gb:.2f} GB on disk ({f['data_bytes'] / rows:.0f} B/row)")
    idx = f["index_bytes"]
    if build:
        print(f"build ivf-rabitq (nlist {build['nlist']}, sample {build['sample']:,}): {build['build_seconds']:.1f} s "
              f"(train {build['train_seconds']:.1f} s, codes {build['add_seconds']:.1f} s), peak RSS {build['peak_rss_bytes'] / gb:.2f} GB")
    print(f"index {idx['ivf-rabitq'] / rows:.1f} B/row + re-rank {idx.get('rerank', idx.get('float16', 0)) / rows:.1f} B/row"
          f" ({build.get('rerank', 'float16') if build else 'as built'})")
    if "cache_bytes" in f:
        print(f"search cache beside the product (metadata columns): {f['cache_bytes'] / rows:.1f} B/row")
    print(f"streaming exact top-10 of {f['queries']} queries: {f['truth_seconds']:.1f} s"
          + (f" (when computed; reused from {f['truth_reused']})" if "truth_reused" in f else ""))
    if f.get("page_cache", "as-is") != "as-is":
        print(f"page cache before serving: {f['page_cache']}" + (f" (codes read in {f['codes_read_seconds']:.1f} s)"
                                                                if f.get("codes_read_seconds") is not None else ""))
    held = f", the codes read into memory first ({serve['loaded']['bytes'] / 1e9:.2f} GB in {serve['loaded']['seconds']:.1f} s)" if serve.get('loaded') else ""
    print(f"first search (opens the shards{held}): {serve['open_seconds']:.2f} s\n")
    print("| method | p50 ms | p99 ms | batch-100 q/s | recall@10 | resident memory |")
    print("|---|---:|---:|---:|---:|---|")
    for variant, s in f["serve_variants"].items():
        memory = ", ".join(f"rank {i}: {m['VmRSS'] / gb:.2f} GB (anon {m['RssAnon'] / gb:.2f}, file {m['RssFile'] / gb:.2f})"
                           for i, m in enumerate(s["rss"]))
        print(f"| eoembed ivf-rabitq (table of hits), {VARIANTS[variant]} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['batch_qps']:.0f} | {s['recall_at_10']:.3f} | {memory} |")
    for b in f["baselines"]:
        print(f"| {b['name']} (build {b['build_seconds']:.0f} s) | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {b['batch_qps']:.0f} | "
              f"{b['recall_at_10']:.3f} | index {b['memory_bytes'] / gb:.2f} GB in memory |")
    for variant, s in f["serve_variants"].items():
        if variant != "search":
            print(f"\nsearch against {VARIANTS[variant]}: p50 {s['p50_ms'] / serve['p50_ms']:.2f}x, "
                  f"p99 {s['p99_ms'] / serve['p99_ms']:.2f}x, batch {serve['batch_qps'] / s['batch_qps']:.2f}x faster (this run)")


if __name__ == "__main__":
    main()
