"""Stream a large synthetic product through eoembed: write, streamed read, validate; time and peak RSS.

    .venv/bin/python benchmarks/write_read_1m.py [--rows 1000000] [--dim 128] [--batch 50000]
        [--out DIR] [--quantization none] [--max-rows-per-file N] [--compare-max-rows 262144]

Vectors are generated batch by batch (a seeded RNG per batch: unit vectors, random lon/lat boxes in
a region, random times, chip ids) and never held all at once. Each phase runs in a fresh
subprocess (``--phase write|read|validate|baseline``) that prints its own ``ru_maxrss``, so every
peak is that phase's alone:

* ``baseline``  imports eoembed and its dependencies and does nothing else (the floor of every phase);
* ``write``     streams the batches through ``ProductWriter`` (the writer buffers up to one data file,
                about 256 MiB of vectors by default, then Hilbert-sorts and writes it), run once with
                the default file size and once with ``--max-rows-per-file`` = ``--compare-max-rows``
                to show that this bound moves the peak;
* ``read``      ``Product.iter_batches()`` over all columns, ``Product.decode()`` per batch;
* ``validate``  ``eoembed.validate()`` of the whole product (checksums included).

Chip times are whole seconds: the collection's temporal extent is written to the second
(``sdk/_stac.py:_iso``), so sub-second times past the last whole second would fail IDT002.

The product goes to ``--out`` (kept) or to a temporary folder (deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# The region chips fall in (lon/lat degrees) and the chip size: ~1 km boxes over western Europe.
REGION = (-10.0, 35.0, 30.0, 60.0)
BOX_DEG = 0.01
T0 = np.datetime64("2020-01-01T00:00:00", "us")
T_SPAN_US = 4 * 365 * 86_400 * 1_000_000
SCENES = 500
MODEL = {
    "name": "benchmark-random",
    "version": "1",
    "framework": "numpy",
    "weights_sha256": None,
    "architecture": "random unit vectors",
    "pooling": "none",
    "input": {
        "bands": [{"name": "B1", "source": "synthetic"}],
        "chip_size_px": 100,
        "stride_px": 100,
        "gsd_m": 10.0,
        "normalization": {"method": "none"},
    },
    "output": {"dim": 128},
}


def peak_rss_mib() -> float:
    """This process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def make_batch(index: int, rows: int, first: int, dim: int, seed: int) -> dict:
    """Batch ``index`` (rows ``first`` .. ``first + rows - 1``): same output for the same arguments."""
    rng = np.random.default_rng([seed, index])
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    xmin, ymin, xmax, ymax = REGION
    lon = rng.uniform(xmin, xmax - BOX_DEG, rows)
    lat = rng.uniform(ymin, ymax - BOX_DEG, rows)
    bounds = np.stack([lon, lat, lon + BOX_DEG, lat + BOX_DEG], axis=1)
    # Whole seconds: the STAC extents are written to the second (see the note in the module doc).
    times = T0 + (rng.integers(0, T_SPAN_US // 1_000_000, rows) * 1_000_000).astype("timedelta64[us]")
    scene = rng.integers(0, SCENES, rows)
    ids = np.arange(first, first + rows)
    return {
        "embedding": vectors,
        "bounds": bounds,
        "datetime": times,
        "source_id": [f"scene-{s:04d}" for s in scene.tolist()],
        "grid_cell": [f"{int(x * 10)}_{int(y * 10)}" for x, y in zip(lon.tolist(), lat.tolist())],
        "chip_id": [f"chip-{i:09d}" for i in ids.tolist()],
    }


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that shape the synthetic rows (shared by the benchmarks that stream them)."""
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--quantization", default="none",
                        help="none|float16|int8|int8-per-dimension|int8-per-row|sqrt|binary")
    parser.add_argument("--seed", type=int, default=0)


def batches(rows: int, batch: int):
    index, first = 0, 0
    while first < rows:
        size = min(batch, rows - first)
        yield index, first, size
        index, first = index + 1, first + size


# -- phases (each runs in its own process) ---------------------------------------------------------


def phase_baseline(args: argparse.Namespace) -> dict:
    import eoembed  # noqa: F401  (the import is what is measured)

    return {"seconds": 0.0}


def phase_write(args: argparse.Namespace) -> dict:
    import eoembed

    model = json.loads(json.dumps(MODEL))
    model["output"]["dim"] = args.dim
    generate = 0.0
    start = time.perf_counter()
    with eoembed.ProductWriter(
        args.product, model=model, quantization=args.quantization, normalize=True,
        max_rows_per_file=args.max_rows_per_file, overwrite=True,
    ) as writer:
        for index, first, size in batches(args.rows, args.batch):
            t = time.perf_counter()
            chips = make_batch(index, size, first, args.dim, args.seed)
            generate += time.perf_counter() - t
            writer.write(chips)
            del chips
        file_rows = writer._file_rows()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "generate_seconds": generate, "file_rows": file_rows}


def phase_read(args: argparse.Namespace) -> dict:
    import eoembed

    start = time.perf_counter()
    product = eoembed.open(args.product)
    rows, checksum, max_batch = 0, 0.0, 0
    for batch in product.iter_batches():
        vectors = product.decode(batch)
        rows += len(vectors)
        max_batch = max(max_batch, len(vectors))
        checksum += float(np.einsum("ij,ij->", vectors, vectors))  # touch every value: sum of squared norms
    seconds = time.perf_counter() - start
    if rows != args.rows:
        raise SystemExit(f"read {rows} rows, expected {args.rows}")
    return {"seconds": seconds, "rows_read": rows, "mean_sq_norm": checksum / max(rows, 1), "max_batch": max_batch,
            "files": len(product.files)}


def phase_validate(args: argparse.Namespace) -> dict:
    import eoembed

    start = time.perf_counter()
    report = eoembed.validate(args.product)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings),
            "codes": report.codes}


PHASES = {"baseline": phase_baseline, "write": phase_write, "read": phase_read, "validate": phase_validate}


def run_phase(args: argparse.Namespace) -> None:
    result = PHASES[args.phase](args)
    result["peak_rss_mib"] = peak_rss_mib()
    import pyarrow as pa

    pool = pa.default_memory_pool()
    result["arrow_pool_peak_mib"] = pool.max_memory() / (1 << 20)
    result["arrow_pool"] = pool.backend_name
    print("RESULT " + json.dumps(result), flush=True)


# -- orchestration ---------------------------------------------------------------------------------


def child(args: argparse.Namespace, phase: str, product: Path, *, max_rows_per_file: int | None = None) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--product", str(product),
        "--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch),
        "--quantization", args.quantization, "--seed", str(args.seed),
    ]
    if max_rows_per_file:
        cmd += ["--max-rows-per-file", str(max_rows_per_file)]
    label = phase + (f" (max_rows_per_file={max_rows_per_file})" if max_rows_per_file else "")
    print(f"... {label}", file=sys.stderr, flush=True)
    wall = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    # RUSAGE_CHILDREN is the max over all children waited for so far; the child's own figure is per phase.
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"phase {label} failed with exit code {proc.returncode}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result.update(label=label, process_seconds=wall, children_peak_mib=children_peak)
    return result


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def orchestrate(args: argparse.Namespace, argv: list[str]) -> None:
    temp = None
    if args.out:
        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
    else:
        temp = root = Path(tempfile.mkdtemp(prefix="eoembed-bench-"))
    product = root / "product"
    vector_bytes = args.rows * args.dim * 4
    mib = lambda b: b / (1 << 20)  # noqa: E731
    try:
        baseline = child(args, "baseline", product)
        write = child(args, "write", product, max_rows_per_file=args.max_rows_per_file)
        size = folder_bytes(product)
        read = child(args, "read", product)
        check = child(args, "validate", product)
        extra = None
        if args.compare_max_rows and args.compare_max_rows != args.max_rows_per_file:
            small = root / f"product-{args.compare_max_rows}"
            extra = child(args, "write", small, max_rows_per_file=args.compare_max_rows)
            extra["size"] = folder_bytes(small)
            if not args.out:
                shutil.rmtree(small, ignore_errors=True)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    def row(r: dict, note: str) -> str:
        s = r["seconds"]
        rate = f"{args.rows / s:,.0f}" if s else "-"
        mbs = f"{vector_bytes / 1e6 / s:,.0f}" if s else "-"
        return (f"| {r['label']} | {s:.2f} | {r['process_seconds']:.2f} | {rate} | {mbs} | "
                f"{r['peak_rss_mib']:,.0f} | {r['arrow_pool_peak_mib']:,.0f} | {note} |")

    write_note = (f"generation {write['generate_seconds']:.2f} s incl.; {write['file_rows']:,} rows/file "
                  f"= {mib(write['file_rows'] * args.dim * 4):,.0f} MiB float32 buffered")
    lines = [
        "",
        f"**eoembed streaming benchmark** — `{' '.join(shlex.quote(a) for a in argv)}`",
        "",
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), "
        f"{cpu_model()}; Python {platform.python_version()} on {platform.system()} {platform.machine()}; "
        f"numpy {np.__version__}",
        "",
        f"data: {args.rows:,} rows x {args.dim} dims, quantization `{args.quantization}`, batches of {args.batch:,}; "
        f"vectors as float32 = {mib(vector_bytes):,.0f} MiB; product on disk = {mib(size):,.1f} MiB",
        "",
        "| phase | time s | process s | rows/s | vector MB/s | peak RSS MiB | Arrow pool peak MiB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        row(baseline, "import eoembed only: the floor under every phase"),
        row(write, write_note),
    ]
    if extra:
        lines.append(row(extra, f"{extra['file_rows']:,} rows/file = {mib(extra['file_rows'] * args.dim * 4):,.0f} MiB "
                                f"buffered; on disk {mib(extra['size']):,.1f} MiB"))
    lines += [
        row(read, f"iter_batches (all columns) + decode; {read['files']} files, batches <= {read['max_batch']:,} rows; "
                  f"mean |v|^2 = {read['mean_sq_norm']:.4f}"),
        row(check, f"ok={check['ok']}, {check['errors']} errors, {check['warnings']} warnings {check['codes'] or ''}"),
        "",
        "time s = the phase's own work in the child; process s = child wall time incl. interpreter start and imports; "
        "MB/s = float32 vector bytes / time s; peak RSS = the child's ru_maxrss; Arrow pool peak = live bytes "
        f"in Arrow's {read['arrow_pool']} pool at its highest (RSS also holds numpy buffers and freed memory the "
        "allocators keep).",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_options(parser)
    parser.add_argument("--out", default=None, help="folder for the products (kept); default: a temporary folder")
    parser.add_argument("--max-rows-per-file", type=int, default=None,
                        help="writer bound for the main write (default: the writer's ~256 MiB of vectors)")
    parser.add_argument("--compare-max-rows", type=int, default=262_144,
                        help="also write with this max_rows_per_file to show the memory bound move (0: skip)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--product", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
    else:
        orchestrate(args, [".venv/bin/python", "benchmarks/write_read_1m.py", *argv])


if __name__ == "__main__":
    main()
