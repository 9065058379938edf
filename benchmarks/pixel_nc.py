"""Pixel products on the real NC Landsat-7 scene: production on two ranks, few-shot from the labelled
points, a predicted map scored against the wall-to-wall land-cover raster, and its picture.

1. `mpirun -n 2 eoembed produce --level pixel` with the stats encoder (each pixel a 1-pixel chip:
   its five band values are the band means; int8) on the whole scene, timed, then validated.
2. Few-shot (prototype, 1/5/10 shots, 200 episodes, seed 0) on the 1,000 labelled points
   (agriculture and sediment dropped, as the chip benchmark drops agriculture), blocked (2 km) and
   random splits; then a logistic-regression map of every pixel, its agreement with strata.tif
   over the pixels of the five classes, and the map as a PNG.

Usage: .venv/bin/python benchmarks/pixel_nc.py [--out benchmarks/out/pixel] [--plot docs/pixel_map_nc.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import eoembed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NC = DATA / "imagery/nc_landsat7_landclass96"
CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/pixel"))
    parser.add_argument("--plot", default=None, help="write the predicted map as a PNG here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    product = out / "nc-stats-pixels"
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mpirun"), "-n", "2", str(bin_dir / "eoembed"), "produce", str(NC / "landsat_multiband.tif"),
               "--out", str(product), "--level", "pixel", "--tile-size", "128", "--datetime", "2000-06-01T00:00:00Z",
               "--quantization", "int8", "--overwrite", "--no-progress"]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - started
    if run.returncode:
        print(run.stderr, file=sys.stderr)
        return run.returncode
    print(run.stderr.strip().splitlines()[-1])
    print(f"produce wall time including MPI start-up: {seconds:.1f} s")
    started = time.perf_counter()
    report = eoembed.validate(product)
    print(f"validate: {'valid' if report.ok else 'INVALID'} in {time.perf_counter() - started:.1f} s")
    pixels = eoembed.open(product)
    points = NC / "landsat96_points.shp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eoembed.FewShotWarning)  # water has few points: fewer queries at 5 and 10 shots
        for split in eoembed.fewshot_pixels(pixels, points, drop_classes=["agriculture", "sediment"], shots=(1, 5, 10)):
            print(split.table())
    started = time.perf_counter()
    prediction = eoembed.predict_pixels(pixels, points, out=out / "nc-map.tif", drop_classes=["agriculture", "sediment"],
                                        map_path=args.plot)
    print(f"predict (logreg, every pixel) in {time.perf_counter() - started:.1f} s -> {prediction}")
    import rasterio

    with rasterio.open(prediction) as got, rasterio.open(NC / "strata.tif") as truth:
        classes = json.loads(got.tags()["EOEMBED_CLASSES"])
        named = np.array(["", *classes], dtype=object)[got.read(1)]
        wanted = np.vectorize(lambda v: CLASSES.get(int(v), ""))(truth.read(1))
    scored = np.isin(wanted, classes) & (named != "")
    agreement = float((named[scored] == wanted[scored]).mean())
    chance = sum(float((named[scored] == c).mean()) * float((wanted[scored] == c).mean()) for c in classes)
    print(f"map agreement with strata.tif: {agreement:.3f} over {int(scored.sum())} pixels (chance {chance:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
