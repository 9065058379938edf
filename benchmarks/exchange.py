"""Cutting and combining a product: seconds and bytes of subset, merge and append.

A synthetic product of N chips (unit 128-d vectors, int8 per-row, 16 data files of row groups of
4,096 rows, each file a strip of longitude) is cut by a bbox of 1 % of its extent (a corner) and by a where filter; the two halves
are merged back; and the second half is appended to the first. The subset reports the row groups
and the compressed column bytes it read against the product's (pruning by the ``bbox`` covering
statistics), and how long the same selection takes through ``query``.

Usage: .venv/bin/python benchmarks/exchange.py [--rows 400000] [--out benchmarks/out/exchange]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import eoembed
from eoembed._exchange import _groups_that_may_pass

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test factories make the chips


def product(path: Path, rows: int) -> Path:
    from tests.factories import chips, model_contract

    batch = chips(rows, 128, seed=0)
    # Files cover strips of longitude, as a producer's files cover scenes: rows ordered west to east.
    order = np.argsort(batch["bounds"][:, 0], kind="stable")
    batch = {k: v if isinstance(v, str) else np.asarray(v, dtype=object if k == "datetime" else None)[order]
             for k, v in batch.items()}
    return eoembed.write_product(path, batch, model=model_contract(128), quantization="int8-per-row", normalize=True,
                                 row_group_size=4096, max_rows_per_file=-(-rows // 16))


def read_share(source: Path, bbox) -> tuple[int, int, int, int]:
    """Row groups and compressed bytes a bbox subset reads, and the product's totals."""
    groups = total_groups = read_bytes = total_bytes = 0
    for path in eoembed.open(source).files:
        meta = pq.ParquetFile(path).metadata
        kept = set(_groups_that_may_pass(meta, pq.read_schema(path), bbox, None))
        for g in range(meta.num_row_groups):
            size = sum(meta.row_group(g).column(j).total_compressed_size for j in range(meta.num_columns))
            total_bytes += size
            read_bytes += size if g in kept else 0
        groups, total_groups = groups + len(kept), total_groups + meta.num_row_groups
    return groups, total_groups, read_bytes, total_bytes


def timed(label: str, work):
    start = time.perf_counter()
    result = work()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/exchange"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    source = timed(f"write {args.rows} chips", lambda: product(args.out / "p", args.rows))
    x0, y0, x1, y1 = eoembed.open(source).bbox
    corner = (x0, y0, x0 + (x1 - x0) / 10, y0 + (y1 - y0) / 10)  # 1 % of the extent
    part = timed("subset 1 % bbox", lambda: eoembed.subset(source, bbox=corner, out=args.out / "corner"))
    groups, total_groups, read, total = read_share(source, corner)
    print(f"  {eoembed.open(part).num_rows} chips; read {groups}/{total_groups} row groups, "
          f"{read / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * read / total:.1f} %)")
    sql = f"SELECT count(*) FROM embeddings WHERE bbox.xmax >= {corner[0]} AND bbox.xmin <= {corner[2]} " \
          f"AND bbox.ymax >= {corner[1]} AND bbox.ymin <= {corner[3]}"
    timed("  the same selection through query (count only)", lambda: eoembed.open(source).sql(sql))
    half = "chip_id < 'chip-" + f"{args.rows // 2:07d}'"
    a = timed("subset where (half)", lambda: eoembed.subset(source, where=half, out=args.out / "a"))
    b = eoembed.subset(source, where=f"NOT ({half})", out=args.out / "b")
    timed("merge the halves", lambda: eoembed.merge([a, b], out=args.out / "m"))
    timed("append the second half to the first", lambda: eoembed.append(a, [b]))
    assert np.array_equal(eoembed.open(a).to_numpy(dequantize=False).shape, eoembed.open(source).to_numpy(dequantize=False).shape)
    timed("validate the appended product", lambda: eoembed.validate(a))


if __name__ == "__main__":
    main()
