"""Train on the labelled chips of a product and predict a class for every chip.

The prediction product is one GeoParquet 1.1 file (chip_id, geometry, bbox covering, class,
probability) in OGC:CRS84, written in bounded batches, plus an optional PNG map.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._fewshot import Classifier, Method, pick_device, standardizer
from ._optional import require
from ._read import Product


def _moments(product: Product, device) -> tuple[Any, Any, tuple[float, float, float, float], list[str]]:
    """Mean and std of the vectors, the extent and geometry types: one streaming pass."""
    torch = require("torch", extra="learn")

    from ._geometry import geometry_types

    total = None
    square = None
    n = 0
    extent = [np.inf, np.inf, -np.inf, -np.inf]
    types: set[str] = set()
    for batch in product.iter_batches(columns=product._vector_columns() + ["geometry", "bbox"]):
        x = torch.from_numpy(np.array(product.decode(batch), dtype=np.float64)).to(device)
        total = x.sum(dim=0) if total is None else total + x.sum(dim=0)
        square = (x**2).sum(dim=0) if square is None else square + (x**2).sum(dim=0)
        n += len(x)
        box = batch.column("bbox")
        lows = [float(box.field(name).to_numpy().min()) for name in ("xmin", "ymin")]
        highs = [float(box.field(name).to_numpy().max()) for name in ("xmax", "ymax")]
        extent = [min(extent[0], lows[0]), min(extent[1], lows[1]), max(extent[2], highs[0]), max(extent[3], highs[1])]
        types.update(geometry_types(batch.column("geometry")))
    mean = total / n
    std = (square / n - mean**2).clamp(min=0).sqrt()
    return mean.float(), std.where(std > 0, std.new_ones(())).float(), tuple(extent), sorted(types)


def predict(
    product: Product | str | os.PathLike,
    labels: Any,
    *,
    out: str | os.PathLike,
    label_field: str = "label",
    method: Method = "logreg",
    min_overlap: float = 0.5,
    drop_classes: Sequence[str] = (),
    labels_crs: Any = None,
    purity: float = 0.6,
    classes: dict[Any, str] | None = None,
    map_path: str | os.PathLike | None = None,
    k: int = 5,
    batch_size: int = 65536,
    device: Any = None,
) -> Path:
    """Fit ``method`` on every labelled chip and write the class of every chip of ``product`` to ``out``.

    ``labels`` is a label file or GeoDataFrame (joined with :func:`join_labels`), a class raster
    (:func:`~eoembed._labels.raster_labels`, ``purity`` and ``classes``) or a :class:`LabelledChips`. Features are standardised with the whole product's mean and std.
    ``map_path`` also draws the classes as a PNG map.
    """
    torch = require("torch", extra="learn")

    from ._labels import LabelledChips, label_chips
    from ._write import bbox_type, crs84_projjson

    product = product if isinstance(product, Product) else Product(product)
    joined = labels if isinstance(labels, LabelledChips) else label_chips(
        product, labels, label_field=label_field, min_overlap=min_overlap, crs=labels_crs, purity=purity, classes=classes)
    joined = joined.without(drop_classes)
    classes = joined.classes
    device = pick_device(device)
    mean, std, extent, types = _moments(product, device)
    vectors = product.to_torch()[torch.as_tensor(joined.rows)].to(device)
    support_x = ((vectors - mean) / std)[None]
    lookup = {c: i for i, c in enumerate(classes)}
    support_y = torch.as_tensor([lookup[c] for c in joined.labels.tolist()], device=device)[None]
    model = Classifier(method, support_x, support_y, len(classes), k=k)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": types, "crs": crs84_projjson(), "edges": "planar", "bbox": list(extent),
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}}}
    prediction = {"method": method, "classes": classes, "training_chips": len(joined.rows),
                  "source_product": str(product.path), "model": product.model.get("name")}
    schema = pa.schema([("chip_id", pa.string()), ("geometry", pa.binary()), ("bbox", bbox_type()),
                        ("class", pa.string()), ("probability", pa.float32())],
                       metadata={b"geo": json.dumps(geo).encode(), b"eoembed_prediction": json.dumps(prediction).encode()})
    partial = out.with_name(f".{out.name}.tmp")
    class_names = np.asarray(classes, dtype=object)
    with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
        for batch in product.iter_batches(columns=product._vector_columns() + ["chip_id", "geometry", "bbox"], batch_size=batch_size):
            x = (torch.from_numpy(np.array(product.decode(batch), dtype=np.float32)).to(device) - mean) / std
            proba = model.predict_proba(x[None])[0]
            best, index = proba.max(dim=-1)
            index = index.cpu().numpy()
            table = pa.table({"chip_id": batch.column("chip_id"), "geometry": batch.column("geometry"), "bbox": batch.column("bbox"),
                              "class": pa.array(class_names[index].tolist(), pa.string()),
                              "probability": pa.array(best.clamp(max=1).cpu().numpy().astype(np.float32))}, schema=schema)
            writer.write_table(table, row_group_size=batch_size)
    os.replace(partial, out)
    if map_path is not None:
        draw_map(out, map_path)
    return out


def read_prediction(path: str | os.PathLike) -> pa.Table:
    """A prediction file written by :func:`predict` (its ``eoembed_prediction`` metadata kept)."""
    return pq.read_table(path)


def draw_map(prediction: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """A PNG map of a prediction file: each chip's box filled with its class colour."""
    from ._plotting import pyplot

    plt = pyplot()
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    table = pq.read_table(prediction, columns=["bbox", "class"])
    meta = json.loads(pq.read_schema(prediction).metadata[b"eoembed_prediction"])
    classes = meta["classes"]
    box = table.column("bbox").combine_chunks()
    x0, y0, x1, y1 = (box.field(n).to_numpy() for n in ("xmin", "ymin", "xmax", "ymax"))
    lookup = {c: i for i, c in enumerate(classes)}
    index = np.array([lookup[c] for c in table.column("class").to_pylist()], dtype=int)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(np.arange(len(classes)) % 20)
    polys = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], axis=1)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.add_collection(PolyCollection(polys, facecolors=colours[index], edgecolors="none"))
    ax.set_xlim(x0.min(), x1.max())
    ax.set_ylim(y0.min(), y1.max())
    ax.set_aspect(1 / np.cos(np.deg2rad((y0.min() + y1.max()) / 2)))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title or f"{meta['method']} prediction, {meta['training_chips']} labelled chips")
    ax.legend(handles=[Patch(color=colours[i], label=c) for i, c in enumerate(classes)], loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
