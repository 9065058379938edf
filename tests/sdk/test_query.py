"""SQL over products through DuckDB, extensions loaded offline."""

from __future__ import annotations

import numpy as np
import pytest

import eoembed
from eoembed import _query
from tests.factories import QUANTIZATIONS, write


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_view_decodes_every_form_like_numpy(tmp_path, quantization):
    product = eoembed.open(write(tmp_path / "p", n=200, quantization=quantization))
    kind = product.sql("SELECT typeof(embedding) AS t, typeof(embedding_stored) AS s FROM embeddings LIMIT 1").to_pylist()[0]
    assert kind["t"] == "FLOAT[32]"
    sql = np.array(product.sql("SELECT embedding FROM embeddings").column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(sql, product.to_numpy(), rtol=0, atol=1e-6)


def test_parameters_are_bound_not_interpolated(tmp_path):
    product = eoembed.open(write(tmp_path / "p", n=200))
    hostile = "x' OR 1=1 --"
    assert product.sql("SELECT count(*) AS n FROM embeddings WHERE chip_id = ?", [hostile]).to_pylist() == [{"n": 0}]
    one = product.sql("SELECT chip_id FROM embeddings LIMIT 1").column("chip_id")[0].as_py()
    near = product.sql(
        "SELECT chip_id, array_cosine_similarity(embedding, (SELECT embedding FROM embeddings WHERE chip_id = $id)) AS s "
        "FROM embeddings ORDER BY s DESC LIMIT 3", {"id": one}
    ).to_pylist()
    assert near[0]["chip_id"] == one and near[0]["s"] == pytest.approx(1.0, abs=1e-6)


def test_sql_errors_carry_the_query_and_duckdb_reason(tmp_path):
    product = eoembed.open(write(tmp_path / "p", n=10))
    with pytest.raises(eoembed.QueryError, match=r"(?s)no_such_column.*query: SELECT no_such_column FROM embeddings"):
        product.sql("SELECT no_such_column FROM embeddings")


def test_spatial_functions_and_bbox_filters(tmp_path):
    product = eoembed.open(write(tmp_path / "p", n=400))
    inside = product.sql(
        "SELECT count(*) AS n FROM embeddings WHERE ST_Intersects(geometry, ST_MakeEnvelope(?, ?, ?, ?))",
        [-78.7, 35.6, -78.6, 35.7],
    ).to_pylist()[0]["n"]
    by_bbox = product.sql(
        "SELECT count(*) AS n FROM embeddings WHERE bbox.xmax >= ? AND bbox.xmin <= ? AND bbox.ymax >= ? AND bbox.ymin <= ?",
        [-78.7, -78.6, 35.6, 35.7],
    ).to_pylist()[0]["n"]
    assert 0 < inside == by_bbox < 400


def test_missing_extension_package_gives_an_install_hint(monkeypatch):
    real = _query.importlib.import_module

    def fake(name, *args):
        if name == "duckdb_extension_spatial":
            raise ImportError("No module named 'duckdb_extension_spatial'")
        return real(name, *args)

    monkeypatch.setattr(_query.importlib, "import_module", fake)
    with pytest.raises(eoembed.MissingDependencyError, match=r"pip install duckdb-extension-spatial==1\.5\.5"):
        _query.connect(required=True)
    con = _query.connect()  # optional: a connection without spatial still works
    with pytest.raises(eoembed.QueryError, match="duckdb-extension-spatial"):
        _query.run(con, "SELECT ST_Point(1, 2)")


def test_extensions_never_download():
    con = _query.connect(extensions=("spatial", "vss"))
    loaded = dict(con.execute("SELECT extension_name, loaded FROM duckdb_extensions() WHERE extension_name IN ('spatial', 'vss')").fetchall())
    assert loaded == {"spatial": True, "vss": True}
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name LIKE 'autoinstall_known_extensions'").fetchall())
    assert settings["autoinstall_known_extensions"] == "false"


def test_several_products_join_on_chip_id(tmp_path):
    a = write(tmp_path / "a", n=300, seed=1)
    b = write(tmp_path / "b", n=300, seed=2, quantization="int8")
    joined = eoembed.sql(
        "SELECT count(*) AS n, avg(array_cosine_similarity(a.embedding, b.embedding)) AS s FROM a JOIN b USING (chip_id) "
        "WHERE a.valid_fraction > ?", [0.0], products={"a": a, "b": b}).to_pylist()[0]
    assert joined["n"] == 300 and abs(joined["s"]) < 0.2  # different vectors, same chips
    product = eoembed.open(a).attach("other", b)
    assert product.sql("SELECT count(*) AS n FROM embeddings JOIN other USING (chip_id)").to_pylist() == [{"n": 300}]
    with pytest.raises(eoembed.QueryError, match="view name"):
        product.attach("x; DROP", b)


def test_bbox_and_time_filters_skip_row_groups(tmp_path):
    """Row groups outside the box are not read: their pages are overwritten with garbage, and a filtered
    query still answers while an unfiltered one fails; EXPLAIN ANALYZE shows the filter in the Parquet scan."""
    import pyarrow.parquet as pq

    path = write(tmp_path / "p", n=4000, row_group_size=250)
    product = eoembed.open(path)
    box = [-78.8, -78.74, 35.6, 35.66]  # xmin, xmax, ymin, ymax: a corner of the chips' region
    where = "bbox.xmax >= ? AND bbox.xmin <= ? AND bbox.ymax >= ? AND bbox.ymin <= ? AND datetime >= ?"
    params = [box[0], box[1], box[2], box[3], "2020-05-18"]
    expected = product.sql(f"SELECT count(*) AS n FROM embeddings WHERE {where}", params).to_pylist()[0]["n"]
    plan = product.sql(f"EXPLAIN ANALYZE SELECT count(*) FROM embeddings WHERE {where}", params).column(1)[0].as_py()
    assert "READ_PARQUET" in plan and "bbox.xmax>=" in plan.replace(" ", "").replace("\n", "").replace("│", "")
    file = product.files[0]
    meta = pq.ParquetFile(file).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    outside = []
    for g in range(meta.num_row_groups):
        stats = {n: meta.row_group(g).column(i).statistics for i, n in enumerate(names)}
        if stats["bbox.xmin"].min > box[1] or stats["bbox.xmax"].max < box[0] or stats["bbox.ymin"].min > box[3] or stats["bbox.ymax"].max < box[2]:
            outside.append(g)
    assert 0.5 * meta.num_row_groups <= len(outside) < meta.num_row_groups  # Hilbert-sorted groups are compact
    data = bytearray(file.read_bytes())
    for g in outside:
        for i in range(meta.num_columns):
            chunk = meta.row_group(g).column(i)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    file.write_bytes(bytes(data))
    fresh = eoembed.open(path)
    assert fresh.sql(f"SELECT count(*) AS n FROM embeddings WHERE {where}", params).to_pylist()[0]["n"] == expected > 0
    with pytest.raises(eoembed.QueryError):
        fresh.sql("SELECT sum(bbox.xmin) AS s FROM embeddings")
