"""Checks that catch products and indexes which work but mislead: nearly identical vectors, low recall.

Band statistics and other unstandardised features often share one large mean direction: every
cosine similarity is then close to 1 and nearest neighbours are decided by noise. The checks
return messages (empty when all is well) that the CLI prints as warnings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._read import Product

# Every sampled pair above this cosine similarity counts as "nearly identical".
COSINE_LIMIT = 0.98
# Under l2, pairs closer than this fraction of the typical vector length.
L2_LIMIT = 0.02
RECALL_LIMIT = 0.9


def _sample(product: "Product", rows: int, seed: int, *, groups: int = 4) -> np.ndarray:
    """Up to ``rows`` vectors from ``groups`` row groups spread over the product: a cheap read even
    of a large product, and not only the first (spatially ordered) rows."""
    import pyarrow.parquet as pq

    from ._store import open_input

    handles = [pq.ParquetFile(open_input(path), pre_buffer=False) for path in product.files]
    where = [(h, g) for h in handles for g in range(h.metadata.num_row_groups)]
    picks = np.unique(np.linspace(0, len(where) - 1, num=min(groups, len(where))).round().astype(int))
    vectors = np.concatenate([product.decode(where[i][0].read_row_group(where[i][1], columns=product._vector_columns()))
                              for i in picks])
    if len(vectors) > rows:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size=rows, replace=False))]
    return vectors.astype(np.float64)


def similarity_messages(product: "Product", *, metric: str | None = None, rows: int = 512, seed: int = 0) -> list[str]:
    """A warning when every sampled pair of vectors is nearly identical under ``metric``."""
    metric = metric or product.embedding.get("metric", "cosine")
    x = _sample(product, rows, seed)
    if len(x) < 2:
        return []
    upper = np.triu_indices(len(x), k=1)
    if metric == "l2":
        norms = np.linalg.norm(x, axis=1)
        squared = (norms**2)[:, None] + (norms**2)[None, :] - 2 * x @ x.T
        distance = np.sqrt(np.clip(squared[upper], 0, None))
        typical = float(np.median(norms))
        if typical > 0 and float(distance.max()) < L2_LIMIT * typical:
            return [f"{product.path}: every sampled pair of vectors lies within {100 * L2_LIMIT:g} % of the typical vector "
                    "length (l2): nearest neighbours are decided by small differences; standardise the vectors "
                    "(subtract the mean, divide by the std per dimension) before searching"]
        return []
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    lowest = float((unit @ unit.T)[upper].min())
    if lowest > COSINE_LIMIT:
        return [f"{product.path}: every sampled pair of vectors has cosine similarity above {COSINE_LIMIT} (lowest "
                f"{lowest:.4f}): the vectors share one dominant direction and {metric} neighbours are decided by small "
                "differences; standardise the vectors (subtract the mean, divide by the std per dimension) before searching"]
    return []


def recall_messages(report: dict[str, Any]) -> list[str]:
    """A warning when an index's measured recall is below :data:`RECALL_LIMIT`."""
    recall = next((v for k, v in report.items() if k.startswith("recall_at_")), None)
    if recall is None or recall >= RECALL_LIMIT:
        return []
    return [f"the {report.get('kind')} index finds {recall:.3f} of the exact top-10 (measured on "
            f"{report.get('recall_queries')} queries), below {RECALL_LIMIT}: search it with more --candidates, "
            "or use --mode exact"]
