"""The NeuCo-Bench protocol: Q score, linear probes for classification and regression, task files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import eoembed
from eoembed._cli import main
from eoembed._neuco import q_score


def tasks(tmp_path, x, *, kinds=("classification", "regression"), seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}" for i in range(len(x))]
    classes = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    value = x[:, :3] @ np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=len(x))
    pacsv.write_csv(pa.table({"id": ids, "target": [f"c{c}" for c in classes]}), tmp_path / "cls.csv")
    pacsv.write_csv(pa.table({"id": ids, "target": value}), tmp_path / "reg.csv")
    text = "folds = 5\ntest_fraction = 0.25\nseed = 3\n"
    for kind in kinds:
        text += f'[[task]]\nname = "{kind}"\nkind = "{kind}"\ntargets = "{"cls" if kind == "classification" else "reg"}.csv"\n'
    (tmp_path / "tasks.toml").write_text(text)
    return ids, tmp_path / "tasks.toml"


def test_q_score_formula():
    assert q_score([0.5, 0.5]) == pytest.approx(0.5 / 0.02 * 2)
    assert q_score([0.4, 0.6]) == pytest.approx(0.5 / (0.02 + 0.1) * 2)


def test_informative_embeddings_score_high_and_noise_low(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    ids, config = tasks(tmp_path, x)
    good = eoembed.neuco_evaluate(x, ids, config=config)
    assert [t.metric for t in good.tasks] == ["F1", "R2"]
    assert good.tasks[0].mean > 0.9 and good.tasks[1].mean > 0.99
    noise = eoembed.neuco_evaluate(rng.normal(size=(600, 8)), ids, config=config)
    assert noise.tasks[1].mean < 0.05 and noise.mean_q < good.mean_q
    assert eoembed.neuco_evaluate(x, ids, config=config).to_dict() == good.to_dict()  # fixed seed


def test_task_file_errors(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 4))
    ids, config = tasks(tmp_path, x)
    config.write_text('[[task]]\nname = "t"\nkind = "ranking"\ntargets = "cls.csv"\n')
    with pytest.raises(eoembed.TaskConfigError, match="kind 'ranking'"):
        eoembed.neuco_evaluate(x, ids, config=config)
    config.write_text('[[task]]\nname = "t"\nkind = "regression"\ntargets = "missing.csv"\n')
    with pytest.raises(eoembed.TaskConfigError, match="missing.csv does not exist"):
        eoembed.neuco_evaluate(x, ids, config=config)
    config.write_text("folds = [")
    with pytest.raises(eoembed.TaskConfigError, match="not valid TOML"):
        eoembed.neuco_evaluate(x, ids, config=config)


def test_cli_on_a_submission_csv(tmp_path, capsys, nc_stats_product):
    product = eoembed.open(nc_stats_product)
    csv_path = eoembed.write_embed2scale(product, tmp_path / "sub.csv")
    sample_ids, vectors = eoembed.read_embed2scale(csv_path)
    _, config = tasks(tmp_path, vectors[:, :25].astype(np.float64))
    # ids of the task files must be the product's chip ids
    for name in ("cls.csv", "reg.csv"):
        table = pacsv.read_csv(tmp_path / name)
        pacsv.write_csv(table.set_column(0, "id", pa.array(sample_ids)), tmp_path / name)
    assert main(["neuco", str(csv_path), "--config", str(config)]) == 0
    assert "mean Q" in capsys.readouterr().out
