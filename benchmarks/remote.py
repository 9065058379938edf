"""Products read where they live: bytes and seconds over S3 and HTTP against the local copy.

    .venv/bin/python benchmarks/remote.py [--rows 100000] [--dim 128] [--files 20] [--row-group 5000]

One product (chips over a region, each data file a west-to-east strip, rows Hilbert-sorted in it) is
written locally, uploaded to an S3-compatible server (moto) and served by an HTTP server with Range
requests, both on 127.0.0.1 and counting the body bytes they send. For each location:

* 1% bbox query  open + ``SELECT chip_id ... WHERE bbox inside a box of 1% of the area``;
* full read      open + ``to_numpy()`` (every vector);
* download first ``eoembed.copy`` of the whole product to a local folder, then the 1% query there.

Loopback servers have no network latency: seconds here are CPU and protocol cost, bytes are what a
real link would carry. Ratios come from this one run only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the loopback servers of the tests

QUERY = ("SELECT chip_id FROM embeddings WHERE bbox.xmin >= ? AND bbox.xmax <= ? AND bbox.ymin >= ? "
         "AND bbox.ymax <= ?")


def measure(counter, action) -> tuple[float, int]:
    if counter is not None:
        counter.reset()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start, counter.bytes if counter is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--row-group", type=int, default=5000)
    args = parser.parse_args()

    from tests.servers import RangeHTTPServer, S3Server, total_bytes, upload

    with tempfile.TemporaryDirectory(prefix="eoembed-remote-") as folder:
        root = Path(folder)
        from tests import factories

        local = factories.write_strips(root / "served" / "p", n=args.rows, dim=args.dim, files=args.files,
                                       row_group_size=args.row_group)
        size = total_bytes(local)
        s3, http = S3Server().start(), RangeHTTPServer(root / "served").start()
        os.environ.update(s3.environment(), XDG_CACHE_HOME=str(root / "cache"))
        upload(local, "s3://bench/p")
        import eoembed

        xmin, ymin, xmax, ymax = eoembed.open(local).bbox
        box = [xmin, xmin + (xmax - xmin) * 0.1, ymin, ymin + (ymax - ymin) * 0.1]  # 1% of the area
        locations = {"local": (str(local), None), "s3": ("s3://bench/p", s3.counter), "http": (f"{http.url}/p", http.counter)}
        print(f"product: {args.rows} chips x {args.dim} float32 in {args.files} files, {size / 1e6:.1f} MB; "
              f"1% bbox query returns {eoembed.open(local).sql(QUERY, box).num_rows} chips")
        print(f"{'location':8} {'question':16} {'seconds':>8} {'MB moved':>9} {'of product':>10}")
        for name, (where, counter) in locations.items():
            rows = {
                "1% bbox query": lambda: eoembed.open(where).sql(QUERY, box),
                "full read": lambda: eoembed.open(where).to_numpy(),
            }
            if counter is not None:
                target = root / f"download-{name}"
                rows["download first"] = lambda: (eoembed.copy(where, target, overwrite=True),
                                                  eoembed.open(target).sql(QUERY, box))
            for question, action in rows.items():
                seconds, moved = measure(counter, action)
                moved = moved if counter is not None else 0
                share = f"{moved / size:.1%}" if counter is not None else "-"
                print(f"{name:8} {question:16} {seconds:8.3f} {moved / 1e6:9.2f} {share:>10}")
        s3.stop()
        http.stop()


if __name__ == "__main__":
    main()
