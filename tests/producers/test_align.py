"""Chips on the lattice of each grid cell, on the real NC Landsat-7 scene (EPSG:32119, 28.5 m)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from eoembed._errors import EoembedError, TilingError
from eoembed._grid import get_grid
from eoembed.producers.align import align_scenes, cell_frame, cell_stacks, grid_section
from eoembed.producers.read import open_scene
from eoembed.producers.stack import iter_stack_chip_batches

CHIP = 8
_YEAR = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2000, 12, 31, tzinfo=timezone.utc))


@pytest.fixture(scope="module")
def nc_scene(shared_data):
    return open_scene(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif")


def _chips(cells):
    """{(cell, col_off, row_off): (native square bounds, lon/lat bbox)} of every chip the cells carry."""
    out = {}
    for cell in cells:
        for batch in iter_stack_chip_batches(cell, chip_size=CHIP, batch_size=4096):
            for w, native, lonlat in zip(batch.windows, batch.native_bounds, batch.lonlat_bounds):
                out[(cell.cell, w.col_off, w.row_off)] = (tuple(native), tuple(lonlat))
    return out


@pytest.mark.parametrize("grid_id", ["majortom-10km", "utm-10000m"])
def test_chips_lie_on_the_cell_lattice_and_in_their_cell(nc_scene, grid_id):
    grid = get_grid(grid_id)
    cells = cell_stacks(nc_scene, grid=grid, chip_size=CHIP)
    assert len(cells) >= 2 and [c.cell for c in cells] == sorted(c.cell for c in cells)
    res = 28.5
    for cell in cells:
        crs, x0, y0, _ = cell_frame(grid, cell.cell)
        assert cell.crs == crs == "EPSG:32617"  # the UTM zone of the cells, not the scene's state plane CRS
        assert cell.res == (res, res)
    for (cell_id, _, _), (native, lonlat) in _chips(cells).items():
        _, x0, y0, _ = cell_frame(grid, cell_id)
        # a square of 8 x 28.5 m whose south-west corner is a whole number of strides from the anchor
        assert native[2] - native[0] == pytest.approx(CHIP * res) and native[3] - native[1] == pytest.approx(CHIP * res)
        assert (native[0] - x0) / (CHIP * res) == pytest.approx(round((native[0] - x0) / (CHIP * res)), abs=1e-6)
        assert (native[1] - y0) / (CHIP * res) == pytest.approx(round((native[1] - y0) / (CHIP * res)), abs=1e-6)
        # owned by the cell of its lon/lat bbox centre: the rule that sets grid_cell
        assert grid.cell_of((lonlat[0] + lonlat[2]) / 2, (lonlat[1] + lonlat[3]) / 2) == cell_id


def test_two_scenes_of_one_place_give_the_same_chips(tmp_path, nc_scene):
    """A crop of the scene, shifted by 3 x 5 pixels, cuts the same chips where they overlap: the lattice
    belongs to the cell, not to the scene."""
    with rasterio.open(nc_scene.path) as ds:
        profile = ds.profile
        data = ds.read(window=((5, ds.height), (3, ds.width)))
        profile.update(width=data.shape[2], height=data.shape[1], transform=ds.transform @ Affine.translation(3, 5))
    crop = tmp_path / "crop.tif"
    with rasterio.open(crop, "w", **profile) as out:
        out.write(data)
    whole = _chips(cell_stacks(nc_scene, grid="majortom-10km", chip_size=CHIP))
    part = _chips(cell_stacks(open_scene(crop), grid="majortom-10km", chip_size=CHIP))
    common = set(whole) & set(part)
    assert len(common) > 0.9 * len(part)
    for key in common:
        assert whole[key] == part[key]


def test_nearest_resampling_keeps_source_values(nc_scene):
    """With nearest resampling every chip pixel is the source pixel under its centre."""
    cells = cell_stacks(nc_scene, grid="majortom-10km", chip_size=CHIP, resampling="nearest")
    to_scene = Transformer.from_crs(cells[0].crs, nc_scene.crs, always_xy=True)
    with rasterio.open(nc_scene.path) as ds:
        source = ds.read()
        for cell in cells:
            batch = next(iter_stack_chip_batches(cell, chip_size=CHIP, batch_size=64, min_valid_fraction=1.0))
            for k in (0, len(batch) // 2, len(batch) - 1):
                w = batch.windows[k]
                rows, cols = np.mgrid[0:CHIP, 0:CHIP]
                a, _, c, _, e, f = cell.transform[:6]
                xs, ys = a * (w.col_off + cols + 0.5) + c, e * (w.row_off + rows + 0.5) + f
                sx, sy = to_scene.transform(xs, ys)
                r, c = rasterio.transform.rowcol(ds.transform, sx.ravel(), sy.ravel())
                expected = source[:, np.asarray(r), np.asarray(c)].reshape(-1, CHIP, CHIP)
                np.testing.assert_array_equal(batch.pixels[k], expected)


def test_resolution_resamples_onto_a_coarser_lattice(nc_scene):
    cells = cell_stacks(nc_scene, grid="utm-10000m", chip_size=CHIP, resolution=60.0)
    assert {c.res for c in cells} == {(60.0, 60.0)}
    native, _ = next(iter(_chips(cells[:1]).values()))
    assert native[2] - native[0] == pytest.approx(CHIP * 60.0)


def test_alignment_errors_name_the_problem(nc_scene, tmp_path):
    with pytest.raises(TilingError, match="no cells to align chips to"):
        cell_stacks(nc_scene, grid=_SceneGrid(), chip_size=CHIP)
    with pytest.raises(TilingError, match="resolution=-1"):
        cell_stacks(nc_scene, grid="majortom-10km", chip_size=CHIP, resolution=-1)
    with pytest.raises(TilingError, match="resampling='sharpest'"):
        cell_stacks(nc_scene, grid="majortom-10km", chip_size=CHIP, resampling="sharpest")
    degrees = dataclasses.replace(nc_scene, crs="EPSG:4326", transform=Affine(0.001, 0, -79.0, 0, -0.001, 35.8), res=(0.001, 0.001))
    with pytest.raises(TilingError, match="not square metres; pass the lattice pixel size"):
        cell_stacks(degrees, grid="majortom-10km", chip_size=CHIP)
    assert isinstance(TilingError("x"), EoembedError) and isinstance(TilingError("x"), ValueError)
    # in a job, a scene that cannot be aligned is reported and the others go on
    scenes, errors, res = align_scenes([degrees, nc_scene], align="cell", grid="majortom-10km", chip_size=CHIP,
                                       stride=None, resolution=None, resampling="bilinear")
    assert res == 28.5 and len(errors) == 1 and "not square metres" in errors[0]["reason"]
    assert scenes and all(s.path == nc_scene.path for s in scenes)
    with pytest.raises(TilingError, match="align='diagonal'"):
        align_scenes([nc_scene], align="diagonal", grid="majortom-10km", chip_size=CHIP, stride=None, resolution=None,
                     resampling="bilinear")


class _SceneGrid:
    id = "scene"


def test_grid_section_records_the_lattice():
    assert grid_section("majortom-10km") == "majortom-10km"
    section = grid_section("utm-10000m", align="cell", pixel_size=10.0, resampling="nearest")
    assert section["alignment"] == "cell" and section["pixel_size_m"] == 10.0 and section["definition"]["kind"] == "utm"


def test_a_cell_aligned_product_is_valid_and_says_so(tmp_path, nc_scene):
    import eoembed
    from eoembed.producers.produce import produce

    out = produce([nc_scene.path], out=tmp_path / "p", chip_size=CHIP, grid="utm-10000m", align="cell",
                  time=_YEAR, min_valid_fraction=1.0)
    report = eoembed.validate(out)
    assert report.findings == [], str(report)
    product = eoembed.open(out)
    grid = product.metadata["grid"]
    assert (grid["alignment"], grid["pixel_size_m"], grid["resampling"]) == ("cell", 28.5, "bilinear")
    rows = product.sql("SELECT grid_cell, bbox, native_crs FROM embeddings").to_pylist()
    utm = get_grid("utm-10000m")
    centres = np.array([((r["bbox"]["xmin"] + r["bbox"]["xmax"]) / 2, (r["bbox"]["ymin"] + r["bbox"]["ymax"]) / 2) for r in rows])
    assert list(utm.cell_of(centres[:, 0], centres[:, 1])) == [r["grid_cell"] for r in rows]
    assert {r["native_crs"] for r in rows} == {"EPSG:32617"}

