"""The ``eoembed`` command line: one program, one subcommand per verb.

Exit codes: 0 success (a valid product), 1 an invalid product or a failed job, 2 unreadable input or
bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def _validate(args: argparse.Namespace) -> int:
    from ._validate import validate

    report = validate(args.path, max_errors=args.max_errors, check_checksums=not args.no_checksums)
    print(report.to_json() if args.json else report)
    return 0 if report.ok else 1


def _info(args: argparse.Namespace) -> int:
    from ._read import open_product

    product = open_product(args.path)
    meta = product.metadata
    summary = {
        "path": str(product.path),
        "rows": product.num_rows,
        "files": len(product.files),
        "spec_version": meta["spec_version"],
        "model": {k: meta["model"][k] for k in ("name", "version", "framework", "weights_sha256")},
        "bands": [b["name"] for b in meta["model"]["input"]["bands"]],
        "embedding": {k: v for k, v in meta["embedding"].items() if k != "quantization"},
        "quantization": meta["embedding"]["quantization"],
        "grid": meta["grid"]["id"],
        "bbox": product.collection["extent"]["spatial"]["bbox"][0],
        "interval": product.collection["extent"]["temporal"]["interval"][0],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _format_table(table, *, limit: int = 50) -> str:
    names = table.column_names
    rows = table.slice(0, limit).to_pylist()

    def cell(value) -> str:
        if isinstance(value, (list, tuple)) and len(value) > 6:
            value = f"[{', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in value[:4])}, ... ({len(value)} values)]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        text = str(value)
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    if table.num_rows > limit:
        lines.append(f"... {table.num_rows - limit} more rows")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


def write_table(table, *, fmt: str, out: str | None) -> None:
    """Print or save a query result as table, csv, json or parquet."""
    if fmt == "parquet":
        if not out:
            raise SystemExit("eoembed: --format parquet needs --out FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        text = buffer.getvalue().decode()
    elif fmt == "json":
        text = json.dumps(table.to_pylist(), default=str, indent=1)
    else:
        text = _format_table(table)
    if out:
        Path(out).write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
    else:
        print(text)


def _query(args: argparse.Namespace) -> int:
    from ._read import open_product

    params = [json.loads(p) if p[:1] in "[{0123456789-\"" or p in ("true", "false", "null") else p for p in args.param]
    with open_product(args.path) as product:
        table = product.sql(args.sql, params or None)
    write_table(table, fmt=args.format, out=args.out)
    return 0


def _grids(args: argparse.Namespace) -> int:
    from ._grid import get_grid, list_grids

    for grid_id in list_grids():
        print(json.dumps(get_grid(grid_id).definition()))
    return 0


def _encoders(args: argparse.Namespace) -> int:
    from eoembed.producers.encode import list_encoders

    for entry in list_encoders():
        print(json.dumps(entry))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from eoembed.producers.demo import run_demo

    return run_demo(out=Path(args.out), overwrite=args.overwrite, chip_size=args.chip_size)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._spec import SPEC_VERSION

    parser = argparse.ArgumentParser(prog="eoembed", description="Earth-observation embedding products: produce, validate, query.")
    parser.add_argument("--version", action="version", version=f"eoembed {__version__} (spec {SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="write a product from real Landsat-7 imagery, validate it and query it")
    p.add_argument("--out", default="demo/nc-landsat7", help="product folder to write (default: %(default)s)")
    p.add_argument("--chip-size", type=int, default=8, help="chip size in pixels (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing product at --out")
    p.set_defaults(func=_demo)

    p = sub.add_parser("validate", help="check a product, collection.json or data file against the spec")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--max-errors", type=int, default=None, help="stop recording errors after N")
    p.add_argument("--no-checksums", action="store_true", help="skip the sha256 of data files")
    p.set_defaults(func=_validate)

    p = sub.add_parser("query", help="run SQL over a product (view `embeddings`)")
    p.add_argument("path")
    p.add_argument("sql")
    p.add_argument("--param", action="append", default=[], help="a bound parameter for each ? (JSON or text); repeat")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--out", help="write the result to this file")
    p.set_defaults(func=_query)

    p = sub.add_parser("info", help="summarise a product's metadata")
    p.add_argument("path")
    p.set_defaults(func=_info)

    sub.add_parser("grids", help="list the built-in grids").set_defaults(func=_grids)
    sub.add_parser("encoders", help="list the registered encoders").set_defaults(func=_encoders)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ._errors import EoembedError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FileNotFoundError as error:
        print(f"eoembed: {error}", file=sys.stderr)
        return 2
    except EoembedError as error:
        print(f"eoembed: {error}", file=sys.stderr)
        return 2 if args.command in ("validate", "info", "query") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
