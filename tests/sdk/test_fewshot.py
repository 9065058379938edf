"""Episodic few-shot evaluation: synthetic checks of each method, fixed-seed repeatability, warnings,
and the real NC product with its real chip labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import eoembed
from eoembed._cli import main
from eoembed._fewshot import macro_f1
from tests.conftest import NC_CHIP_LABELS

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
    assert [r["shots"] for r in data["results"]] == [1, 5]
    # Water has 26 chips: enough for 10 shots + 15 queries but not for 15 shots.
    assert main(["fewshot", *base, "--label-field", "class_name", "--shots", "15", "--episodes", "5", "--drop", "agriculture"]) == 0
    assert "water" in capsys.readouterr().err
    assert main(["fewshot", *base, "--label-field", "klass"]) == 1
    assert "class_name" in capsys.readouterr().err
