"""NeuCo-Bench (the authors' protocol, eoembed._neuco) on the NC Landsat-7 chips, random folds beside
spatially blocked folds.

Tasks come from the wall-to-wall land-cover raster strata.tif (eoembed.raster_labels, purity >= 0.6):
one binary task per class with at least 20 chips (``<class>__classification.csv``: the chip's
majority class is that class or not) and ``homogeneity__regression.csv`` (the share of the chip's
majority class). The stats product is the one benchmarks/fewshot_nc.py makes (made here if missing).

Usage: .venv/bin/python benchmarks/neuco_nc.py [--k-folds 40] [--epochs 20] [--block 2km]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import eoembed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCENE = DATA / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
STRATA = DATA / "imagery/nc_landsat7_landclass96/strata.tif"
STRATA_CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k-folds", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--block", default=eoembed._blocks.DEFAULT_BLOCK)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fewshot")
    args = parser.parse_args()
    product_path = args.out / "nc" / "stats"
    if not (product_path / "collection.json").exists():
        subprocess.run([str(Path(sys.executable).parent / "eoembed"), "produce", str(SCENE), "--out", str(product_path),
                        "--chip-size", "8", "--datetime", "2000-06-01T00:00:00Z", "--encoder", "stats"], check=True)
    product = eoembed.open(product_path)
    labelled = eoembed.raster_labels(product, STRATA, classes=STRATA_CLASSES)
    tasks = args.out / "neuco-tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for old in tasks.glob("*.csv"):
        old.unlink()
    rows = list(zip(labelled.chip_ids.tolist(), labelled.labels.tolist(), labelled.purity.tolist()))
    for name, count in labelled.counts().items():
        if count >= 20:
            (tasks / f"{name}__classification.csv").write_text(
                "id,label\n" + "".join(f"{chip},{int(label == name)}\n" for chip, label, _ in rows))
    (tasks / "homogeneity__regression.csv").write_text("id,label\n" + "".join(f"{chip},{share}\n" for chip, _, share in rows))
    print(f"{product.num_rows} chips, {len(rows)} labelled; tasks: {sorted(p.stem for p in tasks.glob('*.csv'))}")
    for block in (None, args.block):
        t0 = time.perf_counter()
        report = eoembed.neuco_evaluate(product, tasks=tasks, block=block, k_folds=args.k_folds, epochs=args.epochs)
        print(f"\n{report.table()}\n({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
