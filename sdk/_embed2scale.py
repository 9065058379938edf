"""The Embed2Scale challenge's submission CSV: header ``id,0,...,1023``, one row per sample.

Embeddings narrower than 1024 are padded with zeros (which changes no linear probe); wider ones
cannot be submitted and must be reduced first (e.g. the rcf encoder's ``pca_dim``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DimensionMismatchError, SpecError, SubmissionFormatError

WIDTH = 1024



def write_embed2scale(product: Any, path: str | os.PathLike, *, id_column: str = "chip_id", width: int = WIDTH) -> Path:
    """Write every vector of ``product`` (de-quantised) as a submission CSV at ``path``."""
    from ._read import Product

    product = product if isinstance(product, Product) else Product(product)
    if product.dim > width:
        raise DimensionMismatchError(
            f"{product.path} has {product.dim}-d embeddings; a submission holds at most {width} numbers a sample: "
            "reduce the dimension first (e.g. --encoder-option pca_dim=1024 for rcf)"
        )
    path = Path(path)
    partial = path.with_name(f".{path.name}.tmp")
    pad = np.zeros(width - product.dim, dtype=np.float32)
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *map(str, range(width))])
        for batch in product.iter_batches(columns=[id_column] + product._vector_columns()):
            vectors = product.decode(batch)
            for sample, vector in zip(batch.column(id_column).to_pylist(), vectors):
                # repr of a float32 widened to float64 reads back to the same float32
                writer.writerow([sample, *(repr(float(v)) for v in vector), *("0.0",) * len(pad)])
    os.replace(partial, path)
    return path


def read_embed2scale(path: str | os.PathLike, *, width: int = WIDTH) -> tuple[list[str], np.ndarray]:
    """(sample ids, float32 (n, width) embeddings) of a submission CSV; checks header, widths and values."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"submission file {path} does not exist")
    ids: list[str] = []
    rows: list[np.ndarray] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = ["id", *map(str, range(width))]
        if header != expected:
            shown = header[:4] + ["..."] if header else header
            raise SubmissionFormatError(f"{path}: the header is {shown}; a submission starts with id,0,1,...,{width - 1}")
        for line, row in enumerate(reader, start=2):
            if len(row) != width + 1:
                raise SubmissionFormatError(f"{path} line {line}: {len(row) - 1} numbers after the id; expected {width}")
            try:
                values = np.asarray(row[1:], dtype=np.float64)
            except ValueError as error:
                raise SubmissionFormatError(f"{path} line {line}: {error}") from error
            if not np.isfinite(values).all():
                column = int(np.flatnonzero(~np.isfinite(values))[0])
                raise SubmissionFormatError(f"{path} line {line}, column {column}: {row[column + 1]} is not a finite number")
            ids.append(row[0])
            rows.append(values.astype(np.float32))
    if len(set(ids)) != len(ids):
        raise SpecError(f"{path}: sample ids repeat; each sample must appear once")
    return ids, (np.stack(rows) if rows else np.zeros((0, width), np.float32))
