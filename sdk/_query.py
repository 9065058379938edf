"""DuckDB over products: offline extension loading, the ``embeddings`` view and the SQL sandbox.

Extensions are never downloaded: they are loaded from the files inside the PyPI packages
``duckdb-extension-spatial`` / ``duckdb-extension-vss``, built for exactly this DuckDB version.

SQL given by users runs in a sandbox (:func:`open_views`): a connection that may open the data files
of its views and nothing else, its configuration locked. :func:`run` takes one read-only query, and
:func:`filter_query` one boolean expression over a view's columns.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._errors import MissingDependencyError, QueryError, SqlRefusedError
from ._store import url

if TYPE_CHECKING:
    import duckdb

    from ._quantize import Quantization
    from ._read import Product

#: What :func:`run` accepts, for messages.
READ_ONLY = "one read-only query (SELECT, WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW, or EXPLAIN [ANALYZE] of one)"

#: What a sandboxed connection may open, for messages.
SANDBOXED = ("allowed: the data files of the product and of the products attached to it (Product.attach, "
             "eoembed.sql(products=...), eoembed query --attach NAME=PRODUCT); attach a product to query it")

#: What a ``where`` filter may hold, for messages.
FILTER = ("one boolean expression over the view's columns: columns, constants, ? or $name parameters, "
          "operators, function calls, CASE, CAST, BETWEEN, IN lists and lambdas; no ';', subquery, set operation, "
          "table function or clause after it")

#: Expression classes of DuckDB's parse tree (json_serialize_sql) allowed in a filter. A subquery is
#: the only way to reach a table, a table function or a set operation from inside an expression.
_FILTER_CLASSES = frozenset({"BETWEEN", "CASE", "CAST", "COLLATE", "COLUMN_REF", "COMPARISON", "CONJUNCTION",
                             "CONSTANT", "FUNCTION", "LAMBDA", "LAMBDA_REF", "OPERATOR", "PARAMETER"})


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


def _string_list(items: Sequence[Any]) -> str:
    """A SQL list literal of strings."""
    return "[" + ", ".join(f"'{_quote(str(item))}'" for item in items) + "]"


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


def check_view_name(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise QueryError(f"view name {name!r} must be letters, digits and underscores")
    return name


def create_view(con: "duckdb.DuckDBPyConnection", *, name: str, files: Sequence[Path], quant: "Quantization",
                row_ids: bool = False) -> None:
    """``name`` over the data files: every stored column, ``embedding`` de-quantised as FLOAT[D] and
    the stored codes as ``embedding_stored``; with ``row_ids`` also ``filename`` and ``file_row_number``."""
    check_view_name(name)
    # union_by_name: files may differ in optional columns (a missing one reads as NULL)
    options = ", union_by_name = true" + (", filename = true, file_row_number = true" if row_ids else "")
    con.execute(
        f'CREATE OR REPLACE VIEW "{name}" AS SELECT * EXCLUDE (embedding), {dequantize_sql(quant)} AS embedding, '
        f"embedding AS embedding_stored FROM read_parquet({_string_list([url(f) for f in files])}{options})"
    )


def open_views(views: Mapping[str, "Product"], *, row_ids: bool = False) -> "duckdb.DuckDBPyConnection":
    """A sandboxed connection holding one view per product (see :func:`create_view`) and nothing else.

    DuckDB may open the views' data files only (``allowed_paths``), then external access is switched
    off and the configuration locked: no query reads or writes another file, fetches a URL, loads an
    extension or changes a setting. A product joins an open sandbox only by opening a new one.
    """
    from ._knn import define_fallback
    from ._store import configure_duckdb

    con = connect()
    try:
        configure_duckdb(con, [path for product in views.values() for path in product.files])
        define_fallback(con)
        for name, product in views.items():
            create_view(con, name=name, files=product.files, quant=product.quantization, row_ids=row_ids)
        files = sorted({url(path) for product in views.values() for path in product.files})
        con.execute(f"SET allowed_paths = {_string_list(files)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_read_only(con: "duckdb.DuckDBPyConnection", query: str) -> None:
    """Refuse anything but one read-only query: a second statement, COPY, ATTACH, SET, LOAD, CREATE...

    The sandbox already keeps DuckDB away from every other file; this keeps it from writing the
    data files it may read (``COPY ... TO`` one of them would overwrite the product)."""
    import duckdb

    try:
        statements = con.extract_statements(query)  # IMPORT DATABASE reads its files here: sandboxed too
    except duckdb.Error as error:
        raise query_error(con, error, query) from error
    if len(statements) != 1:
        raise SqlRefusedError(f"{len(statements)} statements given; eoembed runs {READ_ONLY}\nquery: {query}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN and _explained(query).strip():
        try:
            check_read_only(con, _explained(query))
        except QueryError as error:
            raise SqlRefusedError(f"{str(error).splitlines()[0]} (inside EXPLAIN)\nquery: {query}") from None
    elif kind != duckdb.StatementType.SELECT:
        raise SqlRefusedError(f"{_words(query)[0][1].upper()} statements are refused; eoembed runs {READ_ONLY}\nquery: {query}")


def _words(query: str) -> list[tuple[int, str]]:
    """(offset, text) of each of DuckDB's tokens of ``query`` (comments skipped)."""
    import duckdb

    starts = [offset for offset, _ in duckdb.tokenize(query)]
    return [(a, query[a:b].strip()) for a, b in zip(starts, starts[1:] + [len(query)])]


def _explained(query: str) -> str:
    """The statement an EXPLAIN [ANALYZE] [(options)] statement explains."""
    words = _words(query)
    position, depth = 1, 0  # words[0] is EXPLAIN
    while position < len(words) and (depth or words[position][1].upper() in ("ANALYZE", "ANALYSE", "(")):
        depth += {"(": 1, ")": -1}.get(words[position][1], 0)
        position += 1
    return query[words[position][0]:] if position < len(words) else ""


@functools.lru_cache(maxsize=256)  # searches repeat their filters
def filter_query(where: str, *, select: str, view: str = "embeddings") -> str:
    """``SELECT <select> FROM <view> WHERE (<where>)``, once DuckDB's parser shows that ``where`` is one
    boolean expression over the view's columns (raises SqlRefusedError otherwise).

    The query with the filter must parse to the tree of the query without it plus a WHERE clause
    built only from :data:`_FILTER_CLASSES`: a ``)`` closing the clause early to add a UNION, a LIMIT
    or a second statement changes the rest of the tree, and a subquery is refused in the clause.
    """
    base = f'SELECT {select} FROM "{check_view_name(view)}"'
    query = f"{base} WHERE (\n{where}\n)"  # own lines: a trailing -- comment cannot swallow the ')'
    tree, bare = _parse_tree(query, where=where), _parse_tree(base, where=where)
    node = tree["statements"][0]["node"] if len(tree.get("statements", ())) == 1 else {}
    clause = node.pop("where_clause", None)
    bare_node = bare["statements"][0]["node"]
    bare_node.pop("where_clause", None)
    if clause is None or node != bare_node:
        raise SqlRefusedError(f"where {where!r} is more than a filter; it must be {FILTER}")
    refused = sorted(_expression_classes(clause) - _FILTER_CLASSES)
    if refused:
        raise SqlRefusedError(f"where {where!r} holds {', '.join(c.lower().replace('_', ' ') for c in refused)}; "
                              f"it must be {FILTER}")
    return query


_PARSER: dict[int, Any] = {}  # process id -> its parser connection (a forked child opens its own)
_PARSER_LOCK = threading.Lock()


def parse(query: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``query`` (``json_serialize_sql``; ``error`` set when it is not one
    or more SELECT statements)."""
    return json.loads(_parser_call("SELECT json_serialize_sql(?)", query))


def unparse(tree: dict[str, Any]) -> str:
    """The SQL text of a parse tree from :func:`parse` (``json_deserialize_sql``)."""
    return _parser_call("SELECT json_deserialize_sql(?)", json.dumps(tree))


def _parser_call(sql: str, argument: str) -> str:
    """Parsing needs no extension, view or file: one bare connection per process, without external
    access, reused (opening one costs tens of ms) under a lock (a connection is not thread-safe)."""
    import duckdb

    with _PARSER_LOCK:
        con = _PARSER.get(os.getpid())
        if con is None:
            _PARSER.clear()
            con = _PARSER[os.getpid()] = duckdb.connect(config={"enable_external_access": False, "threads": 1})
        return con.execute(sql, [argument]).fetchone()[0]


def _parse_tree(query: str, *, where: str) -> dict[str, Any]:
    tree = parse(query)
    if tree.get("error"):
        raise SqlRefusedError(f"where {where!r} does not parse ({tree.get('error_message')}); it must be {FILTER}")
    return tree


def _expression_classes(tree: Any) -> set[str]:
    """The ``class`` of every expression in a json_serialize_sql tree."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class"), str):
                found.add(item["class"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def query_error(con: "duckdb.DuckDBPyConnection", error: Exception, query: str) -> QueryError:
    """The eoembed error for DuckDB's: SqlRefusedError when the sandbox refused a file."""
    import duckdb

    if isinstance(error, duckdb.PermissionException):
        return SqlRefusedError(f"{explain_error(error, query)}\n{SANDBOXED}")
    sandboxed = not con.execute("SELECT current_setting('enable_external_access')").fetchone()[0]
    # GDAL (st_read) reports a file the sandbox refused as one it cannot open.
    note = f"\nnote: {SANDBOXED}" if isinstance(error, duckdb.IOException) and sandboxed else ""
    return QueryError(f"{explain_error(error, query)}{note}")


def run(con: "duckdb.DuckDBPyConnection", query: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
        products: Mapping[str, "Product"] | None = None):
    """Run one read-only query with bound parameters and return a pyarrow Table; errors keep DuckDB's reason.

    Over a sandbox (:func:`open_views`) a file outside the views is refused with SqlRefusedError.
    With ``products`` (the connection's views), ``knn(query, k, ...)`` table functions are answered by
    search (see :mod:`eoembed._knn`)."""
    import duckdb

    check_read_only(con, query)
    statement = _with_knn_answered(con, query, params, products=products)
    text, values = (statement.query, statement.params) if statement is not None else (query, params)
    try:
        if statement is not None:
            check_read_only(con, text)  # the rewritten text passes the same gate
        result = con.execute(text, values) if values is not None else con.execute(text)
        return result.to_arrow_table()
    except duckdb.Error as error:
        raise query_error(con, error, query) from error
    finally:
        if statement is not None:
            statement.close()


def _with_knn_answered(con: "duckdb.DuckDBPyConnection", query: str, params: Any, *,
                       products: Mapping[str, "Product"] | None):
    """The statement with its knn calls answered (:func:`eoembed._knn.rewrite`), or None without any."""
    import duckdb

    from ._knn import calls_knn, rewrite

    if not products or not calls_knn(query):
        return None
    if con.extract_statements(query)[0].type == duckdb.StatementType.EXPLAIN:
        explained = _explained(query)
        return rewrite(con, explained, params, products=products, prefix=query[: len(query) - len(explained)])
    return rewrite(con, query, params, products=products)
