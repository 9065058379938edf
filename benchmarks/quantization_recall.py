"""Recall@10 of cosine search over each stored form of eoembed vectors, against exact float32.

Synthetic but embedding-like data: unit vectors drawn around Gaussian cluster centres of uneven
size, with per-dimension variance that differs (log-normal) and a shared mean direction, as real
encoder outputs have. Queries are held-out vectors, perturbed and re-normalised.

For every form the database is quantised with eoembed (parameters fitted on a 10,000-row sample,
as a streaming writer does), de-quantised, and searched with float32 queries by inner product
(cosine on unit vectors). ``binary (Hamming)`` also binarises the queries: the inner product of
+-1/sqrt(D) vectors is ``1 - 2 * hamming / D``, so ranking by it is ranking by Hamming distance.
The ``rerank`` column re-scores the top-100 candidates with the float32 vectors and keeps the top 10.

    .venv/bin/python benchmarks/quantization_recall.py [--n 100000] [--dim 128] [--queries 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from eoembed._quantize import dequantize, fit, quantize

K = 10
RERANK = 100
FIT_SAMPLE = 10_000
BLOCK = 256  # queries per matrix product: BLOCK x n float32 scores stay ~100 MB at n = 100k


def make_data(n: int, dim: int, queries: int, seed: int, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """n database vectors and `queries` perturbed held-out vectors, all float32 unit length."""
    rng = np.random.default_rng(seed)
    dim_scale = np.exp(rng.normal(0.0, 0.5, dim))  # anisotropic: some dimensions carry more variance
    mean = rng.normal(0.0, 1.0, dim) * dim_scale * 0.5  # shared offset: embeddings are rarely centred
    centres = rng.normal(0.0, 1.0, (clusters, dim)) * dim_scale + mean
    weights = rng.pareto(1.5, clusters) + 1.0  # uneven cluster sizes
    total = n + queries
    labels = rng.choice(clusters, size=total, p=weights / weights.sum())
    spread = rng.uniform(0.3, 0.8, clusters)[labels, None]  # tight and loose clusters
    x = centres[labels] + rng.normal(0.0, 1.0, (total, dim)) * dim_scale * spread
    x = x.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    db, held = x[:n], x[n:]
    q = held + rng.normal(0.0, 0.05, held.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(db), np.ascontiguousarray(q)


def top_k(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries), k) of the k largest inner products, best first."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), BLOCK):
        scores = queries[start : start + BLOCK] @ db.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start : start + BLOCK] = np.take_along_axis(part, order, axis=1)
    return out


def rerank(candidates: np.ndarray, db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Re-score candidate ids with the float32 vectors and keep the k best."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), BLOCK):
        cand = candidates[start : start + BLOCK]
        scores = np.einsum("qcd,qd->qc", db[cand], queries[start : start + BLOCK])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out[start : start + BLOCK] = np.take_along_axis(cand, best, axis=1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f, t, assume_unique=True)) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="database vectors")
    parser.add_argument("--dim", type=int, default=128, help="dimension (multiple of 8 for binary)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    db, queries = make_data(args.n, args.dim, args.queries, args.seed, args.clusters)
    truth = top_k(db, queries, K)
    sample = db[: min(FIT_SAMPLE, len(db))]
    float_bytes = 4 * args.dim

    forms = [
        ("float16", dict(method="none", dtype="float16")),
        ("int8 linear per-tensor", dict(method="linear")),
        ("int8 linear per-dimension", dict(method="linear", per="dimension")),
        ("int8 per-row", dict(method="per-row")),
        ("int8 sqrt", dict(method="sqrt")),
        ("binary 1-bit (float query)", dict(method="binary")),
        ("binary 1-bit (Hamming)", dict(method="binary")),
    ]
    rows = [("float32 (exact)", float_bytes, 1.0, 1.0, "-")]
    for name, request in forms:
        quant = fit(sample, **request)  # type: ignore[arg-type]
        codes, row_scale = quantize(db, quant)
        decoded = dequantize(codes, quant, row_scale=row_scale)
        nbytes = codes.shape[1] * codes.dtype.itemsize + (4 if row_scale is not None else 0)
        q = queries
        if name.endswith("(Hamming)"):
            q = dequantize(quantize(queries, quant)[0], quant)
        found = top_k(decoded, q, RERANK)
        rows.append(
            (
                name,
                nbytes,
                float(np.mean(np.sum(decoded * db, axis=1) / np.linalg.norm(decoded, axis=1))),
                recall(found[:, :K], truth),
                f"{recall(rerank(found, db, queries, K), truth):.4f}",
            )
        )

    print(f"n={args.n} dim={args.dim} queries={args.queries} seed={args.seed} clusters={args.clusters}; "
          f"parameters fitted on the first {len(sample)} rows; k={K}, rerank from top-{RERANK}\n")
    print("| form | bytes/vector | compression | mean cos(v, v') | recall@10 | recall@10 rerank top-100 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, nbytes, cos, rec, rr in rows:
        print(f"| {name} | {nbytes} | {float_bytes / nbytes:.1f}x | {cos:.4f} | {rec:.4f} | {rr} |")
    command = (
        f"{shlex.quote(sys.executable)} {shlex.quote(sys.argv[0])} --n {args.n} --dim {args.dim} "
        f"--queries {args.queries} --seed {args.seed} --clusters {args.clusters}"
    )
    print(f"\ncommand: {command}")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
