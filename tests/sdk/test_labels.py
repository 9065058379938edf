"""Labels from vector files joined to the chips of a real product (NC Landsat-7, stats encoder), and
from the scene's wall-to-wall land-cover raster."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

import eoembed
from tests.conftest import NC_CHIP_LABELS, NC_POINTS, NC_SCENE, NC_STRATA, NC_STRATA_CLASSES

# Majority classes of the 2,255 labelled chips (MANIFEST of fewshot/nc_landclass96).
CHIP_COUNTS = {"developed": 746, "herbaceous": 235, "shrubland": 61, "forest": 1180, "water": 26, "agriculture": 7}


@pytest.fixture(scope="module")
def product(nc_stats_product):
    return eoembed.open(nc_stats_product)


@pytest.fixture(scope="module")
def points(shared_data):
    return gpd.read_file(shared_data / NC_POINTS)


def test_chip_polygons_label_exactly_their_chips(product, shared_data):
    joined = eoembed.join_labels(product, shared_data / NC_CHIP_LABELS, label_field="class_name")
    assert joined.counts() == CHIP_COUNTS
    assert joined.joined_labels == joined.total_labels == 2255
    # The producer's 8-px chips and make_chips.py's windows coincide: every chip id appears once.
    assert len(set(joined.chip_ids.tolist())) == 2255


def test_points_label_the_chip_that_contains_them(product, points, shared_data):
    with pytest.warns(eoembed.FewShotWarning, match="lie outside"):
        joined = eoembed.join_labels(product, shared_data / NC_POINTS, label_field="label")
    ids, footprints = eoembed._labels.chip_footprints(product)
    lonlat = points.to_crs("OGC:CRS84")
    for row, label in zip(joined.rows[:50], joined.labels[:50]):
        inside = lonlat[shapely.intersects(lonlat.geometry.to_numpy(), footprints[row])]
        assert label in set(inside["label"].astype(str))
    assert 0 < joined.joined_labels < joined.total_labels == 1000


@pytest.mark.parametrize("suffix,crs", [(".geojson", "EPSG:4326"), (".gpkg", "EPSG:3857"), (".parquet", "EPSG:32617")])
def test_any_format_and_crs_gives_the_same_join(product, points, tmp_path, suffix, crs):
    _, footprints = eoembed._labels.chip_footprints(product)
    extent = shapely.box(*shapely.total_bounds(footprints))
    inside = points[shapely.within(points.to_crs("OGC:CRS84").geometry.to_numpy(), extent)]
    reference = eoembed.join_labels(product, inside, label_field="label")
    path = tmp_path / f"labels{suffix}"
    moved = inside[["label", "geometry"]].to_crs(crs)  # GeoJSON would take a repeated "id" as the feature id
    moved.to_parquet(path) if suffix == ".parquet" else moved.to_file(path)
    joined = eoembed.join_labels(product, path, label_field="label")
    assert joined.chip_ids.tolist() == reference.chip_ids.tolist()
    assert joined.labels.tolist() == reference.labels.tolist()


def test_polygon_overlap_threshold(product):
    _, footprints = eoembed._labels.chip_footprints(product)
    xmin, ymin, xmax, ymax = shapely.bounds(footprints[100])
    half = gpd.GeoDataFrame({"cls": ["x"]}, geometry=[shapely.box(xmin, ymin, (xmin + xmax) / 2, ymax)], crs="OGC:CRS84")
    assert len(eoembed.join_labels(product, half, label_field="cls", min_overlap=0.4).rows) >= 1
    with pytest.raises(eoembed.LabelError, match="lower min_overlap"):
        eoembed.join_labels(product, half, label_field="cls", min_overlap=0.6)


def test_wrong_label_column_names_the_columns(product, shared_data):
    with pytest.raises(eoembed.LabelFieldError, match=r"no label column 'class'.*\['id', 'label'") as error:
        eoembed.join_labels(product, shared_data / NC_POINTS, label_field="class")
    assert isinstance(error.value, KeyError)


def test_labels_outside_the_product(product, points, tmp_path):
    far = points.iloc[:20].copy()
    far.geometry = far.geometry.translate(xoff=500_000)
    path = tmp_path / "far.gpkg"
    far.to_file(path)
    with pytest.raises(eoembed.LabelsOutsideProductError, match="no label in .*far.gpkg lies inside"):
        eoembed.join_labels(product, path, label_field="label")


def test_missing_and_contradicting_crs(product, points, tmp_path):
    _, footprints = eoembed._labels.chip_footprints(product)
    extent = shapely.box(*shapely.total_bounds(footprints))
    points = points[shapely.within(points.to_crs("OGC:CRS84").geometry.to_numpy(), extent)].iloc[:60]
    bare = points[["label", "geometry"]].set_crs(None, allow_override=True)
    path = tmp_path / "bare.shp"  # no .prj: GeoJSON would imply EPSG:4326
    with pytest.warns(UserWarning, match="'crs' was not provided"):  # what a CRS-less file looks like
        bare.to_file(path)
    with pytest.raises(eoembed.LabelCRSError, match="declares no CRS"):
        eoembed.join_labels(product, path, label_field="label")
    # Giving the CRS fixes it; giving one that contradicts a declared CRS is refused.
    assert len(eoembed.join_labels(product, bare, label_field="label", crs=points.crs).rows) > 0
    with pytest.raises(eoembed.LabelCRSError, match="but EPSG:4326 was given"):
        eoembed.join_labels(product, points, label_field="label", crs="EPSG:4326")
    wrong = points.set_crs("EPSG:4326", allow_override=True)  # metres declared as degrees
    with pytest.raises(eoembed.LabelCRSError, match="not degrees"):
        eoembed.join_labels(product, wrong, label_field="label")
    assert np.isfinite(points.total_bounds).all()


# -- labels from the wall-to-wall land-cover raster -------------------------------------------------


def _majority(codes: np.ndarray, *, purity: float, min_valid: float):
    """make_chips.py's rule on one chip's pixels (nodata as NaN): majority class, or None."""
    classed = codes[np.isfinite(codes)]
    if not len(classed) or len(classed) < min_valid * codes.size:
        return None
    values, counts = np.unique(classed.astype(int), return_counts=True)
    return int(values[counts.argmax()]) if counts.max() / len(classed) >= purity else None


def _pixel_boxes(product):
    return np.concatenate([np.asarray(b.column("pixel_bbox").flatten()).reshape(-1, 4) for b in product.iter_batches(columns=["pixel_bbox"])])


def test_strata_labels_every_chip_and_agrees_with_the_shipped_chips(product, shared_data):
    import rasterio

    labelled = eoembed.raster_labels(product, shared_data / NC_STRATA, classes=NC_STRATA_CLASSES)
    shipped = eoembed.join_labels(product, shared_data / NC_CHIP_LABELS, label_field="class_name")
    assert labelled.total_labels == product.num_rows  # the raster covers every chip
    by_chip = dict(zip(labelled.chip_ids.tolist(), labelled.labels.tolist()))
    assert all(by_chip[c] == label for c, label in zip(shipped.chip_ids.tolist(), shipped.labels.tolist()))
    # The chips beyond the shipped 2,255 are those whose imagery has nodata, which make_chips.py skipped.
    extra = labelled.rows[~np.isin(labelled.chip_ids, shipped.chip_ids)]
    with rasterio.open(shared_data / NC_SCENE) as src:
        nodata = src.read(masked=True).mask.any(axis=0)
    boxes = _pixel_boxes(product)
    assert len(extra) > 0 and all(nodata[y0:y1, x0:x1].any() for x0, y0, x1, y1 in boxes[extra])
    assert (labelled.purity >= 0.6).all()


def test_strata_labels_on_another_chip_grid(shared_data, tmp_path):
    """A 12 px product of a crop of the scene, 5 px off the shipped chips' grid: labels from its own footprints."""
    import rasterio
    from datetime import datetime, timezone
    from affine import Affine
    from rasterio.windows import Window

    from eoembed.producers.produce import produce

    window = Window(5, 5, 200, 160)
    with rasterio.open(shared_data / NC_SCENE) as src:
        t = src.transform
        profile = {**src.profile, "width": window.width, "height": window.height,
                   "transform": Affine(t.a, 0, t.c + 5 * t.a, 0, t.e, t.f + 5 * t.e)}
        crop = tmp_path / "crop.tif"
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    path = produce([crop], out=tmp_path / "stats12", encoder="stats", chip_size=12, time=datetime(2000, 6, 1, tzinfo=timezone.utc))
    product = eoembed.open(path)
    labelled = eoembed.raster_labels(product, shared_data / NC_STRATA, purity=0.7)
    with rasterio.open(shared_data / NC_STRATA) as src:
        strata = src.read(1, masked=True).filled(np.nan)
    expected = {}
    for row, (x0, y0, x1, y1) in enumerate(_pixel_boxes(product)):
        code = _majority(strata[y0 + 5:y1 + 5, x0 + 5:x1 + 5], purity=0.7, min_valid=0.9)
        if code is not None:
            expected[row] = str(code)  # no names given and none in the raster: the codes
    assert dict(zip(labelled.rows.tolist(), labelled.labels.tolist())) == expected
    assert 0 < len(expected) < product.num_rows


def test_purity_threshold_and_category_names(product, shared_data, tmp_path):
    loose = eoembed.raster_labels(product, shared_data / NC_STRATA, purity=0.6)
    strict = eoembed.raster_labels(product, shared_data / NC_STRATA, purity=0.9)
    assert set(strict.chip_ids.tolist()) < set(loose.chip_ids.tolist()) and (strict.purity >= 0.9).all()
    # GDAL keeps category names in the raster's .aux.xml: code i is the i-th <Category>.
    raster = tmp_path / "strata.tif"
    raster.write_bytes((shared_data / NC_STRATA).read_bytes())
    categories = "".join(f"<Category>{NC_STRATA_CLASSES.get(code, '')}</Category>" for code in range(8))
    (tmp_path / "strata.tif.aux.xml").write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}'
                                                 "</CategoryNames></PAMRasterBand></PAMDataset>")
    named = eoembed.raster_labels(product, raster, purity=0.9)
    assert named.counts() == {NC_STRATA_CLASSES[int(code)]: n for code, n in strict.counts().items()}
    renamed = eoembed.raster_labels(product, raster, purity=0.9, classes={5: "woods"})
    assert "woods" in renamed.counts() and "forest" not in renamed.counts()


def test_bad_class_rasters(product, shared_data, tmp_path):
    import rasterio
    from affine import Affine

    with pytest.raises(eoembed.LabelError, match="has 5 bands; a class raster has one band"):
        eoembed.raster_labels(product, shared_data / NC_SCENE)
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8", crs="EPSG:32119",
                       transform=Affine(30, 0, 100_000, 0, -30, 100_000)) as dst:
        dst.write(np.ones((1, 20, 20), dtype=np.uint8))
    with pytest.raises(eoembed.LabelsOutsideProductError, match="does not cover"):
        eoembed.raster_labels(product, far)
    with pytest.raises(eoembed.LabelError, match="does not exist"):
        eoembed.raster_labels(product, tmp_path / "missing.tif")
    with pytest.raises(eoembed.LabelFieldError, match="--label-field"):
        eoembed.fewshot_product(product, shared_data / NC_POINTS)
