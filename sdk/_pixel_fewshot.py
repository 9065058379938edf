"""Few-shot evaluation on a pixel product from labelled points: each point's pixel vector.

The episodes, classifiers and intervals are :func:`eoembed._fewshot.fewshot`'s; here the points
are sampled (:meth:`PixelProduct.sample`) and, for the blocked split, put into square blocks of the
tiles' own projected CRS, so that no block gives both a support and a query point in an episode.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._blocks import DEFAULT_BLOCK, Blocks, grid_blocks, parse_block
from ._errors import LabelError, LabelsOutsideProductError

__all__ = ["fewshot_pixels"]


def fewshot_pixels(product: Any, labels: Any, *, label_field: str = "label", labels_crs: Any = None,
                   drop_classes: Sequence[str] = (), splits: Sequence[Any] = (DEFAULT_BLOCK, None), **options: Any) -> list:
    """One :class:`~eoembed.FewShotReport` per split of ``splits`` (a block size such as ``"2km"``, or
    ``None`` for the random split) on the labelled points of ``labels`` (a point file or GeoDataFrame)
    that fall on pixels with data. ``options`` are :func:`~eoembed.fewshot`'s (shots, method, episodes...)."""
    from pyproj import CRS, Transformer

    from ._fewshot import fewshot
    from ._labels import read_labels
    from ._open import open_product

    product = open_product(product) if not hasattr(product, "sample") else product
    frame = read_labels(labels, label_field=label_field, crs=labels_crs)
    if not (frame.geometry.geom_type == "Point").all():
        raise LabelError("pixel few-shot takes labelled points; sample polygons' pixels into points first")
    frame = frame[~frame["label"].isin(list(drop_classes))]
    vectors = product.sample(frame)
    keep = ~np.isnan(vectors).any(axis=1)
    if not keep.any():
        raise LabelsOutsideProductError(f"none of the {len(frame)} labelled points lies on a pixel with data of {product.path}")
    vectors, names = vectors[keep], frame["label"].to_numpy()[keep]
    lon, lat = frame.geometry.x.to_numpy()[keep], frame.geometry.y.to_numpy()[keep]
    crs = CRS.from_user_input(product.crs) if product.crs else None
    if crs is None or not crs.is_projected:
        raise LabelError(f"{product.path}: blocked splits need the tiles in one projected CRS; use splits=[None]")
    x, y = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(lon, lat)
    gsd = float(product.model["input"]["gsd_m"])
    reports = []
    for block in splits:
        blocks = None
        if block is not None:
            size = parse_block(block)
            edge = size.metres(gsd)
            ids = grid_blocks(x, y, edge=edge, origin=(float(np.min(x)), float(np.min(y))))
            blocks = Blocks(ids=ids, size=size, metres=edge, cell=gsd, crs=crs.to_string())
        reports.append(fewshot(vectors, list(names), blocks=blocks, **options))
    return reports
