"""Few-shot evaluation on a pixel product from labelled points or polygons: the pixel under each
point, every pixel whose centre lies in a polygon.

The episodes, classifiers and intervals are :func:`eoembed._fewshot.fewshot`'s; here the labelled
pixels are read (:func:`labelled_pixels`) and, for the blocked split, put into square blocks of the
tiles' own projected CRS, so that no block gives both a support and a query pixel in an episode
(the pixels of one polygon are near each other: a blocked split keeps them apart).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._blocks import DEFAULT_BLOCK, Blocks, grid_blocks, parse_block
from ._errors import LabelError, LabelsOutsideProductError

__all__ = ["fewshot_pixels", "labelled_pixels"]


def labelled_pixels(product: Any, labels: Any, *, label_field: str = "label", labels_crs: Any = None,
                    drop_classes: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, D), labels (n,), lon (n,), lat (n,)) of the labelled pixels with data: the pixel
    under each point, and every pixel whose centre lies inside each polygon."""
    import shapely
    from pyproj import Transformer

    from ._labels import read_labels

    frame = read_labels(labels, label_field=label_field, crs=labels_crs)
    frame = frame[~frame["label"].isin(list(drop_classes))]
    is_point = (frame.geometry.geom_type == "Point").to_numpy()
    is_area = frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).to_numpy()
    if not (is_point | is_area).all():
        raise LabelError(f"labels must be points or polygons, got {sorted(set(frame.geometry.geom_type) - {'Point', 'Polygon', 'MultiPolygon'})}")
    parts = []
    if is_point.any():
        points = frame[is_point]
        parts.append((product.sample(points), points["label"].to_numpy(), points.geometry.x.to_numpy(), points.geometry.y.to_numpy()))
    if is_area.any():
        if product.crs is None:
            raise LabelError(f"{product.path}: polygon labels need the tiles in one CRS")
        to_grid = Transformer.from_crs("OGC:CRS84", product.crs, always_xy=True)
        to_lonlat = Transformer.from_crs(product.crs, "OGC:CRS84", always_xy=True)
        _, a, e, x0, y0 = product._grid()
        for label, polygon in zip(frame["label"].to_numpy()[is_area], frame.geometry.to_numpy()[is_area]):
            native = shapely.transform(polygon, lambda xy: np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1])))
            xmin, ymin, xmax, ymax = native.bounds
            row0, col0 = int(np.floor((ymax - y0) / e)), int(np.floor((xmin - x0) / a))
            row1, col1 = int(np.ceil((ymin - y0) / e)), int(np.ceil((xmax - x0) / a))
            values = product.to_numpy((row0, col0, max(row1, row0 + 1), max(col1, col0 + 1)))
            rows, cols = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]), indexing="ij")
            cx, cy = x0 + (col0 + cols + 0.5) * a, y0 + (row0 + rows + 0.5) * e
            inside = shapely.contains_xy(native, cx, cy)
            if inside.any():
                lon, lat = to_lonlat.transform(cx[inside], cy[inside])
                parts.append((values[inside], np.full(int(inside.sum()), label, dtype=object), np.asarray(lon), np.asarray(lat)))
    vectors = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, product.dim), np.float32)
    names, lon, lat = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in (1, 2, 3))
    keep = ~np.isnan(vectors).any(axis=1)
    if not keep.any():
        raise LabelsOutsideProductError(f"none of the {len(frame)} labels lies on a pixel with data of {product.path}")
    return vectors[keep], names[keep], lon[keep], lat[keep]


def fewshot_pixels(product: Any, labels: Any, *, label_field: str = "label", labels_crs: Any = None,
                   drop_classes: Sequence[str] = (), splits: Sequence[Any] = (DEFAULT_BLOCK, None), **options: Any) -> list:
    """One :class:`~eoembed.FewShotReport` per split of ``splits`` (a block size such as ``"2km"``, or
    ``None`` for the random split) on the labelled pixels of ``labels`` (points or polygons: a file or
    GeoDataFrame; see :func:`labelled_pixels`). ``options`` are :func:`~eoembed.fewshot`'s (shots, method, episodes...)."""
    from pyproj import CRS, Transformer

    from ._fewshot import fewshot
    from ._open import open_product

    product = open_product(product) if not hasattr(product, "sample") else product
    vectors, names, lon, lat = labelled_pixels(product, labels, label_field=label_field, labels_crs=labels_crs,
                                               drop_classes=drop_classes)
    gsd = float(product.model["input"]["gsd_m"])
    reports = []
    for block in splits:
        blocks = None
        if block is not None:
            crs = CRS.from_user_input(product.crs) if product.crs else None
            if crs is None or not crs.is_projected:
                raise LabelError(f"{product.path}: blocked splits need the tiles in one projected CRS; use splits=[None]")
            x, y = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(lon, lat)
            size = parse_block(block)
            edge = size.metres(gsd)
            ids = grid_blocks(x, y, edge=edge, origin=(float(np.min(x)), float(np.min(y))))
            blocks = Blocks(ids=ids, size=size, metres=edge, cell=gsd, crs=crs.to_string())
        reports.append(fewshot(vectors, list(names), blocks=blocks, **options))
    return reports
