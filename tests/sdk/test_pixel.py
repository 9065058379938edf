"""Pixel products (spec Section 12): written from arrays, read back by rasterio, zarr and xarray,
validated clean in every form, and every planted defect found after the product is resealed."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import eoembed
from eoembed._errors import SpecError
from eoembed._quantize import Quantization, dequantize_pixels
from eoembed._schemas import validate_stac
from eoembed._tiles import read_tile
from tests.sdk.mutations import reseal

WHEN = datetime(2020, 5, 1, tzinfo=timezone.utc)
TRANSFORM = (30.0, 0.0, 500010.0, 0.0, -30.0, 4199970.0)
CRS = "EPSG:32618"
FORMS = [("zarr", "none"), ("zarr", "float16"), ("zarr", "int8"), ("zarr", "int8-per-row"), ("zarr", "sqrt"),
         ("cog", "none"), ("cog", "int8"), ("cog", "sqrt")]
HOLE = (3, 4)


def _model(dim: int = 16) -> dict:
    return {"name": "toy-pixel", "version": "1", "framework": "numpy", "weights_sha256": None, "architecture": "per-pixel linear map",
            "pooling": "none", "output": {"dim": dim},
            "input": {"bands": [{"name": "B1", "source": "toy"}], "chip_size_px": 1, "stride_px": 1, "gsd_m": 30.0,
                      "normalization": {"method": "none"}}}


def _embeddings(rows: int = 70, cols: int = 90, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((rows, cols, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    emb[HOLE] = np.nan
    return emb


EMB = _embeddings()


def _write(path: Path, form: str, quantization: str, **options) -> Path:
    scene = {"embeddings": EMB, "crs": CRS, "transform": TRANSFORM, "source_id": "scene-a", "datetime": WHEN}
    return eoembed.write_pixel_product(path, scene, model=_model(), format=form, quantization=quantization,
                                       tile_size=32, chunk_size=16, normalized=True, **options)


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("pixel")
    return {(form, quant): _write(root / f"{form}-{quant}", form, quant) for form, quant in FORMS}


# -- writing and the external readers ------------------------------------------------------------


@pytest.mark.parametrize(("form", "quant"), FORMS)
def test_every_form_validates_clean(products, form, quant):
    report = eoembed.validate(products[form, quant])
    assert report.findings == [], str(report)


@pytest.mark.parametrize(("form", "quant"), FORMS)
def test_tiles_cover_the_scene_and_round_trip(products, form, quant):
    root = products[form, quant]
    collection = json.loads((root / "collection.json").read_text())
    quantization = Quantization.from_dict(collection["eoembed:embedding"]["quantization"], dim=16)
    mosaic = np.full(EMB.shape, -1.0, dtype=np.float32)
    tiles = sorted((root / "data").iterdir())
    assert len(tiles) == 9  # 70 x 90 pixels in tiles of 32: 3 x 3, the last row and column smaller
    for path in tiles:
        tile = read_tile(path)
        row = round((TRANSFORM[5] - tile.geo.transform[5]) / 30)
        col = round((tile.geo.transform[2] - TRANSFORM[2]) / 30)
        rows, cols = tile.geo.shape
        mosaic[row:row + rows, col:col + cols] = dequantize_pixels(tile.codes, quantization, scale=tile.scale)
    holes = np.isnan(EMB).all(axis=2)
    assert np.isnan(mosaic[holes]).all() and holes.sum() == 1
    tolerance = {"none": 0.0, "float16": 1e-3, "int8": 1 / 127, "int8-per-row": 1 / 127, "sqrt": 0.02}[quant]
    assert np.abs(mosaic[~holes] - EMB[~holes]).max() <= tolerance


@pytest.mark.parametrize("quant", ["none", "int8", "sqrt"])
def test_cog_tiles_open_in_rasterio_with_their_georeferencing(products, quant):
    import rasterio

    root = products["cog", quant]
    first = root / "data" / "scene-a-r000032-c000064.tif"
    with rasterio.open(first) as src:
        assert src.driver == "GTiff" and src.crs.to_epsg() == 32618
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert tuple(src.transform)[:6] == (30.0, 0.0, TRANSFORM[2] + 64 * 30, 0.0, -30.0, TRANSFORM[5] - 32 * 30)
        assert (src.height, src.width, src.count) == (32, 26, 16)
        assert src.nodata == -128 if quant != "none" else np.isnan(src.nodata)
        assert json.loads(src.tags()["EOEMBED"])["pixel"]["format"] == "cog"
    item = json.loads((root / "items" / "scene-a-r000032-c000064.json").read_text())
    assert item["properties"]["proj:code"] == CRS and item["properties"]["proj:shape"] == [32, 26]
    assert item["properties"]["proj:transform"] == [30.0, 0.0, TRANSFORM[2] + 64 * 30, 0.0, -30.0, TRANSFORM[5] - 32 * 30]


# rioxarray's own coordinate code still multiplies affine transforms with `*`.
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
@pytest.mark.parametrize("quant", ["none", "sqrt"])
def test_cog_tiles_open_in_rioxarray_on_their_grid(products, quant):
    import rioxarray

    root = products["cog", quant]
    path = root / "data" / "scene-a-r000032-c000064.tif"
    band = rioxarray.open_rasterio(path, masked=False)
    try:
        assert band.dims == ("band", "y", "x") and band.shape == (16, 32, 26)
        assert band.rio.crs.to_epsg() == 32618
        assert tuple(band.rio.transform())[:6] == (30.0, 0.0, TRANSFORM[2] + 64 * 30, 0.0, -30.0, TRANSFORM[5] - 32 * 30)
        assert np.allclose(band["x"].values[:2], [TRANSFORM[2] + 64 * 30 + 15, TRANSFORM[2] + 64 * 30 + 45])
        codes = read_tile(path).codes
        assert np.array_equal(band.values.transpose(1, 2, 0), codes, equal_nan=True)
    finally:
        band.close()


@pytest.mark.parametrize("quant", ["int8-per-row", "sqrt"])
def test_zarr_tiles_open_in_xarray_with_coordinates_and_crs(products, quant):
    import xarray as xr
    from pyproj import CRS as ProjCRS
    from zarr.storage import ZipStore

    path = products["zarr", quant] / "data" / "scene-a-r000000-c000000.zarr.zip"
    store = ZipStore(path, mode="r")
    try:
        ds = xr.open_zarr(store)
        assert ds["embedding"].dims == ("y", "x", "dim") and ds["embedding"].shape == (32, 32, 16)
        assert np.allclose(ds["x"].values[:2], [TRANSFORM[2] + 15, TRANSFORM[2] + 45])
        assert np.allclose(ds["y"].values[:2], [TRANSFORM[5] - 15, TRANSFORM[5] - 45])
        assert ProjCRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg() == 32618
        assert ("scale" in ds) == (quant == "int8-per-row")
        assert int(ds["embedding"].values[HOLE].max()) == -128  # the nodata pixel
    finally:
        store.close()
    with zipfile.ZipFile(path) as archive:  # sharded: one shard file for the whole tile's codes
        names = archive.namelist()
        assert [n for n in names if n.startswith("embedding/c/")] == ["embedding/c/0/0/0"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        codec = json.loads(archive.read("embedding/zarr.json"))["codecs"][0]
        assert codec["name"] == "sharding_indexed"
        assert codec["configuration"]["codecs"][-1]["configuration"]["cname"] == "zstd"


def test_items_and_collection_pass_the_stac_schemas(products):
    root = products["zarr", "sqrt"]
    collection = json.loads((root / "collection.json").read_text())
    assert collection["emb:type"] == "pixel" and collection["eoembed:pixel"]["format"] == "zarr"
    assert validate_stac(collection) == []
    for item_path in sorted((root / "items").glob("*.json")):
        item = json.loads(item_path.read_text())
        assert validate_stac(item) == [], item_path.name
        assert {"proj:code", "proj:transform", "proj:shape"} <= set(item["properties"])
        assert not any(key.startswith("table:") for key in item["properties"])


def test_equal_input_gives_byte_identical_tiles(tmp_path):
    a, b = _write(tmp_path / "a", "zarr", "sqrt"), _write(tmp_path / "b", "zarr", "sqrt")
    for path in sorted((a / "data").iterdir()):
        # Codes and layout are identical; only the provenance times in the metadata may differ.
        ta, tb = read_tile(path), read_tile(b / "data" / path.name)
        assert np.array_equal(ta.codes, tb.codes) and ta.geo == tb.geo and ta.tile == tb.tile


def test_writer_refuses_forms_tiles_cannot_hold(tmp_path):
    with pytest.raises(SpecError, match="format='zarr'"):
        _write(tmp_path / "x", "cog", "int8-per-row")
    with pytest.raises(SpecError, match="binary"):
        _write(tmp_path / "y", "zarr", "binary")
    with pytest.raises(SpecError, match="north-up"):
        eoembed.write_pixel_product(tmp_path / "z", {"embeddings": EMB, "crs": CRS, "transform": (30, 1, 0, 0, -30, 0),
                                                     "source_id": "s", "datetime": WHEN}, model=_model())
    assert not (tmp_path / "z").exists()


# -- v0.1 chip products stay valid and readable ------------------------------------------------


def test_a_v0_1_chip_product_opens_and_validates(tmp_path, monkeypatch):
    import eoembed._write as write_module
    from eoembed._spec import READABLE_SPEC_VERSIONS, SPEC_VERSION, footer_errors

    assert "0.1.0" in READABLE_SPEC_VERSIONS and SPEC_VERSION != "0.1.0"
    monkeypatch.setattr(write_module, "SPEC_VERSION", "0.1.0")  # the writer as it was before pixel products
    model = dict(_model(), name="toy-chip")
    model["input"] = dict(model["input"], chip_size_px=4, stride_px=4)
    rng = np.random.default_rng(1)
    chips = {"embedding": rng.standard_normal((6, 16)).astype(np.float32), "bounds": [(-75.6, 37.6, -75.59, 37.61)] * 6,
             "datetime": WHEN, "source_id": "s2", "grid_cell": "scene", "pixel_bbox": [(4 * i, 0, 4 * i + 4, 4) for i in range(6)]}
    path = eoembed.write_product(tmp_path / "v01", chips, model=model)
    monkeypatch.undo()
    collection = json.loads((path / "collection.json").read_text())
    assert collection["eoembed:spec_version"] == "0.1.0"
    assert "https://eoembed.org/spec/v0.1.0/stac-extension.schema.json" in collection["stac_extensions"]
    product = eoembed.open(path)
    assert product.metadata["spec_version"] == "0.1.0" and product.to_numpy().shape == (6, 16)
    report = eoembed.validate(path)
    assert report.findings == [], str(report)
    # Checked against its own version's schema: a pixel section did not exist in 0.1.0.
    footer = eoembed.read_footer(next((path / "data").glob("*.parquet")))
    assert footer_errors(footer) == []
    assert any("pixel" in message for _, _, message in footer_errors(dict(footer, pixel={"format": "zarr", "tile_size_px": 8})))


# -- planted defects ------------------------------------------------------------------------------


def _edit_zarr(rel: str, change: Callable) -> Callable[[Path], None]:
    """Unzip a Zarr tile, let ``change(group)`` edit it through zarr, and zip it again."""
    def apply(root: Path) -> None:
        import zarr

        path = root / rel
        folder = path.parent / "edit.zarr"
        with zipfile.ZipFile(path) as archive:
            archive.extractall(folder)
        change(zarr.open_group(str(folder), mode="r+", use_consolidated=False))
        path.unlink()
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(folder).as_posix())
        shutil.rmtree(folder)
    return apply


def _edit_cog(rel: str, change: Callable) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        import rasterio

        with rasterio.open(root / rel, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
            change(dst)
    return apply


def _edit_json(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        document = json.loads((root / rel).read_text())
        change(document)
        (root / rel).write_text(json.dumps(document))
    return apply


def _set_attr(key: str, value) -> Callable:
    def change(group) -> None:
        group.attrs[key] = value
    return change


def _metadata_edit(change: Callable[[dict], None]) -> Callable:
    def edit(group) -> None:
        metadata = dict(group.attrs["eoembed"])
        change(metadata)
        group.attrs["eoembed"] = metadata
    return edit


def _codes_edit(change: Callable[[np.ndarray], None], name: str = "embedding") -> Callable:
    def edit(group) -> None:
        values = group[name][...]
        change(values)
        group[name][...] = values
    return edit


def _partly(value):
    def change(codes: np.ndarray) -> None:
        codes[5, 6, :3] = value
    return change


TILE = "data/scene-a-r000000-c000000.zarr.zip"
COG_TILE = "data/scene-a-r000000-c000000.tif"
ITEM = "items/scene-a-r000000-c000000.json"
MUTATIONS = [
    # (name, form, quantization, code, change)
    ("transform rotated", "zarr", "sqrt", "PIX001", _edit_zarr(TILE, _set_attr("proj:transform", [30, 2, 500010, 0, -30, 4199970]))),
    ("transform not numbers", "zarr", "sqrt", "PIX001", _edit_zarr(TILE, _set_attr("proj:transform", ["30", 0, 0, 0, -30, 0]))),
    ("crs unknown", "zarr", "sqrt", "PIX001", _edit_zarr(TILE, _set_attr("proj:code", "EPSG:999999"))),
    ("tile larger than tile_size_px", "zarr", "sqrt", "PIX002",
     _edit_zarr(TILE, _metadata_edit(lambda m: m["pixel"].update(tile_size_px=16)))),
    ("format differs from the file", "zarr", "sqrt", "PIX002", _edit_zarr(TILE, _metadata_edit(lambda m: m["pixel"].update(format="cog")))),
    ("no pixel section", "zarr", "sqrt", "PIX002", _edit_zarr(TILE, _metadata_edit(lambda m: m.pop("pixel")))),
    ("x coordinates shifted", "zarr", "sqrt", "PIX003", _edit_zarr(TILE, _codes_edit(lambda x: x.__iadd__(30.0), name="x"))),
    ("cog nodata changed", "cog", "sqrt", "PIX004", _edit_cog(COG_TILE, lambda dst: setattr(dst, "nodata", 0))),
    ("sqrt pixel partly nodata", "zarr", "sqrt", "PIX005", _edit_zarr(TILE, _codes_edit(_partly(-128)))),
    ("float pixel partly NaN", "zarr", "none", "PIX005", _edit_zarr(TILE, _codes_edit(_partly(np.nan)))),
    ("linear code -128 in a pixel with data", "zarr", "int8", "EMB007", _edit_zarr(TILE, _codes_edit(_partly(-128)))),
    ("sqrt codes beyond their form", "cog", "sqrt", "EMB004",
     _edit_cog(COG_TILE, lambda dst: dst.write(np.full((16, 32, 32), 127, dtype=np.int8)))),
    ("float value infinite", "zarr", "none", "EMB002", _edit_zarr(TILE, _codes_edit(_partly(np.inf)))),
    ("per-pixel scale NaN", "zarr", "int8-per-row", "EMB006", _edit_zarr(TILE, _codes_edit(lambda s: s.__setitem__((2, 2), np.nan), name="scale"))),
    ("per-pixel scale 0", "zarr", "int8-per-row", "EMB006", _edit_zarr(TILE, _codes_edit(lambda s: s.__setitem__((2, 2), 0.0), name="scale"))),
    ("metadata dtype differs", "zarr", "sqrt", "EMB001",
     _edit_zarr(TILE, _metadata_edit(lambda m: m["embedding"].update(dim=8) or m["model"]["output"].update(dim=8)))),
    ("metadata missing", "zarr", "sqrt", "JSN004", _edit_zarr(TILE, lambda g: g.attrs.__delitem__("eoembed"))),
    ("metadata differs from the collection", "zarr", "sqrt", "JSN005", _edit_zarr(TILE, _metadata_edit(lambda m: m.update(license="MIT")))),
    ("tile times reversed", "zarr", "sqrt", "IDT006", _edit_zarr(TILE, _set_attr("eoembed:tile", {
        "start_datetime": "2020-05-02T00:00:00Z", "end_datetime": "2020-05-01T00:00:00Z", "source_id": "scene-a"}))),
    ("item transform shifted", "zarr", "sqrt", "JSN007", _edit_json(ITEM, lambda i: i["properties"]["proj:transform"].__setitem__(2, 0.0))),
    ("item shape swapped", "cog", "int8", "JSN007", _edit_json(ITEM, lambda i: i["properties"].__setitem__("proj:shape", [26, 32]))),
    ("item bbox moved", "zarr", "sqrt", "JSN007", _edit_json(ITEM, lambda i: i["bbox"].__setitem__(0, i["bbox"][0] - 1))),
    ("tile transform moved under its item", "zarr", "sqrt", "JSN007",
     _edit_zarr(TILE, _set_attr("proj:transform", [30, 0, 600000, 0, -30, 4199970]))),
    ("collection pixel section differs", "zarr", "sqrt", "JSN005",
     _edit_json("collection.json", lambda c: c["eoembed:pixel"].update(chunk_size_px=8))),
    ("tile not in the manifest", "zarr", "sqrt", "STR003",
     lambda root: shutil.copyfile(root / TILE, root / "data" / "stray.zarr.zip")),
]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_planted_defect_is_found(products, tmp_path, mutation):
    name, form, quant, code, change = mutation
    root = tmp_path / "product"
    shutil.copytree(products[form, quant], root)
    change(root)
    reseal(root)
    report = eoembed.validate(root)
    assert code in report.codes, f"{name}: expected {code}, got\n{report}"
    finding = next(f for f in report.findings if f.code == code)
    assert finding.file and finding.message


def test_an_unsealed_change_fails_the_checksum(products, tmp_path):
    root = tmp_path / "product"
    shutil.copytree(products["zarr", "sqrt"], root)
    _edit_zarr(TILE, _codes_edit(_partly(3)))(root)
    assert "STR006" in eoembed.validate(root).codes
