"""Products and query results in the ecosystem's formats: pandas, geopandas, pystac, CSV, JSON,
GeoJSON and GeoParquet, with every column type a product holds."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

import eoembed
from eoembed._export import FORMATS, ExportError, geometry_columns, write_result
from tests.factories import chips, write

# Every column type of a product: WKB geometry, struct bbox, fixed-size lists, timestamps, strings.
EVERY_COLUMN = "SELECT chip_id, geometry, bbox, embedding, pixel_bbox, datetime, valid_fraction FROM embeddings ORDER BY chip_id LIMIT 5"


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return eoembed.open(write(tmp_path_factory.mktemp("export") / "p", n=60, quantization="int8-per-row"))


def test_len_crs_bbox_follow_the_rows(product):
    given = chips(60)["bounds"]
    assert len(product) == 60 == product.num_rows
    assert product.crs == "OGC:CRS84"
    np.testing.assert_allclose(product.bbox, [given[:, 0].min(), given[:, 1].min(), given[:, 2].max(), given[:, 3].max()])


def test_to_pandas_and_geopandas_hold_every_row_and_the_decoded_vectors(product):
    frame = product.to_pandas()
    assert len(frame) == 60 and set(frame.columns) >= {"chip_id", "bbox", "datetime", "embedding"}
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_list()), product.to_numpy())
    gdf = product.to_geopandas(columns=["chip_id"])
    assert list(gdf.columns) == ["chip_id", "geometry"] and gdf.crs == "OGC:CRS84"
    np.testing.assert_allclose(gdf.total_bounds, product.bbox)


def test_stac_views_are_pystac_objects_that_validate_offline(product):
    import pystac

    collection = product.stac_collection
    assert isinstance(collection, pystac.Collection) and collection.id == product.collection["id"]
    items = product.items
    assert items and all(isinstance(item, pystac.Item) for item in items)
    assert sum(item.properties["table:row_count"] for item in items) == 60
    assert items[0].assets["embeddings"].get_absolute_href().endswith(".parquet")


# Types SQL can make beyond the stored ones: decimal, interval, struct of list, nested list, map, UUID, NULL, date.
EXOTIC = ("SELECT chip_id, geometry, 1.5 AS d, INTERVAL 1 DAY AS i, {'a': 1, 'b': [1, 2]} AS s, [[1, 2], [3]] AS l, "
          "MAP {'k': 1} AS m, uuid() AS u, NULL AS n, DATE '2020-01-01' AS dt FROM embeddings LIMIT 3")


@pytest.mark.parametrize("query", [EVERY_COLUMN, EXOTIC], ids=["stored", "exotic"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_column_type_breaks_a_format(product, fmt, query, tmp_path, capsys):
    out = tmp_path / f"r.{fmt}"
    write_result(product.sql(query), fmt=fmt, out=out)
    assert out.stat().st_size > 0
    if fmt == "table":
        write_result(product.sql(query), fmt=fmt)
        printed = capsys.readouterr().out
        assert printed.rstrip().endswith(f"({product.sql(query).num_rows} rows)")


def test_exotic_values_keep_their_meaning_in_text_formats(product, tmp_path):
    write_result(product.sql(EXOTIC), fmt="json", out=tmp_path / "r.json")
    row = json.loads((tmp_path / "r.json").read_text())[0]
    assert row["d"] == 1.5 and row["i"] == {"months": 0, "days": 1, "nanoseconds": 0} and row["s"] == {"a": 1, "b": [1, 2]}
    assert row["l"] == [[1, 2], [3]] and row["n"] is None and row["dt"] == "2020-01-01" and len(row["u"]) == 36
    write_result(product.sql(EXOTIC), fmt="csv", out=tmp_path / "r.csv")
    first = next(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert first["s.a"] == "1" and json.loads(first["s.b"]) == [1, 2] and json.loads(first["i"])["days"] == 1


def test_csv_holds_geometry_as_wkt_and_flattens_structs(product, tmp_path):
    out = tmp_path / "r.csv"
    write_result(product.sql(EVERY_COLUMN), fmt="csv", out=out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    first = rows[0]
    polygon = shapely.from_wkt(first["geometry"])
    assert polygon.geom_type == "Polygon"
    np.testing.assert_allclose(polygon.bounds, [float(first[f"bbox.{k}"]) for k in ("xmin", "ymin", "xmax", "ymax")])
    assert len(json.loads(first["embedding"])) == 32 and len(json.loads(first["pixel_bbox"])) == 4


def test_json_and_geojson_hold_geojson_geometries(product, tmp_path):
    write_result(product.sql(EVERY_COLUMN), fmt="json", out=tmp_path / "r.json")
    records = json.loads((tmp_path / "r.json").read_text())
    assert records[0]["geometry"]["type"] == "Polygon" and set(records[0]["bbox"]) == {"xmin", "ymin", "xmax", "ymax"}
    write_result(product.sql(EVERY_COLUMN), fmt="geojson", out=tmp_path / "r.geojson")
    import geopandas

    frame = geopandas.read_file(tmp_path / "r.geojson")
    assert len(frame) == 5 and frame.geometry.geom_type.eq("Polygon").all()
    assert sorted(frame["chip_id"]) == [f"chip-{i:07d}" for i in range(5)]


@pytest.mark.parametrize("fmt", ["parquet", "geoparquet"])
def test_parquet_outputs_keep_geo_metadata_geopandas_reads(product, fmt, tmp_path):
    import geopandas

    out = tmp_path / "r.parquet"
    write_result(product.sql(EVERY_COLUMN), fmt=fmt, out=out)
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    frame = geopandas.read_parquet(out)
    assert frame.crs == "OGC:CRS84" and len(frame) == 5
    np.testing.assert_allclose(frame.total_bounds, geo["columns"]["geometry"]["bbox"])


def test_geoparquet_output_passes_the_reference_validator(product, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "r.parquet"
    write_result(product.sql("SELECT chip_id, geometry, bbox FROM embeddings ORDER BY chip_id"), fmt="geoparquet", out=out)
    validator = str(Path(sys.executable).parent / "geoparquet-validator")
    for level in ("core", "covering"):
        result = subprocess.run([validator, "check", str(out), "--class", level], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_geometry_formats_refuse_results_without_geometry(product, tmp_path):
    table = product.sql("SELECT chip_id FROM embeddings")
    assert geometry_columns(table.schema) == {}
    for fmt in ("geojson", "geoparquet"):
        with pytest.raises(ExportError, match="select `geometry` too"):
            write_result(table, fmt=fmt, out=tmp_path / "x")
    with pytest.raises(ExportError, match="give --out"):
        write_result(table, fmt="parquet", out=None)


def test_search_takes_a_shapely_geometry_or_geojson_mapping_as_bbox(product):
    box = (-78.75, 35.65, -78.65, 35.75)
    expected = product.search("chip-0000003", k=5, bbox=box).column("chip_id").to_pylist()
    polygon = shapely.box(*box)
    assert product.search("chip-0000003", k=5, bbox=polygon).column("chip_id").to_pylist() == expected
    assert product.search("chip-0000003", k=5, bbox=shapely.geometry.mapping(polygon)).column("chip_id").to_pylist() == expected
    feature = {"type": "Feature", "geometry": shapely.geometry.mapping(polygon), "properties": {}}
    assert product.search("chip-0000003", k=5, bbox=feature).column("chip_id").to_pylist() == expected
    with pytest.raises(eoembed.SearchError, match="not a GeoJSON geometry"):
        product.search("chip-0000003", k=5, bbox={"type": "Nonsense"})


def test_a_bare_date_means_that_whole_day(product):
    day = product.sql("SELECT strftime(datetime, '%Y-%m-%d') AS d, count(*) AS n FROM embeddings GROUP BY 1 ORDER BY 2 DESC LIMIT 1")
    date, rows = day.column("d")[0].as_py(), day.column("n")[0].as_py()
    hits = product.search("chip-0000000", k=60, datetime=date)
    assert hits.num_rows == rows
    assert {t.strftime("%Y-%m-%d") for t in hits.column("datetime").to_pylist()} == {date}
    with pytest.raises(eoembed.SearchError, match="not ISO 8601"):
        product.search("chip-0000000", datetime="18/05/2020x")
