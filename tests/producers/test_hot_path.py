"""The producer's hot path: block reads, edge-lattice projection, kept-open datasets, tiling batches,
chip ids given to the writer. Each must leave the chips, footprints and vectors exactly as before."""

from __future__ import annotations

import gc
import threading
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
from affine import Affine

import eoembed
from eoembed._write import ProductWriter
from eoembed.producers import produce as produce_module
from eoembed.producers.encoders.stats import StatsEncoder
from eoembed.producers.produce import encode_scene, startup_objects_frozen, writer_batches
from eoembed.producers.read import keep_datasets_open, open_dataset, open_scene, read_window
from eoembed.producers.tile import ChipWindow, _lonlat_rings, _to_crs84, chip_windows, strip_batches

NC = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
WHEN = datetime(2000, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def nc_scene(shared_data):
    return open_scene(shared_data / NC)


@pytest.fixture(scope="module")
def nc_pixels(nc_scene):
    return read_window(nc_scene, col_off=0, row_off=0, width=nc_scene.width, height=nc_scene.height)


def test_overlapping_chip_rows_are_read_once_and_cut_exactly(nc_scene, nc_pixels):
    pixels, valid = nc_pixels
    reads = []

    def read(*, col_off, row_off, width, height):
        reads.append((row_off, height))
        return pixels[:, row_off : row_off + height, col_off : col_off + width], valid[row_off : row_off + height, col_off : col_off + width]

    windows = chip_windows(nc_scene.width, nc_scene.height, chip_size=16, stride=8)
    batches = list(strip_batches(nc_scene, read, chip_size=16, stride=8, batch_size=100, min_valid_fraction=0.0))
    rows_read = np.zeros(nc_scene.height, dtype=int)
    for row_off, height in reads:
        rows_read[row_off : row_off + height] += 1
    # one read per chip row would read almost every pixel row twice (stride 8 < chip size 16)
    assert len(reads) < len({w.row_off for w in windows}) / 2
    assert rows_read.sum() < 1.2 * nc_scene.height
    got = [w for b in batches for w in b.windows]
    assert got == windows and all(len(b) == 100 for b in batches[:-1])
    chips = np.concatenate([b.pixels for b in batches])
    for i in (0, 1, 57, len(windows) // 2, len(windows) - 1):
        w = windows[i]
        np.testing.assert_array_equal(chips[i], pixels[:, w.row_off : w.row_off + 16, w.col_off : w.col_off + 16])
    assert chips.flags.c_contiguous


def test_rows_keep_their_first_appearance_order(nc_scene, nc_pixels):
    pixels, valid = nc_pixels

    def read(*, col_off, row_off, width, height):
        return pixels[:, row_off : row_off + height, col_off : col_off + width], valid[row_off : row_off + height, col_off : col_off + width]

    windows = [ChipWindow(40, 64, 16), ChipWindow(0, 0, 16), ChipWindow(8, 64, 16), ChipWindow(16, 0, 16)]
    batches = list(strip_batches(nc_scene, read, chip_size=16, stride=8, batch_size=3, min_valid_fraction=0.0,
                                 windows=windows))
    assert [w for b in batches for w in b.windows] == [windows[0], windows[2], windows[1], windows[3]]
    assert [len(b) for b in batches] == [3, 1]


def _every_point(scene, win):
    """The reference: every densified border point projected on its own."""
    t = np.arange(8) / 8
    u = np.concatenate([t, np.ones(8), 1.0 - t, np.zeros(8)])
    v = np.concatenate([np.zeros(8), t, np.ones(8), 1.0 - t])
    cols, rows = win[:, :1] + win[:, 2:3] * u, win[:, 1:2] + win[:, 2:3] * v
    a, b, c, d, e, f = scene.transform[:6]
    lon, lat = _to_crs84(scene.crs).transform((a * cols + b * rows + c).ravel(), (d * cols + e * rows + f).ravel())
    return np.reshape(lon, cols.shape), np.reshape(lat, cols.shape)


@pytest.mark.parametrize("layout", ["grid", "scattered", "mixed sizes"])
def test_edge_lattice_projection_equals_projecting_every_point(nc_scene, layout):
    if layout == "grid":
        windows = chip_windows(nc_scene.width, nc_scene.height, chip_size=16, stride=8)[:700]
    elif layout == "scattered":
        windows = [ChipWindow(37 * i % 400, 53 * i % 400, 16) for i in range(40)]
    else:
        windows = [ChipWindow(8 * i, 8 * (i // 30), 16 if i % 3 else 24) for i in range(90)]
    win = np.array(windows, dtype=np.float64)
    lon, lat = _lonlat_rings(nc_scene, win)
    ref_lon, ref_lat = _every_point(nc_scene, win)
    np.testing.assert_array_equal(lon, ref_lon)
    np.testing.assert_array_equal(lat, ref_lat)


def test_datasets_kept_open_within_the_block_of_one_thread(tmp_path):
    path = tmp_path / "one.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32618",
                       transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:
        ds.write(np.arange(16, dtype="uint8").reshape(1, 4, 4))
    with open_dataset(str(path)) as alone:
        pass
    assert alone.closed
    with keep_datasets_open():
        with open_dataset(str(path)) as first:
            pass
        with open_dataset(str(path)) as second:
            assert second.read(1)[3, 3] == 15
        assert first is second and not first.closed
        other = []
        worker = threading.Thread(target=lambda: other.append(open_dataset(str(path))))
        worker.start()
        worker.join()
        with other[0] as theirs:  # another thread gets its own handle, closed by its own block
            assert theirs is not first
        assert theirs.closed
    assert first.closed


class RecordingStats(StatsEncoder):
    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, pixels, valid=None):
        self.calls.append(len(pixels))
        return super().encode(pixels, valid)


def _encoded(scene, encoder, **options):
    return list(writer_batches(encode_scene(scene, encoder, chip_size=16, stride=12, batch_size=7, time=WHEN, **options)))


def test_encoder_batches_do_not_depend_on_the_tiling(nc_scene, monkeypatch):
    default = RecordingStats()
    wide = _encoded(nc_scene, default)
    assert len(wide) < len(default.calls) / 10  # many encoder batches a tiling (and writer) batch
    assert all(n == 7 for n in default.calls[:-1])
    per_chip = 7 * 16 * 16 * 4 * nc_scene.count  # one encoder batch a tiling batch: the smallest tiling
    monkeypatch.setattr(produce_module, "TILING_BYTES", per_chip)
    narrow_encoder = RecordingStats()
    narrow = _encoded(nc_scene, narrow_encoder)
    assert narrow_encoder.calls == default.calls
    for key in ("embedding", "bounds", "pixel_bbox", "valid_fraction", "grid_cell", "datetime"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in wide]), np.concatenate([b[key] for b in narrow]))
    assert [i for b in wide for i in b["chip_id"]] == [i for b in narrow for i in b["chip_id"]]


def test_chip_ids_given_to_the_writer_are_the_ones_it_derives(nc_scene, tmp_path):
    (batch,) = list(writer_batches(encode_scene(nc_scene, StatsEncoder(), chip_size=32, time=WHEN), rows=10**6))
    contract = StatsEncoder().contract(bands=nc_scene.band_names, chip_size=32, stride=32, gsd=28.5)
    written = {}
    for name, chips in (("given", batch), ("derived", {k: v for k, v in batch.items() if k != "chip_id"})):
        with ProductWriter(tmp_path / name, model=contract, grid="majortom-10km") as writer:
            writer.write(chips)
        written[name] = eoembed.open(tmp_path / name).sql("SELECT chip_id, datetime FROM embeddings ORDER BY chip_id")
    assert written["given"].column("chip_id").equals(written["derived"].column("chip_id"))
    assert written["given"].column("datetime").equals(written["derived"].column("datetime"))
    assert written["given"].column("datetime")[0].as_py() == WHEN


def test_start_up_objects_are_frozen_for_the_job_only():
    before = gc.get_freeze_count()
    with startup_objects_frozen():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
