"""Prediction over a whole real product: GeoParquet that outside validators accept, and a PNG map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed._cli import main
from tests.conftest import NC_CHIP_LABELS

GPV = str(Path(sys.executable).parent / "geoparquet-validator")


@pytest.mark.parametrize("method", ["logreg", "prototype", "knn"])
def test_predict_whole_product(nc_stats_product, shared_data, tmp_path, method):
    product = eoembed.open(nc_stats_product)
    joined = eoembed.join_labels(product, shared_data / NC_CHIP_LABELS, label_field="class_name").without(["agriculture"])
    training = joined.without([])  # every labelled chip trains the model
    out = eoembed.predict(product, training, out=tmp_path / "pred.parquet", method=method,
                          map_path=tmp_path / "pred.png" if method == "logreg" else None)
    table = pq.read_table(out)
    assert table.column_names == ["chip_id", "geometry", "bbox", "class", "probability"]
    assert table.num_rows == product.num_rows
    assert set(table.column("class").to_pylist()) <= set(joined.classes)
    probability = table.column("probability").to_numpy()
    assert ((probability > 0) & (probability <= 1)).all()
    predicted = dict(zip(table.column("chip_id").to_pylist(), table.column("class").to_pylist()))
    agreement = np.mean([predicted[c] == label for c, label in zip(joined.chip_ids, joined.labels)])
    assert agreement > 0.6, agreement  # training chips, 5 classes
    for conformance in ("core", "covering"):
        run = subprocess.run([GPV, "check", str(out), "--class", conformance], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    if method == "logreg":
        assert (tmp_path / "pred.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_cli(nc_stats_product, shared_data, tmp_path, capsys):
    out, png = tmp_path / "p.parquet", tmp_path / "p.png"
    assert main(["predict", str(nc_stats_product), "--labels", str(shared_data / NC_CHIP_LABELS), "--label-field", "class_name",
                 "--drop", "agriculture", "--out", str(out), "--map", str(png)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert png.stat().st_size > 1000 and pq.read_metadata(out).num_rows == 2860
