"""STAC metadata of a product: the Collection, one Item per data file, the MLM model item, the manifest.

Every fact in the data files' ``eoembed`` footer appears in the Collection under the ``eoembed:``
prefix (the STAC Embedding extension v0.0.1 fields carry what it can express), so a STAC client sees
the model contract without opening a Parquet file. Chip and pixel products share these builders: a
pixel product's data files are tiles (its footer has a ``pixel`` section, its records a ``tile``
with the ``proj:*`` georeferencing), whose Items carry ``proj:*`` where chip Items carry ``table:*``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ._spec import (
    EMBEDDINGS_EXTENSION,
    FILE_EXTENSION,
    MLM_EXTENSION,
    PROJECTION_EXTENSION,
    STAC_VERSION,
    TABLE_EXTENSION,
    stac_extension_url,
)

if TYPE_CHECKING:
    from ._write import ProductWriter, _FileRecord

PARQUET = "application/vnd.apache.parquet"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
ZARR_ZIP = "application/vnd.zarr+zip; version=3"
TILE_MEDIA_TYPES = {"cog": COG, "zarr": ZARR_ZIP}
MANIFEST = "manifest.parquet"


def _iso(value: datetime) -> str:
    """RFC 3339 in UTC; fractional seconds are kept so extents contain every row's time."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def model_item_name(model: dict[str, Any]) -> str:
    return f"{slug(model['name'])}-{slug(model['version'])}.json"


def _box(b: Sequence[float]) -> dict[str, Any]:
    x0, y0, x1, y1 = b
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _union_bbox(boxes: Sequence[Sequence[float]]) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def emb_quantization(quant: dict[str, Any]) -> dict[str, Any]:
    """The quantisation in the Embedding extension's form (it has no per-row scale: see eoembed:quantization)."""
    out = {"method": quant["method"], "original_dtype": quant["original_dtype"], "quantized_dtype": quant["dtype"]}
    for key in ("scale", "offset"):
        if key in quant:
            out[key] = list(quant[key])
    return out


def _table_columns(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": field.name, "type": str(field.type)} for field in schema]


# The fields of each document that restate facts of the data files. The validator rebuilds each
# document from the data with the builders below and compares exactly these paths, so writer and
# validator cannot disagree on what a field means.
COLLECTION_STATEMENTS: tuple[tuple[str, ...], ...] = (
    ("extent", "spatial", "bbox"), ("extent", "temporal", "interval"), ("emb:dimensions",),
    ("data_type",), ("gsd",), ("emb:chip_layout", "layout_type"), ("emb:chip_layout", "chip_size"),
    ("emb:chip_layout", "stride"), ("emb:chip_layout", "grid_id"), ("summaries",),
    ("eoembed:provenance", "start"), ("eoembed:provenance", "end"), ("eoembed:provenance", "energy"),
)
ITEM_STATEMENTS: tuple[tuple[str, ...], ...] = (
    ("bbox",), ("geometry",), ("properties", "start_datetime"), ("properties", "end_datetime"),
    ("properties", "emb:quantization"), ("properties", "eoembed:spec_version"), ("properties", "eoembed:quantization"),
    ("properties", "table:row_count"), ("properties", "table:primary_geometry"), ("properties", "table:columns"),
    ("properties", "proj:code"), ("properties", "proj:transform"), ("properties", "proj:shape"), ("properties", "emb:energy"),
    ("assets", "embeddings", "file:size"), ("assets", "embeddings", "file:checksum"),
)
MODEL_ITEM_STATEMENTS: tuple[tuple[str, ...], ...] = (
    ("bbox",), ("properties", "start_datetime"), ("properties", "end_datetime"), ("properties", "mlm:name"),
    ("properties", "mlm:architecture"), ("properties", "mlm:framework"), ("properties", "mlm:pretrained"),
    ("properties", "mlm:input"), ("properties", "mlm:output"), ("properties", "mlm:hyperparameters"),
    ("properties", "bands"), ("assets", "model", "file:checksum"), ("assets", "model", "bands"),
)


def item_stem(path: str) -> str:
    """The name of a data file's Item: its file name without the format's suffix(es)."""
    name = Path(path).name
    for suffix in (".zarr.zip", ".tif", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def build_item(record: "_FileRecord", *, collection_id: str, schema: pa.Schema | None, model_href: str) -> dict[str, Any]:
    """The Item of one data file: a GeoParquet file of chips (``schema``, its Arrow schema), or a
    tile of a pixel product (``record.tile``; ``schema`` unused)."""
    stem = item_stem(record.path)
    embedding = record.footer["embedding"]
    version = record.footer["spec_version"]
    pixel = record.footer.get("pixel")
    if pixel is not None:
        assert record.tile is not None, f"{record.path}: a tile record needs its georeferencing"
        layout = {key: record.tile[key] for key in ("proj:code", "proj:transform", "proj:shape")}
        extensions = [EMBEDDINGS_EXTENSION, stac_extension_url(version), FILE_EXTENSION, PROJECTION_EXTENSION]
        media_type, title = TILE_MEDIA_TYPES[pixel["format"]], f"Pixel embeddings ({pixel['format']} tile, y x dim)"
    else:
        assert schema is not None
        layout = {"table:row_count": record.rows, "table:primary_geometry": "geometry",
                  "table:columns": _table_columns(schema), "proj:code": "OGC:CRS84"}
        extensions = [EMBEDDINGS_EXTENSION, stac_extension_url(version), FILE_EXTENSION, TABLE_EXTENSION, PROJECTION_EXTENSION]
        media_type, title = PARQUET, "Chip embeddings (GeoParquet 1.1)"
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(extensions),
        "id": f"{collection_id}-{stem}",
        "collection": collection_id,
        "geometry": _box(record.bbox),
        "bbox": list(record.bbox),
        "properties": {
            "datetime": None,
            "start_datetime": _iso(record.start),
            "end_datetime": _iso(record.end),
            "emb:quantization": emb_quantization(embedding["quantization"]),
            "eoembed:spec_version": version,
            "eoembed:quantization": embedding["quantization"],
            **layout,
            **({"emb:energy": record.footer["provenance"]["energy"]} if "energy" in record.footer["provenance"] else {}),
        },
        "links": [
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
            {"rel": "emb:model", "href": f"../{model_href}", "type": "application/geo+json"},
        ],
        "assets": {
            "embeddings": {
                "href": f"../{record.path}",
                "type": media_type,
                "roles": ["data"],
                "title": title,
                "file:size": record.bytes,
                # Multihash: 0x12 = sha2-256, 0x20 = 32 bytes.
                "file:checksum": "1220" + record.sha256,
            }
        },
    }


def build_model_item(footer: dict[str, Any], *, collection_id: str, bbox: list[float], start: datetime, end: datetime) -> dict[str, Any]:
    model = footer["model"]
    inputs = model["input"]
    bands = [band["name"] for band in inputs["bands"]]
    size = inputs["chip_size_px"]
    framework = {"pytorch": "PyTorch", "torch": "PyTorch"}.get(model["framework"].lower(), model["framework"])
    mlm_input: dict[str, Any] = {
        "name": "chip",
        "bands": bands,
        "input": {
            "shape": [-1, len(bands), size, size],
            "dim_order": ["batch", "bands", "height", "width"],
            "data_type": "float32",
        },
    }
    norm = inputs["normalization"]
    if norm["method"] == "standardize" and "mean" in norm and "std" in norm:
        mlm_input["value_scaling"] = [
            {"type": "z-score", "mean": m, "stddev": s} for m, s in zip(norm["mean"], norm["std"])
        ]
    weights_href = model.get("weights_href")  # a published URL, or a file inside the product (publishable_weights)
    if weights_href:
        from ._paths import is_url

        asset = {"href": weights_href if is_url(weights_href) else f"../{weights_href}", "type": "application/octet-stream", "roles": ["mlm:model", "mlm:weights"],
                 "mlm:artifact_type": "torch.save" if framework == "PyTorch" else "weights"}
    elif "weights_sha256" in model.get("unknown", ()):
        # Imported vectors: the weights exist but the source does not say where or which.
        source_url = model.get("parameters", {}).get("source", {}).get("url", "https://pypi.org/project/eoembed/")
        asset = {"href": source_url, "type": "text/html", "roles": ["mlm:model"], "mlm:artifact_type": "unknown",
                 "title": f"{model['name']} {model['version']}: weights and their checksum are not stated by the imported source"}
    else:
        from . import __version__

        asset = {"href": f"https://pypi.org/project/eoembed/{__version__}/", "type": "text/html",
                 "roles": ["mlm:model", "code"], "mlm:artifact_type": "python-package",
                 "title": f"{model['name']} is implemented in eoembed {__version__} (no weights file)"}
    if model.get("weights_sha256"):
        asset["file:checksum"] = "1220" + model["weights_sha256"]
    # STAC 1.1 band objects. MLM requires the bands its input names in the item properties; the
    # mirrored STAC 1.1 item schema admits them there only when an asset also lists them.
    bands = [{"name": band["name"], "description": f"from {band['source']}"} for band in inputs["bands"]]
    asset["bands"] = bands
    properties: dict[str, Any] = {
        "datetime": None,
        "start_datetime": _iso(start),
        "end_datetime": _iso(end),
        "description": f"Encoder {model['name']} {model['version']} ({model['architecture']}) as used for this product",
        "mlm:name": f"{model['name']}-{model['version']}",
        "mlm:architecture": model["architecture"],
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": framework,
        "mlm:pretrained": model.get("weights_sha256") is not None or "weights_sha256" in model.get("unknown", ()),
        "mlm:input": [mlm_input],
        "mlm:output": [{
            "name": "embedding",
            "tasks": ["similarity-search"],
            "result": {"shape": [-1, model["output"]["dim"]], "dim_order": ["batch", "embedding"], "data_type": "float32"},
        }],
        "bands": bands,
    }
    if model.get("parameters"):
        properties["mlm:hyperparameters"] = model["parameters"]
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted([MLM_EXTENSION, FILE_EXTENSION]),
        "id": Path(model_item_name(model)).stem,
        "collection": collection_id,
        "geometry": _box(bbox),
        "bbox": bbox,
        "properties": properties,
        "links": [
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
        ],
        "assets": {"model": asset},
    }


def summed_energy(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The energy of a product from its files': seconds and kWh add up, kWh only when every file
    was metered; None when no file recorded any."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    seconds = round(sum(p["inference_duration_s"] for p in parts), 6)
    out: dict[str, Any] = {"device_type": parts[0]["device_type"],
                           "name": "; ".join(sorted({p.get("name", "") for p in parts} - {""})),
                           "inference_duration_s": seconds}
    if not out["name"]:
        del out["name"]
    if all("energy_kwh" in p for p in parts):
        out["energy_kwh"] = sum(p["energy_kwh"] for p in parts)
        out["avg_power_w"] = round(out["energy_kwh"] * 3.6e6 / seconds, 3) if seconds > 0 else 0.0
        out["max_power_w"] = max(p.get("max_power_w", 0.0) for p in parts)
    return out


def build_collection(files: Sequence["_FileRecord"], *, collection_id: str, title: str | None = None,
                     description: str | None = None, item_hrefs: list[str], model_href: str,
                     source_href: str) -> dict[str, Any]:
    footer = dict(files[-1].footer)
    model = footer["model"]
    inputs = model["input"]
    bbox = _union_bbox([f.bbox for f in files])
    start = min(f.start for f in files)
    end = max(f.end for f in files)
    provenance = dict(footer["provenance"])
    # The collection covers the whole run: from the writer's start to the last file.
    provenance["start"] = min(f.footer["provenance"]["start"] for f in files)
    provenance["end"] = max(f.footer["provenance"]["end"] for f in files)
    energy = summed_energy([f.footer["provenance"].get("energy") for f in files])
    provenance.pop("energy", None)
    if energy:
        provenance["energy"] = energy
    layout: dict[str, Any] = {
        "layout_type": "regular_grid" if footer["grid"]["id"] == "scene" else "named_grid",
        "chip_size": [inputs["chip_size_px"]] * 2,
        "stride": [inputs["stride_px"]] * 2,
        "grid_id": footer["grid"]["id"],
        "grid_definition": {"rel": "about", "href": "./grid.json", "type": "application/json"},
    }
    embedding = footer["embedding"]
    version = footer["spec_version"]
    pixel = footer.get("pixel")
    kind = "chip" if pixel is None else "pixel"
    if pixel is not None:
        # One vector per pixel on each tile's own grid: the layout the proj:* fields of the Items give.
        layout = {"layout_type": "regular_grid", "chip_size": [1, 1], "stride": [1, 1], "grid_id": footer["grid"]["id"],
                  "grid_definition": layout["grid_definition"]}
    links = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
        {"rel": "self", "href": "./collection.json", "type": "application/json"},
        {"rel": "emb:model", "href": f"./{model_href}", "type": "application/geo+json", "title": f"{model['name']} model card (STAC MLM)"},
        {"rel": "emb:source-data", "href": source_href, "type": "application/json", "title": "Imagery the embeddings were computed from"},
    ]
    links += [{"rel": "item", "href": f"./{href}", "type": "application/geo+json"} for href in item_hrefs]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted([EMBEDDINGS_EXTENSION, stac_extension_url(version)]),
        "id": collection_id,
        "title": title or f"{model['name']} embeddings",
        "description": description or (
            f"{embedding['dim']}-d {kind} embeddings by {model['name']} {model['version']}, "
            f"stored as {embedding['dtype']} ({embedding['quantization']['method']} quantization), eoembed spec {version}."
        ),
        "license": footer["license"],
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[_iso(start), _iso(end)]]},
        },
        "emb:type": kind,
        "emb:dimensions": embedding["dim"],
        "data_type": embedding["dtype"],
        "gsd": inputs["gsd_m"],
        "emb:chip_layout": layout,
        "emb:temporal_resolution": "single_acquisition",
        "emb:fit_for_use": ["retrieval", "classification"],
        "eoembed:spec_version": version,
        "eoembed:model": model,
        "eoembed:embedding": embedding,
        "eoembed:grid": footer["grid"],
        "eoembed:provenance": provenance,
        **({"eoembed:pixel": pixel} if pixel is not None else {}),
        "links": links,
        "assets": {
            "manifest": {"href": f"./{MANIFEST}", "type": PARQUET, "roles": ["metadata"], "title": "Every data file with rows, bytes, sha256, bbox and time range"},
            "grid": {"href": "./grid.json", "type": "application/json", "roles": ["metadata"], "title": "Grid definition"},
        },
        "item_assets": {"embeddings": (
            {"type": PARQUET, "roles": ["data"], "title": "Chip embeddings (GeoParquet 1.1)"} if pixel is None else
            {"type": TILE_MEDIA_TYPES[pixel["format"]], "roles": ["data"], "title": f"Pixel embeddings ({pixel['format']} tile, y x dim)"})},
        "summaries": {
            "emb:type": [kind],
            "emb:dimensions": [embedding["dim"]],
            "data_type": [embedding["dtype"]],
        },
    }


def manifest_schema() -> pa.Schema:
    from ._write import bbox_type

    utc = pa.timestamp("us", tz="UTC")
    return pa.schema([
        ("path", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string()),
        ("bbox", bbox_type()), ("start_datetime", utc), ("end_datetime", utc),
    ])


def write_manifest(folder: Path, files: Sequence["_FileRecord"]) -> None:
    schema = manifest_schema()
    table = pa.table({
        "path": [f.path for f in files],
        "rows": [f.rows for f in files],
        "bytes": [f.bytes for f in files],
        "sha256": [f.sha256 for f in files],
        "bbox": [dict(zip(("xmin", "ymin", "xmax", "ymax"), f.bbox)) for f in files],
        "start_datetime": [f.start for f in files],
        "end_datetime": [f.end for f in files],
    }, schema=schema)
    pq.write_table(table, folder / MANIFEST, compression="zstd")


def _dump(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def write_metadata(folder: Path, *, writer: "ProductWriter", files: Sequence["_FileRecord"], sources: list[str]) -> None:
    """Write manifest, items, model item, grid and sources documents, and the collection last."""
    from ._write import ITEMS_DIR, MODELS_DIR

    write_manifest(folder, files)
    footer = files[-1].footer
    model_href = f"{MODELS_DIR}/{model_item_name(footer['model'])}"
    item_hrefs = []
    for record in files:
        schema = pq.read_schema(folder / record.path) if record.tile is None else None
        item = build_item(record, collection_id=writer.collection_id, schema=schema, model_href=model_href)
        href = f"{ITEMS_DIR}/{item_stem(record.path)}.json"
        _dump(folder / href, item)
        item_hrefs.append(href)
    bbox = _union_bbox([f.bbox for f in files])
    _dump(folder / model_href, build_model_item(footer, collection_id=writer.collection_id, bbox=bbox, start=min(f.start for f in files), end=max(f.end for f in files)))
    if writer.weights_file is not None:
        import shutil

        shutil.copyfile(writer.weights_file, folder / footer["model"]["weights_href"])
    _dump(folder / "grid.json", footer["grid"])
    source_href = writer.source_data_href or "./sources.json"
    if writer.source_data_href is None:
        _dump(folder / "sources.json", {"source_ids": sources})
    _dump(folder / "collection.json", build_collection(
        files, collection_id=writer.collection_id, title=writer.title, description=writer.description,
        item_hrefs=item_hrefs, model_href=model_href, source_href=source_href))
