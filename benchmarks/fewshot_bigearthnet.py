"""Per-label few-shot on BigEarthNet Sentinel-1 + Sentinel-2, blocked by patch, six feature sets,
with bytes per chip and compression ratios.

The six BigEarthNet example patches that have both sources (12 S2 L2A bands resampled onto the
10 m grid + the co-located S1 VV/VH: 14 inputs) go through the real producer once per feature set
in 40 px chips (9 per 120 px patch): stats; rcf (defaults); presto (S2 bands and VV/VH on their
Presto channels, B01/B09 left out); galileo nano (the 14 bands by name, one timestep dated
2017-07-01 for every patch: the encoder takes one month per product, the patches span June 2017 to
February 2018); the compressor (`mpirun -n 2 eoembed train`, distill, teachers stats + rcf 512 +
presto + galileo into D = 128 float32 values, 40 px chip windows at stride 20 of the same patches,
never their labels) and the training-free pca baseline (rcf 512 over its one season, PCA to 128).
Every configuration was fixed before any score was seen.

Per label: every CORINE label that two patches have and two lack is one 2-way task (label present
or not: every chip carries its patch's labels), 1 and 3 shots, 15 queries (fewer where a side has
fewer chips), 200 episodes, seed 0. Three shots, not five: a label held by two patches has its 18
chips in two blocks, and eoembed's episode sampler, which draws the support chips at random and
retries, finds five of them inside one block in only 3 % of its tries. Blocked by patch: support and query chips never come from one
patch; the random split beside it. The table gives each feature set's mean accuracy over the labels
(its interval: the labels' intervals combined as independent); the per-label rows follow.

Bytes per chip are as stored in the product; the compression ratio divides the chip's input pixels
as read (12 x 40 x 40 x 2 bytes of uint16 S2 + 2 x 40 x 40 x 4 bytes of float32 S1) by them.

Usage: .venv/bin/python benchmarks/fewshot_bigearthnet.py [--episodes 200] [--out benchmarks/out/fewshot]
       [--plot docs/fewshot_bigearthnet.png] [--methods prototype[,logreg]]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

import eoembed
from fewshot_nc import DATA, LABELS, RCF, ROOT, plot, produce, stored_bytes, teacher_bytes

S2_ROOT = DATA / "imagery/bigearthnet/examples/BigEarthNet-S2-Example"
S1_ROOT = DATA / "imagery/bigearthnet/examples/BigEarthNet-S1-Example"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "VV", "VH"]
CHIP = 40
DIM = 128
SHOTS = (1, 3)
METHODS = ["prototype"]

PRESTO = {"name": "presto", "options": {"bands": BANDS, "month": 7}}  # B01, B09 have no Presto channel
GALILEO = {"name": "galileo", "options": {"bands": BANDS, "times": ["2017-07-01"], "gsd_m": 10.0, "patch_size": 4}}
TRAINING = {"inputs": [str(S2_ROOT)], "s1_root": str(S1_ROOT), "chip_size": CHIP, "stride": 20, "min_valid_fraction": 1.0,
            "max_chips": 4096, "seed": 0}
FEATURES: dict[str, dict] = {
    "stats": {"name": "stats", "options": {}},
    "rcf": {"name": "rcf", "options": {}},
    "presto": PRESTO,
    "galileo": GALILEO,
    "compressor": {"train": {**TRAINING, "objective": "distill", "dim": DIM, "widths": [64, 128], "epochs": 10,
                             "batch_size": 32, "lr": 1e-3, "teachers": [{"name": "stats"}, RCF, PRESTO, GALILEO]}},
    "pca": {"train": {**TRAINING, "objective": "pca", "dim": DIM,
                      "teachers": [{"name": "rcf", "options": {**RCF["options"], "seasons": 1}}]}},
}


def patch_labels(product: eoembed.Product) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Each row's patch (by its footprint inside the patch's box) and each patch's CORINE labels."""
    import geopandas as gpd
    import shapely

    names, boxes, labels = [], [], {}
    for patch in sorted(p for p in S2_ROOT.iterdir() if p.is_dir()):
        meta = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
        c = meta["coordinates"]
        box = gpd.GeoSeries([shapely.box(c["ulx"], c["lry"], c["lrx"], c["uly"])], crs=meta["projection"]).to_crs("OGC:CRS84")
        names.append(patch.name)
        boxes.append(box.iloc[0])
        labels[patch.name] = list(meta["labels"])
    table = gpd.GeoDataFrame({"patch": names}, geometry=boxes, crs="OGC:CRS84")
    joined = eoembed.join_labels(product, table, label_field="patch")
    if len(joined.rows) != product.num_rows:
        raise SystemExit(f"{product.num_rows - len(joined.rows)} chips fall in no patch box")
    order = np.argsort(joined.rows)
    return np.asarray(joined.labels)[order], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fewshot")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "fewshot_bigearthnet.png")
    parser.add_argument("--methods", default="prototype", help="comma-separated (default: %(default)s)")
    args = parser.parse_args()
    METHODS[:] = args.methods.split(",")
    patches = sorted(str(p) for p in S2_ROOT.iterdir() if p.is_dir())
    products, per_label, sizes = {}, {}, {}
    for name, spec in FEATURES.items():
        products[name] = product = eoembed.open(produce(name, spec, args.out / "bigearthnet", patches, chip_size=CHIP,
                                                        extra=["--s1-root", str(S1_ROOT)]))
        sizes[name] = (product.dim, stored_bytes(product))
        patch_of, labels = patch_labels(product)
        x = product.to_numpy()
        counts = {label: sum(label in v for v in labels.values()) for v in labels.values() for label in v}
        tasks = sorted(label for label, n in counts.items() if n >= 2 and len(labels) - n >= 2)
        print(f"{name}: {product.num_rows} chips of {len(labels)} patches, {product.dim}-d; {len(tasks)} labels in 2+ "
              "patches and missing from 2+", flush=True)
        for label in tasks:
            y = np.array([label if label in labels[p] else "other" for p in patch_of])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", eoembed.FewShotWarning)  # 9 chips a patch: few queries by design
                for method in METHODS:
                    for split, blocks in (("blocked by patch", patch_of), ("random", None)):
                        per_label[(name, label, method, split)] = eoembed.fewshot(
                            x, y, shots=SHOTS, method=method, blocks=blocks, episodes=args.episodes, seed=args.seed)
    s2_dtype, s1_dtype = input_dtypes()
    input_bytes = CHIP * CHIP * (12 * np.dtype(s2_dtype).itemsize + 2 * np.dtype(s1_dtype).itemsize)
    print(f"\nBigEarthNet S1+S2, {len(patches)} patches, per-label 2-way, {args.episodes} episodes, seed {args.seed}; "
          f"accuracy mean over labels (± combined 95 % interval); bytes per chip as stored, ratio = {input_bytes:,} input "
          "bytes / them\n")
    print("| features | dim | bytes/chip | ratio | method | split | " + " | ".join(f"{s}-shot" for s in SHOTS) + " |")
    print("|---|---:|---:|---:|---|---|" + "---|" * len(SHOTS))
    summary = {}
    for name in FEATURES:
        for method in METHODS:
            for split in ("blocked by patch", "random"):
                reports = [r for (n, _, m, s), r in per_label.items() if (n, m, s) == (name, method, split)]
                cells, results = [], []
                for shots in SHOTS:
                    acc = np.mean([r.result(shots).accuracy for r in reports])
                    ci = np.sqrt(np.sum([r.result(shots).accuracy_ci95 ** 2 for r in reports])) / len(reports)
                    results.append(_Mean(shots, float(acc), float(ci)))
                    cells.append(f"{acc:.3f} ± {ci:.3f}")
                summary[(name, method, split)] = _Report(results)
                dim, size = sizes[name]
                print(f"| {LABELS[name]} | {dim} | {size:,} | {input_bytes / size:.2f}x | {method} | {split} | "
                      + " | ".join(cells) + " |")
    budget = teacher_bytes(products, ["stats", "rcf", "presto", "galileo"])
    print(f"\nteachers' concatenated features (float32): {budget:,} bytes per chip; / 4 = {budget / 4:,.0f}; "
          f"compressor {sizes['compressor'][1]:,}")
    print("\nper label (accuracy ± 95 % interval):\n")
    print("| label | features | method | split | " + " | ".join(f"{s}-shot" for s in SHOTS) + " |")
    print("|---|---|---|---|" + "---|" * len(SHOTS))
    for (name, label, method, split), r in sorted(per_label.items(), key=lambda kv: (kv[0][1], kv[0][3])):
        print(f"| {label} | {name} | {method} | {split} | "
              + " | ".join(f"{x.accuracy:.3f} ± {x.accuracy_ci95:.3f}" for x in r.results) + " |")
    plot(summary, args.plot, title="BigEarthNet S1+S2 per label", splits=("blocked by patch", "random"), method=METHODS[0])


class _Mean:
    """A shot count's accuracy averaged over labels, shaped like eoembed's ShotResult for the plot."""

    def __init__(self, shots: int, accuracy: float, accuracy_ci95: float) -> None:
        self.shots, self.accuracy, self.accuracy_ci95 = shots, accuracy, accuracy_ci95


class _Report:
    def __init__(self, results: list[_Mean]) -> None:
        self.results = results


def input_dtypes() -> tuple[str, str]:
    """The sample types of the S2 and S1 files, as the producer reads them."""
    import rasterio

    with rasterio.open(next(S2_ROOT.glob("*/*_B02.tif"))) as s2, rasterio.open(next(S1_ROOT.glob("*/*_VV.tif"))) as s1:
        return s2.dtypes[0], s1.dtypes[0]


if __name__ == "__main__":
    main()
