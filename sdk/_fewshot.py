"""Few-shot learning on embeddings: episodic evaluation and whole-product prediction.

An episode draws ``shots`` support and ``queries`` query chips per class, fits a classifier on the
support set and scores it on the queries. All episodes of one shot count run at once as batched
torch tensors (on the GPU when there is one). Episodes are drawn from ``numpy.random.default_rng
([seed, shots])``, so a shot count gives the same numbers whichever other shot counts are asked for.

Classifiers: ``prototype`` (nearest class mean, squared Euclidean), ``knn`` (majority of the
``min(k, shots)`` nearest support chips, the nearest one breaking ties) and ``logreg`` (multinomial
logistic regression, L-BFGS, L2 penalty as scikit-learn's default ``C=1``). Features are
standardised with the mean and standard deviation of all chips, which uses no label.

Splits: ``blocks`` gives each chip's spatial block (see :mod:`eoembed._blocks`); an episode then
never takes a support and a query chip from the same block, with any class. Without blocks each chip
is its own block: the random split, which lets a query sit next to a support chip of the same
field. Both splits draw an episode the same way: per class (the class in fewest blocks first) the
chips in a random order, the first ``shots`` that lie outside the episode's query blocks as support,
then up to ``queries`` that lie outside its support blocks; an episode where a class gets no query
is drawn again. A blocked class may so get fewer queries in some episodes: scores are per episode
over the queries it has, and the report gives the mean queries per class.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from ._blocks import DEFAULT_BLOCK, Blocks, BlockSize
from ._errors import EoembedError, FewShotWarning, LabelError, SpatialBlockError
from ._optional import require

Method = Literal["prototype", "knn", "logreg"]
METHODS = ("prototype", "knn", "logreg")
Z95 = 1.959963984540054


def pick_device(device: Any = None):
    torch = require("torch", extra="learn")

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_tensor(features, device):
    torch = require("torch", extra="learn")

    if isinstance(features, torch.Tensor):
        return features.detach().to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)


def standardizer(features) -> tuple[Any, Any]:
    """Mean and standard deviation per dimension (std 1 where a dimension is constant)."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, std.where(std > 0, std.new_ones(()))


class Classifier:
    """A few-shot classifier fitted on a batch of support sets at once.

    ``support_x`` (E, S, D), ``support_y`` (E, S) class indices in ``range(n_classes)``; every class
    must occur in every support set. :meth:`predict_proba` takes (E, Q, D) and gives (E, Q, C).
    """

    def __init__(self, method: Method, support_x, support_y, n_classes: int, *, k: int = 5, l2: float | None = None) -> None:
        torch = require("torch", extra="learn")

        if method not in METHODS:
            raise EoembedError(f"unknown few-shot method {method!r}; use one of {list(METHODS)}")
        self.method, self.n_classes = method, n_classes
        self.support_x, self.support_y = support_x, support_y
        onehot = torch.nn.functional.one_hot(support_y, n_classes).to(support_x.dtype)  # (E, S, C)
        if method == "prototype":
            self.centroids = onehot.transpose(1, 2) @ support_x / onehot.sum(dim=1)[..., None]  # (E, C, D)
        elif method == "knn":
            per_class = int(onehot.sum(dim=1).min())
            self.k = max(1, min(k, per_class))
            self.onehot = onehot
        else:
            self._fit_logreg(onehot, l2)

    def _fit_logreg(self, onehot, l2: float | None) -> None:
        torch = require("torch", extra="learn")

        e, s, d = self.support_x.shape
        # scikit-learn's default C=1 minimises sum(CE) + |W|^2 / 2; per chip that is mean(CE) + |W|^2 / (2 s).
        l2 = 1.0 / (2 * s) if l2 is None else l2
        weight = torch.zeros(e, d, self.n_classes, dtype=self.support_x.dtype, device=self.support_x.device, requires_grad=True)
        bias = torch.zeros(e, 1, self.n_classes, dtype=self.support_x.dtype, device=self.support_x.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, tolerance_grad=1e-6, line_search_fn="strong_wolfe")
        target = self.support_y

        def closure():
            optimizer.zero_grad()
            logits = self.support_x @ weight + bias
            # Episodes are independent problems: summing their losses keeps each one's optimum.
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.n_classes), target.reshape(-1), reduction="sum") / s
            loss = loss + l2 * (weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()

    def predict_proba(self, x):
        torch = require("torch", extra="learn")

        if self.method == "prototype":
            d2 = torch.cdist(x, self.centroids) ** 2
            # Temperature = dimension: a per-dimension mean squared distance, so probabilities are not all 0/1.
            return torch.softmax(-d2 / x.shape[-1], dim=-1)
        if self.method == "knn":
            dist = torch.cdist(x, self.support_x)  # (E, Q, S)
            nearest = dist.topk(self.k, dim=-1, largest=False).indices  # sorted, nearest first
            votes = torch.gather(self.onehot[:, None].expand(-1, x.shape[1], -1, -1), 2,
                                 nearest[..., None].expand(-1, -1, -1, self.n_classes))  # (E, Q, k, C)
            proba = votes.mean(dim=2)
            return proba + 1e-6 * votes[:, :, 0]  # the nearest neighbour breaks ties
        return torch.softmax(x @ self.weight + self.bias, dim=-1)


@dataclass
class ShotResult:
    shots: int
    episodes: int
    queries_per_class: dict[str, float]  # mean over episodes
    accuracy: float
    accuracy_ci95: float
    macro_f1: float
    macro_f1_ci95: float


@dataclass
class FewShotReport:
    """Mean and 95 % interval (normal approximation over episodes) of accuracy and macro-F1 per shot count."""

    method: str
    seed: int
    classes: list[str]
    counts: dict[str, int]
    results: list[ShotResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split: str = "random"  # or "blocked, 2 km blocks"
    blocks: int | None = None  # blocks holding the labelled chips (blocked split)

    def result(self, shots: int) -> ShotResult:
        return next(r for r in self.results if r.shots == shots)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path) -> Path:
        """Accuracy and macro-F1 (mean and 95 % interval over episodes) against shots, as a PNG."""
        from ._plotting import pyplot

        plt = pyplot()
        shots = [r.shots for r in self.results]
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
        for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1")):
            ax.errorbar(shots, [getattr(r, key) for r in self.results], yerr=[getattr(r, f"{key}_ci95") for r in self.results],
                        marker="o", capsize=3, label=name)
        ax.axhline(1 / len(self.classes), color="grey", linestyle=":", label=f"chance ({len(self.classes)}-way)")
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_xlabel("labelled chips per class (shots)")
        ax.set_ylabel("score on query chips")
        ax.set_title(f"{len(self.classes)}-way few-shot, {self.method}, {self.results[0].episodes} episodes", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path

    def table(self) -> str:
        lines = [f"{len(self.classes)}-way few-shot, method {self.method}, seed {self.seed}, {self.split} split"
                 + (f" ({self.blocks} blocks)" if self.blocks else ""),
                 "classes: " + ", ".join(f"{c} {self.counts[c]}" for c in self.classes),
                 f"{'shots':>5}  {'ways':>4}  {'episodes':>8}  {'accuracy':>16}  {'macro-F1':>16}"]
        for r in self.results:
            lines.append(f"{r.shots:>5}  {len(r.queries_per_class):>4}  {r.episodes:>8}  {r.accuracy:>8.3f} ± {r.accuracy_ci95:.3f}  {r.macro_f1:>8.3f} ± {r.macro_f1_ci95:.3f}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


SUPPORT, QUERY = 1, 2


def _episode_indices(class_rows: list[np.ndarray], chip_blocks: np.ndarray, *, shots: int, queries: int, episodes: int,
                     seed: int, classes: list[str], tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(support (E, C*shots), query (E, C*queries)) row indices, classes in order within each; -1 pads
    a class that got fewer queries. No block gives both a support and a query chip in one episode."""
    rng = np.random.default_rng([seed, shots])
    blocks_of = [chip_blocks[rows] for rows in class_rows]
    # The class in fewest blocks picks first: it has the least room to keep its two sides apart.
    order = sorted(range(len(class_rows)), key=lambda c: (len(np.unique(blocks_of[c])), c))
    support = np.empty((episodes, len(class_rows), shots), dtype=np.int64)
    query = np.full((episodes, len(class_rows), queries), -1, dtype=np.int64)
    state = np.zeros(int(chip_blocks.max()) + 1, dtype=np.int8)
    failures = np.zeros(len(class_rows), dtype=np.int64)
    for e in range(episodes):
        for _ in range(tries):
            state[:] = 0
            query[e] = -1  # a failed try must leave no query behind
            failed = None
            for c in order:
                permutation = rng.permutation(len(class_rows[c]))
                rows, blocks = class_rows[c][permutation], blocks_of[c][permutation]
                chosen = np.flatnonzero(state[blocks] != QUERY)[:shots]
                if len(chosen) < shots:
                    failed = c
                    break
                state[blocks[chosen]] = SUPPORT
                asked = np.flatnonzero(state[blocks] != SUPPORT)[:queries]
                if not len(asked):
                    failed = c
                    break
                state[blocks[asked]] = QUERY
                support[e, c], query[e, c, : len(asked)] = rows[chosen], rows[asked]
            if failed is None:
                break
            failures[failed] += 1
        else:
            worst = int(failures.argmax())
            raise SpatialBlockError(
                f"{shots}-shot: no episode in {tries} tries kept class {classes[worst]!r} ({len(class_rows[worst])} chips in "
                f"{len(np.unique(blocks_of[worst]))} blocks) on both sides of the split; use a smaller --block or fewer --shots")
    return support.reshape(episodes, -1), query.reshape(episodes, -1)


def _check_blocks(class_rows: list[np.ndarray], chip_blocks: np.ndarray, *, shots: int, classes: list[str], split: str,
                  smaller: str) -> None:
    """A class needs its shots outside at least one block of its own that can give the query."""
    for name, rows in zip(classes, class_rows):
        held, per_block = np.unique(chip_blocks[rows], return_counts=True)
        if len(held) < 2 or len(rows) - per_block.min() < shots:
            raise SpatialBlockError(
                f"{shots}-shot, {split}: class {name!r} has {len(rows)} chips in {len(held)} block(s) "
                f"(at most {len(rows) - per_block.min()} outside its smallest block), too few for {shots} support chips "
                f"and a query chip in different blocks; use a smaller block (e.g. --block {smaller}) or fewer --shots")


def macro_f1(pred, truth, n_classes: int, valid=None):
    """Macro-F1 per episode of (E, Q) predicted and true class indices (only where ``valid``, if given)."""
    torch = require("torch", extra="learn")

    p = torch.nn.functional.one_hot(pred, n_classes).bool()
    t = torch.nn.functional.one_hot(truth, n_classes).bool()
    if valid is not None:
        p, t = p & valid[..., None], t & valid[..., None]
    tp = (p & t).sum(dim=1).float()
    fp = (p & ~t).sum(dim=1).float()
    fn = (~p & t).sum(dim=1).float()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp)).mean(dim=1)


def _interval(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(Z95 * values.std(ddof=1) / math.sqrt(len(values)))


def fewshot(
    features,
    labels: Sequence[Any],
    *,
    shots: Sequence[int] = (1, 5, 10),
    method: Method = "prototype",
    episodes: int = 200,
    queries: int = 15,
    seed: int = 0,
    k: int = 5,
    standardize: bool = True,
    blocks: Blocks | np.ndarray | None = None,
    device: Any = None,
) -> FewShotReport:
    """Episodic few-shot evaluation of ``features`` (n, D) array or tensor against ``labels`` (n,).

    ``blocks``: the spatial block of each chip (a :class:`~eoembed._blocks.Blocks` or n ints) for a
    blocked split; ``None`` draws the random split. A class with fewer than ``shots + queries`` chips
    gets fewer queries, and one with ``shots`` chips or fewer is left out of that shot count; both
    raise a :class:`FewShotWarning`. A blocked class whose chips lie in too few blocks raises
    :class:`~eoembed.SpatialBlockError`. Features are standardised with the mean and std of all the
    chips given (no label is used for that).
    """
    torch = require("torch", extra="learn")

    if method not in METHODS:
        raise EoembedError(f"unknown few-shot method {method!r}; use one of {list(METHODS)}")
    if episodes < 1 or queries < 1 or any(int(s) < 1 for s in shots):
        raise EoembedError(f"episodes ({episodes}), queries ({queries}) and shots ({list(shots)}) must all be >= 1")
    device = pick_device(device)
    x = _as_tensor(features, device)
    labels = np.asarray([str(v) for v in np.asarray(labels, dtype=object).tolist()], dtype=object)
    if x.ndim != 2 or len(x) != len(labels):
        raise LabelError(f"features have shape {tuple(x.shape)} but there are {len(labels)} labels; give (n, D) features and n labels")
    split, chip_blocks, smaller = _split(blocks, len(labels))
    if standardize:
        mean, std = standardizer(x)
        x = (x - mean) / std
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise LabelError(f"few-shot evaluation needs at least 2 classes, got {classes}")
    class_rows = [np.flatnonzero(labels == c) for c in classes]
    counts = {c: len(r) for c, r in zip(classes, class_rows)}
    report = FewShotReport(method=method, seed=seed, classes=classes, counts=counts, split=split,
                           blocks=None if blocks is None else len(np.unique(chip_blocks)))
    for s in sorted({int(v) for v in shots}):
        short = {c: n for c, n in counts.items() if n <= s}
        used = [c for c in classes if c not in short]
        if len(used) < 2:
            raise LabelError(f"at {s} shots only {used} keep a chip to query (counts {counts}); lower --shots or add labels")
        few = {c: counts[c] for c in used if counts[c] < s + queries}
        messages = []
        if short:
            messages.append(f"{s}-shot: classes {short} have no chip left to query after {s} shots and are left out")
        if few:
            messages.append(f"{s}-shot: classes {few} have fewer than shots + queries = {s + queries} chips; "
                            f"they get {', '.join(f'{c} {counts[c] - s}' for c in used if c in few)} queries at most")
        for message in messages:
            warnings.warn(message, FewShotWarning, stacklevel=2)
            report.warnings.append(message)
        class_rows_used = [class_rows[classes.index(c)] for c in used]
        if blocks is not None:
            _check_blocks(class_rows_used, chip_blocks, shots=s, classes=used, split=split, smaller=smaller)
        support, query = _episode_indices(class_rows_used, chip_blocks, shots=s, queries=queries, episodes=episodes,
                                          seed=seed, classes=used)
        support_y = torch.arange(len(used), device=device).repeat_interleave(s).expand(episodes, -1)
        query_y = torch.arange(len(used), device=device).repeat_interleave(queries).expand(episodes, -1)
        query = torch.as_tensor(query, device=device)
        valid = query >= 0
        model = Classifier(method, x[torch.as_tensor(support, device=device)], support_y, len(used), k=k)
        pred = model.predict_proba(x[query.clamp(min=0)]).argmax(dim=-1)
        accuracy = (((pred == query_y) & valid).sum(dim=1) / valid.sum(dim=1)).cpu().numpy().astype(np.float64)
        f1 = macro_f1(pred, query_y, len(used), valid).cpu().numpy().astype(np.float64)
        acc_mean, acc_ci = _interval(accuracy)
        f1_mean, f1_ci = _interval(f1)
        asked = valid.reshape(episodes, len(used), queries).sum(dim=2).double().mean(dim=0).cpu().tolist()
        report.results.append(ShotResult(shots=s, episodes=episodes, queries_per_class={c: round(q, 2) for c, q in zip(used, asked)},
                                         accuracy=acc_mean, accuracy_ci95=acc_ci, macro_f1=f1_mean, macro_f1_ci95=f1_ci))
    return report


def _split(blocks, n: int) -> tuple[str, np.ndarray, str]:
    """The split's name, each chip's block and a smaller block to suggest; the random split puts
    every chip in a block of its own."""
    if blocks is None:
        return "random", np.arange(n, dtype=np.int64), ""
    if isinstance(blocks, Blocks):
        name, ids = blocks.describe(), blocks.ids
        smaller = BlockSize(blocks.size.value / 2, blocks.size.unit).option()
    else:
        name, ids, smaller = "blocked", np.asarray(blocks), "1km"
    if ids.shape != (n,):
        raise SpatialBlockError(f"blocks give {ids.shape[0] if ids.ndim else 0} chips a block but there are {n} labels; give one block per chip")
    _, ids = np.unique(ids, return_inverse=True)
    return name, ids.reshape(-1).astype(np.int64), smaller


def splits_table(reports: Sequence[FewShotReport]) -> str:
    """Reports of one task under different splits (e.g. blocked and random) in one table."""
    first = reports[0]
    lines = [f"{len(first.classes)}-way few-shot, method {first.method}, seed {first.seed}, "
             f"{first.results[0].episodes if first.results else 0} episodes; accuracy and macro-F1, mean ± 95 % interval",
             "classes: " + ", ".join(f"{c} {first.counts[c]}" for c in first.classes),
             f"{'split':<34}  {'shots':>5}  {'queries/class':>13}  {'accuracy':>16}  {'macro-F1':>16}"]
    for report in reports:
        name = report.split + (f" ({report.blocks} blocks)" if report.blocks else "")
        for r in report.results:
            mean_queries = sum(r.queries_per_class.values()) / len(r.queries_per_class)
            lines.append(f"{name:<34}  {r.shots:>5}  {mean_queries:>13.1f}  {r.accuracy:>8.3f} ± {r.accuracy_ci95:.3f}  "
                         f"{r.macro_f1:>8.3f} ± {r.macro_f1_ci95:.3f}")
    messages = dict.fromkeys(w for report in reports for w in report.warnings)
    return "\n".join(lines + [f"warning: {w}" for w in messages])


def fewshot_product(product, labels, *, label_field: str | None = None, min_overlap: float = 0.5,
                    drop_classes: Sequence[str] = (), labels_crs: Any = None, purity: float = 0.6,
                    classes: dict[Any, str] | None = None, block: Any = DEFAULT_BLOCK, **options: Any) -> FewShotReport:
    """:func:`fewshot` on the chips of ``product`` labelled by a label file or class raster (see
    :func:`~eoembed._labels.label_chips`), on the blocked split (``block``, default
    :data:`~eoembed._blocks.DEFAULT_BLOCK`, 2 km; see :func:`~eoembed._blocks.parse_block`) or, with
    ``block=None``, the random split."""
    return fewshot_splits(product, labels, label_field=label_field, min_overlap=min_overlap, drop_classes=drop_classes,
                          labels_crs=labels_crs, purity=purity, classes=classes, splits=[block], **options)[0]


def fewshot_splits(product, labels, *, label_field: str | None = None, min_overlap: float = 0.5,
                   drop_classes: Sequence[str] = (), labels_crs: Any = None, purity: float = 0.6,
                   classes: dict[Any, str] | None = None, splits: Sequence[Any] = (DEFAULT_BLOCK, None),
                   **options: Any) -> list[FewShotReport]:
    """One :func:`fewshot` report per split of ``splits`` (a block size, ``"default"`` or ``None`` for
    the random split) on the same labelled chips, to print side by side with :func:`splits_table`."""
    from ._blocks import spatial_blocks
    from ._labels import label_chips
    from ._read import Product

    product = product if isinstance(product, Product) else Product(product)
    joined = label_chips(product, labels, label_field=label_field, min_overlap=min_overlap, crs=labels_crs,
                         purity=purity, classes=classes).without(drop_classes)
    vectors = product.to_torch()[joined.rows]
    reports = []
    for block in splits:
        blocks = None if block is None else spatial_blocks(product, block=block).take(joined.rows)
        reports.append(fewshot(vectors, joined.labels, blocks=blocks, **options))
    return reports
