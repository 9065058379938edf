"""Few-shot land-cover benchmark on the NC Landsat-7 scene (5-way), six feature sets, a spatially
blocked split beside the random split, with bytes per chip and compression ratios.

The scene (Landsat-7 ETM+ bands 1-5, float32 DN 0-255, 28.5 m) goes through the real producer
(`eoembed produce`, one rank) once per feature set, in 8 px chips on the scene's pixel grid:

- stats: per-band statistics (25-d);
- rcf: 512 random convolutional features (the encoder's defaults);
- presto: pretrained Presto, ETM+ bands fed to their Sentinel-2 equivalents (band-alias table,
  eoembed.producers.encoders.bands: B1-B5 -> B2, B3, B4, B8, B11), DN x 10000/255, scene centre;
- galileo: pretrained Galileo nano, the same band aliases (sensor=landsat7) and scaling, June 2000,
  28.5 m, 4 px patches;
- compressor: `mpirun -n 2 eoembed train`, objective distill, teachers stats + rcf 512 + presto +
  galileo (each as above, weight 1) into D = 128 float32 values, a 64/128-channel student, 10
  epochs, batch 256, on 2,048 chip windows of the scene (stride 4, seed 0), never its labels; then
  `eoembed produce --encoder checkpoint:.../encoder.pt`;
- pca: the training-free baseline, rcf 512 averaged over seasons (the scene has one) and a PCA to
  the same D = 128, fitted on the same chip windows.

Every configuration above (and D) was fixed before any score was seen; none is chosen by its score,
and the test labels are never used for training or selection. Labels: every chip is labelled from
the wall-to-wall land-cover raster strata.tif (majority class, purity >= 0.6; agriculture, 7 chips,
dropped). Splits: blocked (support and query chips never in the same 2 km block, eoembed's default;
--block) and random. Episodes: 5 classes, 1/5/10 shots, 15 queries, 200 episodes, seed 0, 95 %
intervals over episodes. The goal is judged on the blocked split with the first method given.

Bytes per chip are as stored in the product (dim x bytes of its quantisation); the compression ratio
divides the chip's input pixels as read (bands x 8 x 8 x 4 bytes of float32) by them.

Usage: .venv/bin/python benchmarks/fewshot_nc.py [--episodes 200] [--out benchmarks/out/fewshot]
       [--plot docs/fewshot_nc.png] [--block 2km] [--methods prototype[,logreg]] [--autocorrelation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import eoembed

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EOEMBED_SHARED", ROOT.parent / "shared")) / "data"
SCENE = DATA / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
STRATA = DATA / "imagery/nc_landsat7_landclass96/strata.tif"
STRATA_CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}
BIN = Path(sys.executable).parent
LANDSAT = ["B1", "B2", "B3", "B4", "B5"]  # the scene's bands carry no descriptions: positional names
DN_TO_REFLECTANCE = 10000 / 255  # crude: 8-bit DN onto the reflectance x 10 000 scale, no calibration
DIM = 128
SHOTS = (1, 5, 10)
METHODS = ["prototype"]

PRESTO = {"name": "presto", "options": {"bands": LANDSAT, "sensor": "landsat7", "latlon": [35.78, -78.64],
                                        "input_scale": DN_TO_REFLECTANCE}}
GALILEO = {"name": "galileo", "options": {"bands": LANDSAT, "sensor": "landsat7", "input_scale": DN_TO_REFLECTANCE,
                                          "times": ["2000-06-01"], "gsd_m": 28.5, "patch_size": 4}}
RCF = {"name": "rcf", "options": {"features": 512, "seed": 0}}
TRAINING = {"inputs": [str(SCENE)], "chip_size": 8, "stride": 4, "min_valid_fraction": 1.0, "max_chips": 2048, "seed": 0}
#: feature set -> an encoder spec, or a training config whose encoder.pt the producer then uses
FEATURES: dict[str, dict] = {
    "stats": {"name": "stats", "options": {}},
    "rcf": {"name": "rcf", "options": {}},
    "presto": PRESTO,
    "galileo": GALILEO,
    "compressor": {"train": {**TRAINING, "objective": "distill", "dim": DIM, "widths": [64, 128], "epochs": 10,
                             "batch_size": 256, "lr": 1e-3,
                             "teachers": [{"name": "stats"}, RCF, PRESTO, GALILEO]}},
    "pca": {"train": {**TRAINING, "objective": "pca", "dim": DIM,
                      "teachers": [{"name": "rcf", "options": {**RCF["options"], "seasons": 1}}]}},
}
LABELS = {"stats": "stats (band statistics)", "rcf": "rcf (random conv. features)", "presto": "presto (pretrained)",
          "galileo": "galileo nano (pretrained)", "compressor": "compressor (distilled, 4 teachers)",
          "pca": "pca (rcf over seasons, PCA)"}


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _run(command: list[str]) -> None:
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stderr[-4000:]}")


def train(config: dict, folder: Path, *, ranks: int = 2) -> Path:
    """`mpirun -n RANKS eoembed train` on ``config`` (written as TOML) -> the encoder.pt it leaves."""
    encoder = folder / "run" / "encoder.pt"
    if encoder.exists():
        return encoder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in {**config, "out": str(folder / "run")}.items()))
    _run([str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "train", "--config", str(folder / "train.toml"),
          "--no-progress", "--overwrite"])
    return encoder


def produce(name: str, spec: dict, out: Path, inputs: list[str], *, chip_size: int, extra: list[str] = ()) -> Path:
    """The product of feature set ``name`` (made once, then reused from ``out``)."""
    target = out / name
    if (target / "collection.json").exists():
        return target
    if "train" in spec:
        options = ["--encoder", f"checkpoint:{train(spec['train'], out / 'runs' / name)}"]
    else:
        options = ["--encoder", spec["name"]]
        for key, value in spec["options"].items():
            options += ["--encoder-option", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    _run([str(BIN / "eoembed"), "produce", *inputs, "--out", str(target), "--chip-size", str(chip_size),
          "--no-progress", "--overwrite", *extra, *options])
    return target


def stored_bytes(product: eoembed.Product) -> int:
    """Bytes of one chip's vector as the product stores it (a per-row scale counts too)."""
    q = product.quantization
    if q.dtype == "binary":
        return -(-product.dim // 8)
    return product.dim * np.dtype(q.dtype).itemsize + (4 if q.method == "per-row" else 0)


def teacher_bytes(products: dict[str, eoembed.Product], teachers: list[str]) -> int:
    """The teachers' concatenated float32 features per chip (what the compressor compresses)."""
    return sum(4 * products[t].dim for t in teachers)


def beats(reports, candidate: str, baseline: str, method: str, split: str) -> bool:
    """``candidate`` beats ``baseline`` by more than both 95 % intervals at every shot count."""
    a, b = reports[(candidate, method, split)], reports[(baseline, method, split)]
    return all(a.result(s).accuracy - a.result(s).accuracy_ci95 > b.result(s).accuracy + b.result(s).accuracy_ci95
               for s in SHOTS)


def print_table(reports, sizes: dict[str, tuple[int, int]], input_bytes: int, title: str) -> None:
    print(f"\n{title}\naccuracy (mean ± 95 % interval) / macro-F1; bytes per chip as stored, ratio = {input_bytes:,} "
          "input bytes / them\n")
    shots = [r.shots for r in next(iter(reports.values())).results]
    print("| features | dim | bytes/chip | ratio | method | split | " + " | ".join(f"{s}-shot" for s in shots) + " |")
    print("|---|---:|---:|---:|---|---|" + "---|" * len(shots))
    for (name, method, split), report in reports.items():
        dim, size = sizes[name]
        cells = [f"{r.accuracy:.3f} ± {r.accuracy_ci95:.3f} / {r.macro_f1:.3f}" for r in report.results]
        print(f"| {LABELS.get(name, name)} | {dim} | {size:,} | {input_bytes / size:.2f}x | {method} | {split} | "
              + " | ".join(cells) + " |")


def nc(args) -> dict:
    """(features, method, split) -> report; prints the table and the goal."""
    reports, sizes, products = {}, {}, {}
    for name, spec in FEATURES.items():
        t0 = time.perf_counter()
        product = products[name] = eoembed.open(produce(name, spec, args.out / "nc", [str(SCENE)], chip_size=8,
                                                        extra=["--datetime", "2000-06-01T00:00:00Z"]))
        joined = eoembed.raster_labels(product, STRATA, classes=STRATA_CLASSES).without(["agriculture"])
        blocks = eoembed.spatial_blocks(product, block=args.block).take(joined.rows)
        x = product.to_numpy()[joined.rows]
        sizes[name] = (product.dim, stored_bytes(product))
        print(f"{name}: {product.num_rows} chips, {product.dim}-d, {len(joined.rows)} labelled, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for method in METHODS:
            for split, split_blocks in (("blocked", blocks), ("random", None)):
                reports[(name, method, split)] = eoembed.fewshot(x, joined.labels, shots=SHOTS, method=method, blocks=split_blocks,
                                                                 episodes=args.episodes, seed=args.seed)
    input_bytes = len(LANDSAT) * 8 * 8 * np.dtype(np.float32).itemsize  # the scene's float32 samples as read
    print_table(reports, sizes, input_bytes,
                f"NC 5-way ({', '.join(f'{c} {n}' for c, n in joined.counts().items())}), {args.episodes} episodes, "
                f"15 queries, seed {args.seed}; blocked: {args.block} blocks ({blocks.count} blocks)")
    method = METHODS[0]
    budget = teacher_bytes(products, ["stats", "rcf", "presto", "galileo"])
    for split in ("blocked", "random"):
        winners = [n for n in FEATURES if n != "stats" and beats(reports, n, "stats", method, split)]
        print(f"{split}, {method}: beats per-band statistics by more than both intervals at every shot count: {winners or 'none'}")
    size = sizes["compressor"][1]
    margins = ", ".join(f"{s}-shot {reports[('compressor', method, 'blocked')].result(s).accuracy - reports[('stats', method, 'blocked')].result(s).accuracy:+.3f}"
                        for s in SHOTS)
    met = beats(reports, "compressor", "stats", method, "blocked") and size <= budget / 4
    print(f"\nteachers' concatenated features (stats + rcf + presto + galileo, float32): {budget:,} bytes per chip; / 4 = {budget / 4:,.0f}")
    print(f"goal (compressor beats per-band statistics by more than the 95 % interval at every shot count on blocked NC, "
          f"at <= {budget / 4:,.0f} bytes per chip): {'MET' if met else 'NOT MET'}; compressor {size:,} bytes per chip, "
          f"accuracy minus stats ({method}, blocked): {margins}")
    return reports


def autocorrelation(args) -> None:
    """What the default block size rests on: how fast likeness decays with distance on the NC scene."""
    import pyproj
    import rasterio
    import shapely

    with rasterio.open(STRATA) as src:
        codes = src.read(1, masked=True)
    classed, codes = ~codes.mask, codes.filled(0).astype(int)
    share = np.bincount(codes[classed]) / classed.sum()
    chance = float((share**2).sum())
    print("land cover (strata.tif): P(two pixels at this lag share a class) - P(two random pixels do)")
    for metres in (228, 500, 1000, 1500, 2000, 3000, 4000):
        lag = int(round(metres / 28.5))
        same = [(a[v] == b[v]).mean() for a, b, v in ((codes[:, :-lag], codes[:, lag:], classed[:, :-lag] & classed[:, lag:]),
                                                      (codes[:-lag], codes[lag:], classed[:-lag] & classed[lag:]))]
        print(f"  {lag * 28.5:6.0f} m: {np.mean(same) - chance:.3f}")
    product = eoembed.open(produce("stats", FEATURES["stats"], args.out / "nc", [str(SCENE)], chip_size=8,
                                   extra=["--datetime", "2000-06-01T00:00:00Z"]))
    x = product.to_numpy().astype(np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    _, footprints = eoembed._labels.chip_footprints(product)
    centres = shapely.centroid(footprints)
    cx, cy = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:32119", always_xy=True).transform(shapely.get_x(centres), shapely.get_y(centres))
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(x), 400_000), rng.integers(0, len(x), 400_000)
    distance, likeness = np.hypot(cx[i] - cx[j], cy[i] - cy[j]), (x[i] * x[j]).mean(axis=1)
    print("stats features of 8 px chips: mean correlation of two chips' standardised vectors, by distance")
    for low, high in ((200, 260), (500, 1000), (1000, 1500), (1500, 2000), (2000, 2500), (2500, 3500), (3500, 5000), (5000, 9000)):
        pairs = (distance >= low) & (distance < high)
        print(f"  {low:>5}-{high:<5} m: {likeness[pairs].mean():.3f} ({pairs.sum()} pairs)")


def plot(reports, path: Path, *, title: str, method: str, splits=("blocked", "random")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 3.4), dpi=80, sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        for (name, m, s), report in reports.items():
            if m != method or s != split:
                continue
            shots = [r.shots for r in report.results]
            ax.errorbar(shots, [r.accuracy for r in report.results], yerr=[r.accuracy_ci95 for r in report.results],
                        marker="o", capsize=3, label=name, linewidth=2.5 if name in ("stats", "compressor") else 1.2)
            ax.set_xticks(shots)
        ax.set_title(f"{title}, {split} split", fontsize=9)
        ax.set_xlabel("shots per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"accuracy, {method} (95 % interval)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fewshot")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "fewshot_nc.png")
    parser.add_argument("--block", default=eoembed._blocks.DEFAULT_BLOCK, help="block size of the blocked split (default: %(default)s)")
    parser.add_argument("--autocorrelation", action="store_true", help="print the measurements behind the default block and stop")
    parser.add_argument("--methods", default="prototype", help="comma-separated; the first judges the goal (default: %(default)s)")
    args = parser.parse_args()
    METHODS[:] = args.methods.split(",")
    if args.autocorrelation:
        autocorrelation(args)
        return
    reports = nc(args)
    plot(reports, args.plot, title="NC 5-way", method=METHODS[0])


if __name__ == "__main__":
    main()
