"""``eoembed.open``: a chip product or a pixel product, as its Collection says."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._pixel_read import PixelProduct
    from ._read import Product


def open_product(path: str | os.PathLike, *, verify: bool = False) -> "Product | PixelProduct":
    """Open a product folder (or its collection.json): a :class:`~eoembed.Product` of chips, or a
    :class:`~eoembed.PixelProduct` when its Collection has ``eoembed:pixel``. ``verify`` also checks
    every file's SHA-256."""
    from ._damage import read_json
    from ._read import Product, _resolve

    root = _resolve(path)
    if "eoembed:pixel" in read_json(root / "collection.json"):
        from ._pixel_read import PixelProduct

        return PixelProduct(root, verify=verify)
    return Product(root, verify=verify)
