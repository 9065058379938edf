"""DuckDB over products: offline extension loading and the ``embeddings`` view.

Extensions are never downloaded: they are loaded from the files inside the PyPI packages
``duckdb-extension-spatial`` / ``duckdb-extension-vss``, built for exactly this DuckDB version.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ._errors import MissingDependencyError, QueryError

if TYPE_CHECKING:
    import duckdb

    from ._quantize import Quantization


def extension_path(name: str) -> Path:
    """The ``.duckdb_extension`` file shipped by the PyPI package ``duckdb-extension-<name>``."""
    import duckdb

    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as error:
        raise MissingDependencyError(
            f"DuckDB extension {name!r} is not installed; run `pip install duckdb-extension-{name}=={duckdb.__version__}` "
            "(extensions are loaded from that package, never downloaded)"
        ) from error
    folder = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.exists():
        raise MissingDependencyError(
            f"{path} is missing: duckdb-extension-{name} must match duckdb {duckdb.__version__} exactly"
        )
    return path


def connect(*, extensions: Sequence[str] = ("spatial",), required: bool = False) -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection with the named extensions loaded offline.

    A missing extension package is skipped unless ``required``; queries that need it then fail with
    DuckDB's own message, which :func:`explain_error` turns into an install hint.
    """
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name in extensions:
        try:
            con.execute(f"LOAD '{_quote(str(extension_path(name)))}'")
        except MissingDependencyError:
            if required:
                raise
    return con


def explain_error(error: Exception, query: str) -> str:
    """DuckDB's reason plus the query, and an install hint when a known extension is missing."""
    reason = str(error).strip()
    hint = ""
    if "ST_" in reason or "spatial" in reason.lower() or "GEOMETRY" in reason:
        hint = "\nhint: ST_* functions need `pip install duckdb-extension-spatial==1.5.5`"
    return f"{reason}\nquery: {query}{hint}"


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _number(value: float) -> str:
    return repr(float(value))


def dequantize_sql(quant: "Quantization", *, column: str = "embedding") -> str:
    """A SQL expression turning the stored column into the de-quantised FLOAT[D] vector."""
    dim = quant.dim
    if quant.method == "none":
        expr = column
    elif quant.method == "linear":
        scale = list(quant.scale or (1.0,))
        offset = list(quant.offset or (0.0,))
        if len(scale) == 1 and len(offset) == 1:
            expr = f"list_transform({column}, q -> q * {_number(scale[0])} + {_number(offset[0])})"
        else:
            scale = scale * dim if len(scale) == 1 else scale
            offset = offset * dim if len(offset) == 1 else offset
            # One expression per element: a list literal indexed inside a lambda is re-evaluated per
            # element and is two orders of magnitude slower.
            expr = "[" + ", ".join(
                f"{column}[{i + 1}] * {_number(s)} + {_number(o)}" for i, (s, o) in enumerate(zip(scale, offset))
            ) + "]"
    elif quant.method == "per-row":
        expr = f"list_transform({column}, q -> q * \"{quant.scale_column or 'scale'}\")"
    elif quant.method == "sqrt":
        expr = f"list_transform({column}, q -> CASE WHEN q = -128 THEN NULL ELSE sign(q) * pow(abs(q) / 127.5, 2) END)"
    elif quant.method == "binary":
        unit = _number(1.0 / math.sqrt(dim))
        expr = (
            f"list_transform(range({dim}), i -> CASE WHEN ((({column})[i // 8 + 1]::INTEGER >> (7 - i % 8)) & 1) = 1 "
            f"THEN {unit} ELSE -{unit} END)"
        )
    else:  # pragma: no cover - Quantization.validate rejects other methods
        raise ValueError(f"unknown quantization method {quant.method!r}")
    return f"CAST({expr} AS FLOAT[{dim}])"


def create_view(con: "duckdb.DuckDBPyConnection", *, name: str, files: Sequence[Path], quant: "Quantization",
                row_ids: bool = False) -> None:
    """``name`` over the data files: every stored column, ``embedding`` de-quantised as FLOAT[D] and
    the stored codes as ``embedding_stored``; with ``row_ids`` also ``filename`` and ``file_row_number``."""
    if not name.replace("_", "").isalnum():
        raise QueryError(f"view name {name!r} must be letters, digits and underscores")
    paths = ", ".join(f"'{_quote(str(p))}'" for p in files)
    # union_by_name: files may differ in optional columns (a missing one reads as NULL)
    options = ", union_by_name = true" + (", filename = true, file_row_number = true" if row_ids else "")
    con.execute(
        f'CREATE OR REPLACE VIEW "{name}" AS SELECT * EXCLUDE (embedding), {dequantize_sql(quant)} AS embedding, '
        f"embedding AS embedding_stored FROM read_parquet([{paths}]{options})"
    )


def run(con: "duckdb.DuckDBPyConnection", query: str, params: Sequence[Any] | dict[str, Any] | None = None):
    """Run a query with bound parameters and return a pyarrow Table; errors keep DuckDB's reason."""
    import duckdb

    try:
        result = con.execute(query, params) if params is not None else con.execute(query)
        return result.to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(explain_error(error, query)) from error
