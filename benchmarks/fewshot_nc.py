"""Few-shot land-cover benchmark on real data: NC Landsat-7 (5-way) and BigEarthNet (smoke test).

NC: the Landsat-7 scene (bands 1-5, 28.5 m) goes through the real producer (`eoembed produce`, one
rank) once per encoder, in 8-px chips on the scene's pixel grid. The labels are the chips of
../shared/data/fewshot/nc_landclass96 (majority `landclass96` class of each 8-px chip, purity >= 0.6),
whose windows coincide with the producer's chips, joined by polygon overlap (eoembed.join_labels):
so every encoder is scored on the same 2,248 chips (agriculture, 7 chips, dropped). The raw-pixel
baseline flattens the same chips' pixels (read from the scene at each chip's pixel_bbox).

Every encoder configuration below was fixed before any score was seen; none is chosen by its
score. Episodes: 5 classes, 1/5/10 shots, 15 queries, 200 episodes, seed 0.

Usage: .venv/bin/python benchmarks/fewshot_nc.py [--episodes 200] [--out benchmarks/out/fewshot]
       [--plot docs/fewshot_nc.png] [--skip-bigearthnet]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import eoembed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCENE = DATA / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
CHIP_LABELS = DATA / "fewshot/nc_landclass96/chips.parquet"
BIGEARTHNET = [DATA / "imagery/bigearthnet/examples/BigEarthNet-S2-Example", DATA / "imagery/bigearthnet/tiny_s2"]
EOEMBED = str(Path(sys.executable).parent / "eoembed")
PRESTO_BANDS = {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}  # Landsat-7 ETM+ 1-5 -> Sentinel-2 names

# name -> producer options. Fixed a priori: the defaults, and the two documented rcf variants.
ENCODERS = {
    "stats": ["--encoder", "stats"],
    "rcf": ["--encoder", "rcf"],
    "rcf-whiten": ["--encoder", "rcf", "--encoder-option", "whiten=true"],
    "rcf-2048": ["--encoder", "rcf", "--encoder-option", "features=2048"],
    "presto": ["--encoder", "presto", "--encoder-option", f"band_map={json.dumps(PRESTO_BANDS)}",
               "--encoder-option", "latlon=[35.78, -78.64]", "--encoder-option", f"input_scale={10000 / 255}"],
}
SHOTS = (1, 5, 10)
METHODS = ["prototype", "logreg"]


def produce(name: str, options: list[str], out: Path, inputs: list[Path], chip_size: int) -> Path:
    target = out / name
    if (target / "collection.json").exists():
        return target
    command = [EOEMBED, "produce", *map(str, inputs), "--out", str(target), "--chip-size", str(chip_size),
               "--datetime", "2000-06-01T00:00:00Z", *options]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stderr}")
    return target


def raw_pixels(product: eoembed.Product, rows: np.ndarray) -> np.ndarray:
    import rasterio

    boxes = np.concatenate([np.asarray(b.column("pixel_bbox").flatten()).reshape(-1, 4)
                            for b in product.iter_batches(columns=["pixel_bbox"])])[rows]
    with rasterio.open(SCENE) as src:
        image = src.read().astype(np.float32)
    return np.stack([image[:, y0:y1, x0:x1].reshape(-1) for x0, y0, x1, y1 in boxes])


def nc(args) -> dict[tuple[str, str], eoembed.FewShotReport]:
    reports = {}
    joined = features = None
    for name, options in ENCODERS.items():
        t0 = time.perf_counter()
        path = produce(name, options, args.out / "nc", [SCENE], 8)
        product = eoembed.open(path)
        joined = eoembed.join_labels(product, CHIP_LABELS, label_field="class_name").without(["agriculture"])
        features = product.to_numpy()[joined.rows]
        print(f"{name}: {product.num_rows} chips, {product.dim}-d, {len(joined.rows)} labelled, {time.perf_counter() - t0:.1f} s", flush=True)
        for method in METHODS:
            reports[(name, method)] = eoembed.fewshot(features, joined.labels, shots=SHOTS, method=method,
                                                      episodes=args.episodes, seed=args.seed)
        if name == "stats":
            pixels = raw_pixels(product, joined.rows)
            for method in METHODS:
                reports[("raw pixels", method)] = eoembed.fewshot(pixels, joined.labels, shots=SHOTS, method=method,
                                                                  episodes=args.episodes, seed=args.seed)
    print(f"\nNC 5-way ({', '.join(f'{c} {n}' for c, n in joined.counts().items())}), {args.episodes} episodes, 15 queries, seed {args.seed}")
    print("accuracy (mean ± 95 % interval) / macro-F1\n")
    header = "| features | method | " + " | ".join(f"{s}-shot" for s in SHOTS) + " |"
    print(header + "\n|" + "---|" * (2 + len(SHOTS)))
    for (name, method), report in reports.items():
        cells = [f"{r.accuracy:.3f} ± {r.accuracy_ci95:.3f} / {r.macro_f1:.3f}" for r in report.results]
        print(f"| {name} | {method} | " + " | ".join(cells) + " |")
    beats = [name for name in ENCODERS if name != "stats" and any(
        all(reports[(name, m)].result(s).accuracy > reports[("stats", m)].result(s).accuracy for s in SHOTS) for m in METHODS)]
    print(f"\nbeats band statistics at every shot count (same method): {beats or 'none'}")
    return reports


def plot(reports, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.8 * len(METHODS), 3.6), dpi=90, sharey=True, squeeze=False)
    axes = axes[0]
    for ax, method in zip(axes, METHODS):
        for (name, m), report in reports.items():
            if m != method:
                continue
            acc = [r.accuracy for r in report.results]
            ci = [r.accuracy_ci95 for r in report.results]
            ax.errorbar(SHOTS, acc, yerr=ci, marker="o", capsize=3, label=name, linewidth=2.5 if name == "stats" else 1.2)
        ax.set_title(f"NC 5-way, {method}")
        ax.set_xlabel("shots per class")
        ax.set_xticks(SHOTS)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (95 % interval)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}")


def bigearthnet(args) -> None:
    """Smoke test: S2 patches -> stats product; each patch's first CORINE label on its footprint."""
    import geopandas as gpd
    import shapely

    patches = sorted(p for root in BIGEARTHNET for p in root.iterdir() if p.is_dir())
    path = produce("bigearthnet-stats", ["--encoder", "stats"], args.out, BIGEARTHNET, 40)
    names, geoms = [], []
    for patch in patches:
        meta = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
        c = meta["coordinates"]
        box = gpd.GeoSeries([shapely.box(c["ulx"], c["lry"], c["lrx"], c["uly"])], crs=meta["projection"]).to_crs("OGC:CRS84")
        names.append(meta["labels"][0])
        geoms.append(box.iloc[0])
    labels = gpd.GeoDataFrame({"label": names}, geometry=geoms, crs="OGC:CRS84")
    product = eoembed.open(path)
    joined = eoembed.join_labels(product, labels, label_field="label")
    counts = joined.counts()
    keep = [c for c, n in counts.items() if n >= 2]
    joined = joined.without([c for c in counts if c not in keep])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eoembed.FewShotWarning)  # a handful of patches: few queries by design
        report = eoembed.fewshot(product.to_numpy()[joined.rows], joined.labels, shots=(1,), method="prototype",
                                 episodes=args.episodes, seed=args.seed)
    r = report.results[0]
    print(f"\nBigEarthNet smoke test: {len(patches)} S2 patches -> {product.num_rows} chips of 40 px (stats), "
          f"{len(report.classes)}-way 1-shot prototype accuracy {r.accuracy:.3f} ± {r.accuracy_ci95:.3f} "
          f"(chance {1 / len(report.classes):.3f}); classes {joined.counts()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fewshot")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "fewshot_nc.png")
    parser.add_argument("--skip-bigearthnet", action="store_true")
    parser.add_argument("--methods", default="prototype,logreg", help="comma-separated (logreg on 2048-d rcf is slow on a CPU)")
    args = parser.parse_args()
    METHODS[:] = args.methods.split(",")
    reports = nc(args)
    plot(reports, args.plot)
    if not args.skip_bigearthnet:
        bigearthnet(args)


if __name__ == "__main__":
    main()
