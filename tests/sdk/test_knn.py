"""knn(query, k, ...) in a product's SQL: the same hits as search, composed with SQL."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eoembed
from eoembed import _cli
from tests.factories import write


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> eoembed.Product:
    """Two data files, so hits come from both; module-wide: each knn leaves the connection as it was."""
    with eoembed.open(write(tmp_path_factory.mktemp("knn") / "p", n=400, max_rows_per_file=200)) as product:
        yield product


@pytest.fixture(scope="module")
def point(product) -> tuple[float, float]:
    """The centre of one chip's box: a point some chip covers."""
    box = product.sql("SELECT bbox FROM embeddings WHERE chip_id = 'chip-0000123'").column("bbox")[0].as_py()
    return ((box["xmin"] + box["xmax"]) / 2, (box["ymin"] + box["ymax"]) / 2)


def _hits(table) -> list[tuple[str, float]]:
    return list(zip(table.column("chip_id").to_pylist(), table.column("distance").to_pylist()))


def _same_hits(sql_table, search_table) -> None:
    assert sql_table.column("chip_id").to_pylist() == search_table.column("chip_id").to_pylist()
    np.testing.assert_allclose(sql_table.column("distance").to_numpy(), search_table.column("distance").to_numpy(),
                               rtol=0, atol=1e-9)
    assert sql_table.column("rank").to_pylist() == list(range(1, sql_table.num_rows + 1))


def _literal(product) -> str:
    """A SQL list literal of one stored vector."""
    return "[" + ", ".join(str(x) for x in product.to_numpy()[42]) + "]"


def _as_duckdb_reads(product, literal: str) -> np.ndarray:
    """The vector DuckDB reads from a literal (its decimal-to-float cast may differ by an ulp)."""
    return np.asarray(product.sql(f"SELECT {literal}::FLOAT[32] AS v").column("v")[0].as_py(), dtype=np.float32)


# Each case: the knn call, its parameters, and the query search gets for the same hits.
QUERY_FORMS = {
    "numpy vector": ("knn(?, 7)", lambda p, pt: [p.to_numpy()[42]], lambda p, pt: p.to_numpy()[42]),
    "list vector": ("knn(?, 7)", lambda p, pt: [p.to_numpy()[42].tolist()], lambda p, pt: p.to_numpy()[42]),
    "chip id literal": ("knn('chip-0000042', 7)", lambda p, pt: None, lambda p, pt: "chip-0000042"),
    "chip id $name": ("knn($chip, 7)", lambda p, pt: {"chip": "chip-0000042"}, lambda p, pt: "chip-0000042"),
    "list literal": ("knn({literal}::FLOAT[32], 7)", lambda p, pt: None, lambda p, pt: _as_duckdb_reads(p, _literal(p))),
    "named argument first": ("knn(mode := 'exact', 'chip-0000042', 7)", lambda p, pt: None, lambda p, pt: "chip-0000042"),
    "point tuple": ("knn(?, 7)", lambda p, pt: [pt], lambda p, pt: pt),
    "ST_Point": ("knn(ST_Point(?, ?), 7)", lambda p, pt: list(pt), lambda p, pt: pt),
    "lon/lat struct": ("knn({'lon': ?, 'lat': ?}, 7)", lambda p, pt: list(pt), lambda p, pt: pt),
}


@pytest.mark.parametrize("form", QUERY_FORMS)
def test_same_hits_as_search_for_every_query_form(product, point, form):
    call, params, query = QUERY_FORMS[form]
    table = product.sql(f"SELECT * FROM {call.replace('{literal}', _literal(product))}", params(product, point))
    assert table.column_names == ["chip_id", "rank", "distance"]
    _same_hits(table, product.search(query(product, point), k=7))


def test_a_where_on_the_joined_view_filters_the_hits(product):
    """SQL semantics: the k hits first, then the WHERE (with parameters on both sides of knn's)."""
    table = product.sql("SELECT k.chip_id, rank, distance, e.valid_fraction FROM knn(?, 20) AS k "
                        "JOIN embeddings e USING (chip_id) WHERE e.valid_fraction > ? AND e.chip_id <> ? ORDER BY rank",
                        ["chip-0000007", 0.75, "chip-0000007"])
    hits = product.search("chip-0000007", k=20)
    expected = [(c, d) for c, d, v in zip(*(hits.column(n).to_pylist() for n in ("chip_id", "distance", "valid_fraction")))
                if v > 0.75 and c != "chip-0000007"]
    assert 0 < len(expected) < 20
    assert _hits(table) == expected  # the very hits search returned: same ids, same distances


@pytest.mark.parametrize(("argument", "option"), [
    ("bbox := [-78.75, 35.62, -78.65, 35.75]", {"bbox": [-78.75, 35.62, -78.65, 35.75]}),
    ("bbox := '-78.75,35.62,-78.65,35.75'", {"bbox": "-78.75,35.62,-78.65,35.75"}),
    ("datetime := '2020-05-20/2020-05-30'", {"datetime": "2020-05-20/2020-05-30"}),
    ("\"where\" := 'valid_fraction > 0.8'", {"where": "valid_fraction > 0.8"}),
    ("metric := 'l2'", {"metric": "l2"}),
    ("metric := 'ip', mode := 'int8'", {"metric": "ip", "mode": "int8"}),
    ("mode := 'binary', candidates := 50", {"mode": "binary", "candidates": 50}),
])
def test_search_options_pass_through(product, argument, option):
    table = product.sql(f"SELECT * FROM knn('chip-0000042', 10, {argument})")
    expected = product.search("chip-0000042", k=10, **option)
    assert expected.num_rows == 10
    _same_hits(table, expected)


def test_bbox_filter_joined_matches_search_with_bbox(product):
    """A pre-filter in knn and the same box tested on the joined rows agree with search's bbox."""
    box = [-78.75, 35.62, -78.65, 35.75]
    table = product.sql("SELECT k.* FROM knn('chip-0000042', 10, bbox := ?) k JOIN embeddings e USING (chip_id) "
                        "WHERE e.bbox.xmax >= ? AND e.bbox.xmin <= ? AND e.bbox.ymax >= ? AND e.bbox.ymin <= ? ORDER BY rank",
                        [box, box[0], box[2], box[1], box[3]])
    _same_hits(table, product.search("chip-0000042", k=10, bbox=box))


def test_knn_in_a_cte_a_subquery_and_joined_twice(product):
    v = product.to_numpy()[3]
    near = set(product.search(v, k=10).column("chip_id").to_pylist())
    nearer = set(product.search("chip-0000010", k=50).column("chip_id").to_pylist())
    both = product.sql("WITH a AS (SELECT * FROM knn($v, 10)) SELECT a.chip_id FROM a JOIN knn('chip-0000010', 50) b "
                       "USING (chip_id)", {"v": v}).column("chip_id").to_pylist()
    assert set(both) == near & nearer
    counted = product.sql("SELECT (SELECT count(*) FROM knn(?, 4)) AS n, "
                          "(SELECT max(rank) FROM (SELECT * FROM knn('chip-0000010', 6))) AS m", [v]).to_pylist()
    assert counted == [{"n": 4, "m": 6}]
    unioned = product.sql("SELECT chip_id FROM knn(?, 3) UNION ALL SELECT chip_id FROM knn(?, 3)", [v, v])
    assert sorted(unioned.column("chip_id").to_pylist()) == sorted(2 * product.search(v, k=3).column("chip_id").to_pylist())


def test_explain_and_column_aliases(product):
    for explain in ("EXPLAIN", "EXPLAIN ANALYZE"):  # the plan scans the search's hits, not the product
        plan = product.sql(f"{explain} SELECT * FROM knn('chip-0000001', 3)").column("explain_value")[0].as_py()
        assert "ARROW_SCAN" in plan and "READ_PARQUET" not in plan.upper()
    renamed = product.sql("SELECT id, r FROM knn('chip-0000001', 3) AS t(id, r, d) ORDER BY r")
    assert renamed.column("id").to_pylist() == product.search("chip-0000001", k=3).column("chip_id").to_pylist()


def test_knn_over_an_attached_product(product, tmp_path):
    other = write(tmp_path / "other", n=60, seed=3)
    with eoembed.open(product.path) as mine:
        mine.attach("other", other)
        table = mine.sql("SELECT * FROM knn('chip-0000005', 5, view := 'other')")
        _same_hits(table, eoembed.open(other).search("chip-0000005", k=5))
    module = eoembed.sql("SELECT * FROM knn('chip-0000005', 5, view := 'b')", products={"a": product.path, "b": other})
    _same_hits(module, eoembed.open(other).search("chip-0000005", k=5))


def test_every_registered_result_is_dropped(product):
    product.sql("SELECT * FROM knn('chip-0000001', 3) a JOIN knn('chip-0000002', 3) b USING (chip_id)")
    with pytest.raises(eoembed.QueryError):
        product.sql("SELECT no_such_column FROM knn('chip-0000001', 3)")
    con = product.connect()
    left = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '__eoembed_knn_%'").fetchone()[0]
    left += con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '__eoembed_knn_%'").fetchone()[0]
    assert left == 0


def test_the_connection_itself_says_where_knn_runs(product):
    import duckdb

    with pytest.raises(duckdb.Error, match="answered by product.sql, eoembed.sql and eoembed query"):
        product.connect().execute("SELECT * FROM knn('chip-0000001', 3)").fetchall()


@pytest.mark.parametrize(("statement", "params", "error", "named"), [
    ("SELECT * FROM knn('chip-0000001')", None, eoembed.QueryError, "got 1 positional"),
    ("SELECT * FROM knn('chip-0000001', 3, mood := 'exact')", None, eoembed.QueryError, "'mood'"),
    ("SELECT * FROM knn('chip-0000001', 3, mode := 'fast')", None, eoembed.SearchError, "'fast'"),
    ("SELECT * FROM knn('chip-0000001', 0)", None, eoembed.SearchError, "got 0"),
    ("SELECT * FROM knn('chip-0000001', 3, view := 'elsewhere')", None, eoembed.QueryError, "'elsewhere'"),
    ("SELECT * FROM knn('chip-0000001', 3, view := ['embeddings'])", None, eoembed.QueryError, "view ['embeddings']"),
    ("SELECT * FROM knn('chip-0000001', 3, \"where\" := ?)", [["1=1"]], eoembed.QueryError, "where ['1=1']"),
    ("SELECT * FROM knn('chip-0000001', 3, candidates := 'many')", None, eoembed.QueryError, "'many'"),
    ("SELECT * FROM knn(?, 3)", [("chip-0000001", "chip-0000002")], eoembed.QueryError, "not a vector"),
    ("SELECT * FROM knn(?, 3)", ["x' OR 1=1 --"], eoembed.ChipNotFoundError, "x' OR 1=1 --"),
    ("SELECT * FROM knn(?, 3)", [[[0.1] * 32, [0.2] * 32]], eoembed.QueryError, "one query"),
    ("SELECT * FROM knn(?, 3)", [[0.1] * 31], eoembed.DimensionMismatchError, "dimension 31"),
    ("SELECT * FROM knn({'east': 1, 'north': 2}, 3)", None, eoembed.QueryError, "'east'"),
    ("SELECT * FROM knn(ST_MakeEnvelope(0, 0, 1, 1), 3)", None, eoembed.QueryError, "POLYGON"),
    ("SELECT * FROM knn(ST_Point(10, 10), 3)", None, eoembed.ChipNotFoundError, "(10.0, 10.0)"),
    ("SELECT * FROM knn(?, 3)", None, eoembed.QueryError, "$1 has no value"),
    ("SELECT * FROM knn(embedding, 3)", None, eoembed.SqlRefusedError, "column ref"),
    ("SELECT * FROM embeddings e, knn(e.chip_id, 3)", None, eoembed.SqlRefusedError, "column ref"),
    ("SELECT * FROM knn((SELECT min(chip_id) FROM embeddings), 3)", None, eoembed.SqlRefusedError, "subquery"),
    ("SELECT * FROM knn('chip-0000001', 3, \"where\" := '1=1) UNION SELECT 1 FROM (SELECT 1')", None,
     eoembed.SqlRefusedError, "more than a filter"),
])
def test_bad_calls_name_the_value(product, statement, params, error, named):
    with pytest.raises(error) as caught:
        product.sql(statement, params)
    assert named in str(caught.value)


def test_cli_query_with_knn(product, capsys):
    """Through `eoembed query`: a chip id literal, and a vector as a JSON --param."""
    assert _cli.main(["query", str(product.path), "SELECT chip_id, rank, distance FROM knn('chip-0000042', 5) "
                      "JOIN embeddings USING (chip_id) WHERE valid_fraction > 0 ORDER BY rank", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = product.search("chip-0000042", k=5)
    assert [r["chip_id"] for r in rows] == expected.column("chip_id").to_pylist()
    vector = product.to_numpy()[42]
    assert _cli.main(["query", str(product.path), "SELECT chip_id FROM knn(?, 5)", "--param", json.dumps(vector.tolist()),
                      "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["chip_id"] for r in rows] == product.search(vector, k=5).column("chip_id").to_pylist()
    assert _cli.main(["query", str(product.path), "SELECT * FROM knn('no-such-chip', 5)"]) == 2
    out, err = capsys.readouterr()
    assert not out and "'no-such-chip'" in err and "Traceback" not in err
