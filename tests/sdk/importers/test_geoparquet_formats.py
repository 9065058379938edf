"""Chip-level GeoParquet imports: the real Clay, Planet and Earth Index files of the geo-embeddings
survey, and faithful fixtures where no real file with rows exists (Earth Index rows, Major TOM)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

import eoembed
from eoembed._chipid import chip_id
from tests.sdk.importers.fixtures import SURVEY, assert_valid_everywhere, earthindex_file, majortom_shard

CLAY = f"{SURVEY}/clay/03WVN_20220610_20220610_v001.gpq"
PLANET = f"{SURVEY}/planet/sample_embeddings.parquet"
EARTH_INDEX = f"{SURVEY}/earth_index/21MNT.parquet"


@pytest.fixture(scope="module")
def clay_product(shared_data, tmp_path_factory):
    return eoembed.import_product("clay", [shared_data / CLAY], out=tmp_path_factory.mktemp("clay") / "p")


def test_clay_imports_into_a_valid_product(clay_product):
    assert clay_product.rows == 417
    assert_valid_everywhere(clay_product.path)
    product = eoembed.open(clay_product.path)
    model = product.metadata["model"]
    assert (model["name"], model["version"], model["output"]["dim"]) == ("clay", "0.1", 768)
    # The files say nothing of the weights, bands or normalisation: recorded as unknown, not invented.
    assert {"weights_sha256", "input.bands", "input.normalization", "input.gsd_m"} <= set(model["unknown"])
    assert model["weights_sha256"] is None
    # Placeholders keep the chip's ground size: 1 px of the footprint's edge (Clay tiles are about 5.12 km).
    assert model["input"]["chip_size_px"] == 1 and 5000 < model["input"]["gsd_m"] < 5300
    assert product.metadata["embedding"]["normalized"] is False  # Clay v0 vectors are not unit length
    model_item = json.loads(next((clay_product.path / "models").glob("*.json")).read_text())
    assert model_item["properties"]["mlm:pretrained"] is True
    assert "not stated" in model_item["assets"]["model"]["title"]


def test_clay_round_trip_through_geopandas_keeps_rows_geometry_and_vectors(shared_data, clay_product):
    import geopandas

    source = geopandas.read_parquet(shared_data / CLAY).set_index("source_url")
    files = sorted((clay_product.path / "data").glob("*.parquet"))
    imported = geopandas.pd.concat([geopandas.read_parquet(f) for f in files]).set_index("source_id")
    assert len(imported) == len(source) == 417
    assert imported.crs.equals(source.crs) or imported.crs.to_string() == "OGC:CRS84"
    imported = imported.loc[source.index]
    assert shapely.equals(imported.geometry.values, source.geometry.values).all()
    np.testing.assert_array_equal(np.stack(imported["embedding"].to_numpy()), np.stack(source["embeddings"].to_numpy()))
    assert (imported["datetime"].dt.date.to_numpy() == source["date"].to_numpy()).all()


def test_planet_defects_are_reported_and_refused(shared_data, tmp_path):
    with pytest.raises(eoembed.SourceDefectError) as caught:
        eoembed.import_product("planet", [shared_data / PLANET], out=tmp_path / "p")
    message = str(caught.value)
    assert "Pseudo-Mercator" in message and "look like degrees" in message and "--repair lonlat" in message
    assert "null vectors" in message and "--repair drop-empty" in message
    assert not (tmp_path / "p").exists()
    with pytest.raises(eoembed.SourceDefectError, match="null vectors") as caught:
        eoembed.import_product("planet", [shared_data / PLANET], out=tmp_path / "p", repair=["lonlat"])
    assert "Pseudo-Mercator" not in str(caught.value)


def test_planet_imports_where_the_user_asks_for_the_repairs(shared_data, tmp_path):
    report = eoembed.import_product("planet", [shared_data / PLANET], out=tmp_path / "p", repair=["lonlat", "drop-empty"])
    assert report.rows == 3 and sorted(d["repair"] for d in report.defects) == ["drop-empty", "lonlat"]
    assert_valid_everywhere(report.path)
    product = eoembed.open(report.path)
    footer = product.metadata
    assert footer["model"]["input"]["chip_size_px"] == 224  # the one model fact the file states
    assert "name" in footer["model"]["unknown"]
    recorded = json.loads((report.path / "collection.json").read_text())["eoembed:provenance"]["config"]["import"]
    assert sorted(recorded["repairs"]) == ["drop-empty", "lonlat"] and len(recorded["defects"]) == 2
    # The coordinates were lon/lat all along: kept as they are, not reprojected from EPSG:3857.
    source = pq.read_table(shared_data / PLANET)
    lon = source.column("centroid_lon").to_numpy()
    bbox = product.sql("SELECT bbox.xmin AS x0, bbox.xmax AS x1 FROM embeddings")
    assert np.allclose(sorted((bbox.column("x0").to_numpy() + bbox.column("x1").to_numpy()) / 2), sorted(lon[[0, 2, 4]]), atol=1e-3)


def test_the_real_earth_index_file_has_no_rows_and_is_refused(shared_data, tmp_path):
    with pytest.raises(eoembed.EmptySourceError, match="holds no rows"):
        eoembed.import_product("earthindex", [shared_data / EARTH_INDEX], out=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_earth_index_rows_import_with_the_model_its_footer_states(shared_data, tmp_path):
    # Faithful fixture: the real file's schema and 'emb' footer, with rows (the real sample has none).
    source = earthindex_file(tmp_path / "21MNT.parquet", real=shared_data / EARTH_INDEX)
    report = eoembed.import_product("earthindex", [source], out=tmp_path / "p")
    assert report.rows == 12
    assert_valid_everywhere(report.path)
    product = eoembed.open(report.path)
    model = product.metadata["model"]
    assert (model["name"], model["version"], model["architecture"], model["pooling"]) == \
        ("dinov2_vits14_softcon", "2.0.0", "DinoV2", "cls")
    assert model["parameters"]["source"]["stated"]["model"]["name"] == "SoftCon"
    assert product.collection["license"] == "CC-BY-4.0"
    times = product.sql("SELECT DISTINCT start_datetime, end_datetime FROM embeddings").to_pylist()
    assert [(t["start_datetime"].year, t["end_datetime"].year) for t in times] == [(2023, 2024)]


def test_major_tom_shard_imports_on_its_grid_with_spec_chip_ids(tmp_path):
    source = majortom_shard(tmp_path / "shard.parquet")
    with pytest.raises(eoembed.SourceDefectError, match="'crs' is null.*--repair lonlat"):
        eoembed.import_product("majortom", [source], out=tmp_path / "p")
    report = eoembed.import_product("majortom", [source], out=tmp_path / "p", repair=["lonlat"], model_name="Core-S2L1C-SSL4EO")
    assert report.rows == 81
    assert_valid_everywhere(report.path)
    product = eoembed.open(report.path)
    model = product.metadata["model"]
    assert product.metadata["grid"]["id"] == "majortom-10km"
    assert (model["name"], model["input"]["chip_size_px"], model["input"]["gsd_m"]) == ("Core-S2L1C-SSL4EO", 128, 10.0)
    assert "input.stride_px" in model["unknown"]  # Major TOM fragments overlap: no stride is stated
    rows = product.sql("SELECT chip_id, grid_cell, pixel_bbox, datetime, source_id, native_crs FROM embeddings").to_pylist()
    shard = pq.read_table(source)
    assert {r["native_crs"] for r in rows} == set(shard.column("utm_crs").to_pylist())
    # Fragments near the image border have their centre in the neighbouring cell: grid_cell follows the spec rule.
    assert {r["grid_cell"] for r in rows} > set(shard.column("grid_cell").to_pylist())
    for row in rows:
        assert row["chip_id"] == chip_id(grid_id="majortom-10km", grid_cell=row["grid_cell"], col_off=row["pixel_bbox"][0],
                                         row_off=row["pixel_bbox"][1], chip_size=128, time=row["datetime"],
                                         source_id=row["source_id"])


def test_major_tom_cell_ids_that_contradict_their_row_and_column_are_a_defect(tmp_path):
    import pyarrow as pa

    source = majortom_shard(tmp_path / "shard.parquet", per_side=3)
    table = pq.read_table(source)
    column = table.schema.get_field_index("grid_row_u")
    table = table.set_column(column, "grid_row_u", pa.array(np.full(table.num_rows, 3, np.int16)))
    pq.write_table(table, source)
    with pytest.raises(eoembed.SourceDefectError, match="row 0: grid_cell .* disagrees with grid_row_u 3"):
        eoembed.import_product("majortom", [source], out=tmp_path / "p", repair=["lonlat"])
