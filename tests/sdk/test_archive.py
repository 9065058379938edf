"""The archive index (ivf-rabitq): recall against exact search, filters as ID selectors, no decoded
cache, stale shards refused, the same hits under mpirun -n 1 and -n 2, builds in small batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

import eoembed
from eoembed._archive import exact_top_k, recall_of
from eoembed._errors import SearchError
from eoembed._index import list_indexes, recall_at_k
from eoembed._search import _prepare_queries
from tests.factories import assert_cli_hits_match, chips, model_contract, replace_data_file

BIN = Path(sys.executable).parent
DIM = 32


def clustered(path: Path, *, n: int = 3000, clusters: int = 30, seed: int = 0) -> Path:
    """A product of ``n`` chips whose vectors lie in tight Gaussian clusters (as embeddings do), in 3 files."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)
    batch = chips(n, DIM, seed=seed)
    batch["embedding"] = centres[rng.integers(0, clusters, n)] + 0.3 / np.sqrt(DIM) * rng.normal(size=(n, DIM)).astype(np.float32)
    return eoembed.write_product(path, batch, model=model_contract(DIM), normalize=True,
                                 max_rows_per_file=n // 3, row_group_size=250)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    product = eoembed.open(clustered(tmp_path_factory.mktemp("archive") / "p"))
    report = product.build_index(kind="ivf-rabitq", nlist=16, recall_queries=40, batch_size=300)
    return product, report


def queries_of(product, count: int = 20, *, seed: int = 1) -> np.ndarray:
    vectors = product.to_numpy()
    rng = np.random.default_rng(seed)
    picks = vectors[rng.choice(len(vectors), count, replace=False)]
    return (picks + 0.05 / np.sqrt(DIM) * rng.normal(size=picks.shape)).astype(np.float32)


def test_build_reports_recall_and_declares_valid_assets(built):
    product, report = built
    assert report["files"] == 3 and report["rows"] == 3000 and report["nlist"] == 16
    assert report["recall_at_10"] >= 0.95 and report["peak_rss_bytes"] > 0 and report["bytes"] > 0
    kinds = [e["kind"] for e in list_indexes(product)]
    assert kinds.count("ivf-rabitq") == 3 and kinds.count("stored") == 3  # the stored codes re-rank
    quantizers = {e["quantizer"] for e in list_indexes(product) if e["kind"] == "ivf-rabitq"}
    assert len(quantizers) == 1  # every shard shares the coarse quantiser
    assert eoembed.validate(product.path).findings == []


def test_recall_against_exact_search(built):
    product, _ = built
    queries = queries_of(product)
    exact = product.search(queries, k=10)
    assert recall_at_k(exact, product.search(queries, k=10, mode="ivf-rabitq")) >= 0.95
    # The streaming brute force (the benchmark's ground truth) agrees with exact search.
    truth = exact_top_k(eoembed.open(product.path), _prepare_queries(queries, "cosine"), k=10, metric="cosine", batch_size=128)
    hits = product._searcher.search(_prepare_queries(queries, "cosine"), metric="cosine", k=10, mode="exact", candidates=100)
    assert recall_of(truth, hits) == 1.0


def test_search_builds_no_decoded_cache(built, tmp_path, monkeypatch):
    product, _ = built
    monkeypatch.setenv("EOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    fresh = eoembed.open(product.path)
    table = fresh.search("chip-0000010", k=5, mode="ivf-rabitq", bbox=(-78.8, 35.6, -78.7, 35.8))
    assert table.column("chip_id")[0].as_py() == "chip-0000010"
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert files and all(name.endswith(".metadata.arrow") for name in files), files
    assert "_searcher" not in fresh.__dict__


@pytest.mark.parametrize("filters", [
    {"bbox": (-78.72, 35.62, -78.68, 35.66)},  # a few dozen rows: the selection is re-ranked whole
    {"datetime": "2020-05-20/2020-05-30"},
    {"where": "valid_fraction > ?", "params": [0.7]},
    {"bbox": (-78.8, 35.6, -78.7, 35.8), "where": "source_id = ?", "params": ["scene-1"]},
])
def test_filters_give_the_ids_of_exact_filtered_search(built, filters):
    product, _ = built
    queries = queries_of(product, 10, seed=2)
    exact = product.search(queries, k=10, **filters)
    archive = product.search(queries, k=10, mode="ivf-rabitq", **filters)
    assert recall_at_k(exact, archive) >= 0.95
    selected = set(product.search(queries[:1], k=product.num_rows, **filters).column("chip_id").to_pylist())
    assert set(archive.column("chip_id").to_pylist()) <= selected


def test_filter_is_a_selector_inside_the_index_not_a_post_filter(built):
    product, _ = built
    queries = queries_of(product, 10, seed=3)
    # 50 candidates per shard, a selection of about 1000 rows: only faiss's selector keeps every
    # candidate inside it (a post-filter would return fewer than k, or rows outside it).
    archive = product.search(queries, k=10, mode="ivf-rabitq", candidates=50, where="valid_fraction > ?", params=[0.75])
    assert archive.num_rows == 100
    assert pc.min(archive.column("valid_fraction")).as_py() > 0.75


def test_batch_size_does_not_change_the_index(built, tmp_path):
    product, _ = built
    copy = Path(shutil.copytree(product.path, tmp_path / "p"))
    small = eoembed.open(copy)
    small.build_index(kind="ivf-rabitq", nlist=16, recall_queries=5, batch_size=64)  # bounded memory: 64 rows at a time
    queries = queries_of(product, 10, seed=4)
    a = product.search(queries, k=10, mode="ivf-rabitq")
    b = small.search(queries, k=10, mode="ivf-rabitq")
    assert a.column("chip_id").to_pylist() == b.column("chip_id").to_pylist()


def test_stale_shard_is_refused_with_what_to_do(built, tmp_path, capsys):
    product, _ = built
    copy = Path(shutil.copytree(product.path, tmp_path / "p"))
    rel = eoembed.open(copy).manifest.column("path")[1].as_py()
    replace_data_file(copy, rel, lambda table: table.slice(0, table.num_rows - 1))
    with pytest.raises(SearchError, match=r"earlier version of .*eoembed index build .* --kind ivf-rabitq"):
        eoembed.open(copy).search("chip-0000010", k=5, mode="ivf-rabitq")
    from eoembed._cli import main

    assert main(["search", str(copy), "--chip", "chip-0000010", "--mode", "ivf-rabitq"]) == 2
    err = capsys.readouterr().err
    assert "earlier version" in err and "Traceback" not in err


def test_unbuilt_product_and_bad_options_are_refused(tmp_path):
    product = eoembed.open(clustered(tmp_path / "p", n=300))
    with pytest.raises(SearchError, match="has no index-ivf-rabitq-cosine asset; build it with"):
        product.search("chip-0000001", mode="ivf-rabitq")
    with pytest.raises(SearchError, match="nlist 301 must be an integer from 1"):
        product.build_index(kind="ivf-rabitq", nlist=301)
    with pytest.raises(SearchError, match="batch_size must be a positive integer, got 0"):
        product.build_index(kind="ivf-rabitq", batch_size=0)
    with pytest.raises(SearchError, match="bits 9 must be an integer from 1 to 8"):
        product.build_index(kind="ivf-rabitq", bits=9)


def test_the_default_pool_grows_with_the_probed_lists_and_the_product(built, monkeypatch):
    import eoembed._archive as archive

    assert archive.default_candidates(10) == 400  # the floor of a small product
    assert archive.default_candidates(10, rows=10**6, probed_rows=8000) == 400  # 1M rows: still the floor
    assert archive.default_candidates(10, rows=10**7, probed_rows=78_125) == 782  # 16 of 2,048 lists over 10M rows
    assert archive.default_candidates(10, rows=10**8, probed_rows=80_000) == 1600  # 16 of 20,000 over 100M
    assert archive.default_candidates(10, 2, rows=10**8, probed_rows=80_000) == 200  # an eighth for the second bit
    assert archive.default_candidates(10, 4, rows=10**8, probed_rows=80_000) == 100  # the floor of finer codes
    assert archive.default_candidates(50, 2) == 500  # 10 a hit
    product, _ = built
    monkeypatch.setattr(archive, "ONE_BIT_SHARE", 0.5)  # a share this small product's lists can show
    # From the whole product's rows and lists (3,000 rows, 16 lists), whichever files a rank holds.
    for files in (None, [2]):
        searcher = archive.ArchiveSearcher(product, files=files)
        assert [searcher._default_candidates(10, "cosine", nprobe) for nprobe in (4, 8, 16, 99)] == [400, 750, 1500, 1500]
    monkeypatch.setattr(archive, "ONE_BIT_SHARE", 0)
    monkeypatch.setattr(archive, "ONE_BIT_ROOT", 10)  # sqrt(3,000) = 54.8
    for files in (None, [2]):
        assert archive.ArchiveSearcher(product, files=files)._default_candidates(10, "cosine", 4) == 548


@pytest.mark.parametrize("bits", [2, 4])
def test_finer_codes_reach_the_recall_with_fewer_candidates(tmp_path, bits):
    from eoembed._archive import default_candidates

    product = eoembed.open(clustered(tmp_path / "p"))
    report = product.build_index(kind="ivf-rabitq", nlist=16, bits=bits, recall_queries=40)
    assert report["bits"] == bits and {e.get("bits") for e in list_indexes(product) if e["kind"] == "ivf-rabitq"} == {bits}
    assert default_candidates(10, bits) < default_candidates(10)
    queries = queries_of(product)
    exact = product.search(queries, k=10)
    assert recall_at_k(exact, product.search(queries, k=10, mode="ivf-rabitq")) >= 0.95
    assert eoembed.validate(product.path).findings == []


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_stored_re_rank_rows_are_exact_and_half_the_float16_bytes(tmp_path, metric):
    from eoembed._quantize import dequantize

    batch = chips(3000, DIM, seed=0)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, DIM)).astype(np.float32)
    batch["embedding"] = centres[rng.integers(0, 30, 3000)] + 0.3 / np.sqrt(DIM) * rng.normal(size=(3000, DIM)).astype(np.float32)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(DIM), normalize=True, quantization="int8",
                                 max_rows_per_file=1000, row_group_size=250)
    copy = Path(shutil.copytree(path, tmp_path / "q"))
    product, other = eoembed.open(path), eoembed.open(copy)
    assert product.build_index(kind="ivf-rabitq", nlist=16, metric=metric, recall_queries=10)["rerank"] == "stored"
    other.build_index(kind="ivf-rabitq", nlist=16, metric=metric, rerank="float16", recall_queries=10)
    stem = Path(product.files[0]).stem
    stored = np.load(product.path / "index" / f"{stem}.stored.npy")
    half = np.load(other.path / "index" / f"{stem}.float16-{metric}.npy")
    assert stored.dtype == np.int8 and stored.nbytes * 2 == half.nbytes
    assert np.array_equal(dequantize(stored, product.quantization), product.to_numpy()[:1000])  # byte for byte
    queries = queries_of(product)
    exact = product.search(queries, k=10, metric=metric)
    found = product.search(queries, k=10, metric=metric, mode="ivf-rabitq")
    assert recall_at_k(exact, found) >= 0.95
    # Where a hit is found, its distance is the exact one: the stored codes re-rank exactly.
    def distances(table):
        keys = zip(table.column("query").to_pylist(), table.column("chip_id").to_pylist())
        return dict(zip(keys, table.column("distance").to_pylist()))

    want, got = distances(exact), distances(found)
    common = set(want) & set(got)
    assert len(common) >= 0.95 * len(want) and all(abs(got[key] - want[key]) <= 1e-5 for key in common)
    assert recall_at_k(exact, other.search(queries, k=10, metric=metric, mode="ivf-rabitq")) >= 0.95
    assert eoembed.validate(product.path).findings == [] and eoembed.validate(other.path).findings == []
    with pytest.raises(SearchError, match="rerank 'int4' must be one of stored, float16"):
        product.build_index(kind="ivf-rabitq", rerank="int4")


def test_per_row_codes_re_rank_from_float16(tmp_path):
    batch = chips(400, DIM, seed=2)
    path = eoembed.write_product(tmp_path / "p", batch, model=model_contract(DIM), quantization="int8-per-row")
    product = eoembed.open(path)
    assert product.build_index(kind="ivf-rabitq", nlist=4, recall_queries=10)["rerank"] == "float16"
    with pytest.raises(SearchError, match="cannot hold per-row-scaled codes"):
        product.build_index(kind="ivf-rabitq", nlist=4, rerank="stored")
    assert eoembed.validate(product.path).findings == []


def test_one_candidate_pool_a_query_however_many_shards(built, monkeypatch):
    from eoembed._archive import Shard

    product, _ = built
    reranked = []
    original = Shard.rerank_rows

    def counting(self, rows):
        reranked.append((self.index, len(rows)))
        return original(self, rows)

    monkeypatch.setattr(Shard, "rerank_rows", counting)
    queries = queries_of(product, 5)
    found = product.search(queries, k=10, mode="ivf-rabitq", candidates=60)
    assert len({shard for shard, _ in reranked}) == 3  # every shard read its part of each pool
    assert sum(rows for _, rows in reranked) == 5 * 60  # 60 a query over 3 shards, not 60 a shard
    assert found.num_rows == 5 * 10


def test_many_lists_are_found_through_an_hnsw_graph_over_the_centroids(tmp_path, monkeypatch):
    import eoembed._archive as archive

    monkeypatch.setattr(archive, "FLAT_COARSE_MAX_LISTS", 8)  # the graph path, on a product small enough to test
    product = eoembed.open(clustered(tmp_path / "p"))
    report = product.build_index(kind="ivf-rabitq", nlist=16, recall_queries=40)
    assert report["coarse"] == "hnsw32" and report["recall_at_10"] >= 0.95
    queries = queries_of(product)
    assert recall_at_k(product.search(queries, k=10), product.search(queries, k=10, mode="ivf-rabitq")) >= 0.95
    one = product.search(queries[:1], k=10, mode="ivf-rabitq")  # one query: shards searched on threads
    assert one.column("chip_id").to_pylist() == product.search(queries, k=10, mode="ivf-rabitq").column("chip_id").to_pylist()[:10]
    assert eoembed.validate(product.path).findings == []


def test_cli_builds_and_lists_the_archive_index(tmp_path, capsys):
    from eoembed._cli import main

    path = clustered(tmp_path / "p", n=600)
    assert main(["index", "build", str(path), "--kind", "ivf-rabitq", "--nlist", "8", "--sample", "400",
                 "--batch-size", "100", "--recall-queries", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "ivf-rabitq" and report["sample"] == 400 and report["build_seconds"] > 0
    assert main(["index", "list", str(path)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted({e["kind"] for e in listed}) == ["ivf-rabitq", "stored"]
    assert main(["index", "build", str(path), "--kind", "ivf-rabitq", "--nlist", "8", "--rerank", "float16",
                 "--recall-queries", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["rerank"] == "float16"
    with pytest.raises(SystemExit, match="--rerank does not apply to --kind hnsw"):
        main(["index", "build", str(path), "--kind", "hnsw", "--rerank", "stored"])
    with pytest.raises(SystemExit, match="--sample does not apply to --kind int8"):
        main(["index", "build", str(path), "--kind", "int8", "--sample", "10"])


def test_a_rows_score_in_the_pool_does_not_depend_on_the_rows_beside_it(built):
    from eoembed._archive import ArchiveSearcher, rerank_pool

    product, _ = built
    searcher = ArchiveSearcher(product)
    shards = [searcher.cache(i) for i in range(len(product.files))]
    query = _prepare_queries(queries_of(product, 1), "cosine")[0]
    rng = np.random.default_rng(4)
    parts = [(shard, *shard.rerank_rows(rng.choice(shard.rows, 97, replace=False))) for shard in shards]

    def scores(pool):
        hits = rerank_pool(query, pool, k=10_000, metric="cosine")
        return dict(zip(zip(hits.files.tolist(), hits.rows.tolist()), hits.scores.tolist()))

    whole = scores(parts)
    assert len(whole) == 3 * 97
    for pool in ([parts[1]], [parts[2], parts[0]], [parts[0][:1] + (parts[0][1][:5], parts[0][2][:5])]):
        alone = scores(pool)
        assert alone and all(whole[key] == value for key, value in alone.items())  # the same bits
    exact = {(int(f), int(r)): s for f, r, s in zip(*[np.asarray(a) for a in _exact_scores_of(product, query)])}
    assert all(abs(exact[key] - value) <= 1e-5 for key, value in whole.items())


def _exact_scores_of(product, query):
    """Every row's cosine similarity to a unit query from the decoded vectors: (files, rows, scores)."""
    vectors = product.to_numpy()
    scores = vectors @ query / np.linalg.norm(vectors, axis=1)
    sizes = [int(r) for r in product.manifest.column("rows").to_pylist()]
    files = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.concatenate([np.arange(n) for n in sizes])
    return files, rows, scores


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_mpirun_shards_give_the_hits_of_one_process(built, ranks, tmp_path):
    product, _ = built
    expected = product.search(["chip-0000042", "chip-0002999"], k=6, mode="ivf-rabitq", bbox=(-78.8, 35.6, -78.65, 35.8))
    out = tmp_path / "hits.json"
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "search", str(product.path),
               "--chip", "chip-0000042", "--chip", "chip-0002999", "-k", "6", "--bbox=-78.8,35.6,-78.65,35.8",
               "--mode", "ivf-rabitq", "--format", "json", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert_cli_hits_match(out, expected)


def _mappings_of(paths: list[str]) -> int:
    """How many of this process's memory mappings are of these files."""
    wanted = set(paths)
    return sum(1 for line in Path("/proc/self/maps").read_text().splitlines()
               if len(line.split(maxsplit=5)) == 6 and line.split(maxsplit=5)[5].strip() in wanted)


def test_load_index_reads_the_codes_into_memory_and_finds_the_same_hits(built):
    import gc

    import faiss

    product, _ = built
    codes = sorted(str(p) for p in (product.path / "index").glob("*.ivf-rabitq-cosine.faiss"))
    assert len(codes) == 3
    before = _mappings_of(codes)  # other tests' products may map them too
    fresh = eoembed.open(product.path)
    queries = queries_of(product, 8)
    mapped = fresh.search(queries, k=10, mode="ivf-rabitq")
    assert _mappings_of(codes) >= before + 3  # searching maps the codes
    report = fresh.load_index()
    assert report["shards"] == 3 and report["bytes"] == sum(Path(p).stat().st_size for p in codes)
    shards = list(fresh._archive_searcher._shards.values())
    assert len({id(s.merged) for s in shards}) == 1 and shards[0].merged is not None
    assert {type(faiss.downcast_InvertedLists(s.ivf.invlists)).__name__ for s in shards} == {"ArrayInvertedLists"}
    gc.collect()  # the mapped indexes it copied, once collected, leave no mapping behind
    assert _mappings_of(codes) == before  # the codes are this process's own memory
    assert fresh.search(queries, k=10, mode="ivf-rabitq").equals(mapped)
    assert fresh.load_index()["shards"] == 3 and fresh._archive_searcher._shards.keys() == {(i, "cosine") for i in range(3)}


@pytest.fixture(scope="module")
def loaded(built):
    """The built product opened again with its codes held in memory (one merged faiss index)."""
    product, _ = built
    fresh = eoembed.open(product.path)
    fresh.load_index()
    return fresh


@pytest.mark.parametrize("options", [
    {},
    {"candidates": 50},  # a pool of 50 over 3 shards
    {"candidates": 900, "nprobe": 4},
    {"bbox": (-78.72, 35.62, -78.68, 35.66)},  # a selection re-ranked whole
    {"datetime": "2020-05-20/2020-05-30"},
    {"where": "valid_fraction > ?", "params": [0.7]},
    {"bbox": (-78.8, 35.6, -78.7, 35.8), "where": "source_id = ?", "params": ["scene-1"]},
])
def test_codes_in_memory_give_the_hits_of_mapped_shards(built, loaded, options, monkeypatch):
    import eoembed._archive as archive

    product, _ = built
    monkeypatch.setattr(archive, "_cores", lambda: 2)  # one query's lists split in two, whatever this machine has
    merged = {id(s.merged) for s in loaded._archive_searcher._shards.values()}
    assert len(merged) == 1 and None not in merged  # the three shards' codes are one index
    for queries in (queries_of(product, 12, seed=4), queries_of(product, 1, seed=5)):  # a batch, one query
        mapped = product.search(queries, k=10, mode="ivf-rabitq", **options)
        held = loaded.search(queries, k=10, mode="ivf-rabitq", **options)
        monkeypatch.setattr(archive, "SPLIT_QUERY_LISTS", False)
        assert loaded.search(queries, k=10, mode="ivf-rabitq", **options).equals(held)
        monkeypatch.setattr(archive, "SPLIT_QUERY_LISTS", True)
        assert held.num_rows == mapped.num_rows > 0
        assert held.select(["chip_id"]).equals(mapped.select(["chip_id"]))
        np.testing.assert_allclose(held.column("distance"), mapped.column("distance"), rtol=1e-6)


@pytest.mark.mpi
def test_load_index_under_mpirun_reads_each_ranks_shards_only(built, tmp_path):
    product, _ = built
    script = tmp_path / "load.py"
    script.write_text(
        "import json, sys\n"
        "from mpi4py import MPI\n"
        "import eoembed\n"
        "from eoembed._search import distributed_search\n"
        "comm = MPI.COMM_WORLD\n"
        "product = eoembed.open(sys.argv[1])\n"
        "report = product.load_index(comm=comm)\n"
        "table = distributed_search(product, ['chip-0000042'], comm=comm, k=6, mode='ivf-rabitq')\n"
        "opened = sorted(i for i, _ in product._archive_searcher._shards)\n"
        "all_in = all(s.merged is not None for s in product._archive_searcher._shards.values())\n"
        "facts = comm.gather({'opened': opened, 'shards': report['shards'], 'in_memory': all_in}, root=0)\n"
        "if comm.Get_rank() == 0:\n"
        "    print(json.dumps({'ranks': facts, 'hits': table.column('chip_id').to_pylist()}))\n")
    run = subprocess.run([str(BIN / "mpirun"), "-n", "2", sys.executable, str(script), str(product.path)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(sum((r["opened"] for r in out["ranks"]), [])) == [0, 1, 2] and all(r["opened"] for r in out["ranks"])
    assert all(r["in_memory"] and r["shards"] == len(r["opened"]) for r in out["ranks"])
    assert not set(out["ranks"][0]["opened"]) & set(out["ranks"][1]["opened"])
    assert out["hits"] == product.search(["chip-0000042"], k=6, mode="ivf-rabitq").column("chip_id").to_pylist()


def test_search_asks_for_the_rows_it_reranks_first_and_finds_the_same_hits_without(built, monkeypatch):
    import eoembed._archive as archive

    product, _ = built
    asked, read = [], []
    original_prefetch, original_rows = archive.prefetch_array_rows, archive.Shard.rerank_rows
    shard_of = {}

    def prefetch(parts):
        parts = list(parts)
        assert not read  # every shard's pages are asked for, in one call, before any row is read
        for file, rows in parts:
            asked.append((shard_of.get(id(file)), set(rows.tolist())))
        return original_prefetch(parts)

    def rows_of(self, rows):
        read.append((self.index, set(rows.tolist())))
        return original_rows(self, rows)

    monkeypatch.setattr(archive, "prefetch_array_rows", prefetch)
    monkeypatch.setattr(archive.Shard, "rerank_rows", rows_of)
    queries = queries_of(product, 6)
    product.search(queries[:1], k=10, mode="ivf-rabitq", candidates=60)  # opens the shards
    shard_of.update({id(shard.rerank_file): index for (index, _), shard in product._archive_searcher._shards.items()})
    asked.clear(), read.clear()
    fetched = product.search(queries, k=10, mode="ivf-rabitq", candidates=60)
    assert asked and {shard for shard, _ in asked} == {shard for shard, _ in read}
    for shard, rows in read:
        assert rows <= next(wanted for index, wanted in asked if index == shard)
    monkeypatch.setattr(archive, "PREFETCH_RERANK_ROWS", False)
    asked.clear()
    plain = product.search(queries, k=10, mode="ivf-rabitq", candidates=60)
    assert not asked and fetched.equals(plain)


@pytest.mark.parametrize("filters", [{}, {"where": "valid_fraction > ?", "params": [0.5]}])
def test_two_passes_cut_the_pool_where_one_pass_does(built, monkeypatch, filters):
    import eoembed._archive as archive

    product, _ = built
    asked, reranked = [], []
    original_candidates, original_rows = archive.Shard.candidates, archive.Shard.rerank_rows

    def candidates(self, queries, coarse, *, count, **options):
        asked.append(count)
        return original_candidates(self, queries, coarse, count=count, **options)

    def rerank_rows(self, rows):
        reranked.append((self.index, tuple(np.sort(rows).tolist())))
        return original_rows(self, rows)

    monkeypatch.setattr(archive.Shard, "candidates", candidates)
    monkeypatch.setattr(archive.Shard, "rerank_rows", rerank_rows)
    queries = queries_of(product, 24)

    def run(shares: float) -> tuple[list, list, object]:
        monkeypatch.setattr(archive, "FIRST_PASS_SHARES", shares)
        monkeypatch.setattr(archive, "FIRST_PASS_MIN", 1)
        asked.clear(), reranked.clear()
        table = product.search(queries, k=10, mode="ivf-rabitq", candidates=90, **filters)
        return list(asked), sorted(reranked), table

    one_asked, one_pool, one = run(1e6)  # the first pass is the whole pool: one pass
    assert set(one_asked) == {90}
    again = 0
    for shares in (0.5, 1, 1.5, 2):  # 15 to 60 a shard first, where a shard holds about 30 of the pool
        two_asked, two_pool, two = run(shares)
        assert min(two_asked) == 30 * shares and two_pool == one_pool and two.equals(one)
        again += two_asked.count(90)  # short shards asked again
    assert again
