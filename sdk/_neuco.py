"""The Embed2Scale / NeuCo-Bench evaluation protocol on any embeddings.

Embeddings are standardised (all samples' mean and std), then each task fits a linear probe on
``folds`` random shuffle-splits: logistic regression scored by macro-F1 for classification, ridge
regression scored by R^2 for regression. A task's score is ``Q = mean / (0.02 + std) * 2`` of its
fold scores (high and stable is good); the overall score is the mean Q over tasks.

The tasks come from a small TOML file; target files (CSV or Parquet with columns ``id`` and
``target``) are found relative to it::

    folds = 10            # shuffle-split repetitions
    test_fraction = 0.2
    seed = 0

    [[task]]
    name = "land cover"
    kind = "classification"   # or "regression"
    targets = "landcover.csv"
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import LabelError, TaskConfigError
from ._optional import require

KINDS = ("classification", "regression")



def _toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise TaskConfigError(f"{path} is not valid TOML: {error}") from error


def _targets(path: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise TaskConfigError(f"targets file {path} does not exist")
    table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"id": "string"}))
    missing = {"id", "target"} - set(table.column_names)
    if missing:
        raise TaskConfigError(f"{path} lacks column(s) {sorted(missing)}; it has {table.column_names}")
    return [str(v) for v in table.column("id").to_pylist()], np.asarray(table.column("target").to_pylist(), dtype=object)


@dataclass
class TaskScore:
    name: str
    kind: str
    metric: str
    samples: int
    fold_scores: list[float]
    mean: float
    std: float
    q: float


@dataclass
class NeucoReport:
    tasks: list[TaskScore] = field(default_factory=list)

    @property
    def mean_q(self) -> float:
        return float(np.mean([t.q for t in self.tasks]))

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": [asdict(t) for t in self.tasks], "mean_q": self.mean_q}

    def table(self) -> str:
        lines = [f"{'task':<20} {'kind':<14} {'n':>6} {'metric':>6} {'mean':>7} {'std':>7} {'Q':>8}"]
        for t in self.tasks:
            lines.append(f"{t.name:<20} {t.kind:<14} {t.samples:>6} {t.metric:>6} {t.mean:>7.3f} {t.std:>7.3f} {t.q:>8.2f}")
        return "\n".join(lines + [f"mean Q {self.mean_q:.2f}"])


def q_score(scores: Sequence[float]) -> float:
    """NeuCo-Bench's per-task score: mean / (0.02 + std) * 2 (population std over folds)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores.mean() / (0.02 + scores.std()) * 2)


def _splits(n: int, *, folds: int, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(n * test_fraction)))
    out = []
    for _ in range(folds):
        order = rng.permutation(n)
        out.append((order[n_test:], order[:n_test]))
    return out


def _classification(x, y: np.ndarray, splits, device) -> list[float]:
    torch = require("torch", extra="learn")

    from ._fewshot import Classifier, macro_f1

    classes = sorted(set(y.tolist()))
    codes = torch.as_tensor(np.searchsorted(np.asarray(classes, dtype=object), y), device=device)
    train = torch.as_tensor(np.stack([t for t, _ in splits]), device=device)
    test = torch.as_tensor(np.stack([t for _, t in splits]), device=device)
    # All folds fit at once; a class missing from a fold's training part just never wins there.
    model = Classifier("logreg", x[train], codes[train], len(classes))
    pred = model.predict_proba(x[test]).argmax(dim=-1)
    return [float(v) for v in macro_f1(pred, codes[test], len(classes)).cpu()]


def _regression(x, y: np.ndarray, splits, device, *, alpha: float = 1.0) -> list[float]:
    torch = require("torch", extra="learn")

    target = torch.as_tensor(y.astype(np.float64), device=device)
    x = x.double()
    scores = []
    for train, test in splits:
        a, b = x[train], target[train]
        mean_a, mean_b = a.mean(dim=0), b.mean()
        a = a - mean_a
        gram = a.T @ a + alpha * torch.eye(a.shape[1], dtype=a.dtype, device=device)
        weight = torch.linalg.solve(gram, a.T @ (b - mean_b))
        pred = (x[test] - mean_a) @ weight + mean_b
        truth = target[test]
        total = ((truth - truth.mean()) ** 2).sum()
        scores.append(float(1 - ((truth - pred) ** 2).sum() / total) if total > 0 else 0.0)
    return scores


def neuco_evaluate(embeddings: Any, ids: Sequence[str] | None = None, *, config: str | os.PathLike, device: Any = None) -> NeucoReport:
    """Score ``embeddings`` ((n, D) array with sample ``ids``, a product, or a submission CSV path) on the config's tasks."""
    torch = require("torch", extra="learn")

    from ._fewshot import pick_device, standardizer
    from ._read import Product

    if ids is None:
        if isinstance(embeddings, (str, os.PathLike)) and Path(embeddings).suffix.lower() == ".csv":
            from ._embed2scale import read_embed2scale

            ids, embeddings = read_embed2scale(embeddings)
        else:
            product = embeddings if isinstance(embeddings, Product) else Product(embeddings)
            ids = [str(v) for batch in product.iter_batches(columns=["chip_id"]) for v in batch.column("chip_id").to_pylist()]
            embeddings = product.to_numpy()
    config = Path(config)
    settings = _toml(config) if config.exists() else None
    if settings is None:
        raise TaskConfigError(f"task file {config} does not exist")
    tasks = settings.get("task") or []
    if not tasks:
        raise TaskConfigError(f"{config} defines no [[task]]")
    folds = int(settings.get("folds", 10))
    test_fraction = float(settings.get("test_fraction", 0.2))
    seed = int(settings.get("seed", 0))
    if folds < 2 or not 0 < test_fraction < 1:
        raise TaskConfigError(f"{config}: folds must be >= 2 and test_fraction in (0, 1), got {folds} and {test_fraction}")
    device = pick_device(device)
    x = torch.as_tensor(np.ascontiguousarray(embeddings, dtype=np.float32), device=device)
    mean, std = standardizer(x)
    x = (x - mean) / std
    position = {sample: i for i, sample in enumerate(ids)}
    report = NeucoReport()
    for number, task in enumerate(tasks, start=1):
        name, kind = str(task.get("name", f"task {number}")), task.get("kind")
        if kind not in KINDS:
            raise TaskConfigError(f"{config}: task {name!r} has kind {kind!r}; use one of {list(KINDS)}")
        if "targets" not in task:
            raise TaskConfigError(f"{config}: task {name!r} needs targets = \"FILE\" (columns id, target)")
        task_ids, target = _targets(config.parent / task["targets"])
        rows = [position.get(t) for t in task_ids]
        known = np.array([r is not None for r in rows])
        if not known.any():
            raise LabelError(f"no id of {task['targets']} (e.g. {task_ids[:1]}) is among the embeddings' ids (e.g. {list(ids)[:1]})")
        rows_index = torch.as_tensor([r for r in rows if r is not None], device=device)
        target = target[known]
        splits = _splits(len(target), folds=folds, test_fraction=test_fraction, seed=seed + number)
        if kind == "classification":
            scores, metric = _classification(x[rows_index], np.asarray([str(t) for t in target], dtype=object), splits, device), "F1"
        else:
            scores, metric = _regression(x[rows_index], target.astype(np.float64), splits, device), "R2"
        report.tasks.append(TaskScore(name=name, kind=kind, metric=metric, samples=int(len(target)), fold_scores=scores,
                                      mean=float(np.mean(scores)), std=float(np.std(scores)), q=q_score(scores)))
    return report
