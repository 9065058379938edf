"""Labels from vector files joined to the chips of a real product (NC Landsat-7, stats encoder)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

import eoembed
from tests.conftest import NC_CHIP_LABELS, NC_POINTS

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
