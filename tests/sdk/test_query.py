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
