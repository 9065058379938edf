"""Pictures of a product: the first three principal components of its vectors as RGB.

Every chip's footprint is filled with its colour on one raster canvas over the selected chips'
extent. The canvas is drawn in the chips' own projected CRS when they share one (UTM squares stay
squares) and in OGC:CRS84 otherwise. The same canvas becomes a PNG figure (scale bar, legend of
the explained variance, title) or a Cloud-Optimised GeoTIFF (RGBA, georeferenced, opens in QGIS).

Vectors are standardised per dimension before the PCA: band statistics and most encoders mix
dimensions of very different scales, and one large dimension would otherwise make the picture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ._errors import PreviewError
from ._geometry import bbox_bounds

PcaScope = Literal["product", "cell", "scene"]
_GROUP_COLUMN = {"cell": "grid_cell", "scene": "source_id"}
# Long side of the canvas, in pixels, that the chip subdivision aims for.
_CANVAS_TARGET = 1200


@dataclass
class Preview:
    """What :func:`preview` drew: the file, the canvas (H, W, 4 uint8 RGBA) and its georeference."""

    path: Path
    canvas: np.ndarray = field(repr=False)
    extent: tuple[float, float, float, float]
    crs: str
    rows: int
    explained_variance: list[list[float]]
    scope: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows, "crs": self.crs, "extent": list(self.extent),
                "height": int(self.canvas.shape[0]), "width": int(self.canvas.shape[1]), "scope": self.scope,
                "explained_variance": self.explained_variance}


def principal_components(vectors: np.ndarray, *, components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n, components) of the standardised vectors and each component's share of the variance.

    Signs are fixed (the largest loading of each component is positive), so a product always gets
    the same colours. With fewer dimensions than components the missing ones are zero.
    """
    x = np.asarray(vectors, dtype=np.float64)
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    covariance = z.T @ z / max(len(z) - 1, 1)
    values, vectors_ = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:components]
    values = np.clip(values[order], 0, None)
    loadings = vectors_[:, order]
    loadings *= np.sign(loadings[np.abs(loadings).argmax(axis=0), np.arange(loadings.shape[1])])
    scores = np.zeros((len(z), components))
    scores[:, : loadings.shape[1]] = z @ loadings
    ratios = np.zeros(components)
    total = float(np.clip(np.linalg.eigvalsh(covariance), 0, None).sum())
    if total > 0:
        ratios[: len(values)] = values / total
    return scores, ratios


def _to_colours(scores: np.ndarray) -> np.ndarray:
    """Each component stretched between its 2nd and 98th percentile to 0..1 (outliers saturate)."""
    lo, hi = np.percentile(scores, [2, 98], axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((scores - lo) / span, 0, 1)


def _select(product, *, bbox: Any, where: str | None, params: Sequence[Any] | None) -> dict[str, Any]:
    """Vectors, footprints and group keys of the chips in ``bbox`` and matching ``where``."""
    from ._search import parse_bbox

    columns = product.to_arrow().schema.names
    native = "native_crs" in columns and "native_footprint" in columns
    wanted = ["embedding", "bbox", "grid_cell", "source_id"] + (["native_crs", "native_footprint"] if native else [])
    clauses, values = [], list(params or [])
    if where:
        clauses.append(f"({where})")
    box = parse_bbox(bbox)
    if box is not None:
        clauses.append("bbox.xmax >= ? AND bbox.xmin <= ? AND bbox.ymax >= ? AND bbox.ymin <= ?")
        values += [box[0], box[2], box[1], box[3]]
    query = f"SELECT {', '.join(wanted)} FROM embeddings" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    table = product.sql(query, values or None)
    if table.num_rows == 0:
        raise PreviewError(f"{product.path}: no chip matches bbox={bbox!r} where={where!r}; widen the selection")
    embedding = table.column("embedding").combine_chunks()
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
    selected = {"vectors": vectors, "grid_cell": table.column("grid_cell").to_numpy(zero_copy_only=False),
                "source_id": table.column("source_id").to_numpy(zero_copy_only=False)}
    crs_values = set(table.column("native_crs").to_pylist()) if native else set()
    if native and len(crs_values) == 1 and None not in crs_values:
        import shapely

        selected["crs"] = crs_values.pop()
        selected["boxes"] = shapely.bounds(shapely.from_wkb(table.column("native_footprint").to_numpy(zero_copy_only=False)))
    else:
        selected["crs"] = "OGC:CRS84"
        selected["boxes"] = bbox_bounds(table.column("bbox"))
    return selected


def _rasterise(boxes: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float], float]:
    """RGBA canvas with each box filled with its colour; chips later in the list lie on top."""
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    chip = float(np.median(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    long_side = max(x1 - x0, y1 - y0)
    # Whole pixels per chip, so that a regular chip grid lands exactly on canvas pixels.
    per_chip = int(np.clip(math.ceil(_CANVAS_TARGET * chip / long_side), 1, 64)) if chip > 0 else 1
    pixel = chip / per_chip if chip > 0 else long_side / _CANVAS_TARGET
    width, height = max(1, round((x1 - x0) / pixel)), max(1, round((y1 - y0) / pixel))
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    cols = np.clip(np.rint((boxes[:, [0, 2]] - x0) / pixel).astype(int), 0, width)
    rows = np.clip(np.rint((y1 - boxes[:, [3, 1]]) / pixel).astype(int), 0, height)
    rgba = np.concatenate([np.rint(colours * 255), np.full((len(colours), 1), 255)], axis=1).astype(np.uint8)
    for (c0, c1), (r0, r1), value in zip(cols, rows, rgba):
        canvas[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = value
    return canvas, (x0, y1 - height * pixel, x0 + width * pixel, y1), pixel


def _scale_bar_metres(extent_width_m: float) -> float:
    """A round length (1, 2 or 5 x 10^k m) near a fifth of the map's width."""
    target = extent_width_m / 5
    base = 10 ** math.floor(math.log10(target))
    return max((m * base for m in (1, 2, 5) if m * base <= target), default=base)


def _draw_png(path: Path, canvas: np.ndarray, extent, *, crs: str, ratios: list[list[float]], title: str,
              subtitle: str, dpi: int) -> None:
    from ._plotting import pyplot

    plt = pyplot()
    from matplotlib.patches import Patch
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, y0, x1, y1 = extent
    projected = crs != "OGC:CRS84"
    mid_lat = (y0 + y1) / 2
    # Metres per map unit: 1 when projected, a degree of longitude at mid-latitude when not.
    metres = 1.0 if projected else 111_320 * math.cos(math.radians(mid_lat))
    aspect = (y1 - y0) / (x1 - x0) * (1.0 if projected else 1 / math.cos(math.radians(mid_lat)))
    width_in = 7.0
    fig, ax = plt.subplots(figsize=(width_in + 2.6, max(3.0, width_in * aspect) + 1.0), dpi=dpi)
    unit = 1000.0 if projected else 1.0
    ax.imshow(canvas, extent=(x0 / unit, x1 / unit, y0 / unit, y1 / unit), interpolation="nearest", origin="upper")
    ax.set_facecolor("#e8e8e8")
    if projected:
        ax.set_xlabel(f"easting (km, {crs})")
        ax.set_ylabel(f"northing (km, {crs})")
    else:
        ax.set_aspect(1 / math.cos(math.radians(mid_lat)))
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
    ax.tick_params(labelsize=8)
    length_m = _scale_bar_metres((x1 - x0) * metres)
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    ax.add_artist(AnchoredSizeBar(ax.transData, length_m / metres / unit, label, "lower left", pad=0.5, sep=4,
                                  color="black", frameon=True, size_vertical=(y1 - y0) / unit / 150,
                                  fontproperties={"size": 9}))
    names = ("red", "green", "blue")
    if len(ratios) == 1:
        labels = [f"{names[i]}: PC{i + 1}, {100 * ratios[0][i]:.1f} % of variance" for i in range(3)]
        note = f"first three: {100 * sum(ratios[0]):.1f} %"
    else:
        shares = np.asarray(ratios)
        labels = [f"{names[i]}: PC{i + 1}, {100 * shares[:, i].min():.0f}-{100 * shares[:, i].max():.0f} %" for i in range(3)]
        note = f"PCA fitted per group ({len(ratios)} groups)"
    handles = [Patch(color=c, label=t) for c, t in zip(("#e41a1c", "#4daf4a", "#377eb8"), labels)]
    ax.legend(handles=handles, title=f"PCA of the embeddings\n{note}", loc="upper left",
              bbox_to_anchor=(1.02, 1), fontsize=8, title_fontsize=8, frameon=False, alignment="left")
    ax.set_title(f"{title}\n", fontsize=11, loc="left")
    ax.text(0, 1.015, subtitle, transform=ax.transAxes, fontsize=8, color="#444444", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _write_cog(path: Path, canvas: np.ndarray, extent, pixel: float, *, crs: str, tags: dict[str, str]) -> None:
    from ._optional import require

    rasterio = require("rasterio", extra="plot")
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy
    from affine import Affine

    height, width = canvas.shape[:2]
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint8",
               "crs": "EPSG:4326" if crs == "OGC:CRS84" else crs, "transform": Affine(pixel, 0, extent[0], 0, -pixel, extent[3]),
               "photometric": "RGB", "alpha": "YES"}
    with MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(np.moveaxis(canvas, -1, 0))
            dataset.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                   rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
            dataset.update_tags(**tags)
        with memory.open() as dataset:
            copy(dataset, path, driver="COG", compress="deflate", overview_resampling="nearest")


def preview(
    product: Any,
    out: str | os.PathLike,
    *,
    bbox: Any = None,
    where: str | None = None,
    params: Sequence[Any] | None = None,
    pca: PcaScope = "product",
    title: str | None = None,
    dpi: int = 150,
) -> Preview:
    """Draw the first three principal components of ``product``'s vectors as RGB at each chip's footprint.

    ``out`` ending in ``.png`` gives a figure with a scale bar and the explained variance; ``.tif``
    / ``.tiff`` a Cloud-Optimised GeoTIFF (RGBA, alpha 0 where no chip lies). ``bbox`` (a tuple,
    shapely geometry or GeoJSON mapping, lon/lat) and ``where`` (SQL over ``embeddings`` with bound
    ``params``) pick the chips. ``pca`` fits one PCA over the selection (``product``) or one per
    grid cell (``cell``) or scene (``scene``), each stretched to the full colour range.
    """
    from ._read import Product

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".png", ".tif", ".tiff"):
        raise PreviewError(f"preview output {out} must end in .png (a figure) or .tif (a Cloud-Optimised GeoTIFF)")
    if pca not in ("product", "cell", "scene"):
        raise PreviewError(f"pca={pca!r}: give 'product', 'cell' or 'scene'")
    product = product if isinstance(product, Product) else Product(product)
    selected = _select(product, bbox=bbox, where=where, params=params)
    vectors = selected["vectors"]
    colours = np.zeros((len(vectors), 3))
    ratios: list[list[float]] = []
    groups = [np.arange(len(vectors))] if pca == "product" else [
        np.flatnonzero(selected[_GROUP_COLUMN[pca]] == key) for key in np.unique(selected[_GROUP_COLUMN[pca]])]
    for rows in groups:
        scores, share = principal_components(vectors[rows])
        colours[rows] = _to_colours(scores)
        ratios.append([round(float(v), 4) for v in share])
    canvas, extent, pixel = _rasterise(selected["boxes"], colours)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = product.model
    name = f"{product.collection.get('id')}: principal components of {model['name']} embeddings"
    if kind == ".png":
        interval = product.collection["extent"]["temporal"]["interval"][0]
        dates = sorted({interval[0][:10], interval[1][:10]})
        subtitle = (f"{len(vectors):,} chips of {model['input']['chip_size_px']} px, {model['name']} "
                    f"{product.dim}-d, {' to '.join(dates)}")
        _draw_png(out, canvas, extent, crs=selected["crs"], ratios=ratios, title=title or name, subtitle=subtitle, dpi=dpi)
    else:
        _write_cog(out, canvas, extent, pixel, crs=selected["crs"], tags={
            "eoembed_product": str(product.collection.get("id")), "eoembed_pca_scope": pca,
            "eoembed_explained_variance": json.dumps(ratios), "eoembed_chips": str(len(vectors))})
    return Preview(path=out, canvas=canvas, extent=tuple(float(v) for v in extent), crs=selected["crs"],
                   rows=len(vectors), explained_variance=ratios, scope=pca)
