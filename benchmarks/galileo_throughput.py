"""Chips per second of the galileo encoder beside presto and stats, on the same real chips, one torch thread.

    .venv/bin/python benchmarks/galileo_throughput.py [--repeats 3]

Chips are the BigEarthNet patch S2B_MSIL2A_20170924T93020_69_24 (12 S2 L2A bands on the 10 m grid,
then VV / VH of its S1 patch), cut into 8 px and 16 px chips; galileo sees them as one season.
Each encoder runs on the same array in one process, interleaved, best of ``--repeats``: the ratios
compare like with like on a busy machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from eoembed.producers.encoders import get_encoder
from eoembed.producers.stack import bigearthnet_s2_stack, find_s1_for_s2, read_stack_window

BEN = Path(__file__).resolve().parents[2] / "shared/data/imagery/bigearthnet/examples"
PATCH = "S2B_MSIL2A_20170924T93020_69_24"


def chips(size: int) -> tuple[np.ndarray, list[str]]:
    s2 = BEN / "BigEarthNet-S2-Example" / PATCH
    stack = bigearthnet_s2_stack(s2, with_s1=find_s1_for_s2(s2, BEN / "BigEarthNet-S1-Example"))
    pixels, _ = read_stack_window(stack, col_off=0, row_off=0, width=stack.width, height=stack.height)
    n = stack.width // size
    cut = pixels[:, : n * size, : n * size].reshape(len(stack.band_names), n, size, n, size)
    return np.ascontiguousarray(cut.transpose(1, 3, 0, 2, 4).reshape(n * n, -1, size, size)), list(stack.band_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in (8, 16):
        x, bands = chips(size)
        presto_map = {b: (b.replace("B0", "B") if b not in ("B01", "B09") else None) for b in bands}
        encoders = {
            "stats": get_encoder("stats"),
            "presto": get_encoder("presto", band_map=presto_map, month=9),
            "galileo p=4": get_encoder("galileo", bands=bands, times=["2017-09-24"], patch_size=4),
            "galileo p=2": get_encoder("galileo", bands=bands, times=["2017-09-24"], patch_size=2),
        }
        best = {name: float("inf") for name in encoders}
        for _ in range(args.repeats):
            for name, encoder in encoders.items():
                t0 = time.perf_counter()
                encoder.encode(x)
                best[name] = min(best[name], time.perf_counter() - t0)
        print(f"{len(x)} chips of {size} px x {len(bands)} bands, 1 torch thread, best of {args.repeats}:")
        for name, seconds in best.items():
            print(f"  {name:12s} {len(x) / seconds:9.0f} chips/s  ({best['presto'] / seconds:.2f} x presto)")


if __name__ == "__main__":
    main()
