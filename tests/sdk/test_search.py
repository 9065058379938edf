"""Similarity search: exact results equal brute-force numpy, filters, compressed modes, MPI ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed import _search
from tests.factories import QUANTIZATIONS, write

BIN = Path(sys.executable).parent


def brute_force(product, query, *, k, metric, rows=None):
    """Chip ids and distances of the k best rows by plain numpy over to_numpy()."""
    vectors = product.to_numpy().astype(np.float64)
    ids = np.array(product.sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist())
    rows = np.arange(len(vectors)) if rows is None else rows
    x, q = vectors[rows], np.asarray(query, dtype=np.float64)
    if metric == "cosine":
        distance = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    elif metric == "l2":
        distance = np.linalg.norm(x - q, axis=1)
    else:
        distance = -(x @ q)
    order = np.lexsort((rows, np.round(distance, 5)))[:k]
    return ids[rows[order]].tolist(), distance[order]


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    # Three data files of many small row groups, so filters and merges cross files.
    return eoembed.open(write(tmp_path_factory.mktemp("s") / "p", n=3000, max_rows_per_file=1000, row_group_size=250))


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_exact_search_equals_brute_force_numpy(tmp_path, quantization, metric):
    p = eoembed.open(write(tmp_path / "p", n=1200, quantization=quantization, max_rows_per_file=500, seed=3))
    query = np.random.default_rng(1).normal(size=32).astype(np.float32)
    hits = p.search(query, k=7, metric=metric)
    ids, distance = brute_force(p, query, k=7, metric=metric)
    np.testing.assert_allclose(hits.column("distance").to_numpy(), distance, rtol=0, atol=2e-5)
    if quantization != "binary":  # 1-bit vectors tie exactly; the distances above already agree
        assert hits.column("chip_id").to_pylist() == ids
    assert hits.column_names[:2] == ["chip_id", "distance"] and "embedding" not in hits.column_names


def test_query_by_chip_id_point_and_batch(product):
    one = product.search("chip-0000042", k=5)
    assert one.column("chip_id")[0].as_py() == "chip-0000042" and one.column("distance")[0].as_py() == pytest.approx(0, abs=1e-6)
    box = product.sql("SELECT bbox FROM embeddings WHERE chip_id = ?", ["chip-0000042"]).column("bbox")[0].as_py()
    point = ((box["xmin"] + box["xmax"]) / 2, (box["ymin"] + box["ymax"]) / 2)
    assert product.search(point, k=1).column("chip_id")[0].as_py() == "chip-0000042"
    batch = product.search(["chip-0000042", "chip-0000007"], k=3)
    assert batch.column_names[:3] == ["query", "chip_id", "distance"]
    assert batch.column("query").to_pylist() == [0, 0, 0, 1, 1, 1]
    assert batch.column("chip_id").to_pylist()[3] == "chip-0000007"


def test_filters_equal_brute_force_on_the_filtered_rows(product):
    query = product.to_numpy()[11]
    meta = product.sql("SELECT bbox, datetime, valid_fraction FROM embeddings").to_pylist()
    box = (-78.75, 35.62, -78.68, 35.70)
    inside = np.array([r["bbox"]["xmax"] >= box[0] and r["bbox"]["xmin"] <= box[2] and r["bbox"]["ymax"] >= box[1]
                       and r["bbox"]["ymin"] <= box[3] for r in meta])
    june = np.array([r["datetime"].month == 6 for r in meta])
    good = np.array([r["valid_fraction"] > 0.8 for r in meta])
    rows = np.flatnonzero(inside & june & good)
    assert 10 < len(rows) < 300
    hits = product.search(query, k=8, bbox=box, datetime="2020-06-01T00:00:00Z/2020-06-30T23:59:59Z",
                          where="valid_fraction > ?", params=[0.8])
    ids, distance = brute_force(product, query, k=8, metric="cosine", rows=rows)
    assert hits.column("chip_id").to_pylist() == ids
    np.testing.assert_allclose(hits.column("distance").to_numpy(), distance, atol=2e-5)
    open_end = product.search(query, k=3, datetime="2020-06-10/..")
    assert all(t.month >= 6 for t in open_end.column("datetime").to_pylist())
    assert product.search(query, k=3, bbox=(10, 10, 11, 11)).num_rows == 0


@pytest.mark.parametrize("mode", ["int8", "binary"])
def test_compressed_scans_rerank_to_the_exact_answer(product, mode):
    queries = product.to_numpy()[:20]
    exact = product.search(queries, k=10)
    fast = product.search(queries, k=10, mode=mode)
    from eoembed._index import recall_at_k

    assert recall_at_k(exact, fast) >= (0.99 if mode == "int8" else 0.9)
    # Re-ranked distances are exact ones, never code distances.
    common = set(exact.column("chip_id").to_pylist()) & set(fast.column("chip_id").to_pylist())
    d_exact = dict(zip(exact.column("chip_id").to_pylist(), exact.column("distance").to_pylist()))
    d_fast = dict(zip(fast.column("chip_id").to_pylist(), fast.column("distance").to_pylist()))
    assert all(abs(d_exact[c] - d_fast[c]) < 1e-6 for c in common)


def test_clear_errors(product):
    with pytest.raises(eoembed.ChipNotFoundError, match="'no-such-chip' is not in") as caught:
        product.search("no-such-chip")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(eoembed.DimensionMismatchError, match="dimension 5, but .* holds 32-d"):
        product.search(np.ones(5, np.float32))
    with pytest.raises(eoembed.SearchError, match="xmin > xmax"):
        product.search("chip-0000001", bbox=(1, 0, 0, 1))
    with pytest.raises(eoembed.SearchError, match="four finite numbers"):
        product.search("chip-0000001", bbox="1,2,3")
    with pytest.raises(ValueError, match="lies outside lon"):
        product.search("chip-0000001", bbox=(-200, 0, 0, 1))
    with pytest.raises(eoembed.SearchError, match="metric 'hamming'"):
        product.search("chip-0000001", metric="hamming")
    with pytest.raises(eoembed.SearchError, match="k must be a positive integer"):
        product.search("chip-0000001", k=0)
    with pytest.raises(eoembed.ChipNotFoundError, match=r"covers the point \(0\.0, 0\.0\)"):
        product.search((0.0, 0.0))
    with pytest.raises(eoembed.SearchError, match="no hnsw index .*`eoembed index build"):
        product.search("chip-0000001", mode="hnsw", metric="l2")
    with pytest.raises(eoembed.QueryError, match="no_such_column"):
        product.search("chip-0000001", where="no_such_column > 1")


def test_cache_lives_beside_the_product_and_follows_the_manifest(tmp_path):
    path = write(tmp_path / "p", n=300, seed=1)
    first = eoembed.open(path).search("chip-0000003", k=3)
    cache = tmp_path / ".p.eoembed-cache"
    assert list(cache.iterdir()) and not list(path.rglob("*.npy"))
    assert eoembed.validate(path).findings == []
    write(tmp_path / "p", n=300, seed=2, overwrite=True)  # same chip ids, new vectors, new manifest
    second = eoembed.open(path).search("chip-0000003", k=3)
    assert second.column("chip_id").to_pylist() != first.column("chip_id").to_pylist()
    assert len(list(cache.iterdir())) == 1  # the stale cache was removed
    reopened = eoembed.open(path)
    row = reopened.sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist().index("chip-0000003")
    ids, _ = brute_force(reopened, reopened.to_numpy()[row], k=3, metric="cosine")
    assert second.column("chip_id").to_pylist() == ids


def test_cache_dir_can_be_redirected(tmp_path, monkeypatch):
    path = write(tmp_path / "p", n=50)
    monkeypatch.setenv("EOEMBED_CACHE_DIR", str(tmp_path / "elsewhere"))
    eoembed.open(path).search("chip-0000001", k=1)
    assert list((tmp_path / "elsewhere").rglob("*.vectors.npy")) and not (tmp_path / ".p.eoembed-cache").exists()


def test_top_k_threshold_is_exact():
    rng = np.random.default_rng(0)
    for n, k in ((100_000, 10), (50_000, 1), (40_000, 300)):
        scores = rng.normal(size=n).astype(np.float32)
        assert set(_search.top_k(scores, k)) == set(np.argsort(-scores)[:k])


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_mpirun_search_returns_the_same_top_k_as_one_process(product, ranks, tmp_path):
    expected = product.search(["chip-0000042", "chip-0002999"], k=6, bbox=(-78.8, 35.6, -78.65, 35.8))
    out = tmp_path / "hits.json"
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "search", str(product.path),
               "--chip", "chip-0000042", "--chip", "chip-0002999", "-k", "6", "--bbox=-78.8,35.6,-78.65,35.8",
               "--format", "json", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    got = json.loads(out.read_text())
    assert [(r["query"], r["chip_id"]) for r in got] == list(zip(expected.column("query").to_pylist(), expected.column("chip_id").to_pylist()))
    np.testing.assert_allclose([r["distance"] for r in got], expected.column("distance").to_numpy(), atol=1e-6)
    assert _search.assign_files(product, 0, 2) + _search.assign_files(product, 1, 2) == [0, 1, 2]


@pytest.mark.mpi
def test_mpirun_unknown_chip_fails_on_every_rank_without_hanging(product):
    command = [str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "search", str(product.path), "--chip", "nope"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "'nope' is not in" in run.stderr


def test_cli_search_by_vector_file_and_point(product, tmp_path, capsys):
    from eoembed._cli import main

    row = product.sql("SELECT chip_id FROM embeddings").column("chip_id").to_pylist().index("chip-0000005")
    np.save(tmp_path / "q.npy", product.to_numpy()[row])
    assert main(["search", str(product.path), "--vector", str(tmp_path / "q.npy"), "-k", "2", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith('"chip_id","distance"') and "chip-0000005" in out.splitlines()[1]
    assert main(["search", str(product.path), "--point", "0,0"]) == 2
    assert "covers the point" in capsys.readouterr().err
