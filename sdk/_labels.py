"""Labels for the chips of a product: from vector files joined spatially, or from a class raster.

Points label the chip that contains them; polygons label every chip whose area they cover by at
least ``min_overlap`` (a fraction of the chip). Labels in any CRS are reprojected to OGC:CRS84, the
CRS of every product's geometry column, before joining.

A class raster (any single-band GeoTIFF of class codes, e.g. a wall-to-wall land-cover map) labels
every chip it covers with the majority class of the pixels whose centres lie in the chip's footprint
(the footprint reprojected to the raster's CRS, the raster read in one window over the product):
when at least ``min_valid`` of those pixels hold a class (not nodata) and the majority class holds
at least ``purity`` of them. Class names come from ``classes`` (code -> name) or from the raster's
GDAL category names (its ``.aux.xml``), else the codes themselves.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import (
    FewShotWarning,
    LabelCRSError,
    LabelError,
    LabelFieldError,
    LabelsOutsideProductError,
)
from ._optional import require


def _geopandas():
    return require("geopandas", extra="fewshot")


def read_labels(path: str | os.PathLike | Any, *, label_field: str, crs: Any = None):
    """Labels as a GeoDataFrame in OGC:CRS84 with columns ``label`` (str) and ``geometry``.

    ``path`` is a GeoJSON, GeoPackage, shapefile or GeoParquet file, or a GeoDataFrame. ``crs`` is
    needed only when the file declares none; when both are given they must agree.
    """
    gpd = _geopandas()
    import pyproj

    if isinstance(path, gpd.GeoDataFrame):
        frame, name = path, "the labels"
    else:
        name = str(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"label file {path} does not exist")
        frame = gpd.read_parquet(path) if Path(path).suffix.lower() in (".parquet", ".geoparquet") else gpd.read_file(path)
    if label_field not in frame.columns or label_field == frame.geometry.name:
        columns = [c for c in frame.columns if c != frame.geometry.name]
        raise LabelFieldError(f"{name} has no label column {label_field!r}; its columns are {columns}: pass one with --label-field")
    if frame.crs is None and crs is None:
        raise LabelCRSError(f"{name} declares no CRS; pass crs= (--labels-crs) with the CRS of its coordinates, e.g. EPSG:32119")
    if crs is not None:
        given = pyproj.CRS.from_user_input(crs)
        if frame.crs is not None and not pyproj.CRS.from_user_input(frame.crs).equals(given, ignore_axis_order=True):
            raise LabelCRSError(f"{name} declares CRS {frame.crs.to_string()}, but {given.to_string()} was given; drop the option or fix the file")
        frame = frame.set_crs(given, allow_override=True)
    frame = frame[~(frame.geometry.is_empty | frame.geometry.isna()) & frame[label_field].notna()]
    if not len(frame):
        raise LabelError(f"{name} holds no labelled geometry (every row is empty or has no {label_field!r})")
    xmin, ymin, xmax, ymax = frame.total_bounds
    if frame.crs.is_geographic and (min(xmin, ymin) < -180 or xmax > 360 or ymax > 90 or ymin < -90):
        raise LabelCRSError(
            f"{name} declares the geographic CRS {frame.crs.to_string()}, but its coordinates reach "
            f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}), which are not degrees; set the file's real CRS"
        )
    out = gpd.GeoDataFrame({"label": frame[label_field].astype(str).to_numpy()}, geometry=frame.geometry.to_crs("OGC:CRS84").to_numpy(), crs="OGC:CRS84")
    return out


@dataclass(frozen=True)
class LabelledChips:
    """Chips of a product that received a label: row positions in product order, ids and labels."""

    rows: np.ndarray  # int64 positions in product order (the order of Product.to_numpy())
    chip_ids: np.ndarray  # object array of str
    labels: np.ndarray  # object array of str
    joined_labels: int  # label geometries that reached at least one chip (raster: chips labelled)
    total_labels: int  # raster: chips the raster covers
    purity: np.ndarray | None = None  # raster: share of the majority class in each labelled chip

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts)}

    def without(self, classes: Sequence[str]) -> "LabelledChips":
        keep = ~np.isin(self.labels.astype(str), [str(c) for c in classes])
        return LabelledChips(self.rows[keep], self.chip_ids[keep], self.labels[keep], self.joined_labels, self.total_labels,
                             None if self.purity is None else self.purity[keep])


def chip_footprints(product) -> tuple[np.ndarray, np.ndarray]:
    """(chip ids, shapely footprints in OGC:CRS84) of every row, in product order."""
    import shapely

    ids, geoms = [], []
    for batch in product.iter_batches(columns=["chip_id", "geometry"]):
        ids.extend(batch.column("chip_id").to_pylist())
        geoms.append(shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False)))
    return np.asarray(ids, dtype=object), (np.concatenate(geoms) if geoms else np.empty(0, dtype=object))


def join_labels(product, labels, *, label_field: str = "label", min_overlap: float = 0.5, crs: Any = None) -> LabelledChips:
    """Label the chips of ``product`` from a label file (or a GeoDataFrame read by :func:`read_labels`).

    A point labels the chip containing it (the first in product order when it lies on a shared
    edge); a polygon labels each chip it covers by at least ``min_overlap`` of the chip's area. A
    chip reached by several labels takes the one with the largest overlap (points: the most frequent).
    """
    import shapely

    if not 0 < min_overlap <= 1:
        raise LabelError(f"min_overlap must lie in (0, 1], got {min_overlap}")
    frame = read_labels(labels, label_field=label_field, crs=crs)
    where = labels if isinstance(labels, (str, os.PathLike)) else "the labels"
    ids, chips = chip_footprints(product)
    if not len(chips):
        raise LabelError(f"{product.path} holds no chips to label")
    chip_bounds = shapely.bounds(chips)
    extent = (chip_bounds[:, 0].min(), chip_bounds[:, 1].min(), chip_bounds[:, 2].max(), chip_bounds[:, 3].max())
    geoms = frame.geometry.to_numpy()
    inside = shapely.intersects(geoms, shapely.box(*extent))
    if not inside.any():
        lb = frame.total_bounds
        raise LabelsOutsideProductError(
            f"no label in {where} lies inside {product.path}: labels cover lon/lat "
            f"({lb[0]:.5f}, {lb[1]:.5f}, {lb[2]:.5f}, {lb[3]:.5f}), the product "
            f"({extent[0]:.5f}, {extent[1]:.5f}, {extent[2]:.5f}, {extent[3]:.5f}); check the file and its CRS"
        )
    names = frame["label"].to_numpy()
    tree = shapely.STRtree(chips)
    points = shapely.get_type_id(geoms) == 0
    best: dict[int, tuple[float, str]] = {}
    votes: dict[int, dict[str, int]] = {}
    reached = np.zeros(len(geoms), dtype=bool)
    if points.any():
        which = np.flatnonzero(points)
        src, hit = tree.query(geoms[which], predicate="intersects")
        order = np.lexsort((hit, src))
        seen: set[int] = set()
        for s, h in zip(src[order], hit[order]):
            if s in seen:  # a point on a shared edge labels one chip only
                continue
            seen.add(int(s))
            label = names[which[s]]
            votes.setdefault(int(h), {}).setdefault(label, 0)
            votes[int(h)][label] += 1
            reached[which[s]] = True
    if (~points).any():
        which = np.flatnonzero(~points)
        src, hit = tree.query(geoms[which], predicate="intersects")
        if len(src):
            fraction = shapely.area(shapely.intersection(geoms[which][src], chips[hit])) / shapely.area(chips[hit])
            for s, h, f in zip(src, hit, fraction):
                if f >= min_overlap:
                    reached[which[s]] = True
                    if int(h) not in best or f > best[int(h)][0]:
                        best[int(h)] = (float(f), names[which[s]])
    labelled = {h: label for h, (_, label) in best.items()}
    for h, counts in votes.items():
        if h not in labelled:  # polygons take precedence over points in the same chip
            labelled[h] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    if not labelled:
        raise LabelError(
            f"no chip of {product.path} is reached by {where}"
            + (f" (no polygon covers {min_overlap:.0%} of a chip: lower min_overlap)" if (~points).any() else "")
        )
    outside = int((~inside).sum())
    if outside:
        warnings.warn(f"{outside} of {len(geoms)} labels in {where} lie outside {product.path} and were ignored", FewShotWarning, stacklevel=2)
    rows = np.array(sorted(labelled), dtype=np.int64)
    return LabelledChips(rows=rows, chip_ids=ids[rows], labels=np.array([labelled[r] for r in rows.tolist()], dtype=object),
                         joined_labels=int(reached.sum()), total_labels=len(geoms))



RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def is_raster(labels: Any) -> bool:
    return isinstance(labels, (str, os.PathLike)) and Path(labels).suffix.lower() in RASTER_SUFFIXES


def label_chips(product, labels, *, label_field: str | None = None, min_overlap: float = 0.5, crs: Any = None,
                purity: float = 0.6, min_valid: float = 0.9, classes: dict[Any, str] | None = None) -> LabelledChips:
    """Labels of ``product``'s chips from a class raster (:func:`raster_labels`) or a vector file (:func:`join_labels`)."""
    if is_raster(labels):
        return raster_labels(product, labels, purity=purity, min_valid=min_valid, classes=classes)
    if label_field is None:
        raise LabelFieldError(f"{labels} is a vector label file: name the column holding the class (--label-field NAME)")
    return join_labels(product, labels, label_field=label_field, min_overlap=min_overlap, crs=crs)


def category_names(path: str | os.PathLike, *, band: int = 1) -> dict[int, str]:
    """GDAL's category names of ``band`` (from the raster's ``.aux.xml``), code -> name; empty when it has none."""
    import xml.etree.ElementTree as ElementTree

    aux = Path(f"{path}.aux.xml")
    if not aux.exists():
        return {}
    try:
        root = ElementTree.parse(aux).getroot()
    except ElementTree.ParseError as error:
        raise LabelError(f"{aux} is not valid XML ({error}); fix or delete it, or name the classes (--classes)") from error
    for element in root.iter("PAMRasterBand"):
        if int(element.get("band", "1")) == band:
            names = [c.text or "" for c in element.iter("Category")]
            return {code: name for code, name in enumerate(names) if name}
    return {}


def _class_names(path, classes: dict[Any, str] | None) -> dict[int, str]:
    if classes is None:
        return category_names(path)
    try:
        return {int(code): str(name) for code, name in classes.items()}
    except (TypeError, ValueError):
        raise LabelError(f"classes must map integer class codes to names, e.g. {{1: 'developed'}}, got {classes!r}") from None


def raster_labels(product, raster: str | os.PathLike, *, purity: float = 0.6, min_valid: float = 0.9,
                  classes: dict[Any, str] | None = None) -> LabelledChips:
    """Label every chip of ``product`` by the majority class of a single-band class raster under its footprint.

    ``purity``: the least share of the majority class among the chip's class pixels (0.6, as the
    shipped NC chip set used); ``min_valid``: the least share of the chip's pixels that hold a class;
    ``classes``: code -> name (default: the raster's category names, else the codes).
    """
    import pyproj
    import shapely

    rasterio = require("rasterio", extra="fewshot")
    from rasterio.windows import Window, from_bounds

    if not 0 < purity <= 1 or not 0 <= min_valid <= 1:
        raise LabelError(f"purity must lie in (0, 1] and min_valid in [0, 1], got {purity} and {min_valid}")
    path = Path(raster)
    if not path.exists():
        raise LabelError(f"class raster {path} does not exist")
    names = _class_names(path, classes)
    ids, footprints = chip_footprints(product)
    if not len(footprints):
        raise LabelError(f"{product.path} holds no chips to label")
    with rasterio.open(path) as src:
        if src.count != 1:
            raise LabelError(f"{path} has {src.count} bands; a class raster has one band of class codes")
        if src.crs is None:
            raise LabelCRSError(f"{path} declares no CRS; set it (e.g. rio edit-info --crs EPSG:32119 {path.name})")
        if src.transform.b or src.transform.d:
            raise LabelError(f"{path} is rotated (its geotransform has shear terms); warp it north-up first")
        to_raster = pyproj.Transformer.from_crs("OGC:CRS84", src.crs.to_wkt(), always_xy=True)
        local = shapely.transform(footprints, lambda xy: np.stack(to_raster.transform(xy[:, 0], xy[:, 1]), axis=1))
        bounds = shapely.bounds(local)
        extent = (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
        wanted = from_bounds(*extent, transform=src.transform)
        col0, row0 = max(0, math.floor(wanted.col_off)), max(0, math.floor(wanted.row_off))
        col1 = min(src.width, math.ceil(wanted.col_off + wanted.width))
        row1 = min(src.height, math.ceil(wanted.row_off + wanted.height))
        if col1 <= col0 or row1 <= row0:
            raise LabelsOutsideProductError(f"{path} does not cover {product.path}: the chips lie at {tuple(round(v, 1) for v in extent)} "
                                            f"in {src.crs.to_string()}, the raster at {tuple(round(v, 1) for v in src.bounds)}")
        window = Window(col0, row0, col1 - col0, row1 - row0)
        codes = src.read(1, window=window, masked=True)
        t = src.transform
        grid = (t.a, t.e, t.c + col0 * t.a, t.f + row0 * t.e)  # pixel size and the window's corner (north-up)
    code, share, covered = _majorities(codes, grid, local, bounds, min_valid=min_valid)
    rows = np.flatnonzero(covered & (share >= purity))
    if not len(rows):
        raise LabelError(f"no chip of {product.path} has a class covering {purity:.0%} of its pixels in {path}"
                         + ("; lower purity" if covered.any() else f" (none has {min_valid:.0%} of its pixels classed: lower min_valid)"))
    return LabelledChips(rows=rows.astype(np.int64), chip_ids=ids[rows],
                         labels=np.array([names.get(int(c), str(int(c))) for c in code[rows]], dtype=object),
                         joined_labels=len(rows), total_labels=int(covered.sum()), purity=share[rows])


def _majorities(codes, grid: tuple[float, float, float, float], footprints, bounds, *, min_valid: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(majority code, its share of the class pixels, enough class pixels) of each footprint, pixels counted by centre."""
    import shapely

    values = np.ma.getdata(codes).astype(np.int64)
    classed = ~np.ma.getmaskarray(codes)
    height, width = values.shape
    a, e, x0, y0 = grid
    # Pixel j's centre is x0 + (j + 0.5) a: the columns (rows) whose centres lie within each footprint's bounds.
    cols = np.sort(np.stack([(bounds[:, 0] - x0) / a - 0.5, (bounds[:, 2] - x0) / a - 0.5], axis=1), axis=1)
    rows = np.sort(np.stack([(bounds[:, 1] - y0) / e - 0.5, (bounds[:, 3] - y0) / e - 0.5], axis=1), axis=1)
    j0, j1 = np.ceil(cols[:, 0]).astype(np.int64), np.floor(cols[:, 1]).astype(np.int64) + 1
    i0, i1 = np.ceil(rows[:, 0]).astype(np.int64), np.floor(rows[:, 1]).astype(np.int64) + 1
    # Pixels outside the raster hold no class: they count towards min_valid as unclassed.
    expected = np.clip(j1 - j0, 0, None) * np.clip(i1 - i0, 0, None)
    j0, j1, i0, i1 = np.clip(j0, 0, width), np.clip(j1, 0, width), np.clip(i0, 0, height), np.clip(i1, 0, height)
    rectangles = np.isclose(shapely.area(footprints), (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1]), rtol=1e-6)
    code = np.zeros(len(footprints), dtype=np.int64)
    share = np.zeros(len(footprints))
    covered = np.zeros(len(footprints), dtype=bool)
    for n in range(len(footprints)):
        if j1[n] <= j0[n] or i1[n] <= i0[n]:
            continue
        within, pixels = np.ones((i1[n] - i0[n], j1[n] - j0[n]), dtype=bool), expected[n]
        if not rectangles[n]:  # a footprint skewed by the reprojection: only the centres inside it count
            jj, ii = np.meshgrid(np.arange(j0[n], j1[n]), np.arange(i0[n], i1[n]))
            within = shapely.contains_xy(footprints[n], x0 + (jj + 0.5) * a, y0 + (ii + 0.5) * e)
            pixels = within.sum()
        inside = within & classed[i0[n]:i1[n], j0[n]:j1[n]]
        found = values[i0[n]:i1[n], j0[n]:j1[n]][inside]
        if not len(found) or len(found) < min_valid * pixels:
            continue
        classes, counts = np.unique(found, return_counts=True)
        best = int(counts.argmax())  # a tie goes to the smallest code
        code[n], share[n], covered[n] = classes[best], counts[best] / len(found), True
    return code, share, covered
