"""What the SQL sandbox costs: the same queries over a plain connection and over the sandbox.

    .venv/bin/python benchmarks/sql_sandbox.py [--rows 200000] [--dim 64] [--repeats 5] [--out DIR]

"plain" is a connection with the ``embeddings`` view as before the sandbox (external access on);
"sandbox" is :func:`eoembed._query.open_views` with :func:`eoembed._query.run` (allowed paths, external
access off, configuration locked, the statement checked). Medians in ms, the two run in turns; timings on a shared machine
are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from search_1m import write_product  # same folder: run as a script


def paired_ms(plain, sandbox, repeats: int) -> tuple[float, float]:
    """Medians of both, run in turns so that a load change on the machine hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((plain, sandbox), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="product folder (kept); default a temporary folder")
    args = parser.parse_args()

    import eoembed
    from eoembed._query import connect, create_view, open_views, run

    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sqlbox-bench-")) / "product"
    if not (folder / "collection.json").exists():
        write_product(folder, rows=args.rows, dim=args.dim, clusters=100)
    product = eoembed.open(folder)
    vector = product.to_numpy()[0].tolist()

    def plain():
        con = connect()
        create_view(con, name="embeddings", files=product.files, quant=product.quantization)
        return con

    def sandbox():
        return open_views({"embeddings": product})

    queries = {
        "count(*)": ("SELECT count(*) FROM embeddings", None),
        "bbox 1%": ("SELECT count(*) FROM embeddings WHERE bbox.xmin BETWEEN ? AND ? AND bbox.ymin BETWEEN ? AND ?",
                    [0.0, 4.0, 40.0, 42.5]),
        "top-10 cosine": (f"SELECT chip_id FROM embeddings ORDER BY array_cosine_similarity(embedding, ?::FLOAT[{args.dim}]) "
                          "DESC LIMIT 10", [vector]),
        "rows per cell": ("SELECT grid_cell, count(*), avg(bbox.xmin) FROM embeddings GROUP BY grid_cell", None),
    }
    print(f"{product.num_rows} rows, dim {args.dim}, {len(product.files)} files; medians of {args.repeats}")
    print(f"{'':16}{'plain ms':>10}{'sandbox ms':>12}{'ratio':>8}")
    plain_ms, sandbox_ms = paired_ms(lambda: plain().close(), lambda: sandbox().close(), args.repeats)
    print(f"{'open connection':16}{plain_ms:10.1f}{sandbox_ms:12.1f}{sandbox_ms / plain_ms:8.2f}")
    cons = plain(), sandbox()
    for name, (query, params) in queries.items():
        plain_ms, sandbox_ms = paired_ms(lambda: cons[0].execute(query, params).to_arrow_table(),
                                         lambda: run(cons[1], query, params), args.repeats)
        print(f"{name:16}{plain_ms:10.1f}{sandbox_ms:12.1f}{sandbox_ms / plain_ms:8.2f}")


if __name__ == "__main__":
    main()
