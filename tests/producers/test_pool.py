"""`eoembed pool`: a chip product from a pixel product, the pooling in its contract, its chips
those the chip producer cuts from the same scene (same ids, same band means)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eoembed

from .test_distribute import produce
from .test_resume import crop

pytestmark = pytest.mark.mpi
BIN = Path(sys.executable).parent
WHEN = "2000-06-01T00:00:00Z"


@pytest.fixture(scope="module")
def made(shared_data, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pool")
    scene = crop(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif", folder / "nc-crop.tif",
                 col=200, row=150, size=72)
    pixels, chips = folder / "pixels", folder / "chips"
    for run in (produce(1, scene, "--out", str(pixels), "--level", "pixel", "--tile-size", "40", "--datetime", WHEN),
                produce(1, scene, "--out", str(chips), "--chip-size", "8", "--datetime", WHEN, "--grid", "majortom-10km")):
        assert run.returncode == 0, run.stderr
    pooled = folder / "pooled"
    run = subprocess.run([str(BIN / "eoembed"), "pool", str(pixels), "--out", str(pooled), "--chip-size", "8"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "81 chips of 8 px" in run.stdout
    return {"pixels": pixels, "chips": chips, "pooled": pooled}


def test_the_pooled_product_is_valid_and_records_its_pooling(made):
    assert eoembed.validate(made["pooled"]).findings == []
    pooled, pixels = eoembed.open(made["pooled"]), eoembed.open(made["pixels"])
    assert pooled.model["pooling"] == "mean" and pooled.model["input"]["chip_size_px"] == 8
    source = pooled.model["parameters"]["pooled_from"]
    assert source["level"] == "pixel" and source["collection"] == "pixels" and source["pixel_chip_size_px"] == 1
    assert source["pixel_pooling"] == pixels.model["pooling"]
    assert pooled.model["input"]["bands"] == pixels.model["input"]["bands"]


def test_pooled_chips_join_the_chip_products_chips(made):
    """Chips cut across the 40-px tiles: the pooled means are the chip producer's band means."""
    def rows(path: Path) -> dict[str, np.ndarray]:
        table = eoembed.open(path).sql("SELECT chip_id, embedding FROM embeddings ORDER BY chip_id")
        return dict(zip(table.column("chip_id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)))

    pooled, chips = rows(made["pooled"]), rows(made["chips"])
    assert len(pooled) == 81 and set(pooled) == set(chips)
    for chip_id, vector in chips.items():
        assert np.allclose(pooled[chip_id][::5], vector[::5], rtol=1e-5), chip_id


def test_pool_refuses_a_chip_product(made, tmp_path):
    run = subprocess.run([str(BIN / "eoembed"), "pool", str(made["chips"]), "--out", str(tmp_path / "x"), "--chip-size", "8"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "takes a pixel product" in run.stderr and "Traceback" not in run.stderr
