"""The producer never publishes a product it would not accept: resumes of another job are refused,
failed starts leave nothing behind, output faults are errors, and legitimate data is not refused whole.

Every case runs the real CLI under ``mpirun`` on a crop of the real NC Landsat-7 scene.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

import eoembed
from eoembed.producers.distribute import FAULT_ENV, LOCK, staging_folder
from eoembed.producers.staging import FAULT_DISK_FULL_ENV, JOB, _process_stat

from .test_distribute import data_tables, produce
from .test_read import write_tif

pytestmark = pytest.mark.mpi
YEAR = "2000-01-01T00:00:00Z/2000-12-31T23:59:59Z"
# 10 x 10 chips of 16 px in units of 10 chips: 10 units, round-robin over the ranks.
FLAGS = ["--chip-size", "16", "--datetime", YEAR, "--unit-chips", "10", "--quantization", "int8"]


def crop(source: Path, target: Path, *, col: int, row: int, size: int) -> str:
    """A real-pixel window of ``source`` as its own GeoTIFF (the fixture is made here, not committed)."""
    with rasterio.open(source) as ds:
        window = Window(col, row, size, size)
        profile = {**ds.profile, "width": size, "height": size, "transform": ds.transform @ Affine.translation(col, row)}
        with rasterio.open(target, "w", **profile) as out:
            out.write(ds.read(window=window))
    return str(target)


@pytest.fixture(scope="module")
def scene(shared_data, tmp_path_factory) -> str:
    return crop(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif",
                tmp_path_factory.mktemp("scene") / "nc-crop.tif", col=200, row=150, size=160)


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "p"
    run = produce(1, scene, "--out", str(out), *FLAGS)
    assert run.returncode == 0, run.stderr
    return out


def assert_same_product(product: Path, reference: Path) -> None:
    one, two = data_tables(reference), data_tables(product)
    assert list(one) == list(two)
    for name in one:
        assert one[name].equals(two[name]), name
    assert eoembed.validate(product).findings == []
    assert sorted(p.name for p in product.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not staging_folder(product.absolute()).exists()


def snapshot(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def interrupted(scene, tmp_path_factory) -> tuple[Path, Path]:
    """A job killed after rank 0's second unit: (the output path, a pristine copy of its staging folder)."""
    out = tmp_path_factory.mktemp("interrupted") / "p"
    killed = produce(1, scene, "--out", str(out), *FLAGS, env={FAULT_ENV: "0:2"})
    assert killed.returncode != 0
    staging = staging_folder(out.absolute())
    assert len(list((staging / "data").glob("u*.parquet"))) == 2 and (staging / JOB).exists()
    pristine = out.parent / "pristine"
    shutil.copytree(staging, pristine)
    return out, pristine


def restore(interrupted: tuple[Path, Path]) -> Path:
    out, pristine = interrupted
    staging = staging_folder(out.absolute())
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(pristine, staging)
    (staging / LOCK).unlink()  # the killed run's lock; its holder is dead either way
    return staging


@pytest.mark.parametrize(("ranks", "flag", "value", "key", "recorded", "now"), [
    (1, "--quantization", "int8-per-row", "quantization", "'int8'", "'int8-per-row'"),
    (1, "--datetime", "2001-06-01T00:00:00Z", "datetime",
     "'2000-01-01T00:00:00+00:00/2000-12-31T23:59:59+00:00'", "'2001-06-01T00:00:00+00:00'"),
    (1, "--min-valid", "0.9", "min_valid_fraction", "0.5", "0.9"),
    (2, "--chip-size", "8", "chip_size", "16", "8"),
    (2, "--empty-chips", "keep", "empty_chips", "'drop'", "'keep'"),
])
def test_a_resume_with_another_setting_is_refused_before_any_work(interrupted, scene, ranks, flag, value, key, recorded, now):
    staging = restore(interrupted)
    before = snapshot(staging)
    flags = list(FLAGS)
    if flag in flags:
        flags[flags.index(flag) + 1] = value
    else:
        flags += [flag, value]
    run = produce(ranks, scene, "--out", str(interrupted[0]), *flags, "--resume")
    assert run.returncode == 2, run.stderr
    assert "--resume refused" in run.stderr and f"{key}: recorded {recorded}, now {now}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert snapshot(staging) == before, "a refused resume must not touch the staging folder"


def test_the_original_command_finishes_after_a_refused_resume(interrupted, scene, reference):
    out = interrupted[0]
    restore(interrupted)
    refused = produce(2, scene, "--out", str(out), *FLAGS[:1], "8", *FLAGS[2:], "--resume")
    assert refused.returncode == 2 and "chip_size: recorded 16, now 8" in refused.stderr
    resumed = produce(2, scene, "--out", str(out), *FLAGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "(2 already done)" in resumed.stderr
    assert_same_product(out, reference)


def test_a_dead_holder_is_reported_and_taken_over(interrupted, scene, reference):
    out = interrupted[0]
    if out.exists():
        shutil.rmtree(out)
    staging = restore(interrupted)
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    (staging / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "start": "earlier"}))
    run = produce(1, scene, "--out", str(out), *FLAGS, "--resume")
    assert run.returncode == 0, run.stderr
    assert f"taking over {staging / LOCK} from a producer that is gone (pid {dead.pid}" in run.stderr
    assert_same_product(out, reference)


def test_a_zombie_holder_is_taken_over(interrupted, scene, reference):
    """A rank killed after its launcher exited stays a zombie until reaped: it holds no lock."""
    out = interrupted[0]
    if out.exists():
        shutil.rmtree(out)
    staging = restore(interrupted)
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while (fields := _process_stat(zombie.pid))[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    start = fields[19]
    (staging / LOCK).write_text(json.dumps({"pid": zombie.pid, "host": os.uname().nodename, "process_start": start}))
    try:
        run = produce(1, scene, "--out", str(out), *FLAGS, "--resume")
    finally:
        zombie.wait()
    assert run.returncode == 0, run.stderr
    assert f"from a producer that is gone (pid {zombie.pid}" in run.stderr
    assert_same_product(out, reference)


def test_a_live_holder_is_refused_even_without_units(tmp_path, scene):
    out = tmp_path / "p"
    staging = staging_folder(out.absolute())
    staging.mkdir(parents=True)
    (staging / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "start": "now"}))
    run = produce(1, scene, "--out", str(out), *FLAGS)
    assert run.returncode == 2 and "in use by another producer" in run.stderr
    assert (staging / LOCK).exists(), "another producer's lock is not ours to remove"


@pytest.mark.parametrize(("ranks", "change", "message"), [
    (1, {"--datetime": None}, "pass --datetime"),
    (2, {"--chip-size": "1000"}, "1000"),
    (2, {"--bands": "nir=B9"}, "band 'B9' is not in"),
    (1, {"--encoder": "no-such-encoder"}, "no-such-encoder"),
])
def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(tmp_path, scene, ranks, change, message):
    out = tmp_path / "p"
    flags = list(FLAGS)
    for flag, value in change.items():
        if flag in flags:
            at = flags.index(flag)
            del flags[at : at + 2]
        if value is not None:
            flags += [flag, value]
    failed = produce(ranks, scene, "--out", str(out), *flags)
    assert failed.returncode == 2, failed.stderr
    assert message in failed.stderr and "Traceback" not in failed.stderr
    assert list(tmp_path.iterdir()) == [], "a failed start leaves no staging folder"
    fixed = produce(ranks, scene, "--out", str(out), *FLAGS)
    assert fixed.returncode == 0, fixed.stderr
    assert "taking over" not in fixed.stderr


def test_a_killed_start_before_any_unit_does_not_block_a_fresh_command(tmp_path, scene, reference):
    """A job killed before its first unit leaves a lock of a dead holder and no unit: the next start,
    without --resume, reports the lock, clears the folder and produces."""
    out = tmp_path / "p"
    staging = staging_folder(out.absolute())
    staging.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (staging / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "start": "earlier"}))
    (staging / JOB).write_text("{}")
    run = produce(2, scene, "--out", str(out), *FLAGS)
    assert run.returncode == 0, run.stderr
    assert "taking over" in run.stderr
    assert_same_product(out, reference)


def test_sources_are_gathered_from_every_rank(tmp_path, shared_data):
    """Two scenes, one unit each: under -n 2 rank 1 writes the second scene's unit alone."""
    source = shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
    a = crop(source, tmp_path / "west.tif", col=100, row=100, size=32)
    b = crop(source, tmp_path / "east.tif", col=300, row=100, size=32)
    listed = {}
    for ranks in (1, 2):
        out = tmp_path / f"n{ranks}"
        run = produce(ranks, a, b, "--out", str(out), "--chip-size", "16", "--datetime", YEAR)
        assert run.returncode == 0, run.stderr
        listed[ranks] = json.loads((out / "sources.json").read_text())["source_ids"]
    assert listed[1] == listed[2] == ["west", "east"]


def test_an_out_that_is_a_file_and_an_unparseable_datetime_are_errors(tmp_path, scene):
    target = tmp_path / "p"
    target.write_text("not a folder")
    run = produce(2, scene, "--out", str(target), *FLAGS)
    assert run.returncode == 2 and f"--out {target} is a file" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    flags = list(FLAGS)
    flags[flags.index("--datetime") + 1] = "18/05/2020"
    run = produce(1, scene, "--out", str(tmp_path / "q"), *flags)
    assert run.returncode == 1 and "--datetime '18/05/2020'" in run.stderr and "ISO 8601" in run.stderr
    assert "Traceback" not in run.stderr


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, or None where this process may not mount one (then the write path's
    fault-injection variable stands in for the full disk)."""
    folder = tmp_path / "disk"
    mounted = _mount_tmpfs(folder, "1m")
    yield folder if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_is_an_error_and_resume_finishes_the_job(small_disk, tmp_path, scene, reference):
    """Disk full on a real 1 MiB tmpfs, filled up to a few units' room (or, where mounting is not
    permitted, an ENOSPC raised by the write path's fault-injection variable)."""
    if small_disk is not None:
        out, env = small_disk / "p", {}
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        (small_disk / "filler").write_bytes(b"\0" * (free - 48 * 1024))
    else:
        out, env = tmp_path / "p", {FAULT_DISK_FULL_ENV: "3"}
    full = produce(2, scene, "--out", str(out), *FLAGS, env=env)
    assert full.returncode != 0
    assert "No space left on device" in full.stderr and "--resume" in full.stderr, full.stderr
    assert "Traceback" not in full.stderr and not out.exists()
    if small_disk is not None:
        (small_disk / "filler").unlink()
    resumed = produce(2, scene, "--out", str(out), *FLAGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_product(out, reference)


def test_a_read_only_out_is_an_error_and_resume_finishes_the_job(tmp_path, scene, reference):
    """A tmpfs remounted read-only where this process may mount (as root, whom chmod would not stop),
    else a folder chmod 555 (which stops any other user)."""
    folder = tmp_path / "ro"
    mounted = _mount_tmpfs(folder, "4m")
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)
        out = folder / "p"
        refused = produce(2, scene, "--out", str(out), *FLAGS)
        assert refused.returncode == 2, refused.stderr
        assert f"cannot write to {staging_folder(out)}" in refused.stderr and "--resume" in refused.stderr
        assert "Traceback" not in refused.stderr
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        else:
            folder.chmod(0o755)
        resumed = produce(2, scene, "--out", str(out), *FLAGS, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert_same_product(out, reference)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def _dem(path: Path) -> str:
    """A 64 x 64 float DEM in UTM whose west half is constant zero (sea level): 16 chips of 16 px, 8 of them zero."""
    heights = np.zeros((1, 64, 64), np.float32)
    heights[0, :, 32:] = np.linspace(1, 50, 32, dtype=np.float32)
    return write_tif(path, heights)


@pytest.mark.parametrize("ranks", [1, 2])
def test_constant_zero_chips_are_dropped_and_counted_or_kept(tmp_path, ranks):
    dem = _dem(tmp_path / "dem.tif")
    common = ["--chip-size", "16", "--datetime", "2020-01-01T00:00:00Z", "--unit-chips", "4", "--encoder", "stats"]
    run = produce(ranks, dem, "--out", str(tmp_path / "dropped"), *common)
    assert run.returncode == 0, run.stderr
    assert "dropped from dem: 8 chips dropped: all-zero vector" in run.stderr
    product = eoembed.open(tmp_path / "dropped")
    assert product.num_rows == 8 and eoembed.validate(tmp_path / "dropped").findings == []
    errors = json.loads((tmp_path / "dropped" / "errors.json").read_text())
    assert errors == [{"input": "dem", "reason": "8 chips dropped: all-zero vector (--empty-chips keep keeps them)", "dropped": 8}]
    kept = produce(ranks, dem, "--out", str(tmp_path / "kept"), *common, "--empty-chips", "keep")
    assert kept.returncode == 0, kept.stderr
    product = eoembed.open(tmp_path / "kept")
    assert product.num_rows == 16 and product.embedding["nodata_zero_vector"] is True
    assert eoembed.validate(tmp_path / "kept").findings == [] and not (tmp_path / "kept" / "errors.json").exists()


def test_chips_beyond_the_grid_latitudes_are_dropped_or_refused(tmp_path):
    """A scene straddling 85 N, the top of Major TOM's rows: its northern chips have no cell."""
    data = np.arange(2 * 32 * 64, dtype=np.float32).reshape(2, 32, 64) + 1
    scene = write_tif(tmp_path / "arctic.tif", data, crs="EPSG:4326", transform=Affine(0.01, 0, 10.0, 0, -0.01, 85.2))
    common = ["--chip-size", "16", "--datetime", "2020-01-01T00:00:00Z"]
    run = produce(2, scene, "--out", str(tmp_path / "p"), *common)
    assert run.returncode == 0, run.stderr
    dropped = json.loads((tmp_path / "p" / "errors.json").read_text())
    assert [(e["input"], e["dropped"]) for e in dropped] == [("arctic", 4)]
    assert eoembed.open(tmp_path / "p").num_rows == 4 and eoembed.validate(tmp_path / "p").findings == []
    refused = produce(2, scene, "--out", str(tmp_path / "q"), *common, "--outside-grid", "error")
    assert refused.returncode == 2 and "latitude" in refused.stderr and "--outside-grid drop" in refused.stderr
    assert "Traceback" not in refused.stderr
