"""Labels from vector files, joined spatially to the chips of a product.

Points label the chip that contains them; polygons label every chip whose area they cover by at
least ``min_overlap`` (a fraction of the chip). Labels in any CRS are reprojected to OGC:CRS84, the
CRS of every product's geometry column, before joining.
"""

from __future__ import annotations

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
    joined_labels: int  # label geometries that reached at least one chip
    total_labels: int

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts)}

    def without(self, classes: Sequence[str]) -> "LabelledChips":
        keep = ~np.isin(self.labels.astype(str), [str(c) for c in classes])
        return LabelledChips(self.rows[keep], self.chip_ids[keep], self.labels[keep], self.joined_labels, self.total_labels)


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

