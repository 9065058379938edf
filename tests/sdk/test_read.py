"""The reader: streaming Arrow, numpy and torch views, and what it must reject."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import eoembed
from tests.factories import write


def test_open_by_folder_or_collection_json(tmp_path):
    path = write(tmp_path / "p", n=100)
    a, b = eoembed.open(path), eoembed.open(path / "collection.json")
    assert a.path == b.path and a.num_rows == b.num_rows == 100
    assert a.model["name"] == "test-encoder" and a.dim == 32
    assert "rows=100" in repr(a)


def test_to_arrow_streams_batches(tmp_path):
    path = write(tmp_path / "p", n=1000, max_rows_per_file=400)
    reader = eoembed.open(path).to_arrow(batch_size=128)
    assert isinstance(reader, pa.RecordBatchReader)
    sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 1000 and max(sizes) <= 128 and len(sizes) >= 8
    assert "eoembed" in {k.decode() for k in reader.schema.metadata}


def test_to_numpy_and_to_torch_agree(tmp_path):
    import torch

    product = eoembed.open(write(tmp_path / "p", n=300, quantization="int8"))
    array = product.to_numpy()
    tensor = product.to_torch()
    assert array.dtype == np.float32 and array.shape == (300, 32)
    assert tensor.dtype == torch.float32 and torch.equal(tensor, torch.from_numpy(array))
    codes = product.to_numpy(dequantize=False)
    assert codes.dtype == np.int8 and codes.shape == (300, 32)


def test_reader_ignores_unknown_fields_outside_its_prefix(tmp_path):
    path = write(tmp_path / "p", n=10)
    collection = json.loads((path / "collection.json").read_text())
    collection["acme:cloud_cover"] = 3
    (path / "collection.json").write_text(json.dumps(collection))
    assert eoembed.open(path).num_rows == 10


def test_reader_rejects_unknown_fields_under_its_prefix(tmp_path):
    path = write(tmp_path / "p", n=10)
    collection = json.loads((path / "collection.json").read_text())
    collection["eoembed:colour"] = "blue"
    (path / "collection.json").write_text(json.dumps(collection))
    with pytest.raises(eoembed.UnknownFieldError, match="eoembed:colour"):
        eoembed.open(path)
    collection.pop("eoembed:colour")
    collection["eoembed:model"]["input"]["colour"] = "blue"
    (path / "collection.json").write_text(json.dumps(collection))
    with pytest.raises(eoembed.UnknownFieldError, match="colour"):
        eoembed.open(path)


def test_reader_rejects_another_major_version(tmp_path):
    path = write(tmp_path / "p", n=10)
    collection = json.loads((path / "collection.json").read_text())
    collection["eoembed:spec_version"] = "7.0.0"
    (path / "collection.json").write_text(json.dumps(collection))
    with pytest.raises(eoembed.SpecError, match="'7.0.0'.*upgrade eoembed"):
        eoembed.open(path)


def test_missing_paths_say_what_they_are(tmp_path):
    with pytest.raises(eoembed.ProductNotFoundError, match="does not exist"):
        eoembed.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(eoembed.ProductNotFoundError, match="no collection.json"):
        eoembed.open(tmp_path / "empty")
    assert issubclass(eoembed.ProductNotFoundError, FileNotFoundError)


def test_read_footer_of_a_data_file(tmp_path):
    path = write(tmp_path / "p", n=10, quantization="binary")
    footer = eoembed.read_footer(next((path / "data").glob("*.parquet")))
    assert footer["spec_version"] == eoembed.SPEC_VERSION
    assert footer["embedding"]["quantization"] == {"method": "binary", "dtype": "uint8", "original_dtype": "float32"}


def test_open_checks_sizes_and_verify_checks_checksums(tmp_path):
    from tests.factories import set_manifest

    path = write(tmp_path / "p", n=40)
    set_manifest(path, 0, sha256="0" * 64)  # a file the manifest's checksum does not describe
    assert eoembed.open(path).num_rows == 40  # sizes and rows agree: opening stays cheap
    with pytest.raises(eoembed.DamagedProductError, match="part-00000.parquet: has another SHA-256"):
        eoembed.open(path, verify=True)
    assert [f.code for f in eoembed.validate(path).findings] == ["STR006"]


def test_files_that_differ_in_optional_columns_read_search_and_query(tmp_path):
    from tests.factories import replace_data_file

    path = write(tmp_path / "p", n=300, max_rows_per_file=150)
    replace_data_file(path, "data/part-00001.parquet", lambda t: t.drop_columns(["valid_fraction", "native_crs"]))
    assert eoembed.validate(path).findings == []
    product = eoembed.open(path)
    table = product.to_arrow().read_all()
    assert table.num_rows == 300 and table.column("valid_fraction").null_count == 150
    assert product.sql("SELECT count(*) AS n FROM embeddings WHERE native_crs IS NULL").column("n")[0].as_py() == 150
    vectors = product.to_numpy()
    for row in (10, 200):  # a hit in each file: the second one's missing columns are null
        hits = product.search(vectors[row], k=300)
        assert hits.num_rows == 300 and hits.column("valid_fraction").null_count == 150
    filtered = product.search(vectors[200], k=5, where="valid_fraction IS NULL")
    assert filtered.column("valid_fraction").null_count == filtered.num_rows == 5
    assert len(product.dataset(columns=("chip_id", "source_id"))) == 300
    with pytest.raises(eoembed.SearchError, match="not in every data file"):
        product.dataset(columns=("valid_fraction",))


def test_nodata_codes_of_sqrt_are_the_one_nan_readers_return_and_never_hits(tmp_path, monkeypatch):
    monkeypatch.setenv("EOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    from tests.factories import replace_data_file

    path = write(tmp_path / "p", n=20, quantization="sqrt")

    def nodata(table):
        column = table.column("embedding").combine_chunks()
        codes = column.flatten().to_numpy().reshape(len(column), -1).copy()
        codes[3, 0] = -128  # the spec's nodata code of the sqrt method
        values = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.int8()), codes.shape[1])
        return table.set_column(table.schema.get_field_index("embedding"), "embedding", values)

    replace_data_file(path, "data/part-00000.parquet", nodata)
    product = eoembed.open(path)
    vectors = product.to_numpy()
    assert np.isnan(vectors[3, 0]) and np.isfinite(np.delete(vectors, 3, axis=0)).all()
    nodata_chip = product.sql("SELECT chip_id FROM embeddings").column("chip_id")[3].as_py()
    for mode in ("exact", "int8", "binary"):  # a chip without data is never a hit
        hits = product.search(vectors[0], k=20, mode=mode, candidates=20)
        assert hits.num_rows == 19 and nodata_chip not in hits.column("chip_id").to_pylist()
        assert np.isfinite(hits.column("distance").to_numpy()).all()
    with pytest.raises(eoembed.SearchError, match="without data"):
        product.search(nodata_chip, k=1)
