"""Episodic few-shot evaluation: synthetic checks of each method, fixed-seed repeatability, warnings,
spatially blocked splits, and the real NC product with its real chip labels and land-cover raster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import eoembed
from eoembed._blocks import BlockSize, parse_block
from eoembed._cli import main
from eoembed._fewshot import _episode_indices, macro_f1
from tests.conftest import NC_CHIP_LABELS, NC_STRATA, NC_STRATA_CLASSES

METHODS = ["prototype", "knn", "logreg"]


def clusters(n_per_class=40, classes=4, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat([f"class-{i}" for i in range(classes)], n_per_class)
    return x, y


@pytest.mark.parametrize("method", METHODS)
def test_separable_classes_are_found(method):
    x, y = clusters()
    report = eoembed.fewshot(x, y, shots=[1, 5], method=method, episodes=20, seed=1)
    for result in report.results:
        assert result.accuracy > 0.95 and result.macro_f1 > 0.95
    assert report.counts == {f"class-{i}": 40 for i in range(4)}


@pytest.mark.parametrize("method", METHODS)
def test_random_features_score_near_chance(method):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = rng.integers(0, 4, 400)
    result = eoembed.fewshot(x, y, shots=[5], method=method, episodes=100, seed=0).results[0]
    assert abs(result.accuracy - 0.25) < 0.06
    assert result.accuracy_ci95 > 0


@pytest.mark.parametrize("method", METHODS)
def test_fixed_seed_gives_the_same_numbers(method):
    x, y = clusters(spread=2.5)
    first = eoembed.fewshot(x, y, shots=[1, 5], method=method, episodes=30, seed=7).to_dict()
    again = eoembed.fewshot(torch.from_numpy(x), y, shots=[1, 5], method=method, episodes=30, seed=7).to_dict()
    other = eoembed.fewshot(x, y, shots=[1, 5], method=method, episodes=30, seed=8).to_dict()
    assert first == again
    assert first != other
    # A shot count's episodes do not depend on which other shot counts are asked for.
    alone = eoembed.fewshot(x, y, shots=[5], method=method, episodes=30, seed=7).results[0]
    assert alone.accuracy == first["results"][1]["accuracy"]


def test_small_classes_warn_and_get_fewer_queries():
    x, y = clusters(n_per_class=40, classes=3)
    y = y.copy()
    keep = np.r_[0:80, 80:88]  # class-2 keeps 8 chips
    with pytest.warns(eoembed.FewShotWarning) as caught:
        report = eoembed.fewshot(x[keep], y[keep], shots=[1, 5, 10], episodes=10)
    text = " ".join(str(w.message) for w in caught)
    assert "class-2" in text and "fewer than shots + queries" in text and "left out" in text
    assert report.result(1).queries_per_class == {"class-0": 15, "class-1": 15, "class-2": 7}
    assert report.result(5).queries_per_class["class-2"] == 3
    assert "class-2" not in report.result(10).queries_per_class  # 8 chips cannot give 10 shots
    assert len(report.warnings) == 3


def test_macro_f1_by_hand():
    pred = torch.tensor([[0, 0, 1, 1, 2, 0]])
    truth = torch.tensor([[0, 1, 1, 1, 2, 2]])
    # class 0: tp1 fp2 fn0 -> 2/4; class 1: tp2 fp0 fn1 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    assert float(macro_f1(pred, truth, 3)[0]) == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3)


def test_bad_arguments():
    x, y = clusters()
    with pytest.raises(eoembed.EoembedError, match="unknown few-shot method"):
        eoembed.fewshot(x, y, method="svm")
    with pytest.raises(eoembed.LabelError, match="labels"):
        eoembed.fewshot(x, y[:-1])


def test_real_product_beats_chance(nc_stats_product, shared_data):
    report = eoembed.fewshot_product(nc_stats_product, shared_data / NC_CHIP_LABELS, label_field="class_name",
                                     drop_classes=["agriculture"], shots=[1, 5], episodes=50, seed=0)
    assert report.classes == ["developed", "forest", "herbaceous", "shrubland", "water"]
    assert report.result(1).accuracy > 0.2 + 0.15
    assert report.result(5).accuracy > report.result(1).accuracy


def test_cli_prints_table_and_json(nc_stats_product, shared_data, capsys):
    base = [str(nc_stats_product), "--labels", str(shared_data / NC_CHIP_LABELS)]
    args = [*base, "--label-field", "class_name", "--shots", "1,5", "--episodes", "20", "--drop", "agriculture", "--method", "knn"]
    assert main(["fewshot", *args]) == 0
    out = capsys.readouterr()
    assert "5-way few-shot, method knn" in out.out and "warning" not in out.out
    assert main(["fewshot", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [split["split"] for split in data["splits"]] == ["blocked, 2 km blocks", "random"]
    assert all([r["shots"] for r in split["results"]] == [1, 5] for split in data["splits"])
    # Water has 26 chips: enough for 10 shots + 15 queries but not for 15 shots.
    assert main(["fewshot", *base, "--label-field", "class_name", "--shots", "15", "--episodes", "5", "--drop", "agriculture"]) == 0
    assert "water" in capsys.readouterr().err
    assert main(["fewshot", *base, "--label-field", "klass"]) == 1
    assert "class_name" in capsys.readouterr().err


def _shared_blocks(chip_blocks, support, query):
    """Episodes whose support and query chips share a block."""
    return [e for e in range(len(support))
            if set(chip_blocks[support[e]].tolist()) & set(chip_blocks[query[e][query[e] >= 0]].tolist())]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(1, 5), st.integers(1, 30), st.integers(3, 12), st.integers(0, 2**16))
@example(classes=3, shots=3, queries=30, n_blocks=6, seed=141)  # drawn again after a failed try, which once left its queries behind
def test_blocked_episodes_never_share_a_block(classes, shots, queries, n_blocks, seed):
    rng = np.random.default_rng(seed)
    n = 40 * classes
    labels = rng.integers(0, classes, n)
    chip_blocks = rng.integers(0, n_blocks, n)
    rows = [np.flatnonzero(labels == c) for c in range(classes)]
    try:
        support, query = _episode_indices(rows, chip_blocks, shots=shots, queries=queries, episodes=20, seed=seed,
                                          classes=[str(c) for c in range(classes)])
    except eoembed.SpatialBlockError:
        return  # a draw this crowded may find no episode; the NC test below needs one
    assert not _shared_blocks(chip_blocks, support, query)
    per_class = support.reshape(20, classes, shots)
    assert all((labels[per_class[:, c]] == c).all() for c in range(classes))  # every class has its shots
    asked = query.reshape(20, classes, queries)
    assert (asked[:, :, 0] >= 0).all()  # and at least one query
    for e in range(20):
        for c in range(classes):
            chips = asked[e, c][asked[e, c] >= 0]
            assert (labels[chips] == c).all() and len(set(chips.tolist())) == len(chips)
            assert not set(chips.tolist()) & set(per_class[e, c].tolist())


@pytest.fixture(scope="module")
def nc_labelled(nc_stats_product, shared_data):
    product = eoembed.open(nc_stats_product)
    joined = eoembed.raster_labels(product, shared_data / NC_STRATA, classes=NC_STRATA_CLASSES).without(["agriculture"])
    return product, joined


def test_blocked_episodes_on_the_nc_product_keep_their_blocks_apart(nc_labelled):
    product, joined = nc_labelled
    blocks = eoembed.spatial_blocks(product).take(joined.rows)  # the default: 2 km
    classes = sorted(set(joined.labels.tolist()))
    rows = [np.flatnonzero(joined.labels == c) for c in classes]
    support, query = _episode_indices(rows, blocks.ids, shots=10, queries=15, episodes=100, seed=0, classes=classes)
    assert not _shared_blocks(blocks.ids, support, query)
    # The same draw with every chip its own block (the random split) does put neighbours on both sides.
    random_support, random_query = _episode_indices(rows, np.arange(len(joined.rows)), shots=10, queries=15, episodes=100,
                                                    seed=0, classes=classes)
    assert len(_shared_blocks(blocks.ids, random_support, random_query)) > 90


def test_a_leaky_random_split_is_told_apart_from_a_blocked_one(nc_labelled):
    product, joined = nc_labelled
    vectors = product.to_numpy()[joined.rows]
    blocked = eoembed.fewshot(vectors, joined.labels, shots=[10], blocks=eoembed.spatial_blocks(product).take(joined.rows))
    random = eoembed.fewshot(vectors, joined.labels, shots=[10])
    b, r = blocked.result(10), random.result(10)
    # Neighbouring chips in the support set inflate the random split beyond both intervals.
    assert r.accuracy - b.accuracy > r.accuracy_ci95 + b.accuracy_ci95
    assert blocked.split == "blocked, 2 km blocks" and random.split == "random"
    assert blocked.blocks == len(np.unique(eoembed.spatial_blocks(product).ids[joined.rows]))
    table = eoembed.splits_table([blocked, random])
    assert "blocked, 2 km blocks" in table and "random" in table and f"{b.accuracy:.3f} ± {b.accuracy_ci95:.3f}" in table


def test_a_class_in_too_few_blocks_is_named(nc_labelled):
    product, joined = nc_labelled
    vectors = product.to_numpy()[joined.rows]
    with pytest.raises(eoembed.SpatialBlockError, match=r"class '\w+' has \d+ chips in 1 block.*smaller block \(e\.g\. --block 10km\)"):
        eoembed.fewshot(vectors, joined.labels, shots=[1], episodes=5, blocks=eoembed.spatial_blocks(product, block="20km").take(joined.rows))


def test_cells_blocks_follow_the_chip_grid(nc_stats_product):
    product = eoembed.open(nc_stats_product)
    boxes = np.concatenate([np.asarray(b.column("pixel_bbox").flatten()).reshape(-1, 4) for b in product.iter_batches(columns=["pixel_bbox"])])
    blocks = eoembed.spatial_blocks(product, block="8cells")
    # 8 chips of 8 px per block edge, counted from the south-west chip (the bottom row of the scene's chips).
    expected = np.unique(np.stack([(boxes[:, 0] - boxes[:, 0].min()) // 64, (boxes[:, 3].max() - boxes[:, 3]) // 64], axis=1),
                         axis=0, return_inverse=True)[1].reshape(-1)
    assert blocks.count == len(np.unique(expected))
    assert len({(a, b) for a, b in zip(blocks.ids, expected)}) == blocks.count  # the same partition
    assert blocks.cell == pytest.approx(8 * 28.5, rel=0.01) and blocks.crs == "EPSG:32119"
    assert eoembed.spatial_blocks(product, block="1829m").count == blocks.count  # about 8 chips of 228.7 m


@pytest.mark.parametrize("text,size", [("2km", BlockSize(2000, "m")), ("500 m", BlockSize(500, "m")),
                                       ("8cells", BlockSize(8, "cells")), ("1cell", BlockSize(1, "cells")),
                                       ("1.5KM", BlockSize(1500, "m")), (750, BlockSize(750, "m"))])
def test_block_sizes(text, size):
    assert parse_block(text) == size


@pytest.mark.parametrize("text", ["2", "two km", "0km", "-1m", "8 pixels", ""])
def test_bad_block_sizes(text):
    with pytest.raises(eoembed.SpatialBlockError, match="2km, 500m or 8cells|positive length"):
        parse_block(text)


def test_cli_on_the_land_cover_raster_prints_both_splits(nc_stats_product, shared_data, capsys):
    names = ",".join(f"{code}={name}" for code, name in NC_STRATA_CLASSES.items())
    args = [str(nc_stats_product), "--labels", str(shared_data / NC_STRATA), "--classes", names, "--drop", "agriculture",
            "--shots", "1,5", "--episodes", "20", "--block", "8cells"]
    assert main(["fewshot", *args]) == 0
    out = capsys.readouterr().out
    assert "blocked, 8 cells blocks" in out and "random" in out and "water" in out
    assert main(["fewshot", *args, "--block", "30km"]) == 1
    assert "smaller block" in capsys.readouterr().err
    assert main(["fewshot", *args[:-2], "--split", "random", "--json"]) == 0
    assert [s["split"] for s in json.loads(capsys.readouterr().out)["splits"]] == ["random"]


@pytest.mark.parametrize("native_crs,metric", [("EPSG:32617", "EPSG:32617"), ("EPSG:4326", "aeqd")])
def test_blocks_are_squares_in_metres_whatever_the_crs(tmp_path, native_crs, metric):
    import pyproj
    import shapely

    from tests.factories import chips, model_contract

    batch = {**chips(400, 8), "native_crs": native_crs}
    product = eoembed.open(eoembed.write_product(tmp_path / "p", batch, model=model_contract(8)))
    blocks = eoembed.spatial_blocks(product, block="5km")
    assert metric in blocks.crs  # UTM chips in their own CRS; lon/lat chips in a local equidistant one
    _, footprints = eoembed._labels.chip_footprints(product)
    centres = shapely.centroid(footprints)
    lon, lat = shapely.get_x(centres), shapely.get_y(centres)
    geod = pyproj.Geod(ellps="WGS84")
    for block in range(blocks.count):
        members = np.flatnonzero(blocks.ids == block)
        a, b = np.meshgrid(members, members)
        _, _, distance = geod.inv(lon[a.ravel()], lat[a.ravel()], lon[b.ravel()], lat[b.ravel()])
        assert distance.max() < 5000 * np.sqrt(2) * 1.01  # within one 5 km square (1 % for the projection's scale)
    assert 4 <= blocks.count <= 36  # chips over about 18 x 22 km
