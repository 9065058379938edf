"""SQL cannot reach outside the product: injection attempts through every entry point that takes SQL.

Each attempt must fail with an eoembed QueryError (most with SqlRefusedError, whose message says what
is allowed), return nothing of a canary file kept outside the product, and write nothing anywhere:
the folder COPY / EXPORT / ATTACH aim at stays empty and the product's files keep their bytes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed import _cli
from tests.factories import write

SECRET = "canary-7f3a9c"  # in every canary file; must never come back

#: Attempts through ``product.sql``, ``eoembed.sql`` and ``eoembed query``. Placeholders: {csv} {text}
#: {json} {geojson} {parquet} canary files outside the product, {outside} their folder, {out} an empty
#: folder outside the product, {product} the product folder, {data} one of its data files, {other} the
#: data file of a product that is not attached.
STATEMENTS = [
    # reading files other than the views' data files
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('file://{csv}')",
    "SELECT * FROM '{csv}'",
    "SELECT * FROM read_text('{text}')",
    "SELECT * FROM read_blob('{text}')",
    "SELECT * FROM read_json('{json}')",
    "SELECT * FROM read_json_objects('{json}')",
    "SELECT * FROM read_parquet('{parquet}')",
    "SELECT * FROM parquet_metadata('{parquet}')",
    "SELECT * FROM sniff_csv('{csv}')",
    "SELECT * FROM glob('{outside}/*')",
    "SELECT * FROM glob('{product}/*')",
    "SELECT * FROM read_json('{product}/collection.json')",
    "SELECT * FROM read_csv('{product}/data/../../outside/canary.csv')",
    "SELECT * FROM read_parquet(['{data}', '{parquet}'])",
    "SELECT * FROM read_parquet('{other}')",
    "SELECT * FROM st_read('/vsicurl/http://127.0.0.1:9/x.geojson')",
    "SELECT * FROM st_read_meta('{geojson}')",
    "SELECT * FROM read_csv('https://127.0.0.1:9/x.csv')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "WITH stolen AS (SELECT * FROM read_text('{text}')) SELECT * FROM stolen",
    "SELECT chip_id, (SELECT content FROM read_text('{text}')) FROM embeddings",
    "SELECT * FROM embeddings JOIN read_csv('{csv}') ON true",
    "SELECT * FROM duckdb_extensions()",
    # writing files: outside, into the product, over its data files
    "COPY (SELECT 1) TO '{out}/copy.csv'",
    "COPY (SELECT * FROM embeddings) TO '{product}/extra.parquet' (FORMAT parquet)",
    "COPY (SELECT 1 AS x) TO '{data}' (FORMAT parquet, USE_TMP_FILE false)",
    "EXPORT DATABASE '{out}/export'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/explained.csv'",
    "SELECT 1; COPY (SELECT 1) TO '{out}/second.csv'",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{out}/nested.csv''')",
    # other databases, extensions, secrets, settings, catalog changes
    "ATTACH '{out}/stolen.duckdb' AS stolen",
    "ATTACH ':memory:' AS scratch",
    "IMPORT DATABASE '{outside}'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD spatial",
    "CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET enable_external_access",
    "SET temp_directory = '{out}'",
    "PRAGMA enable_profiling",
    "SET profile_output = '{out}/profile.txt'",
    "CALL pragma_version()",
    "CREATE TABLE stolen AS SELECT * FROM embeddings",
    "DROP VIEW embeddings",
    "USE memory",
    "SELECT getenv('HOME')",
    ".read {csv}",
    # through knn's arguments and around its rewrite
    "SELECT * FROM knn((SELECT content FROM read_text('{text}')), 5)",
    "SELECT * FROM knn('chip-0000001', 5, \"where\" := 'chip_id IN (SELECT content FROM read_text(''{text}''))')",
    "SELECT * FROM knn('chip-0000001', 5, \"where\" := '1=1; COPY (SELECT 1) TO ''{out}/knn.csv''')",
    "SELECT * FROM knn('chip-0000001', 5) JOIN read_csv('{csv}') ON true",
    "WITH n AS (SELECT * FROM knn('chip-0000001', 5)) SELECT * FROM n, read_text('{text}')",
    "SELECT * FROM knn(getenv('HOME'), 5)",
    "SELECT * FROM knn('chip-0000001', 5); COPY (SELECT 1) TO '{out}/knn.csv'",
    "COPY (SELECT * FROM knn('chip-0000001', 5)) TO '{out}/knn.csv'",
    "EXPLAIN ANALYZE COPY (SELECT * FROM knn('chip-0000001', 5)) TO '{out}/knn.csv'",
    "SELECT * FROM query('SELECT * FROM knn(''chip-0000001'', 5)')",
]

#: Attempts DuckDB itself refuses inside the sandbox, with its own reason (a QueryError, not SqlRefusedError).
DUCKDB_REFUSES = {"SELECT * FROM query('COPY (SELECT 1) TO ''{out}/nested.csv''')", "SELECT getenv('HOME')", ".read {csv}",
                  "SELECT * FROM knn(getenv('HOME'), 5)", "SELECT * FROM query('SELECT * FROM knn(''chip-0000001'', 5)')"}

#: Attempts through ``search(where=...)``, ``dataset(where=...)`` and ``eoembed search --where``.
FILTERS = [
    "1=1) UNION SELECT 'x', 0 FROM (SELECT 1",
    "1=1) UNION ALL SELECT filename, file_row_number FROM embeddings WHERE (1=1",
    "1=1) INTERSECT SELECT filename, file_row_number FROM embeddings WHERE (1=1",
    "chip_id IN (SELECT content FROM read_text('{text}'))",
    "EXISTS (SELECT * FROM read_csv('{csv}'))",
    "(SELECT count(*) FROM glob('{outside}/*')) > 0",
    "chip_id = (SELECT min(chip_id) FROM embeddings)",
    "chip_id IN (FROM read_parquet('{parquet}'))",
    "1=1; COPY (SELECT 1) TO '{out}/filter.csv'",
    "1=1); COPY (SELECT 1) TO '{out}/filter.csv'; SELECT (1",
    "1=1); IMPORT DATABASE '{outside}'; SELECT (1",
    "1=1) LIMIT (1",
    "1=1) ORDER BY (random()",
    "1=1) GROUP BY ALL HAVING (1=1",
    "1=1) QUALIFY (1=1",
    "columns(*) IS NOT NULL",
    "row_number() OVER () < 5",
    "1=1 /*",
    "valid_fraction > 0) OR ((SELECT 1) = 1",
]

ALLOWED_FILTERS = [
    ("valid_fraction > ?", [0.7]),
    ("valid_fraction > $low AND chip_id <> $skip", {"low": 0.7, "skip": "chip-0000001"}),
    ("bbox.xmin > -78.7 AND embedding[1] > 0", None),
    ("ST_Intersects(geometry, ST_MakeEnvelope(-78.7, 35.6, -78.6, 35.7))", None),
    ("list_count(list_filter(embedding::FLOAT[], x -> x > 0)) > 16 -- a trailing comment", None),
    ("CASE WHEN grid_cell LIKE '%712L' THEN valid_fraction > 0.6 ELSE false END", None),
    ("valid_fraction > 0.7) OR (chip_id IN ('chip-0000002', 'chip-0000003')", None),
]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sqlbox")
    outside = root / "outside"
    outside.mkdir()
    (outside / "canary.csv").write_text(f"secret\n{SECRET}\n")
    (outside / "canary.txt").write_text(SECRET)
    (outside / "canary.json").write_text(json.dumps({"secret": SECRET}))
    (outside / "canary.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"secret": SECRET}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}))
    pq.write_table(pa.table({"chip_id": [SECRET]}), outside / "canary.parquet")
    product = write(root / "product", n=200, max_rows_per_file=100)  # two files: one per rank under mpirun -n 2
    other = write(root / "other", n=50, seed=1)
    (root / "out").mkdir()
    return {"csv": f"{outside}/canary.csv", "text": f"{outside}/canary.txt", "json": f"{outside}/canary.json",
            "geojson": f"{outside}/canary.geojson", "parquet": f"{outside}/canary.parquet", "outside": str(outside),
            "out": str(root / "out"), "product": str(product), "data": str(eoembed.open(product).files[0]),
            "other": str(eoembed.open(other).files[0]), "other_product": str(other)}


def _snapshot(place: dict[str, str]) -> dict[str, str]:
    """Every file under the product, the canaries' and the output folder, with its digest."""
    files = {}
    for folder in ("product", "outside", "out"):
        for path in sorted(Path(place[folder]).rglob("*")):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return files


def _refused(place, attempt, check) -> str:
    """Run ``check`` (which returns the text a user would see) and prove nothing left the sandbox."""
    before = _snapshot(place)
    text = check()
    assert SECRET not in text, f"{attempt!r} returned the canary"
    assert _snapshot(place) == before, f"{attempt!r} wrote or changed a file"
    return text


def _expect_sql_error(call, *, kind: type[eoembed.QueryError] = eoembed.SqlRefusedError) -> str:
    with pytest.raises(kind) as caught:
        call()
    message = str(caught.value)
    if isinstance(caught.value, eoembed.SqlRefusedError):
        assert "allowed" in message or "eoembed runs one read-only query" in message or "it must be one boolean" in message
    else:  # DuckDB's own reason, with the query (a GDAL open refused, a nested statement refused)
        assert "query:" in message
    return message


@pytest.fixture(scope="module")
def product(place) -> eoembed.Product:
    """One product for every product.sql attempt: a refused statement leaves its connection as it was."""
    with eoembed.open(place["product"]) as product:
        yield product


@pytest.mark.parametrize("statement", STATEMENTS)
def test_product_sql_cannot_reach_outside_the_product(place, product, statement):
    query = statement.format(**place)
    kind = eoembed.QueryError if statement in DUCKDB_REFUSES else eoembed.SqlRefusedError
    _refused(place, statement, lambda: _expect_sql_error(lambda: product.sql(query), kind=kind))


@pytest.mark.parametrize("statement", STATEMENTS[::4])  # every 4th: each call opens its own sandbox
def test_module_sql_cannot_reach_outside_the_products(place, statement):
    query = statement.format(**place)
    run = lambda: eoembed.sql(query, products={"embeddings": place["product"]})  # noqa: E731
    kind = eoembed.QueryError if statement in DUCKDB_REFUSES else eoembed.SqlRefusedError
    _refused(place, statement, lambda: _expect_sql_error(run, kind=kind))


def test_st_read_of_a_canary_fails(place, product):
    """GDAL reads through DuckDB's file system: the sandbox refuses the canary (GDAL says it cannot open it)."""
    message = _refused(place, "st_read", lambda: _expect_sql_error(
        lambda: product.sql(f"SELECT * FROM st_read('{place['geojson']}')"), kind=eoembed.QueryError))
    assert "GDAL" in message and "attach a product" in message


@pytest.mark.parametrize("where", FILTERS)
@pytest.mark.parametrize("entry", ["search", "dataset"])
def test_filters_are_one_boolean_expression(place, product, where, entry):
    where = where.format(**place)
    if entry == "search":
        run = lambda: product.search("chip-0000001", k=5, where=where)  # noqa: E731
    else:
        run = lambda: product.dataset(where=where)  # noqa: E731
    _refused(place, where, lambda: _expect_sql_error(run))


@pytest.mark.parametrize("argv", [
    ["query", "{product}", "SELECT * FROM read_csv('{csv}')"],
    ["query", "{product}", "COPY (SELECT 1) TO '{out}/cli.csv'"],
    ["query", "{product}", "SELECT 1; SELECT * FROM read_text('{text}')"],
    ["query", "{product}", "SELECT * FROM read_parquet('{other}')"],
    ["query", "{product}", "ATTACH '{out}/cli.duckdb' AS x"],
    ["query", "{product}", "SET enable_external_access = true"],
    ["query", "{product}", "SELECT * FROM read_text('{text}')", "--attach", "other={other_product}"],
    ["search", "{product}", "--chip", "chip-0000001", "--where", "chip_id IN (SELECT content FROM read_text('{text}'))"],
    ["search", "{product}", "--chip", "chip-0000001", "--where", "1=1) UNION SELECT 'x', 0 FROM (SELECT 1"],
    ["search", "{product}", "--chip", "chip-0000001", "--where", "1=1; COPY (SELECT 1) TO '{out}/cli.csv'"],
])
def test_cli_refuses_with_a_message_and_exit_code_2(place, argv, capsys):
    argv = [a.format(**place) for a in argv]

    def check() -> str:
        code = _cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 2 and err.startswith("eoembed: ") and "Traceback" not in err and not out
        return out + err

    _refused(place, argv, check)


def test_cli_refusal_in_a_real_process(place):
    command = [str(Path(sys.executable).parent / "eoembed"), "query", place["product"], f"SELECT * FROM read_csv('{place['csv']}')"]
    done = _refused(place, command, lambda: (lambda p: p.stdout + p.stderr + str(p.returncode))(
        subprocess.run(command, capture_output=True, text=True, timeout=120)))
    assert done.endswith("2") and "Permission Error" in done and "attach a product" in done and "Traceback" not in done


@pytest.mark.mpi
@pytest.mark.parametrize(("ranks", "where", "reason"), [
    (1, "1=1) UNION SELECT 'x', 0 FROM (SELECT 1", "is more than a filter"),
    (2, "1=1) UNION SELECT 'x', 0 FROM (SELECT 1", "is more than a filter"),
    (2, "no_such_column > 1", "no_such_column"),
])
def test_mpirun_search_refuses_a_filter_on_every_rank_without_hanging(place, ranks, where, reason):
    """Rank 0 evaluates the filter and broadcasts its error, so no rank waits for a map that never comes."""
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mpirun"), "-n", str(ranks), str(bin_dir / "eoembed"), "search", place["product"],
               "--chip", "chip-0000001", "--where", where.format(**place)]
    done = _refused(place, command, lambda: (lambda p: f"{p.returncode}\n{p.stdout}{p.stderr}")(
        subprocess.run(command, capture_output=True, text=True, timeout=120)))
    assert done.startswith("2\n") and done.count(reason) >= ranks and "Traceback" not in done


def test_attached_products_stay_readable(place, capsys):
    product = eoembed.open(place["product"])
    assert product.sql("SELECT count(*) AS n FROM embeddings").to_pylist() == [{"n": 200}]
    product.attach("other", place["other_product"])  # reopens the sandbox with the other product's files
    joined = product.sql("SELECT count(*) AS n FROM other JOIN embeddings USING (chip_id)").to_pylist()
    direct = product.sql(f"SELECT count(*) AS n FROM read_parquet('{place['other']}')").to_pylist()
    assert joined == [{"n": 50}] and direct == [{"n": 50}]
    both = eoembed.sql("SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b) AS n",
                       products={"a": place["product"], "b": place["other_product"]}).to_pylist()
    assert both == [{"n": 250}]
    assert _cli.main(["query", place["product"], "SELECT count(*) AS n FROM other", "--attach", f"other={place['other_product']}",
                      "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 50}]


def test_the_connection_is_locked(place, product):
    con = product.connect()
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                "('enable_external_access', 'lock_configuration', 'allowed_paths')").fetchall())
    assert settings["enable_external_access"] == "false" and settings["lock_configuration"] == "true"
    assert set(settings["allowed_paths"].strip("[]").split(", ")) == {str(f) for f in product.files}
    with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
        con.execute("SET enable_external_access = true")


@pytest.mark.parametrize(("where", "params"), ALLOWED_FILTERS)
def test_filters_keep_working_with_bound_parameters(place, product, where, params):
    expected = product.sql(f"SELECT count(*) AS n FROM embeddings WHERE ({where}\n)", params).to_pylist()[0]["n"]
    assert 0 < expected < 200
    assert len(product.dataset(where=where, params=params)) == expected
    hits = product.search("chip-0000001", k=200, where=where, params=params)
    assert hits.num_rows == expected
