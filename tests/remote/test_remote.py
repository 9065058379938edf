"""Products read where they live: the same answers as the local copy, and only the bytes a question
needs crossing the network (counted by the loopback servers)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

import eoembed
from eoembed._errors import DamagedProductError, ProductNotFoundError, StoreError, UnsafePathError
from tests.servers import total_bytes

QUERY = ("SELECT chip_id, valid_fraction FROM embeddings WHERE bbox.xmin >= ? AND bbox.xmax <= ? "
         "AND bbox.ymin >= ? AND bbox.ymax <= ? ORDER BY chip_id")


def _small_bbox(product, fraction: float = 0.01) -> list[float]:
    """A bbox of about ``fraction`` of the product's area, in its south-west corner."""
    xmin, ymin, xmax, ymax = product.bbox
    side = fraction ** 0.5
    return [xmin, xmin + (xmax - xmin) * side, ymin, ymin + (ymax - ymin) * side]


def test_remote_product_answers_as_the_local_copy(remote):
    local_path, url, _ = remote
    local, there = eoembed.open(local_path), eoembed.open(url)
    assert there.num_rows == local.num_rows == 4000 and len(there.files) == 8
    assert np.array_equal(there.to_numpy(), local.to_numpy())
    assert np.array_equal(there.to_torch().numpy(), local.to_numpy())
    assert there.sql(QUERY, _small_bbox(local, 0.2)).equals(local.sql(QUERY, _small_bbox(local, 0.2)))
    assert eoembed.read_footer(there.files[3]) == eoembed.read_footer(local.files[3])
    query = local.to_numpy()[:3]
    for mode in ("exact", "int8", "binary"):
        near, far = local.search(query, k=5, mode=mode), there.search(query, k=5, mode=mode)
        assert far.column("chip_id").equals(near.column("chip_id")), mode
        assert np.allclose(far.column("distance").to_numpy(), near.column("distance").to_numpy(), atol=1e-6), mode
    box = _small_bbox(local, 0.3)
    filtered = dict(k=7, bbox=(box[0], box[2], box[1], box[3]), where="valid_fraction > ?", params=[0.7])
    assert there.search(query[0], **filtered).equals(local.search(query[0], **filtered))
    assert len(there.dataset(where="valid_fraction > 0.9")) == len(local.dataset(where="valid_fraction > 0.9"))


def test_remote_product_validates_as_the_local_copy(remote):
    local_path, url, _ = remote
    near, far = eoembed.validate(local_path), eoembed.validate(url)
    assert near.ok and far.ok, far
    assert far.findings == near.findings and far.target == url


def test_bbox_query_reads_a_small_fraction_of_a_remote_product(remote):
    local_path, url, server = remote
    local = eoembed.open(local_path)
    box = _small_bbox(local, 0.01)
    server.counter.reset()
    there = eoembed.open(url)
    opened = server.counter.bytes
    answer = there.sql(QUERY, box)
    read = server.counter.bytes
    assert answer.equals(local.sql(QUERY, box)) and answer.num_rows > 0
    size = total_bytes(local_path)
    print(f"\n{url}: open {opened} B, open + 1% bbox query {read} B of {size} B ({read / size:.1%}), "
          f"{server.counter.requests} requests")
    assert read < 0.15 * size


def test_bbox_search_and_dataset_fetch_only_the_files_the_manifest_says_meet_it(remote, tmp_path, monkeypatch):
    local_path, url, server = remote
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a cold cache: what the search fetches is counted
    local = eoembed.open(local_path)
    xmin, ymin, xmax, ymax = local.bbox
    box = (xmin, ymin, xmin + (xmax - xmin) * 0.05, ymax)  # the west strip
    there = eoembed.open(url)
    assert there.files_overlapping(box) == local.files_overlapping(box) and len(local.files_overlapping(box)) < 3
    server.counter.reset()
    query = local.to_numpy()[0]
    assert there.search(query, k=5, bbox=box).equals(local.search(query, k=5, bbox=box))
    assert len(there.dataset(bbox=box)) == len(local.dataset(bbox=box)) > 0
    assert len(list(there.dataset(bbox=box, streaming=True))) == len(local.dataset(bbox=box))
    print(f"\n{url}: bbox search + two datasets {server.counter.bytes} B of {total_bytes(local_path)} B")
    assert server.counter.bytes < 0.3 * total_bytes(local_path)


def test_caches_of_a_remote_product_live_in_the_user_cache_folder(served, tmp_path):
    import os

    from eoembed._search import cache_dir

    local_path, urls, _ = served
    there = eoembed.open(urls["s3"])
    there.search(there.to_numpy()[0], k=3, mode="int8")
    folder = cache_dir(there)
    assert folder.is_relative_to(os.environ["XDG_CACHE_HOME"])
    digest = __import__("hashlib").sha256((local_path / "manifest.parquet").read_bytes()).hexdigest()[:16]
    assert folder.name == digest and any(folder.iterdir())
    assert sorted(p.relative_to(there.path).as_posix() for p in there.path.rglob("*")
                  if p.is_file()) == sorted(p.relative_to(local_path).as_posix() for p in local_path.rglob("*") if p.is_file())


def test_copy_to_object_storage_and_back_validates(served, tmp_path):
    local_path, _, _ = served
    report = eoembed.copy(local_path, "s3://copies/up")
    assert report["bytes"] == total_bytes(local_path)
    assert eoembed.validate("s3://copies/up").ok
    eoembed.copy("s3://copies/up", tmp_path / "down")
    assert eoembed.validate(tmp_path / "down").ok
    assert np.array_equal(eoembed.open(tmp_path / "down").to_numpy(), eoembed.open(local_path).to_numpy())
    with pytest.raises(eoembed.ProductExistsError, match="overwrite"):
        eoembed.copy(local_path, "s3://copies/up")
    with pytest.raises(StoreError, match="s3://no-such-bucket/p/.* cannot be written"):
        eoembed.copy(local_path, "s3://no-such-bucket/p")


def test_an_interrupted_copy_leaves_no_valid_looking_product(served, tmp_path):
    import shutil

    local_path, _, _ = served
    damaged = shutil.copytree(local_path, tmp_path / "damaged")
    last = sorted((damaged / "data").iterdir())[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: opening passes, the checksum does not
    last.write_bytes(bytes(data))
    for target in ("s3://copies/broken", tmp_path / "broken"):
        with pytest.raises(DamagedProductError, match=last.name):
            eoembed.copy(damaged, target)
        with pytest.raises(ProductNotFoundError, match="collection.json"):
            eoembed.open(target)


def test_cli_copies_and_queries_a_remote_product(served, tmp_path, capsys):
    from eoembed._cli import main

    local_path, urls, _ = served
    assert main(["copy", str(local_path), "s3://copies/cli"]) == 0
    assert "copied" in capsys.readouterr().out
    assert main(["query", "s3://copies/cli", "SELECT count(*) AS n FROM embeddings"]) == 0
    assert "4000" in capsys.readouterr().out
    assert main(["info", "s3://copies/cli", "--verify"]) == 0
    assert "s3://copies/cli" in capsys.readouterr().out
    assert eoembed.open("s3://copies/cli").model_weights == eoembed.open(local_path).model_weights
    assert main(["validate", "s3://copies/cli"]) == 0
    assert main(["info", "s3://copies/nothing-here"]) == 2
    assert "not an eoembed product" in capsys.readouterr().err


def test_sandbox_refuses_other_remote_files(served):
    _, urls, _ = served
    there = eoembed.open(urls["s3"])
    other = urls["s3"].rsplit("/", 1)[0] + "/elsewhere.parquet"
    with pytest.raises(eoembed.SqlRefusedError):
        there.sql(f"SELECT * FROM read_parquet('{other}')")
    with pytest.raises(eoembed.SqlRefusedError):
        there.sql("SELECT * FROM read_parquet(?)", [str(there.files[0]).replace("part-00000", "part-0000*")])


def test_hrefs_of_a_remote_product_stay_inside_its_prefix(served):
    from eoembed._paths import inside

    _, urls, _ = served
    root = eoembed.open(urls["s3"]).path
    assert str(inside(root, "data/../items/a.json", where="test")) == f"{urls['s3']}/items/a.json"
    for href in ("../other/collection.json", "data/../../x", "s3://products/x", "/abs"):
        with pytest.raises(UnsafePathError):
            inside(root, href, where="test")


@pytest.mark.slow
def test_fewshot_and_predict_on_a_remote_real_product(served, nc_stats_product, shared_data, tmp_path):
    import pyarrow.parquet as pq

    from tests.conftest import NC_CHIP_LABELS
    from tests.servers import upload

    upload(nc_stats_product, "s3://products/nc")
    labels = dict(label_field="class_name", drop_classes=["agriculture"], shots=[1, 5], episodes=20, seed=0)
    near = eoembed.fewshot_product(nc_stats_product, shared_data / NC_CHIP_LABELS, **labels)
    far = eoembed.fewshot_product("s3://products/nc", shared_data / NC_CHIP_LABELS, **labels)
    assert far.to_dict() == near.to_dict()
    tables = []
    for source, name in ((nc_stats_product, "near"), ("s3://products/nc", "far")):
        product = eoembed.open(source)
        joined = eoembed.join_labels(product, shared_data / NC_CHIP_LABELS, label_field="class_name")
        tables.append(pq.read_table(eoembed.predict(product, joined, out=tmp_path / f"{name}.parquet", method="knn")))
    assert tables[0].select(["chip_id", "class"]).equals(tables[1].select(["chip_id", "class"]))


def test_a_public_bucket_is_read_anonymously_without_credentials(served, tmp_path, monkeypatch):
    from tests.servers import upload

    local_path, _, _ = served
    upload(local_path, "s3://public/p", public=True)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    there = eoembed.open("s3://public/p")
    assert there.path.storage_options.get("anon") is True
    assert there.sql("SELECT count(*) AS n FROM embeddings").column("n").to_pylist() == [4000]
    assert np.array_equal(there.to_numpy()[:10], eoembed.open(local_path).to_numpy()[:10])


@pytest.mark.parametrize("url, package", [("gs://bucket/p", "gcsfs"), ("az://container/p", "adlfs")])
def test_a_store_without_its_package_names_it(url, package):
    with pytest.raises(eoembed.MissingDependencyError, match=rf"needs the Python package .{package}.: pip install .eoembed\[remote\]. {package}"):
        eoembed.open(url)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(StoreError, match="ftp://host/p"):
        eoembed.open("ftp://host/p")


def test_subset_of_a_remote_product_equals_the_local_subset_and_reads_only_its_row_groups(remote, tmp_path):
    local_path, url, server = remote
    local = eoembed.open(local_path)
    xmin, ymin, xmax, ymax = local.bbox
    box = (xmin, ymin, xmin + (xmax - xmin) * 0.1, ymin + (ymax - ymin) * 0.1)
    near = eoembed.subset(local_path, bbox=box, out=tmp_path / "near")
    server.counter.reset()
    far = eoembed.subset(url, bbox=box, out=tmp_path / "far")
    read, size = server.counter.bytes, total_bytes(local_path)
    assert eoembed.validate(tmp_path / "far").ok
    mine, theirs = eoembed.open(tmp_path / "near"), eoembed.open(tmp_path / "far")
    assert 0 < theirs.num_rows == mine.num_rows < local.num_rows
    assert np.array_equal(theirs.to_numpy(), mine.to_numpy())
    ids = "SELECT chip_id FROM embeddings ORDER BY chip_id"
    assert theirs.sql(ids).equals(mine.sql(ids))
    print(f"\n{url}: subset of {theirs.num_rows} chips read {read} B of {size} B ({read / size:.1%})")
    assert read < 0.5 * size
    del near, far
