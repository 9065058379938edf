"""Pooled imports of embedding rasters: a 1024 x 1024 px AlphaEarth tile (64 int8 bands) and a
TESSERA tile of the same size (128 int8 + scales), both written by the test fixtures, imported
into 16 px chips (4,096 chips each). Reports the wall time of each import (validation of the
source and writing of the product included).

Usage: .venv/bin/python benchmarks/import_pooled.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eoembed  # noqa: E402
from tests.sdk.importers.fixtures import alphaearth_cog, tessera_tile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for kind, source, when in (
            ("alphaearth", alphaearth_cog(folder / "tile.tif", width=1024, height=1024, nodata_block=False), "2023"),
            ("tessera", tessera_tile(folder / "tessera", width=1024, height=1024), "2024"),
        ):
            start = time.perf_counter()
            report = eoembed.import_product(kind, [source], out=folder / f"{kind}-product", chip_size=16, datetime=when, overwrite=True)
            print(f"{kind}: {report.rows} chips of 16 px from 1024 x 1024 px in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
