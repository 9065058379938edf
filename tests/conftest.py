"""Fixtures shared by the whole suite.

Real material lives in ../shared beside the checkout (CI has it too). Under CI=true a missing shared
folder fails the test: a skip there would hide a broken set-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EOEMBED_SHARED", REPO.parent / "shared"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing: real test material is expected in ../shared beside the checkout"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared, the real data and reference specs."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def shared_data(shared: Path) -> Path:
    return _require(shared / "data")


@pytest.fixture(scope="session")
def stac_mirror(shared: Path) -> Path:
    """Offline copies of the public STAC schemas, laid out by URL."""
    return _require(shared / "reference" / "stac-schemas")


NC_SCENE = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
NC_CHIP_LABELS = "fewshot/nc_landclass96/chips.parquet"
NC_POINTS = "imagery/nc_landsat7_landclass96/landsat96_points.shp"
NC_STRATA = "imagery/nc_landsat7_landclass96/strata.tif"
# The landclass96 classes of strata.tif (MANIFEST of ../shared/data).
NC_STRATA_CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}


@pytest.fixture(scope="session")
def nc_stats_product(shared_data: Path, tmp_path_factory) -> Path:
    """The real NC Landsat-7 scene through the producer: 2,860 chips of 8 px, stats encoder."""
    from datetime import datetime, timezone

    from eoembed.producers.produce import produce

    return produce([shared_data / NC_SCENE], out=tmp_path_factory.mktemp("nc") / "stats", encoder="stats", chip_size=8,
                   time=datetime(2000, 6, 1, tzinfo=timezone.utc))
