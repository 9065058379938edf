"""NeuCo-Bench, the evaluation of the Embed2Scale challenge (CVPR 2025 EarthVision), as its authors define it.

Followed: github.com/embed2scale/NeuCo-Bench at commit 58d20da352f1b01f2fcc76816f3eec0f7afe8be9 (README.md;
benchmark/config.yaml; benchmark/data/labels.py ``get_annotations``; benchmark/data/embeddings.py
``load_submission``; benchmark/evaluation/evaluation.py ``evaluate``; benchmark/evaluation/
linear_probing.py ``LinearProbe``, ``Trainer``, ``cross_validate``; benchmark/evaluation/results.py
``save_results``, ``compute_leaderboard``). Their protocol, step by step:

- Tasks: a folder of ``<task>__<type>.csv`` files with columns ``id`` and ``label``; ``type`` is
  ``classification`` (or ``cls``, binary labels) or ``regression`` (or ``regr``); rows with an empty
  label are skipped; tasks run in name order.
- Embeddings: ids lose a ``.zarr.zip`` suffix; only samples named in some task file are kept;
  missing values become 0; with ``standardize_embeddings`` all kept numbers are standardised by one
  global mean and standard deviation (not per dimension).
- Labels: with ``normalize_labels`` min-max scaled to [0, 1] per task.
- Folds: ``k_folds`` shuffle-splits (40 in their config; 200 for the challenge's final ranking),
  10 % held out, seed 42 (scikit-learn's ``ShuffleSplit(test_size=0.1, random_state=42)``: a
  permutation of ``numpy.random.RandomState(42)`` per fold, the first ``ceil(0.1 n)`` held out).
- Probe: one linear layer (D -> 1), AdamW (learning rate 0.001, torch's default weight decay),
  batches of 64 drawn in random order, 20 epochs; loss MSE for regression, BCE with logits for
  classification. After every epoch the held-out part is scored (R^2; binary F1 of
  ``sigmoid(logit) > 0.5``, the logits themselves where all lie in [0, 1], as torchmetrics does), and
  a fold's score is its best epoch.
- Score: per task ``Q = mean / (0.02 + std) * 2`` of the fold scores (NaN-ignoring mean and
  population std); overall, the mean Q over tasks. Several methods are ranked by
  :func:`leaderboard`: each task's Q ranked across methods (best 1, ties share the lower rank),
  tasks weighted by the standard deviation of their Q across methods, methods ordered by the
  weighted rank sum.
- Randomness: torch seeded 42 once per evaluation; every probe's initial weights and every batch
  order come from that one stream, in their order (tasks, folds, epochs).

Ours beside theirs: ``block=`` adds spatially blocked folds for products (held-out blocks instead of
held-out samples, see :mod:`eoembed._blocks`); the random folds stay the authors'. Not carried
over: their plots, result folders and the NaN-to-zero repair of submission CSVs (a submission with a
NaN is refused with its line, see :func:`~eoembed.read_embed2scale`).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import LabelError, TaskConfigError
from ._optional import require

TASK_TYPES = {"classification": "classification", "cls": "classification", "regression": "regression", "regr": "regression"}
#: The authors' benchmark/config.yaml (k_folds 40; their final challenge evaluation used 200).
DEFAULTS = {"k_folds": 40, "epochs": 20, "batch_size": 64, "learning_rate": 0.001, "standardize_embeddings": True,
            "normalize_labels": True, "embedding_dim": None, "task_filter": None}
SEED = 42
TEST_SIZE = 0.1


@dataclass
class Task:
    name: str
    kind: str  # "classification" or "regression"
    ids: list[str]
    labels: np.ndarray  # float64


def read_tasks(folder: str | os.PathLike) -> list[Task]:
    """The ``<task>__<type>.csv`` files of ``folder`` (columns ``id``, ``label``), in task-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskConfigError(f"{folder} is not a folder of task files; NeuCo-Bench reads <task>__<type>.csv files from one")
    tasks = []
    for path in sorted(folder.glob("*.csv")):
        name, sep, kind = path.stem.partition("__")
        if not sep or kind not in TASK_TYPES:
            raise TaskConfigError(f"{path.name}: a task file is named <task>__<type>.csv with type one of {sorted(TASK_TYPES)}")
        ids, labels = [], []
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "label"} - set(reader.fieldnames or [])
            if missing:
                raise TaskConfigError(f"{path} lacks column(s) {sorted(missing)}; it has {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                if row["label"] in (None, ""):
                    continue  # the authors skip unlabelled rows
                try:
                    labels.append(float(row["label"]))
                except ValueError:
                    raise TaskConfigError(f"{path} line {line}: label {row['label']!r} is not a number") from None
                ids.append(row["id"])
        labels = np.asarray(labels, dtype=np.float64)
        if TASK_TYPES[kind] == "classification" and len(np.unique(labels)) > 2:
            raise TaskConfigError(f"{path}: a classification task is binary, but its labels take {len(np.unique(labels))} values "
                                  f"({np.unique(labels)[:5].tolist()}...); split it into one-against-rest tasks")
        tasks.append(Task(name, TASK_TYPES[kind], ids, labels))
    if not tasks:
        raise TaskConfigError(f"{folder} holds no <task>__<type>.csv file")
    return sorted(tasks, key=lambda task: task.name)  # their groupby("task_name") order


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The authors' YAML config (``k_folds``, ``epochs``, ``batch_size``, ``learning_rate``, ...), over :data:`DEFAULTS`."""
    yaml = require("yaml", extra="learn")

    path = Path(path)
    if not path.exists():
        raise TaskConfigError(f"config file {path} does not exist")
    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise TaskConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(given, dict):
        raise TaskConfigError(f"{path} must hold a mapping of settings such as k_folds: 40")
    # Keys of theirs that only steer plots, output folders or devices change no score.
    ignored = {"enable_plots", "update_leaderboard", "device", "store_probes", "store_models", "output_fold_results"}
    unknown = set(given) - set(DEFAULTS) - ignored
    if unknown:
        raise TaskConfigError(f"{path}: unknown setting(s) {sorted(unknown)}; NeuCo-Bench's are {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    if settings["task_filter"] is False:  # their config writes "no filter" as false
        settings["task_filter"] = None
    return settings


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
    split: str = "random"  # the authors' shuffle-split, or "blocked, 2 km blocks"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_q(self) -> float:
        """The authors' overall score: the mean of the tasks' Q."""
        return float(np.mean([t.q for t in self.tasks]))

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "settings": self.settings, "tasks": [asdict(t) for t in self.tasks], "mean_q": self.mean_q}

    def table(self) -> str:
        lines = [f"NeuCo-Bench, {self.split} split: {self.settings.get('k_folds')} folds of {TEST_SIZE:.0%} held out",
                 f"{'task':<24} {'type':<14} {'n':>6} {'metric':>6} {'mean':>7} {'std':>7} {'Q':>8}"]
        for t in self.tasks:
            lines.append(f"{t.name:<24} {t.kind:<14} {t.samples:>6} {t.metric:>6} {t.mean:>7.3f} {t.std:>7.3f} {t.q:>8.2f}")
        return "\n".join(lines + [f"mean Q {self.mean_q:.2f}"])


def q_score(scores: Sequence[float]) -> float:
    """NeuCo-Bench's per-task score: mean / (0.02 + std) * 2 (NaN-ignoring; population std over folds)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.nanmean(scores) / (0.02 + np.nanstd(scores)) * 2)


def shuffle_splits(n: int, *, k_folds: int, test_size: float = TEST_SIZE, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positions of scikit-learn's ``ShuffleSplit(k_folds, test_size=test_size, random_state=seed)``."""
    n_test = math.ceil(test_size * n)
    if not 0 < n_test < n:
        raise LabelError(f"{n} samples cannot be split into {test_size:.0%} held out and the rest; give more labelled samples")
    rng = np.random.RandomState(seed)
    splits = []
    for _ in range(k_folds):
        permutation = rng.permutation(n)
        splits.append((permutation[n_test:], permutation[:n_test]))
    return splits


def block_splits(blocks: np.ndarray, *, k_folds: int, test_size: float = TEST_SIZE, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that hold out whole blocks: blocks in a random order until ``test_size`` of the samples are out."""
    n = len(blocks)
    n_test = math.ceil(test_size * n)
    _, blocks = np.unique(blocks, return_inverse=True)
    sizes = np.bincount(blocks)
    if len(sizes) < 2:
        raise LabelError(f"all {n} samples lie in one block; use a smaller block to hold some out")
    rng = np.random.RandomState(seed)
    splits = []
    for _ in range(k_folds):
        order = rng.permutation(len(sizes))
        held = order[: int(np.searchsorted(np.cumsum(sizes[order]), n_test)) + 1]
        if len(held) == len(sizes):  # one block holds most samples: keep the rest for training
            held = held[:-1]
        test = np.isin(blocks, held)
        splits.append((rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))))
    return splits


class _Rows:
    """Features and targets fetched a batch at a time (torch's DataLoader calls ``__getitems__``)."""

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, rows):
        torch = require("torch", extra="learn")

        index = torch.as_tensor(rows, device=self.x.device)  # a list of ints indexes a tensor slowly
        return self.x[index], self.y[index]


def _f1(logits, target) -> float:
    # torchmetrics' BinaryF1Score: logits unless every value already lies in [0, 1].
    torch = require("torch", extra="learn")

    p = logits if bool(((logits >= 0) & (logits <= 1)).all()) else torch.sigmoid(logits)
    pred, truth = p > 0.5, target > 0.5
    tp = float((pred & truth).sum())
    denom = 2 * tp + float((pred & ~truth).sum()) + float((~pred & truth).sum())
    return 2 * tp / denom if denom else 0.0


def _r2(pred, target) -> float:
    total = float(((target - target.mean()) ** 2).sum())
    return 1 - float(((target - pred) ** 2).sum()) / total if total else float("nan")


def _probe_fold(x, y, train, test, *, kind: str, settings: dict[str, Any], generator, device) -> float:
    """One fold of the authors' Trainer: the best held-out score over the epochs."""
    torch = require("torch", extra="learn")
    from torch.utils.data import DataLoader, SubsetRandomSampler

    dim = x.shape[1]
    probe = torch.nn.utils.skip_init(torch.nn.Linear, dim, 1)
    with torch.no_grad():  # nn.Linear's own initialisation, drawn from the evaluation's stream
        torch.nn.init.kaiming_uniform_(probe.weight, a=math.sqrt(5), generator=generator)
        torch.nn.init.uniform_(probe.bias, -1 / math.sqrt(dim), 1 / math.sqrt(dim), generator=generator)
    probe = probe.to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=float(settings["learning_rate"]))  # YAML reads 1e-3 as text
    loss_fn = torch.nn.BCEWithLogitsLoss() if kind == "classification" else torch.nn.MSELoss()
    score = _f1 if kind == "classification" else _r2
    data = _Rows(x, y)

    def loader(rows):
        return DataLoader(data, batch_size=int(settings["batch_size"]), sampler=SubsetRandomSampler(rows.tolist(), generator=generator),
                          generator=generator, collate_fn=lambda batch: batch)

    train_loader, test_loader = loader(train), loader(test)
    best = float("-inf")
    for _ in range(int(settings["epochs"])):
        probe.train()
        for features, target in train_loader:
            loss = loss_fn(probe(features).view(-1), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        probe.eval()
        with torch.no_grad():
            pairs = [(probe(features).view(-1), target) for features, target in test_loader]
        value = score(torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs]))
        if value > best:
            best = value
    return best


def _embeddings(embeddings: Any, ids: Sequence[str] | None) -> tuple[list[str], np.ndarray, Any]:
    """(ids, vectors, the product or None) of an (n, D) array with ids, a product or a submission CSV."""
    from ._read import Product

    if ids is not None:
        return [str(v) for v in ids], np.asarray(embeddings, dtype=np.float64), None
    if isinstance(embeddings, (str, os.PathLike)) and Path(embeddings).suffix.lower() == ".csv":
        from ._embed2scale import read_embed2scale

        ids, vectors = read_embed2scale(embeddings)
        return ids, vectors.astype(np.float64), None
    product = embeddings if isinstance(embeddings, Product) else Product(embeddings)
    ids = [str(v) for batch in product.iter_batches(columns=["chip_id"]) for v in batch.column("chip_id").to_pylist()]
    return ids, product.to_numpy().astype(np.float64), product


def neuco_evaluate(embeddings: Any, ids: Sequence[str] | None = None, *, tasks: str | os.PathLike,
                   config: str | os.PathLike | None = None, block: Any = None, device: Any = None,
                   **settings: Any) -> NeucoReport:
    """Score ``embeddings`` ((n, D) array with sample ``ids``, a product, or a submission CSV) on the
    task files of the folder ``tasks``, as NeuCo-Bench does (see the module docstring).

    Settings (the authors' names): ``k_folds``, ``epochs``, ``batch_size``, ``learning_rate``,
    ``standardize_embeddings``, ``normalize_labels``, ``embedding_dim``, ``task_filter``; from
    ``config`` (their YAML file) and/or as keywords, over :data:`DEFAULTS`. ``block`` (products
    only): hold out spatial blocks of that size instead of random samples.
    """
    torch = require("torch", extra="learn")

    from ._fewshot import pick_device

    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TaskConfigError(f"unknown NeuCo-Bench setting(s) {sorted(unknown)}; use {sorted(DEFAULTS)}")
    settings = {**(read_config(config) if config is not None else DEFAULTS), **settings}
    if int(settings["k_folds"]) < 2 or int(settings["epochs"]) < 1 or int(settings["batch_size"]) < 1:
        raise TaskConfigError(f"k_folds must be >= 2, epochs and batch_size >= 1; got {settings}")
    task_list = read_tasks(tasks)
    if settings["task_filter"] is not None:
        task_list = [t for t in task_list if t.name in set(settings["task_filter"])]
        if not task_list:
            raise TaskConfigError(f"task_filter {settings['task_filter']} names no task of {tasks}")
    sample_ids, vectors, product = _embeddings(embeddings, ids)
    sample_ids = [s.removesuffix(".zarr.zip") for s in sample_ids]
    if settings["embedding_dim"] is not None and vectors.shape[1] != int(settings["embedding_dim"]):
        raise TaskConfigError(f"the embeddings are {vectors.shape[1]}-d but embedding_dim is {settings['embedding_dim']}")
    blocks = None
    if block is not None:
        if product is None:
            raise TaskConfigError("blocked folds need the chips' footprints: give a product, not a CSV or an array")
        from ._blocks import spatial_blocks

        blocks = spatial_blocks(product, block=block)
    # Their loader keeps the samples that some task names, standardised together.
    named = {i for t in task_list for i in t.ids}
    kept = np.array([s in named for s in sample_ids])
    if not kept.any():
        raise LabelError(f"no sample id of the task files (e.g. {task_list[0].ids[:1]}) is among the embeddings' ids (e.g. {sample_ids[:1]})")
    vectors = np.nan_to_num(vectors[kept], nan=0.0)
    kept_ids = [s for s, k in zip(sample_ids, kept) if k]
    if settings["standardize_embeddings"]:
        sigma = vectors.std()
        vectors = (vectors - vectors.mean()) / (sigma if sigma != 0 else 1)
    position = {s: i for i, s in enumerate(kept_ids)}
    device = pick_device(device)
    x_all = torch.as_tensor(vectors, dtype=torch.float32)
    generator = torch.Generator().manual_seed(SEED)
    report = NeucoReport(split=blocks.describe() if blocks is not None else "random",
                         settings={k: settings[k] for k in DEFAULTS})
    chip_rows = np.flatnonzero(kept)
    threads = torch.get_num_threads()
    # Batches of 64 x D are too small to share among threads: on a busy CPU each op then waits on
    # the thread pool (measured 29 ms against 0.01 ms for one BCE on 2 cores).
    torch.set_num_threads(1)
    try:
        _score_tasks(report, task_list, position, chip_rows, x_all, blocks, settings, generator, device)
    finally:
        torch.set_num_threads(threads)
    return report


def _score_tasks(report: NeucoReport, task_list: list[Task], position: dict[str, int], chip_rows: np.ndarray, x_all,
                 blocks, settings: dict[str, Any], generator, device) -> None:
    torch = require("torch", extra="learn")

    for task in task_list:
        rows = np.array([position[i] for i in task.ids if i in position], dtype=np.int64)
        labels = np.array([v for i, v in zip(task.ids, task.labels) if i in position], dtype=np.float64)
        if len(rows) < 2:
            raise LabelError(f"task {task.name!r}: only {len(rows)} of its {len(task.ids)} ids have an embedding")
        if settings["normalize_labels"]:
            span = labels.max() - labels.min()
            labels = (labels - labels.min()) / span if span else labels * np.nan
        if blocks is None:
            splits = shuffle_splits(len(rows), k_folds=int(settings["k_folds"]))
        else:
            splits = block_splits(blocks.ids[chip_rows[rows]], k_folds=int(settings["k_folds"]))
        x = x_all[torch.as_tensor(rows)].to(device)
        y = torch.as_tensor(labels, dtype=torch.float32).to(device)
        scores = [_probe_fold(x, y, train, test, kind=task.kind, settings=settings, generator=generator, device=device)
                  for train, test in splits]
        report.tasks.append(TaskScore(name=task.name, kind=task.kind, metric="F1" if task.kind == "classification" else "R2",
                                      samples=len(rows), fold_scores=scores, mean=float(np.nanmean(scores)),
                                      std=float(np.nanstd(scores)), q=q_score(scores)))


def leaderboard(reports: dict[str, NeucoReport]) -> list[dict[str, Any]]:
    """The authors' ranking of methods (``compute_leaderboard``): per task the Q ranked across
    methods (highest 1, ties take the lower rank), weighted by each task's Q standard deviation
    across methods (ddof 1; equal weights for one method); best weighted rank sum first."""
    names = list(reports)
    tasks = [t.name for t in reports[names[0]].tasks]
    scores = np.array([[{t.name: t.q for t in reports[m].tasks}.get(task, np.nan) for task in tasks] for m in names])
    complete = ~np.isnan(scores).any(axis=1)
    names, scores = [n for n, c in zip(names, complete) if c], scores[complete]
    if not names:
        return []
    ranks = np.array([[1 + int((column > value).sum()) for value in column] for column in scores.T]).T
    if len(names) > 1:
        spread = scores.std(axis=0, ddof=1)
        weights = spread / spread.sum()
    else:
        weights = np.full(len(tasks), 1 / len(tasks))
    weighted = (ranks * weights).sum(axis=1)
    overall = [1 + int((weighted < w).sum()) for w in weighted]
    rows = [{"method": n, "mean_q": float(s.mean()), "weighted_score": float(w), "rank": r,
             **dict(zip(tasks, map(float, s)))} for n, s, w, r in zip(names, scores, weighted, overall)]
    return sorted(rows, key=lambda row: row["weighted_score"])
