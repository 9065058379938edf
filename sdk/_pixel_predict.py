"""Classified maps from pixel products: a classifier fitted on labelled points, every pixel classified,
the map written as a COG on the product's own pixel grid (class ``i + 1`` for ``classes[i]``, 0 nodata)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import LabelError
from ._optional import require

__all__ = ["draw_pixel_map", "predict_pixels"]


def _moments(product, tiles) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per dimension over every pixel with data (no label is used), tile by tile."""
    from ._quantize import dequantize_pixels
    from ._tiles import read_tile

    total = np.zeros(product.dim, dtype=np.float64)
    squares = np.zeros(product.dim, dtype=np.float64)
    count = 0
    for t in tiles:
        tile = read_tile(t.path)
        values = dequantize_pixels(tile.codes, product.quantization, scale=tile.scale).reshape(-1, product.dim)
        values = values[~np.isnan(values).any(axis=1)].astype(np.float64)
        total += values.sum(axis=0)
        squares += (values**2).sum(axis=0)
        count += len(values)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def predict_pixels(product: Any, labels: Any, *, out: str | os.PathLike, label_field: str = "label", method: str = "logreg",
                   drop_classes: Sequence[str] = (), labels_crs: Any = None, source_id: str | None = None, k: int = 5,
                   map_path: str | os.PathLike | None = None, device: Any = None) -> Path:
    """Fit ``method`` (``logreg``, ``prototype`` or ``knn``) on the labelled pixels of ``labels``
    (points or polygons, see :func:`~eoembed._pixel_fewshot.labelled_pixels`) and write the class of every pixel of ``product`` (of one scene with ``source_id``)
    to the GeoTIFF ``out``; its metadata item ``EOEMBED_CLASSES`` lists the classes of values 1, 2, ...
    ``map_path`` also draws the map as a PNG."""
    torch = require("torch", extra="learn")
    rasterio = require("rasterio", extra="produce")
    from affine import Affine

    from ._fewshot import Classifier, pick_device
    from ._open import open_product
    from ._pixel_fewshot import labelled_pixels
    from ._quantize import dequantize_pixels
    from ._tiles import read_tile

    product = open_product(product) if not hasattr(product, "sample") else product
    vectors, names, _, _ = labelled_pixels(product, labels, label_field=label_field, labels_crs=labels_crs,
                                           drop_classes=drop_classes)
    classes = sorted(set(names.tolist()))
    if len(classes) > 254:
        raise LabelError(f"{len(classes)} classes do not fit a uint8 map (at most 254)")
    code, a, e, x0, y0 = product._grid(source_id)
    tiles = product._tiles_of(source_id)
    device = pick_device(device)
    mean, std = (torch.from_numpy(v).to(device) for v in _moments(product, tiles))
    support_x = ((torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device) - mean) / std)[None]
    lookup = {c: i for i, c in enumerate(classes)}
    support_y = torch.as_tensor([lookup[c] for c in names.tolist()], device=device)[None]
    classifier = Classifier(method, support_x, support_y, len(classes), k=k)

    height = max(int(round((t.geo.transform[5] - y0) / e)) + t.geo.shape[0] for t in tiles)
    width = max(int(round((t.geo.transform[2] - x0) / a)) + t.geo.shape[1] for t in tiles)
    classified = np.zeros((height, width), dtype=np.uint8)
    for t in tiles:
        tile = read_tile(t.path)
        values = dequantize_pixels(tile.codes, product.quantization, scale=tile.scale)
        rows, cols = t.geo.shape
        flat = values.reshape(-1, product.dim)
        data = ~np.isnan(flat).any(axis=1)
        labels_of = np.zeros(len(flat), dtype=np.uint8)
        if data.any():
            x = (torch.from_numpy(np.ascontiguousarray(flat[data])).to(device) - mean) / std
            labels_of[data] = classifier.predict_proba(x[None])[0].argmax(dim=-1).cpu().numpy().astype(np.uint8) + 1
        r, c = int(round((t.geo.transform[5] - y0) / e)), int(round((t.geo.transform[2] - x0) / a))
        classified[r:r + rows, c:c + cols] = labels_of.reshape(rows, cols)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    profile = {"driver": "COG", "width": width, "height": height, "count": 1, "dtype": "uint8", "crs": code,
               "transform": Affine(a, 0.0, x0, 0.0, e, y0), "nodata": 0, "compress": "DEFLATE"}
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(classified, 1)
        dst.update_tags(EOEMBED_CLASSES=json.dumps(classes), EOEMBED_PREDICTION=json.dumps({
            "method": method, "training_pixels": len(vectors), "source_product": str(product.path),
            "model": product.model.get("name")}))
    os.replace(partial, out)
    if map_path is not None:
        draw_pixel_map(out, map_path)
    return out


def draw_pixel_map(prediction: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """A PNG of a map written by :func:`predict_pixels`: each pixel in its class colour, on its own CRS's axes."""
    rasterio = require("rasterio", extra="produce")
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ._plotting import pyplot

    plt = pyplot()
    with rasterio.open(prediction) as src:
        classes = json.loads(src.tags()["EOEMBED_CLASSES"])
        meta = json.loads(src.tags()["EOEMBED_PREDICTION"])
        values, bounds, crs = src.read(1), src.bounds, src.crs
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(np.arange(len(classes)) % 20)
    shown = np.ma.masked_equal(values, 0)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.imshow(shown - 1, cmap=ListedColormap(colours), vmin=0, vmax=len(classes) - 1, interpolation="nearest",
              extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
    ax.set_xlabel(f"x ({crs.to_string()})")
    ax.set_ylabel("y")
    ax.set_title(title or f"{meta['method']} per pixel, {meta['training_pixels']} labelled pixels ({meta['model']})", fontsize=10)
    ax.legend(handles=[Patch(color=colours[i], label=c) for i, c in enumerate(classes)], loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
