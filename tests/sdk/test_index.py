"""Search index assets: declared in the items, schema-valid, used by search, ignored when stale."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eoembed
from eoembed._schemas import validate_stac
from tests.factories import write


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return eoembed.open(write(tmp_path_factory.mktemp("i") / "p", n=1500, max_rows_per_file=600))


@pytest.mark.parametrize("kind", ["int8", "binary", "ivf", "hnsw"])
def test_built_index_is_a_valid_declared_asset_with_measured_recall(product, kind):
    report = product.build_index(kind=kind, recall_queries=30)
    assert report["files"] == 3 and 0.9 <= report["recall_at_10"] <= 1.0
    key = "index-binary" if kind == "binary" else f"index-{kind}-cosine"
    for item_path in sorted((product.path / "items").glob("*.json")):
        item = json.loads(item_path.read_text())
        asset = item["assets"][key]
        assert asset["roles"] == ["index"] and (item_path.parent / asset["href"]).resolve().exists()
        assert asset["eoembed:index"]["recall_at_10"] == report["recall_at_10"]
        assert validate_stac(item) == []
    assert eoembed.validate(product.path).findings == []
    exact = product.search("chip-0000010", k=5)
    fast = product.search("chip-0000010", k=5, mode=kind)
    assert fast.column("chip_id")[0].as_py() == "chip-0000010"
    assert len(set(fast.column("chip_id").to_pylist()) & set(exact.column("chip_id").to_pylist())) >= 4


def test_unknown_eoembed_field_on_an_asset_is_rejected(product):
    product.build_index(kind="binary", recall_queries=5)
    item = json.loads(next((product.path / "items").glob("*.json")).read_text())
    item["assets"]["index-binary"]["eoembed:index"]["colour"] = "red"
    assert validate_stac(item)
    item["assets"]["index-binary"]["eoembed:other"] = 1
    del item["assets"]["index-binary"]["eoembed:index"]["colour"]
    assert validate_stac(item)


def test_stale_index_is_ignored(tmp_path):
    from eoembed._index import load_index

    path = write(tmp_path / "p", n=200)
    eoembed.open(path).build_index(kind="int8", recall_queries=5)
    assert load_index(eoembed.open(path), 0, kind="int8", metric="cosine") is not None
    item_path = next((path / "items").glob("*.json"))
    item = json.loads(item_path.read_text())
    item["assets"]["index-int8-cosine"]["eoembed:index"]["data_sha256"] = "0" * 64
    item_path.write_text(json.dumps(item))
    assert load_index(eoembed.open(path), 0, kind="int8", metric="cosine") is None
    assert eoembed.open(path).search("chip-0000001", k=1, mode="int8").column("chip_id")[0].as_py() == "chip-0000001"


def test_cli_index_build_and_list(tmp_path, capsys):
    from eoembed._cli import main

    path = write(tmp_path / "p", n=200)
    assert main(["index", "build", str(path), "--kind", "binary", "--recall-queries", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "binary"
    assert main(["index", "list", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["asset"] == "index-binary"


def _index_href(path, key: str, href: str) -> None:
    item_path = path / "items" / "part-00000.json"
    item = json.loads(item_path.read_text())
    item["assets"][key]["href"] = href
    item_path.write_text(json.dumps(item))


@pytest.mark.parametrize("href", ["../../outside.npy", "/tmp/x.npy", "file:///tmp/x.npy", "https://example.org/x.npy"])
def test_an_index_href_out_of_the_product_is_refused(tmp_path, href):
    path = write(tmp_path / "p", n=100)
    eoembed.open(path).build_index(kind="int8", recall_queries=5)
    _index_href(path, "index-int8-cosine", href)
    with pytest.raises(eoembed.UnsafePathError, match="part-00000.json assets.index-int8-cosine"):
        eoembed.open(path).search("chip-0000001", k=1, mode="int8")


def test_an_item_href_out_of_the_product_is_refused(tmp_path):
    path = write(tmp_path / "p", n=100)
    item_path = path / "items" / "part-00000.json"
    item = json.loads(item_path.read_text())
    item["assets"]["embeddings"]["href"] = "../../elsewhere/part-00000.parquet"
    item_path.write_text(json.dumps(item))
    with pytest.raises(eoembed.UnsafePathError, match="assets.embeddings"):
        eoembed.open(path).build_index(kind="int8", recall_queries=5)


@pytest.mark.parametrize("kind, content", [("int8", b"not an npy file"), ("int8", None), ("hnsw", b"garbage")])
def test_a_damaged_index_file_is_named(tmp_path, kind, content):
    path = write(tmp_path / "p", n=100)
    eoembed.open(path).build_index(kind=kind, recall_queries=5)
    target = next((path / "index").glob(f"part-00000.{kind}-*"))
    if content is None:  # codes of another shape than the data file's
        with open(target, "wb") as handle:
            np.save(handle, np.zeros((7, 32), np.int8))
    else:
        target.write_bytes(content)
    with pytest.raises(eoembed.DamagedProductError, match=target.name):
        eoembed.open(path).search("chip-0000001", k=1, mode=kind)
