"""eoembed.producers.stack: multi-file, multi-resolution, multi-sensor band stacks on one chip grid.

Real BigEarthNet S2/S1 patches from ../shared/data, and small synthetic GeoTIFFs made here.
"""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds

from eoembed._errors import BandMappingError, EoembedError, ImageryError, MissingDependencyError
from eoembed.producers.read import open_scene
from eoembed.producers.stack import (
    S2_BANDS_12,
    BandSource,
    bigearthnet_s2_stack,
    build_stack,
    find_s1_for_s2,
    iter_cube_chip_batches,
    iter_stack_chip_batches,
    map_bands,
    open_cube,
    read_cube_window,
    read_stack_window,
)
from eoembed.producers.tile import iter_chip_batches

BEN = "imagery/bigearthnet/examples"
PATCH = "S2A_MSIL2A_20170613T101031_87_48"


@pytest.fixture(scope="module")
def s2_root(shared_data: Path) -> Path:
    return shared_data / BEN / "BigEarthNet-S2-Example"


@pytest.fixture(scope="module")
def s1_root(shared_data: Path) -> Path:
    return shared_data / BEN / "BigEarthNet-S1-Example"


@pytest.fixture(scope="module")
def s2_patch(s2_root: Path) -> Path:
    return s2_root / PATCH


def band_file(folder: Path, band: str) -> Path:
    return folder / f"{folder.name}_{band}.tif"


def read_file(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


# --------------------------------------------------------------------------------------------- S2


def test_s2_stack_grid_order_time(s2_patch: Path):
    stack = bigearthnet_s2_stack(s2_patch)
    assert (stack.width, stack.height, stack.res) == (120, 120, (10.0, 10.0))
    assert stack.band_names == S2_BANDS_12 and stack.count == 12
    assert stack.crs == "EPSG:32633" and stack.reference == "B02" and stack.reprojected == ()
    assert stack.transform == Affine(10, 0, 404400, 0, -10, 5342400)
    assert stack.datetime == datetime(2017, 6, 13, 10, 10, 31, tzinfo=timezone.utc)
    assert Path(stack.path).name == PATCH
    assert stack.band_sources == ("Sentinel-2 L2A",) * 12
    assert pickle.loads(pickle.dumps(stack)) == stack


def test_s2_resampled_bands_match_sources(s2_patch: Path):
    stack = bigearthnet_s2_stack(s2_patch, resampling="nearest")
    pixels, valid = read_stack_window(stack, col_off=0, row_off=0, width=120, height=120)
    assert pixels.shape == (12, 120, 120) and pixels.dtype == np.float32 and valid.all()
    for i, name in enumerate(S2_BANDS_12):
        src = read_file(band_file(s2_patch, name)).astype(np.float32)
        k = 120 // src.shape[0]  # 1 (10 m), 2 (20 m), 6 (60 m)
        assert k in (1, 2, 6)
        if k == 1:  # bit-exact as read directly
            assert np.array_equal(pixels[i], src), name
        # every k x k block of the 10 m grid is its source pixel
        blocks = pixels[i].reshape(src.shape[0], k, src.shape[1], k)
        assert np.array_equal(blocks, np.broadcast_to(src[:, None, :, None], blocks.shape)), name


def test_s2_bilinear_is_the_default_and_keeps_10m_bands_exact(s2_patch: Path):
    stack = bigearthnet_s2_stack(s2_patch)
    assert stack.resampling == "bilinear"
    pixels, valid = read_stack_window(stack, col_off=30, row_off=50, width=40, height=20)
    assert valid.all()
    b04 = read_file(band_file(s2_patch, "B04")).astype(np.float32)
    assert np.array_equal(pixels[3], b04[50:70, 30:70])
    # a 20 m band, bilinear: every value lies between the extremes of the source pixels around it
    b05 = read_file(band_file(s2_patch, "B05")).astype(np.float32)
    src = b05[50 // 2 - 1 : 70 // 2 + 1, 30 // 2 - 1 : 70 // 2 + 1]
    assert src.min() <= pixels[4].min() and pixels[4].max() <= src.max()
    assert not np.array_equal(pixels[4], np.repeat(np.repeat(b05, 2, 0), 2, 1)[50:70, 30:70])


def test_band_subset_and_missing_band_file(s2_patch: Path, tmp_path: Path):
    stack = bigearthnet_s2_stack(s2_patch, bands=["B04", "B03", "B02"])
    assert stack.band_names == ("B04", "B03", "B02")
    # a patch folder with one band file missing
    broken = tmp_path / PATCH
    broken.mkdir()
    for f in s2_patch.iterdir():
        if not f.name.endswith("_B8A.tif"):
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(BandMappingError) as err:
        bigearthnet_s2_stack(broken)
    assert "'B8A'" in str(err.value) and f"{PATCH}_B8A.tif" in str(err.value)


# --------------------------------------------------------------------------------------------- S1


def test_find_s1_for_s2(s2_root: Path, s1_root: Path, shared_data: Path):
    found = {p.name: find_s1_for_s2(p, s1_root) for p in sorted(s2_root.iterdir()) if p.is_dir()}
    assert sum(v is not None for v in found.values()) >= 1
    assert found[PATCH].name == "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    for s2_name, s1 in found.items():
        if s1 is not None:
            meta = json.loads((s1 / f"{s1.name}_labels_metadata.json").read_text())
            assert meta["corresponding_s2_patch"] == s2_name
    # the tiny S1 patches point at S2 patches absent from tiny_s2
    tiny = shared_data / "imagery/bigearthnet"
    assert find_s1_for_s2(tiny / "tiny_s2" / "S2A_MSIL2A_20170617T113321_36_85", tiny / "tiny_s1") is None


def test_s2_s1_stack(s2_patch: Path, s1_root: Path):
    s1 = find_s1_for_s2(s2_patch, s1_root)
    stack = bigearthnet_s2_stack(s2_patch, with_s1=s1)
    assert stack.count == 14 and stack.band_names == S2_BANDS_12 + ("VV", "VH")
    assert stack.band_sources[-2:] == ("Sentinel-1 GRD", "Sentinel-1 GRD")
    pixels, valid = read_stack_window(stack, col_off=0, row_off=0, width=120, height=120)
    assert valid.all()
    assert np.array_equal(pixels[12], read_file(band_file(s1, "VV")))
    assert np.array_equal(pixels[13], read_file(band_file(s1, "VH")))
    assert float(pixels[12].mean()) < 0  # dB backscatter


def test_s2_with_wrong_s1_patch_is_refused(s2_root: Path, s1_root: Path):
    other = s1_root / "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35"
    with pytest.raises(ImageryError, match="S2A_MSIL2A_20171221T112501_56_35"):
        bigearthnet_s2_stack(s2_root / PATCH, with_s1=other)


# --------------------------------------------------------------------------------------------- map_bands


def test_map_bands(s2_patch: Path):
    available = {b: BandSource(b, str(band_file(s2_patch, b)), 1, "Sentinel-2 L2A") for b in ("B02", "B03", "B04")}
    got = map_bands(available, ["B04", "B02"])
    assert [b.name for b in got] == ["B04", "B02"] and got[0].path.endswith("_B04.tif")
    renamed = map_bands(available, {"red": "B04", "blue": "B02"})
    assert [(b.name, Path(b.path).name) for b in renamed] == [("red", f"{PATCH}_B04.tif"), ("blue", f"{PATCH}_B02.tif")]

    with pytest.raises(BandMappingError) as err:
        map_bands(available, ["B04", "B8A"])
    msg = str(err.value)
    assert isinstance(err.value, (KeyError, EoembedError))
    assert "'B8A'" in msg and f"{PATCH}_B02.tif" in msg and f"{PATCH}_B04.tif" in msg
    assert not msg.startswith('"')  # not quoted like a plain KeyError

    wrong = dict(available, B04=BandSource("B04", str(band_file(s2_patch, "B04")), 2))
    with pytest.raises(BandMappingError) as err:
        map_bands(wrong, ["B04"])
    assert f"{PATCH}_B04.tif" in str(err.value) and "band index 2" in str(err.value)

    missing = dict(available, B04=BandSource("B04", str(s2_patch / "nope_B04.tif")))
    with pytest.raises(BandMappingError, match="'B04'.*nope_B04.tif"):
        map_bands(missing, ["B04"])
    with pytest.raises(BandMappingError, match="twice"):
        map_bands(available, ["B04", "B04"])


def test_build_stack_errors(s2_patch: Path):
    b02 = BandSource("B02", str(band_file(s2_patch, "B02")))
    with pytest.raises(BandMappingError, match="nope.tif"):
        build_stack([b02, BandSource("X", str(s2_patch / "nope.tif"))])
    with pytest.raises(BandMappingError, match=f"{PATCH}_B02.tif"):
        build_stack([BandSource("B02", b02.path, band=3)])
    with pytest.raises(BandMappingError, match="more than once"):
        build_stack([b02, b02])
    with pytest.raises(BandMappingError, match="reference band 'B99'"):
        build_stack([b02], reference="B99")
    with pytest.raises(ImageryError, match="resampling"):
        build_stack([b02], resampling="smooth")
    stack = build_stack([b02])
    with pytest.raises(ImageryError, match="outside"):
        read_stack_window(stack, col_off=100, row_off=0, width=40, height=10)


# --------------------------------------------------------------------------------------------- chips


def test_stack_chip_batches_match_windows(s2_patch: Path, s1_root: Path):
    stack = bigearthnet_s2_stack(s2_patch, with_s1=find_s1_for_s2(s2_patch, s1_root))  # bilinear: warped bands
    batches = list(iter_stack_chip_batches(stack, chip_size=60, stride=60, batch_size=3))
    assert [len(b) for b in batches] == [3, 1]
    windows = [w for b in batches for w in b.windows]
    assert [(w.col_off, w.row_off) for w in windows] == [(0, 0), (60, 0), (0, 60), (60, 60)]
    meta = json.loads((s2_patch / f"{PATCH}_labels_metadata.json").read_text())["coordinates"]
    west, south, east, north = transform_bounds("EPSG:32633", "OGC:CRS84", meta["ulx"], meta["lry"], meta["lrx"], meta["uly"])
    eps = 1e-9
    for batch in batches:
        assert batch.pixels.shape[1:] == (14, 60, 60) and batch.pixels.dtype == np.float32
        assert ((batch.valid_fraction >= 0) & (batch.valid_fraction <= 1)).all()
        for i, w in enumerate(batch.windows):
            pixels, valid = read_stack_window(stack, col_off=w.col_off, row_off=w.row_off, width=60, height=60)
            assert np.array_equal(batch.pixels[i], pixels)
            assert np.array_equal(batch.valid[i], valid)
        lb = batch.lonlat_bounds
        assert (lb[:, 0] >= west - eps).all() and (lb[:, 2] <= east + eps).all()
        assert (lb[:, 1] >= south - eps).all() and (lb[:, 3] <= north + eps).all()


def test_single_file_stack_mirrors_iter_chip_batches(s2_patch: Path):
    path = band_file(s2_patch, "B08")
    stack = build_stack([BandSource("B08", str(path))])
    ours = list(iter_stack_chip_batches(stack, chip_size=50, stride=35, batch_size=4, min_valid_fraction=0.5))
    theirs = list(iter_chip_batches(open_scene(path), chip_size=50, stride=35, batch_size=4, min_valid_fraction=0.5))
    assert len(ours) == len(theirs) > 1
    for a, b in zip(ours, theirs):
        assert a.windows == b.windows
        for field in ("pixels", "valid_fraction", "native_bounds", "lonlat_bounds", "pixel_bbox", "valid"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and np.array_equal(x, y), field
    # a subset of windows (one work unit of a distributed job)
    subset = ours[0].windows[1:3]
    part = list(iter_stack_chip_batches(stack, chip_size=50, windows=subset))
    assert part[0].windows == subset and np.array_equal(part[0].pixels, ours[0].pixels[1:3])


# --------------------------------------------------------------------------------------------- synthetic


def write_tif(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata=None) -> str:
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=str(data.dtype),
                   crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return str(path)


X0, Y0 = 500_000.0, 5_300_000.0


def test_synthetic_resolutions_and_crs_aligned(tmp_path: Path):
    fine = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)
    coarse = (np.arange(20 * 20, dtype=np.float32).reshape(20, 20) + 0.5) * 3
    a = write_tif(tmp_path / "a.tif", fine, "EPSG:32633", Affine(10, 0, X0, 0, -10, Y0))
    b = write_tif(tmp_path / "b.tif", coarse, "EPSG:32633", Affine(20, 0, X0, 0, -20, Y0))
    # the third file in lon/lat, covering the UTM square with a margin, ~0.0007 deg (about 50-80 m) pixels
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:4326", X0, Y0 - 400, X0 + 400, Y0)
    step = 0.0007
    geo_t = Affine(step, 0, west - 3 * step, 0, -step, north + 3 * step)
    n_cols = int((east - west) / step) + 7
    n_rows = int((north - south) / step) + 7
    geo = (np.arange(n_rows)[:, None] * 1000 + np.arange(n_cols)[None, :]).astype(np.float32)
    c = write_tif(tmp_path / "c.tif", geo, "EPSG:4326", geo_t)

    stack = build_stack([BandSource("C", c), BandSource("B", b), BandSource("A", a)], resampling="nearest")
    assert stack.reference == "A" and (stack.width, stack.height) == (40, 40)
    assert stack.band_names == ("C", "B", "A") and stack.reprojected == ("C",)
    assert stack.path == str(tmp_path)
    pixels, valid = read_stack_window(stack, col_off=0, row_off=0, width=40, height=40)
    assert valid.all()
    assert np.array_equal(pixels[2], fine.astype(np.float32))
    assert pixels[1][13, 27] == coarse[6, 13]  # 10 m pixel (row 13, col 27) lies in 20 m pixel (6, 13)
    # known pixels of the lon/lat band: look the centre of reference pixels up in the source grid
    to_geo = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    checked = 0
    for row in range(0, 40, 3):
        for col in range(0, 40, 3):
            x, y = stack.transform @ (col + 0.5, row + 0.5)
            lon, lat = to_geo.transform(x, y)
            gc, gr = ~geo_t @ (lon, lat)
            if 0.2 < gc % 1 < 0.8 and 0.2 < gr % 1 < 0.8:  # well inside a source pixel
                assert pixels[0][row, col] == geo[int(gr), int(gc)], (row, col)
                checked += 1
    assert checked > 10


def test_synthetic_partial_overlap_and_nodata(tmp_path: Path):
    fine = np.full((20, 20), 7, dtype=np.int16)
    fine[0, 0] = -1  # nodata
    shifted = np.full((10, 10), 5.0, dtype=np.float32)
    shifted[3, 3] = np.nan
    a = write_tif(tmp_path / "a.tif", fine, "EPSG:32633", Affine(10, 0, X0, 0, -10, Y0), nodata=-1)
    b = write_tif(tmp_path / "b.tif", shifted, "EPSG:32633", Affine(20, 0, X0 + 100, 0, -20, Y0))  # starts at col 10
    stack = build_stack([BandSource("A", a), BandSource("B", b)], reference="A", resampling="nearest")
    pixels, valid = read_stack_window(stack, col_off=0, row_off=0, width=20, height=20)
    assert np.isnan(pixels[1][:, :10]).all() and not valid[:, :10].any()  # outside band B
    assert np.isnan(pixels[0][0, 0]) and not valid[0, 0]  # nodata of band A
    assert np.isnan(pixels[1][6:8, 16:18]).all() and not valid[6:8, 16:18].any()  # NaN in band B
    assert valid.sum() == 10 * 20 - 4 and (pixels[1][valid] == 5).all() and (pixels[0][valid] == 7).all()
    batches = list(iter_stack_chip_batches(stack, chip_size=10, min_valid_fraction=0.5))
    assert [w.col_off for b in batches for w in b.windows] == [10, 10]
    assert np.array_equal(batches[0].valid_fraction, np.float32([0.96, 1.0]))  # first chip holds the 2x2 NaN block
    far = write_tif(tmp_path / "far.tif", shifted, "EPSG:32633", Affine(20, 0, X0 + 10_000, 0, -20, Y0))
    with pytest.raises(ImageryError, match="does not overlap"):
        build_stack([BandSource("A", a), BandSource("F", far)])


# --------------------------------------------------------------------------------------------- cubes


def test_cube_npy_and_npz(tmp_path: Path):
    data = np.arange(3 * 2 * 8 * 10, dtype=np.float32).reshape(3, 2, 8, 10)
    data[1, 0, 2, 3] = -9999
    meta = {"crs": "EPSG:32633", "transform": [10, 0, X0, 0, -10, Y0], "band_names": ["VV", "VH"],
            "times": ["2020-01-01T00:00:00Z", "2020-01-13T00:00:00Z", "2020-01-25T00:00:00"], "nodata": -9999}
    np.save(tmp_path / "c.npy", data)
    (tmp_path / "c.json").write_text(json.dumps(meta))
    np.savez_compressed(tmp_path / "z.npz", data=data)
    (tmp_path / "z.json").write_text(json.dumps(meta))
    for name in ("c.npy", "z.npz"):
        cube = open_cube(tmp_path / name)
        assert (cube.width, cube.height, cube.count, len(cube.times)) == (10, 8, 2, 3)
        assert cube.band_names == ("VV", "VH") and cube.times[2] == datetime(2020, 1, 25, tzinfo=timezone.utc)
        pixels, valid = read_cube_window(cube, col_off=1, row_off=2, width=4, height=3)
        assert pixels.shape == (3, 2, 3, 4) and np.array_equal(pixels, data[:, :, 2:5, 1:5])
        assert valid.sum() == 3 * 12 - 1 and not valid[1, 0, 2]
        one, one_valid = read_cube_window(cube, col_off=0, row_off=0, width=10, height=8, time=2)
        assert np.array_equal(one, data[2]) and one_valid.all()
        batches = list(iter_cube_chip_batches(cube, time=1, chip_size=4))
        assert sum(len(b) for b in batches) == 2 * 3  # cover_edges adds the last column at 6
        assert np.array_equal(batches[0].pixels[0], data[1, :, :4, :4])

    (tmp_path / "bad.npy").write_bytes((tmp_path / "c.npy").read_bytes())
    (tmp_path / "bad.json").write_text(json.dumps(dict(meta, band_names=["VV"])))
    with pytest.raises(ImageryError, match="band_names"):
        open_cube(tmp_path / "bad.npy")
    (tmp_path / "lone.npy").write_bytes((tmp_path / "c.npy").read_bytes())
    with pytest.raises(ImageryError, match="sidecar"):
        open_cube(tmp_path / "lone.npy")


def test_zarr_cube_needs_zarr(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # zarr is an optional extra: as if it were not installed
    store = tmp_path / "cube.zarr"
    store.mkdir()
    with pytest.raises(MissingDependencyError, match=r"'zarr' is not installed; .*: pip install 'eoembed\[zarr\]'"):
        open_cube(store)
    assert issubclass(MissingDependencyError, ImportError)
