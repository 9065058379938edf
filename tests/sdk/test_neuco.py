"""NeuCo-Bench as its authors define it: task files, folds, the linear probe per task type, Q, the
leaderboard; on synthetic tasks and on the real NC product with tasks from its land-cover raster."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import eoembed
from eoembed._cli import main
from eoembed._neuco import block_splits, leaderboard, q_score, read_tasks, shuffle_splits
from tests.conftest import NC_STRATA, NC_STRATA_CLASSES

FAST = {"k_folds": 3, "epochs": 10, "learning_rate": 0.02}  # few folds, a faster probe: seconds, not minutes


def write_task(folder, name, ids, labels):
    folder.mkdir(exist_ok=True)
    lines = ["id,label", *(f"{i},{'' if v is None else v}" for i, v in zip(ids, labels))]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


def synthetic(tmp_path, x, *, seed=0):
    """A binary and a regression task that are linear in the first dimensions of ``x``."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}.zarr.zip" for i in range(len(x))]  # the challenge's ids end in .zarr.zip
    plain = [i.removesuffix(".zarr.zip") for i in ids]
    value = x[:, :3] @ np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=len(x))
    write_task(tmp_path / "tasks", "positive__classification", plain, (x[:, 0] + x[:, 1] > 0).astype(int))
    write_task(tmp_path / "tasks", "value__regr", plain, value)
    return ids, tmp_path / "tasks"


def test_q_score_formula():
    assert q_score([0.5, 0.5]) == pytest.approx(0.5 / 0.02 * 2)
    assert q_score([0.4, 0.6]) == pytest.approx(0.5 / (0.02 + 0.1) * 2)
    assert q_score([0.4, float("nan"), 0.6]) == pytest.approx(0.5 / (0.02 + 0.1) * 2)  # their nanmean / nanstd


def test_task_files_follow_the_authors_naming(tmp_path):
    write_task(tmp_path, "cloud__cls", ["a", "b", "c"], [0, 1, None])  # an empty label is skipped
    write_task(tmp_path, "biomass__regression", ["a", "b"], [3.5, 7.0])
    tasks = read_tasks(tmp_path)
    assert [(t.name, t.kind, t.ids) for t in tasks] == [("biomass", "regression", ["a", "b"]), ("cloud", "classification", ["a", "b"])]
    write_task(tmp_path, "landcover__classification", ["a", "b", "c"], [0, 1, 2])
    with pytest.raises(eoembed.TaskConfigError, match="binary.*3 values"):
        read_tasks(tmp_path)
    (tmp_path / "landcover__classification.csv").unlink()
    (tmp_path / "cloud.csv").write_text("id,label\na,1\n")
    with pytest.raises(eoembed.TaskConfigError, match=r"cloud.csv: a task file is named <task>__<type>.csv"):
        read_tasks(tmp_path)
    (tmp_path / "cloud.csv").write_text("id,target\na,1\n")
    (tmp_path / "cloud.csv").rename(tmp_path / "cloud__regr.csv")
    with pytest.raises(eoembed.TaskConfigError, match=r"lacks column\(s\) \['label'\]"):
        read_tasks(tmp_path)


def test_shuffle_split_folds():
    splits = shuffle_splits(95, k_folds=6)
    assert len(splits) == 6
    for train, test in splits:
        assert len(test) == math.ceil(0.1 * 95) and len(train) == 95 - len(test)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(95))
    assert len({tuple(sorted(test.tolist())) for _, test in splits}) == 6  # a fresh shuffle per fold
    assert [t.tolist() for _, t in shuffle_splits(95, k_folds=6)] == [t.tolist() for _, t in splits]


def test_informative_embeddings_score_high_and_noise_low(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    ids, tasks = synthetic(tmp_path, x)
    good = eoembed.neuco_evaluate(x, ids, tasks=tasks, **FAST)
    assert [(t.name, t.metric) for t in good.tasks] == [("positive", "F1"), ("value", "R2")]
    assert good.tasks[0].mean > 0.9 and good.tasks[1].mean > 0.9 and len(good.tasks[0].fold_scores) == 3
    noise = eoembed.neuco_evaluate(rng.normal(size=(400, 8)), ids, tasks=tasks, **FAST)
    assert noise.tasks[1].mean < 0.2 and noise.mean_q < good.mean_q
    assert eoembed.neuco_evaluate(x, ids, tasks=tasks, **FAST).to_dict() == good.to_dict()  # seeded as theirs: 42
    assert good.mean_q == pytest.approx(np.mean([t.q for t in good.tasks]))


def test_embeddings_are_standardised_by_one_global_mean_and_std(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    ids, tasks = synthetic(tmp_path, x)
    reference = eoembed.neuco_evaluate(x, ids, tasks=tasks, **FAST).to_dict()["tasks"]
    shifted = eoembed.neuco_evaluate(3 * x + 2, ids, tasks=tasks, **FAST).to_dict()["tasks"]
    for a, b in zip(reference, shifted):  # a global affine change is undone exactly by their standardisation
        assert a["fold_scores"] == pytest.approx(b["fold_scores"], abs=1e-4)
    stretched = x.copy()
    stretched[:, 0] *= 50  # per-dimension standardisation would undo this too; theirs does not
    moved = eoembed.neuco_evaluate(stretched, ids, tasks=tasks, **FAST).to_dict()["tasks"]
    assert moved[1]["fold_scores"] != pytest.approx(reference[1]["fold_scores"], abs=1e-3)


def test_leaderboard_ranks_and_weights_tasks_by_their_spread(tmp_path):
    def report(qs):
        return eoembed.NeucoReport(tasks=[eoembed._neuco.TaskScore(name, "regression", "R2", 10, [], 0, 0, q)
                                          for name, q in zip(["a", "b"], qs)])

    board = leaderboard({"m1": report([10, 1]), "m2": report([20, 2]), "m3": report([30, 1])})
    # ranks: a -> m3 1, m2 2, m1 3; b -> m2 1, m1 and m3 2 (ties share the lower rank)
    spread = np.array([np.std([10, 20, 30], ddof=1), np.std([1, 2, 1], ddof=1)])
    weights = spread / spread.sum()
    expected = {"m1": 3 * weights[0] + 2 * weights[1], "m2": 2 * weights[0] + 1 * weights[1], "m3": 1 * weights[0] + 2 * weights[1]}
    assert [row["method"] for row in board] == sorted(expected, key=expected.get)
    assert {row["method"]: row["weighted_score"] for row in board} == pytest.approx(expected)
    assert [row["rank"] for row in board] == [1, 2, 3]


@pytest.fixture(scope="module")
def nc_tasks(nc_stats_product, shared_data, tmp_path_factory):
    """Two tasks on the NC chips from the land-cover raster: forest or not, and the chip's share of its class."""
    product = eoembed.open(nc_stats_product)
    labelled = eoembed.raster_labels(product, shared_data / NC_STRATA, classes=NC_STRATA_CLASSES, purity=0.5)
    folder = tmp_path_factory.mktemp("nc-tasks")
    write_task(folder, "forest__classification", labelled.chip_ids, (labelled.labels == "forest").astype(int))
    write_task(folder, "purity__regression", labelled.chip_ids, labelled.purity)
    return product, folder


def test_nc_product_random_and_blocked_folds(nc_tasks):
    product, folder = nc_tasks
    random = eoembed.neuco_evaluate(product, tasks=folder, **FAST)
    blocked = eoembed.neuco_evaluate(product, tasks=folder, block="2km", **FAST)
    assert random.split == "random" and blocked.split == "blocked, 2 km blocks"
    assert random.tasks[0].name == "forest" and random.tasks[0].mean > 0.7  # forest is 43 % of the chips
    assert all(np.isfinite(t.q) for t in random.tasks + blocked.tasks)


def test_blocked_folds_hold_out_whole_blocks(nc_stats_product):
    blocks = eoembed.spatial_blocks(eoembed.open(nc_stats_product)).ids
    for train, test in block_splits(blocks, k_folds=5):
        assert not set(blocks[train].tolist()) & set(blocks[test].tolist())
        assert len(test) >= math.ceil(0.1 * len(blocks)) and len(train) + len(test) == len(blocks)


def test_cli_in_the_authors_form(nc_tasks, tmp_path, capsys):
    product, folder = nc_tasks
    csv_path = eoembed.write_embed2scale(product, tmp_path / "submission.csv")
    config = tmp_path / "config.yaml"  # their sample config's keys, plots and leaderboard off
    config.write_text("embedding_dim: 1024\nbatch_size: 64\nepochs: 2\nlearning_rate: 1e-3\nk_folds: 2\n"  # YAML: 1e-3 is text
                      "standardize_embeddings: true\nnormalize_labels: true\nenable_plots: false\n"
                      "update_leaderboard: false\ntask_filter: false\n")
    assert main(["neuco", str(csv_path), "--annotation-path", str(folder), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "forest" in out and "purity" in out and "mean Q" in out
    assert main(["neuco", str(product.path), "--annotation-path", str(folder), "--k-folds", "2", "--epochs", "1",
                 "--task", "forest", "--block", "8cells", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["split"] for s in data["splits"]] == ["random", "blocked, 8 cells blocks (1.8 km)"]
    assert [t["name"] for t in data["splits"][1]["tasks"]] == ["forest"]
    assert main(["neuco", str(csv_path), "--annotation-path", str(folder), "--block", "2km"]) == 1
    assert "blocked folds need the chips' footprints" in capsys.readouterr().err
    config.write_text("k_folds: 2\nfolds: 3\n")
    assert main(["neuco", str(csv_path), "--annotation-path", str(folder), "--config", str(config)]) == 1
    assert "unknown setting(s) ['folds']" in capsys.readouterr().err
