"""``knn(query, k [, mode := ..., metric := ...])``: similarity search as a table in a product's SQL.

DuckDB's Python API has no Python table functions, so a statement that calls ``knn`` is rewritten
before it runs: DuckDB's own parser gives its tree (``json_serialize_sql``), each ``knn`` table
function node is answered by :func:`eoembed._search.search`, its hits are registered on the
connection as an Arrow table, and the node becomes a reference to that table; the tree goes back to
SQL (``json_deserialize_sql``) with the remaining parameters renumbered, and runs in the same sandbox
(the rewritten statement is checked again like any other). A ``knn`` anywhere in the tree (a CTE, a
subquery, a join, twice) is answered; its arguments must be constants or bound parameters, so no
argument reaches a table or a column.

Columns: ``chip_id``, ``rank`` (1 = nearest) and ``distance`` (search's: cosine ``1 - cos``, l2
Euclidean, ip ``-<x, q>``), best first. Filters inside ``knn`` (``bbox :=``, ``datetime :=``,
``where :=``) select the rows searched; a WHERE on the joined ``embeddings`` view filters the k hits.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._errors import QueryError, SqlRefusedError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from ._read import Product

#: knn's signature, for messages.
SIGNATURE = ("knn(query, k [, mode := 'exact' or another mode search takes, metric := 'cosine'|'l2'|'ip', "
             "candidates := N, bbox := [xmin, ymin, xmax, ymax], datetime := 'START/END', where := 'SQL predicate', "
             "view := 'embeddings'])")

#: What a knn query may be, for messages.
QUERY_FORMS = ("a vector (a ? parameter holding a list or numpy array, or a list literal), a chip id string, "
               "or a point: ST_Point(lon, lat), {'lon': x, 'lat': y}, or a (lon, lat) tuple as a ? parameter")

#: Named arguments passed through to search as they are.
_SEARCH_OPTIONS = ("mode", "metric", "candidates", "bbox", "datetime", "where")

#: Expression classes a knn argument may hold: constants, parameters and functions or casts of them.
_ARGUMENT_CLASSES = frozenset({"CONSTANT", "PARAMETER", "FUNCTION", "CAST", "OPERATOR"})

_TABLE_PREFIX = "__eoembed_knn_"


def define_fallback(con: "duckdb.DuckDBPyConnection") -> None:
    """A ``knn`` table macro that only explains itself: statements run on the connection directly
    (``Product.connect().execute``) are not rewritten, and say where knn is answered."""
    from ._query import _quote

    named = ", ".join(f'"{name}" := NULL' for name in (*_SEARCH_OPTIONS, "view"))
    message = ("knn(...) is answered by product.sql, eoembed.sql and eoembed query when it is in the statement "
               "itself (not by the connection's own execute(), nor inside query('...')); run it through one of them")
    con.execute(f"CREATE MACRO knn(query, k, {named}) AS TABLE SELECT error('{_quote(message)}') AS chip_id")


def calls_knn(query: str) -> bool:
    """Whether ``query`` names ``knn`` at all (one of DuckDB's tokens: not in a string or a comment)."""
    from ._query import _words

    return any(text.strip('"').lower() == "knn" for _, text in _words(query))


class Rewritten:
    """A statement with its knn calls answered: run ``query`` with ``params``, then :meth:`close`."""

    def __init__(self, con: "duckdb.DuckDBPyConnection", query: str, params: Any, tables: list[str]):
        self.con, self.query, self.params, self.tables = con, query, params, tables

    def close(self) -> None:
        for name in self.tables:
            self.con.unregister(name)


def rewrite(con: "duckdb.DuckDBPyConnection", query: str, params: Sequence[Any] | Mapping[str, Any] | None, *,
            products: Mapping[str, "Product"], prefix: str = "") -> Rewritten:
    """``query`` (one SELECT, after ``prefix`` such as ``EXPLAIN``) with every knn call answered."""
    from ._query import parse, unparse

    tree = parse(query)
    if tree.get("error"):
        # Not a SELECT DuckDB can serialise, or not SQL at all: DuckDB reports it when it runs.
        return Rewritten(con, prefix + query, params, [])
    calls = list(_knn_nodes(tree))
    tables: list[str] = []
    try:
        for node in calls:
            hits = _answer(con, node, params, products=products, query=query)
            name = f"{_TABLE_PREFIX}{uuid.uuid4().hex}"
            con.register(name, hits)
            tables.append(name)
            alias = node.get("alias") or "knn"  # an unaliased table function is named after itself
            columns = node.get("column_name_alias") or []
            node.clear()
            node.update({"type": "BASE_TABLE", "alias": alias, "sample": None, "query_location": 0,
                         "schema_name": "", "table_name": name, "column_name_alias": columns,
                         "catalog_name": "", "at_clause": None})
        bound = _renumber(tree, params)
        text = unparse(tree)
    except BaseException:
        for name in tables:
            con.unregister(name)
        raise
    return Rewritten(con, prefix + text, bound, tables)


def _walk(tree: Any):
    """Every dict in a json_serialize_sql tree, parents before children."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _knn_nodes(tree: Any):
    for node in _walk(tree):
        if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            function = node["function"]
            if str(function.get("function_name", "")).lower() == "knn" and not function.get("schema") \
                    and not function.get("catalog"):
                yield node


def _parameter_value(node: dict, params: Any, *, query: str) -> Any:
    """The bound value of a PARAMETER node (``?`` / ``$1`` by position, ``$name`` by name)."""
    identifier = str(node.get("identifier"))
    try:
        if identifier.isdigit():
            return list(params)[int(identifier) - 1]
        return params[identifier]
    except (IndexError, KeyError, TypeError):
        raise QueryError(f"knn's parameter ${identifier} has no value; give one value per ? (or $name) in params"
                         f"\nquery: {query}") from None


def _renumber(tree: Any, params: Any) -> Any:
    """The values for the parameters left in ``tree``, positional ones renumbered 1..n in order."""
    nodes = [n for n in _walk(tree) if n.get("class") == "PARAMETER"]
    if params is None or not nodes:
        return params if nodes else None
    if isinstance(params, Mapping):
        used = {str(n["identifier"]) for n in nodes}
        return {name: value for name, value in params.items() if name in used}
    values = list(params)
    old = sorted({int(n["identifier"]) for n in nodes if str(n["identifier"]).isdigit()})
    new = {number: str(i + 1) for i, number in enumerate(old)}
    for n in nodes:
        if str(n["identifier"]).isdigit():
            n["identifier"] = new[int(n["identifier"])]
    return [values[number - 1] for number in old if number - 1 < len(values)]


def _arguments(con: "duckdb.DuckDBPyConnection", node: dict, params: Any, *, query: str) -> tuple[list, dict]:
    """knn's positional and named argument values: parameters as bound (a numpy array or a tuple
    stays one), other expressions evaluated in the sandbox (:func:`_evaluate`)."""
    from ._query import _expression_classes

    arguments = []  # (name or None, expression), in the call's order
    for number, child in enumerate(node["function"].get("children", []), start=1):
        name = child.get("alias") or None
        refused = sorted(_expression_classes(child) - _ARGUMENT_CLASSES)
        if refused:
            what = ", ".join(c.lower().replace("_", " ") for c in refused)
            raise SqlRefusedError(f"knn's argument {repr(name) if name else number} holds {what}; allowed: constants "
                                  f"and bound parameters (? or $name), e.g. {SIGNATURE}\nquery: {query}")
        arguments.append((name, child))
    constants = [child for _, child in arguments if child.get("class") != "PARAMETER"]
    computed = iter(_evaluate(con, constants, params, query=query) if constants else ())
    positional, named = [], {}
    for name, child in arguments:
        value = _parameter_value(child, params, query=query) if child.get("class") == "PARAMETER" else next(computed)
        if name is None:
            positional.append(value)
        elif name.lower() in named:
            raise QueryError(f"knn's argument {name!r} is given twice\nquery: {query}")
        else:
            named[name.lower()] = value
    return positional, named


def _evaluate(con: "duckdb.DuckDBPyConnection", expressions: list[dict], params: Any, *, query: str) -> list:
    """Python values of constant expressions: plain numbers and strings as written, others
    evaluated by DuckDB in one SELECT over the sandboxed connection."""
    import duckdb

    from ._query import parse, unparse

    values = [_literal(e) for e in expressions]
    computed = [i for i, v in enumerate(values) if v is _COMPUTED]
    if not computed:
        return values
    # Copies: the select list gets its own aliases and renumbered parameters.
    template = parse("SELECT 1")
    template["statements"][0]["node"]["select_list"] = [
        dict(json.loads(json.dumps(expressions[i])), alias=f"a{i}") for i in computed]
    bound = _renumber(template, params)
    text = unparse(template)
    try:
        table = con.execute(text, bound).to_arrow_table() if bound is not None else con.execute(text).to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(f"knn's arguments cannot be evaluated: {str(error).strip()}\nquery: {query}") from None
    for column, i in enumerate(computed):
        values[i] = _python(table.column(column), query=query)
    return values


_COMPUTED = object()  # a value DuckDB must compute
#: Constants whose JSON value is the Python value (type ids of json_serialize_sql); any other
#: constant is computed by DuckDB, so an unknown or renamed type only costs a query.
_PLAIN_CONSTANTS = {"INTEGER": int, "BIGINT": int, "VARCHAR": str}


def _literal(expression: dict) -> Any:
    """The value of a plain constant node (a number or a string as written), else _COMPUTED."""
    if expression.get("class") != "CONSTANT":
        return _COMPUTED
    value = expression.get("value") or {}
    kind = _PLAIN_CONSTANTS.get(str((value.get("type") or {}).get("id")))
    if kind is None or value.get("is_null") or not isinstance(value.get("value"), kind) or isinstance(value.get("value"), bool):
        return _COMPUTED
    return value["value"]


def _python(column: "pa.ChunkedArray", *, query: str) -> Any:
    """One evaluated argument as search takes it: WKB points become (lon, lat), decimals floats."""
    import pyarrow as pa

    value = column[0].as_py()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        import shapely

        try:
            point = shapely.from_wkb(value)
        except shapely.errors.ShapelyError:
            raise QueryError(f"knn's argument {value!r} is a blob; give {QUERY_FORMS}\nquery: {query}") from None
        if point.geom_type != "Point" or point.is_empty:
            raise QueryError(f"knn's query {point.wkt} is not a point; give {QUERY_FORMS}\nquery: {query}")
        return (float(point.x), float(point.y))
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _search_query(value: Any, *, query: str) -> Any:
    """The knn query as search takes it: one vector, one chip id or one (lon, lat) point."""
    import numpy as np

    if isinstance(value, dict):
        keys = {k.lower(): v for k, v in value.items()}
        for x, y in (("lon", "lat"), ("x", "y")):
            if set(keys) == {x, y}:
                return (float(keys[x]), float(keys[y]))
        raise QueryError(f"knn's query {value!r} is a struct without just lon/lat (or x/y); give {QUERY_FORMS}"
                         f"\nquery: {query}")
    numbers = (int, float, np.integer, np.floating)
    if isinstance(value, str) or (isinstance(value, tuple) and len(value) == 2
                                  and all(isinstance(v, numbers) and not isinstance(v, bool) for v in value)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        vector = np.asarray(value, dtype=object if not isinstance(value, np.ndarray) else None)
        if vector.ndim != 1 or (vector.dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in vector)):
            raise QueryError(f"knn takes one query, got an array of shape {np.shape(value)}; call knn once per "
                             f"query (or use search for batches)\nquery: {query}")
        try:
            return np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise QueryError(f"knn's query {str(value)[:80]!r} is not a vector of numbers; give {QUERY_FORMS}"
                             f"\nquery: {query}") from None
    raise QueryError(f"knn's query {value!r} ({type(value).__name__}) is not one of: {QUERY_FORMS}\nquery: {query}")


def _answer(con: "duckdb.DuckDBPyConnection", node: dict, params: Any, *, products: Mapping[str, "Product"],
            query: str) -> "pa.Table":
    """The hits of one knn call: chip_id, rank, distance."""
    import pyarrow as pa

    from ._search import search

    positional, named = _arguments(con, node, params, query=query)
    if len(positional) != 2:
        raise QueryError(f"knn takes a query and k, got {len(positional)} positional arguments; {SIGNATURE}"
                         f"\nquery: {query}")
    unknown = sorted(set(named) - set(_SEARCH_OPTIONS) - {"view"})
    if unknown:
        raise QueryError(f"knn has no argument {unknown[0]!r}; {SIGNATURE}\nquery: {query}")
    for name, kind in (("view", str), ("where", str), ("candidates", int)):  # search's own checks take the rest
        if named.get(name) is not None and (not isinstance(named[name], kind) or isinstance(named[name], bool)):
            raise QueryError(f"knn's {name} {named[name]!r} must be {'a string' if kind is str else 'an integer'}; "
                             f"{SIGNATURE}\nquery: {query}")
    view = named.pop("view", None) or "embeddings"
    if view not in products:
        raise QueryError(f"knn's view {view!r} is not a product of this connection; views: {sorted(products)} "
                         f"(attach a product to search it)\nquery: {query}")
    hits = search(products[view], _search_query(positional[0], query=query), k=positional[1],
                  **{name: named[name] for name in _SEARCH_OPTIONS if named.get(name) is not None})
    return pa.table({"chip_id": hits.column("chip_id"),
                     "rank": pa.array(range(1, hits.num_rows + 1), pa.int32()),
                     "distance": hits.column("distance")})
