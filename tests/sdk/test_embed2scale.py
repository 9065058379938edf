"""Embed2Scale submission CSV: export a product, read it back exactly, refuse malformed files."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed._cli import main
from tests.factories import write


def test_round_trip_is_exact_and_zero_padded(tmp_path):
    product = eoembed.open(write(tmp_path / "p", n=120, dim=48, quantization="int8-per-row"))
    path = eoembed.write_embed2scale(product, tmp_path / "sub.csv")
    assert path.read_text().splitlines()[0] == "id," + ",".join(map(str, range(1024)))
    ids, vectors = eoembed.read_embed2scale(path)
    assert vectors.shape == (120, 1024) and vectors.dtype == np.float32
    assert np.array_equal(vectors[:, :48], product.to_numpy()) and not vectors[:, 48:].any()
    stored = [i for b in product.iter_batches(columns=["chip_id"]) for i in b.column("chip_id").to_pylist()]
    assert ids == stored


def test_too_wide_embeddings_are_refused(tmp_path):
    product = eoembed.open(write(tmp_path / "p", n=10, dim=1100))
    with pytest.raises(eoembed.DimensionMismatchError, match="at most 1024"):
        eoembed.write_embed2scale(product, tmp_path / "sub.csv")


@pytest.mark.parametrize("text,message", [
    ("id,0,1\nx,1,2\n", "the header is"),
    ("id," + ",".join(map(str, range(1024))) + "\nx,1,2\n", "line 2: 2 numbers"),
    ("id," + ",".join(map(str, range(1024))) + "\nx," + ",".join(["1"] * 1023 + ["nan"]) + "\n", "column 1023"),
])
def test_malformed_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(eoembed.SubmissionFormatError, match=message):
        eoembed.read_embed2scale(path)


def test_cli_export_and_import(tmp_path, capsys):
    product = write(tmp_path / "p", n=30, dim=16)
    assert main(["embed2scale", "export", str(product), str(tmp_path / "s.csv")]) == 0
    assert main(["embed2scale", "import", str(tmp_path / "s.csv"), str(tmp_path / "s.parquet"), "--dim", "16"]) == 0
    table = pq.read_table(tmp_path / "s.parquet")
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(-1, 16)
    assert np.array_equal(vectors, eoembed.open(product).to_numpy())
    assert "30 samples, 16-d" in capsys.readouterr().out
