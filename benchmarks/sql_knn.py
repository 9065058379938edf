"""Top-10 in SQL against its references, in one run: brute force over the product against a native
DuckDB table, and ``knn(...)`` in SQL against ``search``, with the ids checked equal.

    .venv/bin/python benchmarks/sql_knn.py [--rows 1000000] [--dim 128] [--clusters 1000] [--queries 5]
        [--repeats 3] [--out DIR]

Each pair runs in turns (``paired_ms``), so a load change on this shared machine hits both alike:

* brute force: ``product.sql`` top-10 by ``array_cosine_similarity`` over the ``embeddings`` view,
  against the same query over a native in-memory table (chip_id, embedding FLOAT[D]) of the same rows;
* where its time goes: the view against the same view with DuckDB's late materialisation off (a
  top-N then re-reads the vector column of the row groups holding the hits), and against the view
  over a copy of the data files whose vector column is stored without compression; a scan of the
  stored vector column alone against that scan plus the cast to FLOAT[D] the view makes;
* knn: ``SELECT * FROM knn(?, 10)`` and the same joined to ``embeddings`` for a column, against
  ``product.search(q, k=10)`` (cache warm).

Timings are medians in ms over ``--queries`` vectors x ``--repeats``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from search_1m import write_product  # same folder: run as a script
from sql_sandbox import paired_ms as paired_cold


def paired_ms(first, second, repeats: int) -> tuple[float, float]:
    """Medians of both run in turns, after one untimed run of each (file cache, plans)."""
    first(), second()
    return paired_cold(first, second, repeats)


def uncompressed_copy(files: list[Path], folder: Path) -> list[str]:
    """The data files again, the vector column stored without compression (others as they were)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(files):
        handle = pq.ParquetFile(path)
        leaves = [handle.schema.column(j).path for j in range(len(handle.schema))]
        target = folder / f"{i:05d}.parquet"
        codecs = {leaf: "NONE" if leaf.startswith("embedding.") else "ZSTD" for leaf in leaves}
        with pq.ParquetWriter(target, handle.schema_arrow, compression=codecs) as writer:
            for group in range(handle.num_row_groups):  # the same row groups
                writer.write_table(handle.read_row_group(group), row_group_size=handle.metadata.num_rows)
        out.append(str(target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="product folder (kept); default a temporary folder")
    args = parser.parse_args()

    import duckdb

    import eoembed
    from eoembed._query import connect, create_view

    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sql-knn-bench-")) / "product"
    if not (folder / "collection.json").exists():
        start = time.perf_counter()
        write_product(folder, rows=args.rows, dim=args.dim, clusters=args.clusters)
        print(f"wrote {args.rows} rows in {time.perf_counter() - start:.1f} s to {folder}")
    product = eoembed.open(folder)
    rng = np.random.default_rng(1)
    vectors = product.to_numpy()
    queries = vectors[rng.choice(len(vectors), args.queries, replace=False)]
    queries = (queries + 0.05 / np.sqrt(args.dim) * rng.normal(size=queries.shape)).astype(np.float32)
    del vectors
    product.search(queries[0], k=10)  # builds the decoded-vector cache once, outside the timings

    brute = (f"SELECT chip_id, array_cosine_similarity(embedding, ?::FLOAT[{args.dim}]) AS s FROM {{table}} "
             "ORDER BY s DESC LIMIT 10")
    copies = folder.parent / f".{folder.name}.uncompressed"
    native = duckdb.connect()
    files = [str(path) for path in product.files]
    native.execute(f"CREATE TABLE native AS SELECT chip_id, embedding::FLOAT[{args.dim}] AS embedding "
                   "FROM read_parquet(?)", [files])
    eager = connect()  # the product's view, outside the sandbox so that a setting can change
    create_view(eager, name="embeddings", files=product.files, quant=product.quantization)
    eager.execute("SET late_materialization_max_rows = 0")
    uncompressed = connect()  # the same view over the copy whose vector column is not compressed
    create_view(uncompressed, name="embeddings", files=uncompressed_copy(product.files, copies),
                quant=product.quantization)
    scans = duckdb.connect()
    scan = "SELECT sum(len({column})) FROM read_parquet(?)"

    def ids_of(table) -> list[str]:
        return table.column("chip_id").to_pylist()

    def per_query(first, second) -> tuple[float, float]:
        """ms per query of two functions of a query vector, run in turns."""
        return tuple(t / len(queries) for t in paired_ms(lambda: [first(q) for q in queries],
                                                          lambda: [second(q) for q in queries], args.repeats))

    def view(q):
        return product.sql(brute.format(table="embeddings"), [q])

    view_ms, native_ms = per_query(view, lambda q: native.execute(brute.format(table="native"), [q]).fetchall())
    lazy_ms, eager_ms = per_query(view, lambda q: eager.execute(brute.format(table="embeddings"), [q]).fetchall())
    zstd_ms, plain_ms = per_query(view, lambda q: uncompressed.execute(brute.format(table="embeddings"), [q]).fetchall())
    scan_ms, scan_cast_ms = paired_ms(
        lambda: scans.execute(scan.format(column="embedding"), [files]).fetchall(),
        lambda: scans.execute(scan.format(column=f"embedding::FLOAT[{args.dim}]"), [files]).fetchall(), args.repeats)
    knn = "SELECT * FROM knn(?, 10)"
    joined = ("SELECT k.chip_id, k.rank, k.distance, e.datetime FROM knn(?, 10) AS k "
              "JOIN embeddings AS e USING (chip_id) ORDER BY k.rank")
    knn_ms, search_ms = per_query(lambda q: product.sql(knn, [q]), lambda q: product.search(q, k=10))
    joined_ms, search2_ms = per_query(lambda q: product.sql(joined, [q]), lambda q: product.search(q, k=10))

    agree = all(
        ids_of(product.search(q, k=10)) == ids_of(product.sql(knn, [q])) == ids_of(product.sql(joined, [q]))
        and set(ids_of(product.search(q, k=10))) == set(ids_of(product.sql(brute.format(table="embeddings"), [q])))
        == {row[0] for row in native.execute(brute.format(table="native"), [q]).fetchall()}
        for q in queries)

    rows = [
        ("SQL brute force over the product (view)", view_ms, f"{view_ms / native_ms:.2f}x the native table"),
        ("same over a native DuckDB table", native_ms, ""),
        ("  view again (paired with the next)", lazy_ms, f"{lazy_ms / eager_ms:.2f}x without late materialisation"),
        ("  view, late materialisation off", eager_ms, ""),
        ("  view again (paired with the next)", zstd_ms, f"{zstd_ms / plain_ms:.2f}x with vectors uncompressed"),
        ("  view, vector column stored uncompressed", plain_ms, ""),
        ("  scan of the stored vector column alone", scan_ms, ""),
        ("  same scan + cast to FLOAT[D] (as the view)", scan_cast_ms, f"+{scan_cast_ms - scan_ms:.0f} ms for the cast"),
        ("knn in SQL: SELECT * FROM knn(?, 10)", knn_ms, f"{knn_ms / search_ms:.2f}x search"),
        ("search(q, k=10) (paired with the above)", search_ms, ""),
        ("knn joined to embeddings for a column", joined_ms, f"{joined_ms / search2_ms:.2f}x search"),
        ("search(q, k=10) (paired with the above)", search2_ms, ""),
    ]
    print(f"\n{product.num_rows} rows, {args.dim}-d, {len(files)} data files; medians over {args.queries} queries x "
          f"{args.repeats}; ids of search, knn, knn joined, SQL brute force and native: {'equal' if agree else 'DIFFER'}")
    print(f"{'what':48s} {'ms':>9s}  ratio")
    for name, ms, ratio in rows:
        print(f"{name:48s} {ms:9.1f}  {ratio}")
    shutil.rmtree(copies, ignore_errors=True)
    if not args.out:
        shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
