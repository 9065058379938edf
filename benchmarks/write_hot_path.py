"""The writer's hot path against pyarrow's ``write_table`` of the same columns: seconds, ratio, peak RSS.

    .venv/bin/python benchmarks/write_hot_path.py [--rows 1000000] [--dim 128] [--batch 50000]
        [--quantization none] [--repeat 2] [--other-path DIR]

Both sides write the same rows to Parquet with the same settings, each run in a fresh subprocess
(so each peak RSS is that run's alone), alternating, ``--repeat`` times:

* ``eoembed``  after an untimed warm-up write of 100 rows, streams the batches of ``write_read_1m.make_batch`` (unit vectors, lon/lat boxes,
               times, scene ids, cells, chip ids; all made before the clock starts: the writer makes
               its files on threads of their own, which would go on working while a batch is made,
               so time spent making batches cannot be taken out of the span afterwards)
               through ``ProductWriter(normalize=True)``: checks, normalisation, quantisation, WKB
               boxes and the covering bbox, Hilbert order, the data files with their SHA-256, the
               manifest and the STAC items, published atomically. Time: first ``write`` to the end
               of ``close``.
* ``pyarrow``  reads the data files eoembed wrote into one table (not timed: the reference is
               handed its table ready-made) and times one ``pyarrow.parquet.write_table`` of it
               with the writer's settings: zstd, ``row_group_size`` 65536, dictionary encoding of
               ``source_id`` / ``grid_cell`` only, statistics, the Arrow schema stored.

``--other-path DIR`` runs a third side in the same alternation: the eoembed writer of another
commit, importable from DIR (a folder holding that commit's package as ``eoembed/``, put first on
``PYTHONPATH``), for a before / after table.

Reported: wall seconds and CPU seconds (all threads, ``time.process_time``), the fastest of the
runs of each side (the figure least disturbed by other work on a shared machine) and their ratio,
the median of the ratios of runs made one after the other (under about the same load), every run's
seconds, the machine's load average, and the peak RSS (``ru_maxrss``) and Arrow pool peak of each
side. The pyarrow side's peak holds its whole input table; eoembed's holds its input batches too
(about the size of the vectors) besides the writer's own, which is one data file of rows at most
(``max_rows_per_file``) whatever ``--rows`` is: ``write_read_1m.py`` measures the writer's peak
with batches made one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from write_read_1m import MODEL, add_data_options, batches, make_batch, peak_rss_mib

# The writer's Parquet settings (sdk/_write.py, ProductWriter._write_file), given to write_table too.
ROW_GROUP_SIZE = 65536
COMPRESSION = "zstd"
DICTIONARY_COLUMNS = ("source_id", "grid_cell", "native_crs")


def run_eoembed(args: argparse.Namespace) -> dict:
    import eoembed

    model = json.loads(json.dumps(MODEL))
    model["output"]["dim"] = args.dim
    # A small product first, not timed: the one-off imports (pyproj, jsonschema, pandas through
    # pyarrow) belong to the process, not to the rows; the reference has its imports done too.
    eoembed.write_product(Path(args.out) / "warm-up", make_batch(0, 100, 0, args.dim, args.seed), model=model,
                          normalize=True, overwrite=True)
    made = [make_batch(index, size, first, args.dim, args.seed) for index, first, size in batches(args.rows, args.batch)]
    start, cpu = time.perf_counter(), time.process_time()
    with eoembed.ProductWriter(args.product, model=model, quantization=args.quantization, normalize=True,
                               row_group_size=ROW_GROUP_SIZE, compression=COMPRESSION, overwrite=True) as writer:
        while made:
            writer.write(made.pop(0))  # each batch let go once written, as a stream's would be
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    files = sorted((Path(args.product) / "data").glob("*.parquet"))
    return {"seconds": seconds, "cpu_seconds": cpu, "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def run_pyarrow(args: argparse.Namespace) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(args.product) / "data").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]).replace_schema_metadata(None).combine_chunks()
    target = Path(args.out) / "reference.parquet"
    start, cpu = time.perf_counter(), time.process_time()
    pq.write_table(table, target, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE, write_statistics=True,
                   store_schema=True, use_dictionary=[c for c in DICTIONARY_COLUMNS if c in table.column_names])
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "files": 1, "bytes": target.stat().st_size, "rows": table.num_rows}


SIDES = {"eoembed": run_eoembed, "pyarrow": run_pyarrow}


def child(args: argparse.Namespace, side: str, product: Path, out: Path, *, path: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--product", str(product), "--out", str(out),
           "--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch),
           "--quantization", args.quantization, "--seed", str(args.seed)]
    print(f"... {side}" + (f" ({path})" if path else ""), file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))) if path else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {side} run failed with exit code {proc.returncode}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])


def orchestrate(args: argparse.Namespace, argv: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="eoembed-write-bench-"))
    other = f"eoembed ({args.other_path})"
    runs: dict[str, list[dict]] = {"eoembed": [], "pyarrow": [], **({other: []} if args.other_path else {})}
    load_before = os.getloadavg()[0]
    try:
        for _ in range(args.repeat):
            runs["eoembed"].append(child(args, "eoembed", root / "product", root))
            runs["pyarrow"].append(child(args, "pyarrow", root / "product", root))
            if args.other_path:
                runs[other].append(child(args, "eoembed", root / "other", root, path=args.other_path))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()[0]
    best = {side: min(r["seconds"] for r in results) for side, results in runs.items()}
    mib = lambda b: b / (1 << 20)  # noqa: E731
    lines = [
        "",
        f"**writer hot path** — `{' '.join(argv)}`",
        "",
        f"{args.rows:,} rows x {args.dim} dims, quantization `{args.quantization}`, batches of {args.batch:,}; "
        f"zstd, row groups of {ROW_GROUP_SIZE:,}; {os.cpu_count()} cores, load average {load_before:.1f} before, "
        f"{load_after:.1f} after",
        "",
        "| side | best s | runs s | CPU s (runs) | rows/s | peak RSS MiB | Arrow pool peak MiB | files | MiB on disk |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for side, results in runs.items():
        last = results[-1]
        seconds = ", ".join(f"{r['seconds']:.2f}" for r in results)
        cpu = ", ".join(f"{r['cpu_seconds']:.2f}" for r in results)
        lines.append(
            f"| {side} | {best[side]:.2f} | {seconds} | {cpu} | "
            f"{args.rows / best[side]:,.0f} | {max(r['peak_rss_mib'] for r in results):,.0f} | "
            f"{max(r['arrow_pool_peak_mib'] for r in results):,.0f} | {last['files']} | {mib(last['bytes']):,.1f} |"
        )
    best_cpu = {side: min(r["cpu_seconds"] for r in results) for side, results in runs.items()}
    lines.append("")
    for side in [s for s in runs if s != "pyarrow"]:
        paired = [e["seconds"] / p["seconds"] for e, p in zip(runs[side], runs["pyarrow"])]
        lines.append(
            f"ratio {side} / pyarrow write_table (best of {args.repeat} each): "
            f"**{best[side] / best['pyarrow']:.2f}x** wall (median per alternation {statistics.median(paired):.2f}x, "
            f"{min(paired):.2f}-{max(paired):.2f}), {best_cpu[side] / best_cpu['pyarrow']:.2f}x CPU"
        )
    lines.append("(CPU: all threads of the process; the writer encodes on a second thread)")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_options(parser)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--other-path", help="a folder holding another commit's package as eoembed/, run as a third side")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--product", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        result = SIDES[args.side](args)
        import pyarrow as pa

        result["peak_rss_mib"] = peak_rss_mib()
        result["arrow_pool_peak_mib"] = pa.default_memory_pool().max_memory() / (1 << 20)
        print("RESULT " + json.dumps(result), flush=True)
    else:
        orchestrate(args, [".venv/bin/python", "benchmarks/write_hot_path.py", *argv])


if __name__ == "__main__":
    main()
