"""The writer: every product it emits is valid GeoParquet 1.1 + STAC, and bad input is refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed._quantize import dequantize, quantize
from eoembed._schemas import validate_stac
from tests.factories import QUANTIZATIONS, TOLERANCE, chips, model_contract, write

VALIDATOR = shutil.which("geoparquet-validator") or str(Path(sys.executable).parent / "geoparquet-validator")


def stac_documents(product: Path) -> list[Path]:
    return [product / "collection.json", *sorted((product / "items").glob("*.json")), *sorted((product / "models").glob("*.json"))]


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_round_trip_each_form(tmp_path, quantization):
    batch = chips(600, 64, seed=1)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(64), quantization=quantization,
                                 normalize=True, row_group_size=128)
    product = eoembed.open(path)
    assert product.num_rows == 600
    got = product.to_numpy()
    # Rows are stored in spatial order: line them up again by chip id.
    order = np.argsort(product.sql("SELECT chip_id FROM embeddings").column("chip_id").to_numpy(zero_copy_only=False))
    ids = np.array(sorted(batch["chip_id"]))
    assert (np.array(product.sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist())[order] == ids).all()
    got = got[order]
    expected = batch["embedding"]
    if quantization == "binary":
        assert (np.sign(got) == np.where(expected > 0, 1, -1)).all()
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    else:
        assert np.abs(got - expected).max() <= TOLERANCE[quantization] + 1e-7
    # The stored codes decode exactly as the declared method says.
    codes = product.to_numpy(dequantize=False)[order]
    quant = product.quantization
    row_scale = None
    if quant.method == "per-row":
        scale = product.sql("SELECT scale FROM embeddings").column("scale").to_numpy()
        row_scale = scale[order]
    np.testing.assert_array_equal(dequantize(codes, quant, row_scale=row_scale), got)
    assert eoembed.validate(path).findings == []


@pytest.mark.parametrize("quantization", ["none", "int8-per-row", "binary"])
def test_data_files_pass_geoparquet_validator(tmp_path, quantization):
    path = write(tmp_path / "p", quantization=quantization)
    for data in sorted((path / "data").glob("*.parquet")):
        for conformance in ("core", "covering"):
            run = subprocess.run([VALIDATOR, "check", str(data), "--class", conformance], capture_output=True, text=True)
            assert run.returncode == 0, run.stdout + run.stderr
            assert "conformant" in run.stdout


def test_stac_validates_offline_against_every_declared_schema(tmp_path):
    path = write(tmp_path / "p", quantization="int8-per-row")
    for document in stac_documents(path):
        doc = json.loads(document.read_text())
        assert validate_stac(doc) == [], document
        declared = set(doc["stac_extensions"])
        if document.name == "collection.json":
            assert {eoembed._spec.EMBEDDINGS_EXTENSION, eoembed._spec.STAC_EXTENSION} <= declared
        elif document.parent.name == "models":
            assert eoembed._spec.MLM_EXTENSION in declared


def test_stac_against_the_shared_mirror_differs_only_in_the_beta_version_const(tmp_path, stac_mirror):
    """The mirrored 'v1.1.0' core schemas are the 1.1.0-beta.1 text; everything else agrees."""
    path = write(tmp_path / "p")
    for document in stac_documents(path):
        doc = json.loads(document.read_text())
        issues = validate_stac(doc, extra_roots=[stac_mirror])
        assert issues == [], document  # vendored copies are found first; the mirror fills gaps only
    beta = json.loads((stac_mirror / "schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json").read_text())
    assert "1.1.0-beta.1" in json.dumps(beta)


def test_duckdb_spatial_reads_the_geometry(tmp_path):
    path = write(tmp_path / "p")
    product = eoembed.open(path)
    rows = product.sql(
        "SELECT ST_GeometryType(geometry) AS kind, max(abs(ST_XMin(geometry) - bbox.xmin)) AS dx, "
        "max(abs(ST_YMax(geometry) - bbox.ymax)) AS dy, count(*) AS n FROM embeddings GROUP BY 1"
    ).to_pylist()
    assert rows == [{"kind": "POLYGON", "dx": 0.0, "dy": 0.0, "n": 500}]


def test_stac_geoparquet_reads_the_items(tmp_path):
    import stac_geoparquet.arrow as sga

    path = write(tmp_path / "p", max_rows_per_file=200)
    items = [json.loads(p.read_text()) for p in sorted((path / "items").glob("*.json"))]
    table = sga.parse_stac_items_to_arrow(items).read_all()
    assert table.num_rows == 3
    sga.to_parquet(table, tmp_path / "items.parquet")
    back = list(sga.stac_table_to_items(pq.read_table(tmp_path / "items.parquet")))
    assert sorted(i["assets"]["embeddings"]["href"] for i in back) == [f"../data/part-0000{k}.parquet" for k in range(3)]


def test_layout_zstd_row_groups_and_spatial_order(tmp_path):
    path = write(tmp_path / "p", n=4000, row_group_size=1000)
    meta = pq.ParquetFile(path / "data" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 4
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    table = pq.read_table(path / "data" / "part-00000.parquet", columns=["bbox"]).column("bbox").combine_chunks()
    xy = np.stack([table.field("xmin").to_numpy(), table.field("ymin").to_numpy()], axis=1)
    stored_step = np.abs(np.diff(xy, axis=0)).sum(axis=1).mean()
    shuffled = xy[np.random.default_rng(0).permutation(len(xy))]
    random_step = np.abs(np.diff(shuffled, axis=0)).sum(axis=1).mean()
    assert stored_step < random_step / 10
    # Row-group statistics let readers skip groups: spatial order makes their boxes small.
    index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    spans = [meta.row_group(g).column(index["bbox.xmin"]).statistics for g in range(4)]
    assert all(s.has_min_max for s in spans)


def test_streaming_writer_splits_files_and_manifest_agrees(tmp_path):
    with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), max_rows_per_file=250, normalize=True) as writer:
        for k in range(4):
            writer.write(chips(200, 16, seed=k, first=200 * k))
    product = eoembed.open(tmp_path / "p")
    manifest = product.manifest.to_pylist()
    assert [m["rows"] for m in manifest] == [250, 250, 250, 50]
    assert product.num_rows == 800
    assert len(list((tmp_path / "p" / "items").glob("*.json"))) == 4
    assert eoembed.validate(tmp_path / "p").ok


def test_chip_ids_derived_from_place_time_and_source_join_two_models(tmp_path):
    batch = chips(100, 16)
    del batch["chip_id"]
    a = eoembed.write_product(tmp_path / "a", batch, model=model_contract(16, name="model-a"), normalize=True)
    other = dict(batch, embedding=np.random.default_rng(9).normal(size=(100, 8)).astype(np.float32))
    b = eoembed.write_product(tmp_path / "b", other, model=model_contract(8, name="model-b"), quantization="int8")
    ids_a = set(eoembed.open(a).sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist())
    ids_b = set(eoembed.open(b).sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist())
    assert ids_a == ids_b and len(ids_a) == 100
    c = eoembed.write_product(tmp_path / "c", dict(batch, source_id="another-scene"), model=model_contract(16), normalize=True)
    assert not ids_a & set(eoembed.open(c).sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist())


def test_time_ranges_instead_of_instants(tmp_path):
    batch = chips(50, 16)
    del batch["datetime"]
    batch["start_datetime"] = datetime(2020, 1, 1, tzinfo=timezone.utc)
    batch["end_datetime"] = datetime(2020, 12, 31, tzinfo=timezone.utc)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(16), normalize=True)
    collection = json.loads((path / "collection.json").read_text())
    assert collection["extent"]["temporal"]["interval"] == [["2020-01-01T00:00:00Z", "2020-12-31T00:00:00Z"]]
    assert eoembed.validate(path).ok


# -- refusals -------------------------------------------------------------------------------------


def test_dimension_mismatch_names_both_dimensions(tmp_path):
    with pytest.raises(eoembed.DimensionMismatchError, match=r"dimension 24.*model.output.dim is 32"):
        eoembed.write_product(tmp_path / "p", chips(10, 24), model=model_contract(32))
    assert not (tmp_path / "p").exists()


def test_nan_vector_names_the_row(tmp_path):
    batch = chips(50, 16)
    batch["embedding"][37, 5] = np.nan
    with pytest.raises(eoembed.NonFiniteEmbeddingError, match=r"row 37 holds nan at index 5"):
        eoembed.write_product(tmp_path / "p", batch, model=model_contract(16))


def test_infinite_vector_in_a_later_batch_names_the_global_row(tmp_path):
    with pytest.raises(eoembed.NonFiniteEmbeddingError, match=r"row 112 holds inf"):
        with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True) as writer:
            writer.write(chips(100, 16))
            bad = chips(100, 16, first=100)
            bad["embedding"][12, 0] = np.inf
            writer.write(bad)
    assert not (tmp_path / "p").exists()
    assert not list(tmp_path.iterdir()), "the staging folder must be removed on abort"


def test_coordinates_outside_crs84_name_row_and_value(tmp_path):
    batch = chips(20, 16)
    batch["bounds"][7] = [400.0, 35.0, 400.1, 35.1]
    with pytest.raises(eoembed.CoordinateRangeError, match=r"row 7 has bounds \[400.0, 35.0"):
        eoembed.write_product(tmp_path / "p", batch, model=model_contract(16))


def test_projected_footprints_are_refused(tmp_path):
    batch = chips(20, 16)
    batch["bounds"] = batch["bounds"] * 0 + [712000.0, 3950000.0, 712160.0, 3950160.0]
    with pytest.raises(eoembed.CoordinateRangeError, match="reproject footprints"):
        eoembed.write_product(tmp_path / "p", batch, model=model_contract(16))


def test_two_model_contracts_in_one_product_are_refused(tmp_path):
    other = model_contract(16)
    other["input"]["bands"][1]["name"] = "B8"
    with pytest.raises(eoembed.ModelContractMismatchError, match=r"model.input.bands: .*B2.*B8"):
        with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True) as writer:
            writer.write(chips(10, 16), model=model_contract(16))
            writer.write(chips(10, 16, first=10), model=other)
    assert not (tmp_path / "p").exists()


def test_unknown_field_under_our_prefix_is_refused(tmp_path):
    model = model_contract(16)
    model["input"]["colour"] = "blue"
    with pytest.raises(eoembed.UnknownFieldError, match="colour"):
        eoembed.ProductWriter(tmp_path / "p", model=model)
    with pytest.raises(eoembed.UnknownFieldError, match="cloud_cover"):
        eoembed.write_product(tmp_path / "q", dict(chips(5, 16), cloud_cover=[0.1] * 5), model=model_contract(16))


def test_bad_contract_values_are_refused_before_any_row(tmp_path):
    model = model_contract(16)
    model["weights_sha256"] = "abc"
    with pytest.raises(eoembed.SpecError, match="weights_sha256"):
        eoembed.ProductWriter(tmp_path / "p", model=model)
    assert not (tmp_path / "p").exists() and not list(tmp_path.iterdir())


def test_existing_product_is_kept_unless_overwrite(tmp_path):
    path = write(tmp_path / "p", n=50)
    before = (path / "manifest.parquet").read_bytes()
    with pytest.raises(eoembed.ProductExistsError, match="overwrite=True"):
        write(tmp_path / "p", n=60)
    # A failing overwrite leaves the old product untouched.
    bad = chips(60, 32)
    bad["embedding"][3] = np.nan
    with pytest.raises(eoembed.NonFiniteEmbeddingError):
        eoembed.write_product(path, bad, model=model_contract(32), overwrite=True)
    assert (path / "manifest.parquet").read_bytes() == before
    write(tmp_path / "p", n=60, overwrite=True)
    assert eoembed.open(path).num_rows == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


CRASH = """
import os, sys
sys.path.insert(0, {repo!r})
import eoembed
from tests.factories import chips, model_contract
writer = eoembed.ProductWriter({path!r}, model=model_contract(16), max_rows_per_file=100, normalize=True)
writer.write(chips(250, 16))        # two data files are begun, encoded on threads of their own
os._exit(9)                         # a hard crash: no clean-up runs
"""


def test_a_crashed_write_never_reads_as_a_product(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "p"
    run = subprocess.run([sys.executable, "-c", CRASH.format(repo=str(repo), path=str(target))], capture_output=True, text=True)
    assert run.returncode == 9, run.stderr
    assert not target.exists()
    staging = [p for p in tmp_path.iterdir()]
    assert len(staging) == 1 and ".eoembed-staging-" in staging[0].name
    # Either file may still have been in encoding (under a hidden temporary name) at the crash.
    assert len(list((staging[0] / "data").glob("*.parquet"))) in (0, 1, 2)
    with pytest.raises(eoembed.ProductNotFoundError, match="half-written staging folder"):
        eoembed.open(staging[0])
    # A new write to the same target is not disturbed by the leftover.
    write(target, n=30)
    assert eoembed.validate(target).ok


def test_zero_vectors_need_a_nodata_declaration(tmp_path):
    batch = chips(30, 16)
    batch["embedding"][21] = 0
    with pytest.raises(eoembed.NonFiniteEmbeddingError, match=r"row 21 is all zeros.*nodata_zero_vector=True"):
        eoembed.write_product(tmp_path / "p", batch, model=model_contract(16))
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(16), nodata_zero_vector=True)
    assert eoembed.open(path).embedding["nodata_zero_vector"] is True
    assert eoembed.validate(path).findings == []


def test_point_footprints_declare_their_geometry_type(tmp_path):
    import shapely

    from eoembed._geometry import geometry_types

    wkb = pa.array(shapely.to_wkb([shapely.Point(1, 2), shapely.LineString([(0, 0), (1, 1)]), shapely.Point(1, 2, 3)], flavor="iso"), pa.binary())
    assert geometry_types(wkb) == ["LineString", "Point", "Point Z"]
    batch = chips(20, 16)
    batch["geometry"] = [shapely.Point(x, y) for x, y in batch.pop("bounds")[:, :2]]
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(16), normalize=True)
    geo = json.loads(pq.read_schema(path / "data" / "part-00000.parquet").metadata[b"geo"])
    assert geo["columns"]["geometry"]["geometry_types"] == ["Point"]
    assert eoembed.validate(path).findings == []


def test_footprints_given_as_bounds_and_as_geometries_share_a_file(tmp_path):
    import shapely

    from eoembed._geometry import box_wkb

    boxes, points = chips(40, 16, seed=8), chips(30, 16, seed=9, first=40)
    points["geometry"] = [shapely.Point(x, y) for x, y in points.pop("bounds")[:, :2]]
    with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True) as writer:
        writer.write(boxes)
        writer.write(points)
    stored = pq.read_table(tmp_path / "p" / "data" / "part-00000.parquet")
    geo = json.loads(stored.schema.metadata[b"geo"])["columns"]["geometry"]
    assert geo["geometry_types"] == ["Point", "Polygon"] and "orientation" not in geo
    footprints = dict(zip(stored.column("chip_id").to_pylist(), stored.column("geometry").to_pylist()))
    assert len(footprints) == 70 and None not in footprints.values()
    for chip, box in zip(boxes["chip_id"], boxes["bounds"]):  # made from the bbox: the boxes box_wkb makes
        assert footprints[chip] == box_wkb(box[None]).to_pylist()[0]
    for chip, point in zip(points["chip_id"], points["geometry"]):
        assert shapely.from_wkb(footprints[chip]).equals(point)
    assert eoembed.validate(tmp_path / "p").findings == []


def _weights_contract(tmp_path, href_of) -> dict:
    weights = tmp_path / "trained" / "encoder.pt"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"weights of a trained encoder")
    import hashlib

    return {**model_contract(), "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "weights_href": href_of(weights)}


@pytest.mark.parametrize("href_of", [lambda w: w.absolute().as_uri(), lambda w: str(w)], ids=["file URI", "path"])
def test_local_weights_are_copied_into_the_product(tmp_path, href_of):
    contract = _weights_contract(tmp_path, href_of)
    path = eoembed.write_product(tmp_path / "p", chips(20), model=contract, normalize=True)
    product = eoembed.open(path)
    assert product.model["weights_href"] == "models/test-encoder-1.weights.pt"
    item = json.loads((path / "models" / "test-encoder-1.json").read_text())
    assert item["assets"]["model"]["href"] == "../models/test-encoder-1.weights.pt"
    assert item["assets"]["model"]["file:checksum"] == "1220" + contract["weights_sha256"]
    assert product.model_weights.read_bytes() == b"weights of a trained encoder"
    assert eoembed.validate(path).findings == []
    shutil.rmtree(tmp_path / "trained")  # the product does not need the machine's file any more
    assert eoembed.open(path).model_weights.is_file()


def test_published_weights_keep_their_url_and_no_weights_name_the_package(tmp_path):
    url = "https://example.org/encoder-v1.pt"
    path = write(tmp_path / "url", n=10)  # numpy encoder without weights: the asset names eoembed
    assert eoembed.open(path).model_weights is None
    contract = {**model_contract(), "weights_sha256": "a" * 64, "weights_href": url}
    path = eoembed.write_product(tmp_path / "p", chips(10), model=contract, normalize=True)
    assert eoembed.open(path).model_weights == url


@pytest.mark.parametrize("href, error, match", [
    ("missing.pt", eoembed.SpecError, "no such file"),
    ("file:///nowhere/encoder.pt", eoembed.SpecError, "no such file"),
    ("s3://bucket/encoder.pt", eoembed.SpecError, "neither an http"),
])
def test_weights_that_are_not_real_are_refused(tmp_path, href, error, match):
    contract = {**model_contract(), "weights_sha256": "a" * 64, "weights_href": href}
    with pytest.raises(error, match=match):
        eoembed.write_product(tmp_path / "p", chips(10), model=contract, normalize=True)


def test_weights_that_differ_from_the_contract_are_refused(tmp_path):
    contract = _weights_contract(tmp_path, str)
    contract["weights_sha256"] = "b" * 64
    with pytest.raises(eoembed.ModelContractMismatchError, match="not the weights the contract names"):
        eoembed.write_product(tmp_path / "p", chips(10), model=contract, normalize=True)


@pytest.mark.parametrize("href", ["../../elsewhere/encoder.pt", "file:///tmp/encoder.pt", "/tmp/encoder.pt"])
def test_a_model_asset_out_of_the_product_is_refused(tmp_path, href):
    path = eoembed.write_product(tmp_path / "p", chips(10), model=_weights_contract(tmp_path, str), normalize=True)
    item_path = path / "models" / "test-encoder-1.json"
    item = json.loads(item_path.read_text())
    item["assets"]["model"]["href"] = href
    item_path.write_text(json.dumps(item))
    with pytest.raises(eoembed.UnsafePathError, match="assets.model"):
        eoembed.open(path).model_weights


def split_batch(batch: dict, sizes: list[int]) -> list[dict]:
    """The rows of ``batch`` as consecutive batches of the given sizes (scalars stay scalars)."""
    out, start = [], 0
    for size in sizes:
        out.append({k: (v if isinstance(v, str) else v[start : start + size]) for k, v in batch.items()})
        start += size
    assert start == len(batch["embedding"])
    return out


def test_batch_boundaries_do_not_change_the_files(tmp_path):
    # Batches straddle the file boundaries (the rest moves to the front of the reused buffer).
    batch = chips(350, 16, seed=4)
    options = dict(model=model_contract(16), normalize=True, max_rows_per_file=100, row_group_size=32)
    one = eoembed.write_product(tmp_path / "one", batch, **options)
    many = eoembed.write_product(tmp_path / "many", split_batch(batch, [1, 99, 100, 37, 113]), **options)
    names = sorted(p.name for p in (one / "data").glob("*.parquet"))
    assert names == sorted(p.name for p in (many / "data").glob("*.parquet")) and len(names) == 4
    for name in names:
        a, b = pq.read_table(one / "data" / name), pq.read_table(many / "data" / name)
        assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))
        assert json.loads(a.schema.metadata[b"geo"]) == json.loads(b.schema.metadata[b"geo"])
    assert eoembed.validate(many).findings == []


def test_file_records_made_while_writing_match_the_files(tmp_path):
    from eoembed._write import file_record

    batch = chips(260, 16, seed=6)
    start = batch.pop("datetime")
    batch["start_datetime"], batch["end_datetime"] = start, [t + timedelta(hours=3) for t in start]
    with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True, max_rows_per_file=100) as writer:
        for part in split_batch(batch, [130, 130]):
            writer.write(part)
    assert len(writer._files) == 3
    for record in writer._files:
        assert record == file_record(writer.path / record.path, root=writer.path)


def test_units_of_growing_size_reuse_one_buffer(tmp_path):
    writer = eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True)
    units = {"a": [chips(30, 16, seed=1)], "b": [chips(80, 16, seed=2, first=100), chips(50, 16, seed=3, first=200)],
             "c": [chips(10, 16, seed=4, first=300)]}
    records = [writer.write_unit(name, batches) for name, batches in units.items()]
    assert [r.rows for r in records] == [30, 130, 10]
    for name, batches in units.items():
        stored = pq.read_table(writer.staging / "data" / f"{name}.parquet")
        got = dict(zip(stored.column("chip_id").to_pylist(), stored.column("embedding").to_pylist()))
        for batch in batches:
            for chip, vector in zip(batch["chip_id"], batch["embedding"]):
                np.testing.assert_allclose(got[chip], vector, atol=1e-6)
    path = writer.commit(records)
    assert eoembed.validate(path).findings == []


def test_vectors_too_small_or_large_to_square_in_float32_are_normalised(tmp_path):
    batch = chips(40, 16, seed=8)
    batch["embedding"][:10] *= np.float32(1e-30)  # squares underflow to 0, yet no row is all zeros
    batch["embedding"][10:20] *= np.float32(1e25)  # squares overflow to inf, yet every value is finite
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(16), normalize=True)
    norms = np.linalg.norm(eoembed.open(path).to_numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_a_failed_disk_write_leaves_no_product_and_no_thread(tmp_path, monkeypatch):
    import threading

    import eoembed._write as write_module

    def full_disk(self):
        raise OSError(28, "No space left on device", str(self._path))

    monkeypatch.setattr(write_module._GrowingFileHash, "finish", full_disk)  # the file job's last step
    # Threads of earlier tests (a buffer's page populating, a search pool) may end meanwhile, so
    # the check is on threads this write started, not on a count.
    before = set(threading.enumerate())
    with pytest.raises(OSError, match="No space left"):
        with eoembed.ProductWriter(tmp_path / "p", model=model_contract(16), normalize=True, max_rows_per_file=100) as writer:
            writer.write(chips(250, 16))
    assert not (tmp_path / "p").exists() and list(tmp_path.iterdir()) == []
    assert [thread.name for thread in threading.enumerate() if thread not in before] == []


def test_normalised_vectors_are_exactly_those_of_numpy_norms(tmp_path):
    batch = chips(300, 32, seed=9, unit=False)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(32), normalize=True)
    stored = pq.read_table(path / "data" / "part-00000.parquet")
    got = dict(zip(stored.column("chip_id").to_pylist(), np.stack(stored.column("embedding").to_numpy(zero_copy_only=False))))
    expected = batch["embedding"] / np.linalg.norm(batch["embedding"], axis=1, keepdims=True)
    np.testing.assert_array_equal(np.stack([got[c] for c in batch["chip_id"]]), expected)


def test_row_groups_keep_their_own_rows_while_the_encoder_lags(tmp_path, monkeypatch):
    # The codes of each row group are gathered into one of a few arrays reused in turn: an array
    # must not be refilled before its group is encoded, nor the next file begun before the last
    # one is. A slow encoder lets the gathering run as far ahead as it may.
    import time

    from eoembed._geometry import hilbert_order

    class SlowEncoder(pq.ParquetWriter):
        def write_table(self, table, row_group_size=None):
            time.sleep(0.02)
            super().write_table(table, row_group_size)

    monkeypatch.setattr(pq, "ParquetWriter", SlowEncoder)
    batch = chips(900, 16, seed=11, unit=False)
    path = eoembed.write_product(tmp_path / "p", split_batch(batch, [250, 650]), model=model_contract(16),
                                 normalize=True, max_rows_per_file=400, row_group_size=16)
    expected = dict(zip(batch["chip_id"], batch["embedding"] / np.linalg.norm(batch["embedding"], axis=1, keepdims=True)))
    files = sorted((path / "data").glob("*.parquet"))
    assert len(files) == 3
    for file in files:
        stored = pq.read_table(file)
        vectors = np.stack(stored.column("embedding").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(vectors, np.stack([expected[c] for c in stored.column("chip_id").to_pylist()]))
        bbox = stored.column("bbox").combine_chunks()
        bounds = np.stack([bbox.field(k).to_numpy() for k in range(4)], axis=1)
        np.testing.assert_array_equal(hilbert_order(bounds), np.arange(len(bounds)))  # stored in Hilbert order
    assert eoembed.validate(path).findings == []


def test_stored_rows_with_null_vectors_are_refused_by_file_name(tmp_path):
    source = write(tmp_path / "source", n=50, dim=16)
    table = pq.read_table(source / "data" / "part-00000.parquet")
    vectors = table.column("embedding").combine_chunks()
    holed = pa.FixedSizeListArray.from_arrays(vectors.flatten(), type=vectors.type, mask=pa.array([i == 7 for i in range(len(vectors))]))
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", holed)
    quantization = eoembed.open(source).quantization
    with eoembed.ProductWriter(tmp_path / "copy", model=model_contract(16), quantization=quantization, normalize=True) as writer:
        with pytest.raises(eoembed.SpecError, match=r"data/part-00000\.parquet hold nulls"):
            writer.write_stored(table, name="part-00000")
        writer.write_stored(pq.read_table(source / "data" / "part-00000.parquet"), name="part-00000")
    assert eoembed.validate(tmp_path / "copy").findings == []


def test_native_bounds_are_written_as_the_box_native_footprints(tmp_path):
    import shapely
    from pyproj import Transformer

    batch = chips(120, 16, seed=12)
    # The chips' own lon/lat boxes in their UTM zone (EPSG:32617), bounded: the footprints the validator expects.
    to_utm = Transformer.from_crs("OGC:CRS84", batch["native_crs"], always_xy=True)
    native = np.array([to_utm.transform_bounds(*box) for box in batch["bounds"]])
    path = eoembed.write_product(tmp_path / "p", {**batch, "native_bounds": native}, model=model_contract(16), normalize=True)
    stored = pq.read_table(path / "data" / "part-00000.parquet")
    footprints = shapely.from_wkb(stored.column("native_footprint").to_numpy(zero_copy_only=False))
    expected = dict(zip(batch["chip_id"], native.tolist()))
    np.testing.assert_array_equal(shapely.bounds(footprints), [expected[c] for c in stored.column("chip_id").to_pylist()])
    assert shapely.is_ccw(shapely.get_exterior_ring(footprints)).all()
    assert eoembed.validate(path).findings == []
    with pytest.raises(eoembed.SpecError, match="both 'native_footprint' and 'native_bounds'"):
        eoembed.write_product(tmp_path / "q", {**batch, "native_bounds": native, "native_footprint": list(shapely.box(*native.T))},
                              model=model_contract(16), normalize=True)
    with pytest.raises(eoembed.DimensionMismatchError, match="'native_bounds' has 119 rows"):
        eoembed.write_product(tmp_path / "r", {**batch, "native_bounds": native[:119]}, model=model_contract(16), normalize=True)


def test_the_hash_of_a_growing_file_is_the_hash_of_the_whole_file(tmp_path):
    import hashlib

    from eoembed._write import _GrowingFileHash

    path = tmp_path / "growing.bin"
    parts = [np.random.default_rng(i).bytes(size) for i, size in enumerate([0, 5, 3 << 20, 1, 5 << 20, 17])]
    digest = _GrowingFileHash(path)
    with path.open("wb") as out:
        for part in parts:
            out.write(part)
            out.flush()
            digest.grew()
    assert digest.finish() == (sum(map(len, parts)), hashlib.sha256(b"".join(parts)).hexdigest())


def test_a_file_shorter_than_told_fails_its_hash(tmp_path):
    from eoembed._write import _GrowingFileHash

    path = tmp_path / "shrinking.bin"
    path.write_bytes(b"x" * 100)
    digest = _GrowingFileHash(path)
    digest.grew()
    digest._sizes.put(200)  # as if 200 bytes had been written
    with pytest.raises(OSError, match="shorter than the 200 bytes"):
        digest.finish()


def test_squared_norms_are_those_of_one_reduce_block_by_block():
    from eoembed._write import _squared_norms

    vectors = np.random.default_rng(3).standard_normal((5000, 37), dtype=np.float32)
    vectors[7] = np.float32(1e25)  # squares overflow to inf, as the one-pass reduce gives them
    with np.errstate(over="ignore"):
        expected = np.add.reduce(vectors * vectors, axis=1)
    got = _squared_norms(vectors, rows=1024)  # 5000 rows: the last block is a part
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert _squared_norms(vectors[:0]).shape == (0,)


def test_memory_populated_in_the_background_keeps_what_is_written_into_it():
    from eoembed._write import populate_in_background

    row = np.arange(128, dtype=np.float32)
    array = np.empty((1 << 17, 128), dtype=np.float32)  # 64 MiB
    array[: 1 << 16] = row  # written before: the first half of the pages exists already
    thread = populate_in_background(array)
    array[1 << 16 :] = row  # written while the kernel populates the rest
    if thread is not None:  # Linux
        thread.join()
        assert "nh" in vm_flags(array.ctypes.data + (1 << 20))  # small pages, not huge ones
    assert (array == row).all()
    assert populate_in_background(np.empty(10)) is None  # small arrays are left to the faults


def vm_flags(address: int) -> list[str]:
    """The kernel's flags of the mapping that holds ``address`` (Linux /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(v, 16) for v in head.split("-"))
            inside = low <= address < high
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def encoding_held(monkeypatch, *, held: int, until: int) -> tuple[list, list[bool]]:
    """Make data file ``held`` (counted from 0) wait to be encoded until file ``until`` is begun:
    the writer's file jobs, and whether the wait ended so (appended once the held file runs)."""
    import threading

    import eoembed._write as write_module

    jobs, begun, overlapped = [], threading.Event(), []
    original_init, original_run = write_module._FileJob.__init__, write_module._FileJob._run

    def init(self, *args, **kwargs):
        jobs.append(self)
        if len(jobs) == until + 1:
            begun.set()
        original_init(self, *args, **kwargs)

    def run(self):
        if jobs.index(self) == held:
            overlapped.append(begun.wait(timeout=20))
        original_run(self)

    monkeypatch.setattr(write_module._FileJob, "__init__", init)
    monkeypatch.setattr(write_module._FileJob, "_run", run)
    return jobs, overlapped


def test_the_rows_left_at_close_are_split_over_files_encoded_at_once(tmp_path, monkeypatch):
    import eoembed._write as write_module

    batch = chips(2500, 16, seed=7)
    options = dict(model=model_contract(16), normalize=True, max_rows_per_file=1000, row_group_size=100)
    whole = eoembed.write_product(tmp_path / "whole", batch, **options)  # 500 rows of 64 B left at close: one file
    _, overlapped = encoding_held(monkeypatch, held=2, until=3)  # the first of the last files waits for the second
    monkeypatch.setattr(write_module, "SPLIT_FINAL_BYTES", 500 * 16 * 4)
    split = eoembed.write_product(tmp_path / "split", batch, **options)
    assert overlapped == [True]
    assert [m["rows"] for m in eoembed.open(whole).manifest.to_pylist()] == [1000, 1000, 500]
    assert [m["rows"] for m in eoembed.open(split).manifest.to_pylist()] == [1000, 1000, 300, 200]  # whole row groups
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert pq.read_table(whole / "data" / name).equals(pq.read_table(split / "data" / name))

    def chip_ids(path: Path, names: list[str]) -> list[str]:
        return sorted(c for n in names for c in pq.read_table(path / "data" / n, columns=["chip_id"]).column(0).to_pylist())

    assert chip_ids(whole, ["part-00002.parquet"]) == chip_ids(split, ["part-00002.parquet", "part-00003.parquet"])
    assert eoembed.validate(split).findings == []


def test_a_data_file_is_encoded_while_the_next_one_begins(tmp_path, monkeypatch):
    jobs, overlapped = encoding_held(monkeypatch, held=0, until=1)  # the first file waits until the second is begun
    batch = chips(250, 16)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(16), normalize=True, max_rows_per_file=100)
    assert overlapped == [True] and len(jobs) == 3
    product = eoembed.open(path)
    assert product.num_rows == 250 and eoembed.validate(path).findings == []
    assert sorted(product.to_arrow(columns=["chip_id"]).read_all().column("chip_id").to_pylist()) == sorted(batch["chip_id"])
