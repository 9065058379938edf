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
