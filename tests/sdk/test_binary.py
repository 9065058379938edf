"""1-bit scan + exact re-rank: recall on clustered data with the default candidates, its calibration,
thread settings left as found, ties by file and row, and the same answer under MPI ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

import eoembed
from eoembed import _search
from eoembed._index import recall_at_k
from tests.factories import assert_cli_hits_match, chips, model_contract

BIN = Path(sys.executable).parent
DIM = 64


def clustered(n: int, *, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight Gaussian clusters: sign bits tell clusters apart but rank poorly within one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, clusters, n)] + 0.25 / np.sqrt(DIM) * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_clustered(path: Path, *, n: int = 12_000, clusters: int = 40, **options) -> Path:
    batch = chips(n, DIM)
    batch["embedding"] = clustered(n, clusters=clusters)
    return eoembed.write_product(path, batch, model=model_contract(DIM), normalize=True, **options)


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    # Three data files, so candidate ids cross files.
    return eoembed.open(write_clustered(tmp_path_factory.mktemp("b") / "p", max_rows_per_file=4096, row_group_size=1024))


def near_rows(product, count: int, *, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = product.to_numpy()[rng.choice(product.num_rows, count, replace=False)]
    return (vectors + 0.05 / np.sqrt(DIM) * rng.normal(size=vectors.shape)).astype(np.float32)


def test_default_candidates_reach_recall_099_where_fewer_do_not(product):
    queries = near_rows(product, 40)
    exact = product.search(queries, k=10)
    assert recall_at_k(exact, product.search(queries, k=10, mode="binary")) >= 0.99
    # The bound has teeth: a count cut for speed (the int8 default, 100) misses neighbours here.
    assert recall_at_k(exact, product.search(queries, k=10, mode="binary", candidates=100)) < 0.9


def test_candidate_count_is_calibrated_once_and_kept_in_the_cache(product):
    searcher = _search.Searcher(product)
    count = searcher.binary_candidates("cosine", 10)
    assert 100 <= count < product.num_rows
    stored = list(_search.cache_dir(product).glob("binary-ranks-cosine-*.npy"))
    assert len(stored) == 1
    ranks = np.load(stored[0])
    assert ranks.shape[1] == 100 and (ranks >= 1).all() and (ranks <= product.num_rows).all()
    # A fresh searcher reads the stored calibration and agrees; a larger k never asks for fewer.
    again = _search.Searcher(product)
    assert again.binary_candidates("cosine", 10) == count
    assert again.binary_candidates("cosine", 100) >= count
    assert again.binary_candidates("cosine", 101) == _search.default_candidates("binary", 101)


@pytest.mark.parametrize("code_bytes", [3, 8, 16])
def test_hamming_ranks_count_the_rows_at_or_below_each_neighbours_distance(code_bytes):
    from eoembed._index import hamming_ranks

    rng = np.random.default_rng(code_bytes)
    codes = rng.integers(0, 256, size=(500, code_bytes), dtype=np.uint8)
    neighbours = rng.integers(0, 500, size=(4, 6))
    distances = np.unpackbits(codes[None] ^ codes[:4, None], axis=2).sum(axis=2)  # (4 queries, 500 rows)
    expected = [[int((distances[i] <= distances[i, j]).sum()) for j in row] for i, row in enumerate(neighbours)]
    assert hamming_ranks(codes, codes[:4], neighbours).tolist() == expected


def test_calibrated_candidates_keep_the_recall_quantile_times_the_safety_factor():
    from eoembed._index import CALIBRATION_SAFETY, calibrated_candidates

    ranks = np.tile(np.arange(1, 101), (1000, 1)) * 10  # neighbour j of every query needs 10 (j + 1) rows
    ranks[0, 1:4] = 10_000  # three outliers among the 1000 x 10 ranks of k = 10 lie beyond the 0.999 quantile
    assert calibrated_candidates(ranks, k=10, rows=10**6) == int(CALIBRATION_SAFETY * 100)
    assert calibrated_candidates(ranks, k=1, rows=10**6) == 100  # the floor: max(100, 10 k)
    assert calibrated_candidates(ranks, k=100, rows=10**6) == int(CALIBRATION_SAFETY * 1000)
    assert calibrated_candidates(ranks, k=100, rows=1200) == 1200
    assert calibrated_candidates(ranks, k=101, rows=10**6) is None


def test_faiss_threads_are_one_per_query_during_the_scan_and_restored_after(product, monkeypatch):
    seen = []
    original = faiss.IndexBinaryFlat.search

    def recording(self, *args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexBinaryFlat, "search", recording)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        queries = near_rows(product, 3)
        product.search(queries[0], k=5, mode="binary")
        product.search(queries, k=5, mode="binary")
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2

        def failing(self, *args, **kwargs):
            raise MemoryError("scan failed")

        monkeypatch.setattr(faiss.IndexBinaryFlat, "search", failing)
        with pytest.raises(MemoryError):
            product.search(queries[0], k=5, mode="binary")
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def by_file_and_row(product, query: np.ndarray, k: int) -> list[str]:
    """Chip ids of the k best rows by float64 cosine, equal distances ordered by data file and row."""
    ids, files, rows, vectors = [], [], [], []
    searcher = _search.Searcher(product)
    for index in searcher.file_indexes:
        cache = searcher.cache(index)
        ids += cache.metadata.column("chip_id").to_pylist()
        files.append(np.full(cache.rows, index))
        rows.append(np.arange(cache.rows))
        vectors.append(np.asarray(cache.vectors, dtype=np.float64))
    x = np.concatenate(vectors)
    distance = 1 - x @ query / (np.linalg.norm(x, axis=1) * np.linalg.norm(query))
    order = np.lexsort((np.concatenate(rows), np.concatenate(files), np.round(distance, 6)))[:k]
    return [ids[i] for i in order]


def test_ties_go_by_file_and_row_whatever_the_split(tmp_path):
    # Each vector is written three times, so every hit ties with two copies and k = 8 cuts a tie.
    base = clustered(800, clusters=8, seed=4)
    batch = chips(2400, DIM, seed=4)
    batch["embedding"] = np.concatenate([base, base, base])
    distances = {}
    for rows_per_file in (600, 2400):
        path = eoembed.write_product(tmp_path / f"p{rows_per_file}", batch, model=model_contract(DIM), normalize=True,
                                     max_rows_per_file=rows_per_file)
        product = eoembed.open(path)
        binary = product.search(base[:5], k=8, mode="binary")
        expected = [c for q in base[:5] for c in by_file_and_row(product, q, 8)]
        assert binary.column("chip_id").to_pylist() == expected
        distances[rows_per_file] = binary.column("distance").to_numpy()
    np.testing.assert_allclose(distances[600], distances[2400], atol=1e-6)


def test_a_searcher_without_files_finds_nothing(product):
    hits = _search.Searcher(product, files=[]).search(near_rows(product, 2), metric="cosine", k=3, mode="binary",
                                                      candidates=None)
    assert [len(h.rows) for h in hits] == [0, 0]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_mpirun_binary_search_returns_the_single_process_top_k(product, ranks, tmp_path):
    queries = near_rows(product, 2, seed=5)
    np.save(tmp_path / "q.npy", queries)
    expected = product.search(queries, k=6, mode="binary")
    out = tmp_path / "hits.json"
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "search", str(product.path),
               "--vector", str(tmp_path / "q.npy"), "-k", "6", "--mode", "binary", "--format", "json", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert_cli_hits_match(out, expected)
