"""A corpus of one-change mutations of real products, for the validator.

Base products are made from a crop of the real NC Landsat-7 scene by the producer (random
convolutional features, 32-d, 144 chips in two data files of 50-row groups), one per stored form,
plus one with every kind of index asset and one whose chips carry a time range. Each mutation
plants one defect at one level and then *reseals* the product: sizes and checksums in the
manifest, the items and the index assets are recomputed, so the validator can only find the
defect by checking the data against what the metadata says.

    .venv/bin/python -m tests.sdk.mutations --table    # corpus size and caught count per level
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eoembed._write import sha256_file

FORMS = ("none", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary")
INT8_LINEAR = ("int8", "int8-per-dimension")
PART = "data/part-00000.parquet"
OTHER = "data/part-00001.parquet"
ITEM = "items/part-00000.json"
MODEL_ITEM = "models/rcf-1.json"
NC_SCENE = "imagery/nc_landsat7_landclass96/landsat_multiband.tif"
WHEN = datetime(2000, 6, 1, tzinfo=timezone.utc)
# Findings that would betray an unsealed product rather than the planted defect.
SEAL_COLUMNS = {"assets/embeddings/file:size", "assets/embeddings/file:checksum"}
SEAL_CODES = {"STR005", "STR006", "IDX002"}


# -- base products --------------------------------------------------------------------------------


def build_bases(folder: Path, shared_data: Path) -> dict[str, Path]:
    """Every base product, keyed by form name, ``indexed`` and ``range``."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from eoembed.producers.produce import produce
    from eoembed.producers.encoders.rcf import RcfEncoder

    folder.mkdir(parents=True, exist_ok=True)
    crop = folder / "nc-crop.tif"
    with rasterio.open(shared_data / NC_SCENE) as source:
        window = Window(200, 200, 96, 96)
        # The crop's origin by hand: rasterio's window_transform warns under affine 3.1.
        t = source.transform
        origin = Affine(t.a, t.b, t.c + window.col_off * t.a, t.d, t.e, t.f + window.row_off * t.e)
        profile = dict(source.profile, width=96, height=96, transform=origin)
        pixels = source.read(window=window)
    with rasterio.open(crop, "w", **profile) as target:
        target.write(pixels)
    chips = pixels.reshape(pixels.shape[0], 12, 8, 12, 8).transpose(1, 3, 0, 2, 4).reshape(-1, pixels.shape[0], 8, 8)
    encoder = RcfEncoder(features=32, seed=0).fit(chips)

    def make(name: str, quantization: str, time: Any = WHEN) -> Path:
        return produce([crop], out=folder / name, encoder=encoder, chip_size=8, quantization=quantization, time=time,
                       normalize=True, row_group_size=50, max_rows_per_file=100)

    bases = {form: make(form, form) for form in FORMS}
    bases["range"] = make("range", "none", time=(WHEN, WHEN + timedelta(days=30)))
    bases["indexed"] = make("indexed", "none")
    import eoembed

    product = eoembed.open(bases["indexed"])
    for kind in ("int8", "binary", "hnsw", "ivf"):
        product.build_index(kind=kind, recall_queries=10)
    return bases


def reseal(root: Path) -> None:
    """Recompute every size and checksum that would otherwise betray a change: manifest bytes and
    sha256, each item's data file size and checksum, each index asset's size, checksum and
    data_sha256. Row counts, bounds and times are left alone: those are for the validator."""
    digests = {}
    if (root / "manifest.parquet").exists():
        schema = pq.read_schema(root / "manifest.parquet")
        rows = pq.read_table(root / "manifest.parquet").to_pylist()
        for row in rows:
            path = root / row["path"]
            if path.exists():
                row["bytes"], row["sha256"] = path.stat().st_size, sha256_file(path)
                digests[path.resolve()] = row["sha256"]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "manifest.parquet")
    for item_path in (root / "items").glob("*.json"):
        try:
            item = json.loads(item_path.read_text())
        except json.JSONDecodeError:
            continue
        for asset in item.get("assets", {}).values():
            target = (item_path.parent / asset.get("href", "")).resolve()
            if not target.is_file() or not target.is_relative_to(root.resolve()):
                continue
            asset["file:size"], asset["file:checksum"] = target.stat().st_size, "1220" + sha256_file(target)
            if "eoembed:index" in asset:
                data = (item_path.parent / item["assets"]["embeddings"]["href"]).resolve()
                asset["eoembed:index"]["data_sha256"] = digests.get(data, asset["eoembed:index"]["data_sha256"])
        item_path.write_text(json.dumps(item, indent=2))


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    level: str
    name: str
    code: str
    apply: Callable[[Path, str], None]  # (product folder, form)
    forms: tuple[str, ...] = ("none",)
    sealed: bool = True  # False: the planted defect is itself a size or checksum

    def cases(self) -> list[tuple["Mutation", str]]:
        return [(self, form) for form in self.forms]


MUTATIONS: list[Mutation] = []


def plant(level: str, name: str, code: str, change: Callable[[Path, str], None], *,
          forms: tuple[str, ...] = ("none",), sealed: bool = True) -> None:
    """Register one mutation: ``change`` plants the defect, ``code`` is what the validator must say."""
    MUTATIONS.append(Mutation(level, name, code, change, forms, sealed))


def apply_case(root: Path, item: Mutation, form: str) -> None:
    item.apply(root, form)
    if item.sealed:
        reseal(root)


# -- editing helpers --------------------------------------------------------------------------------


def edit_json(rel: str, change: Callable[[dict], Any]) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        document = json.loads((root / rel).read_text())
        change(document)
        (root / rel).write_text(json.dumps(document, indent=2))

    return apply


def edit_forms_json(rel: str, change: Callable[[dict, str], Any]) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        edit_json(rel, lambda document: change(document, form))(root, form)

    return apply


def read_data(path: Path) -> tuple[pa.Table, dict[str, Any]]:
    table = pq.read_table(path)
    meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items() if k in (b"geo", b"eoembed")}
    return table.replace_schema_metadata(None), meta


def write_data(path: Path, table: pa.Table, meta: dict[str, Any], **options: Any) -> None:
    encoded = {k.encode(): json.dumps(v).encode() for k, v in meta.items()}
    options.setdefault("row_group_size", 50)
    pq.write_table(table.replace_schema_metadata(encoded), path, compression="zstd", **options)


def edit_data(change: Callable[[pa.Table, dict, str], tuple[pa.Table, dict]], rel: str = PART,
              **write_options: Any) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        table, meta = read_data(root / rel)
        table, meta = change(table, meta, form)
        write_data(root / rel, table, meta, **write_options)

    return apply


def set_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def column_edit(name: str, row: int, value: Any) -> Callable[[pa.Table, dict, str], tuple[pa.Table, dict]]:
    """Set one row of one column (None makes it null)."""
    def change(table: pa.Table, meta: dict, form: str):
        values = table.column(name).to_pylist()
        values[row] = value(values[row]) if callable(value) else value
        return set_column(table, name, pa.array(values, table.schema.field(name).type)), meta

    return change


def footer_edit(change: Callable[[dict], Any], rel: str = PART) -> Callable[[Path, str], None]:
    def apply(table: pa.Table, meta: dict, form: str):
        change(meta["eoembed"])
        return table, meta

    return edit_data(apply, rel)


def geo_edit(change: Callable[[dict], Any]) -> Callable[[Path, str], None]:
    def apply(table: pa.Table, meta: dict, form: str):
        change(meta["geo"]["columns"]["geometry"])
        return table, meta

    return edit_data(apply)


def geo_root_edit(change: Callable[[dict], Any]) -> Callable[[Path, str], None]:
    def apply(table: pa.Table, meta: dict, form: str):
        change(meta["geo"])
        return table, meta

    return edit_data(apply)


def everywhere(change: Callable[[dict], Any], *, section: Callable[[dict], dict]) -> Callable[[Path, str], None]:
    """The same change to the footers of every data file and to the collection's copy: a bad value
    stated consistently, not a disagreement between documents."""
    def apply(root: Path, form: str) -> None:
        for rel in (PART, OTHER):
            footer_edit(lambda footer: change(section(footer)), rel)(root, form)
        edit_json("collection.json", lambda c: change(section({k.removeprefix("eoembed:"): v for k, v in c.items()})))(root, form)

    return apply


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).copy()


def with_codes(codes: np.ndarray, table: pa.Table) -> pa.Table:
    kind = table.schema.field("embedding").type
    array = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), kind.value_type), codes.shape[1])
    return set_column(table, "embedding", array)


def vector_edit(row: int, change: Callable[[np.ndarray, str], np.ndarray], *, scale: Callable[[float], float] | None = None):
    """Change the stored codes of one row (and, for per-row forms, its scale)."""
    def apply(table: pa.Table, meta: dict, form: str):
        codes = vectors_of(table)
        codes[row] = change(codes[row], form)
        table = with_codes(codes, table)
        if scale is not None and "scale" in table.column_names:
            table = column_edit("scale", row, scale)(table, meta, form)[0]
        return table, meta

    return edit_data(apply)


def embedding_cast(kind: Callable[[pa.DataType, int], pa.DataType]):
    def apply(table: pa.Table, meta: dict, form: str):
        column = table.column("embedding").combine_chunks()
        values = column.flatten()
        target = kind(column.type.value_type, column.type.list_size)
        if pa.types.is_fixed_size_list(target):
            array = pa.FixedSizeListArray.from_arrays(values.cast(target.value_type), target.list_size)
        else:
            array = column.cast(target)
        return set_column(table, "embedding", array), meta

    return edit_data(apply)


def geometry_edit(rows: slice | list[int], transform: Callable[[np.ndarray], np.ndarray], *, native: bool = False):
    """Move footprints of some rows (coordinates through ``transform``) and restate their bbox and the
    file bbox, so the geometry and its coverings still agree with each other."""
    import shapely

    def apply(table: pa.Table, meta: dict, form: str):
        name = "native_footprint" if native else "geometry"
        geoms = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
        picked = np.arange(len(geoms))[rows]
        geoms[picked] = shapely.transform(geoms[picked], transform)
        table = set_column(table, name, pa.array(shapely.to_wkb(geoms), pa.binary()))
        if not native:
            bounds = shapely.bounds(geoms)
            bbox = pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"])
            table = set_column(table, "bbox", bbox)
            meta["geo"]["columns"]["geometry"]["bbox"] = [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
                                                          float(bounds[:, 2].max()), float(bounds[:, 3].max())]
        return table, meta

    return edit_data(apply)


def bbox_edit(row: int, field: str, value: Callable[[float], float | None]):
    def apply(table: pa.Table, meta: dict, form: str):
        box = table.column("bbox").combine_chunks()
        fields = {k: box.field(k).to_pylist() for k in ("xmin", "ymin", "xmax", "ymax")}
        fields[field][row] = value(fields[field][row])
        array = pa.StructArray.from_arrays([pa.array(fields[k], pa.float64()) for k in fields], names=list(fields))
        return set_column(table, "bbox", array), meta

    return edit_data(apply)


def manifest_edit(change: Callable[[list[dict]], Any]) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        schema = pq.read_schema(root / "manifest.parquet")
        rows = pq.read_table(root / "manifest.parquet").to_pylist()
        change(rows)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "manifest.parquet")

    return apply


def delete(rel: str) -> Callable[[Path, str], None]:
    return lambda root, form: (root / rel).unlink()


def overwrite(rel: str, text: str) -> Callable[[Path, str], None]:
    return lambda root, form: (root / rel).write_text(text)


def steps(*changes: Callable[[Path, str], None]) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        for change in changes:
            change(root, form)

    return apply


def later(value: str, days: int) -> str:
    return (datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def shifted_box(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def other_dtype(form: str) -> str:
    return {"none": "float16", "float16": "float32", "binary": "int8"}.get(form, "uint8")


def halve(codes: np.ndarray, form: str) -> np.ndarray:
    """Codes whose de-quantised vector is shorter than 1 under every form but binary."""
    if form in ("none", "float16"):
        return codes * 0.5
    if form == "int8-per-row":
        return codes  # the scale is halved instead
    return (codes // 2).astype(codes.dtype)


# -- the corpus -------------------------------------------------------------------------------------
def projjson(name: str) -> dict:
    import pyproj

    return pyproj.CRS(name).to_json_dict()


def get_path(document: Any, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def at(path: tuple, value: Callable[[Any], Any]) -> Callable[[dict], None]:
    """Replace the value at ``path`` (keys and list indexes) by ``value(old)``."""
    def change(document: dict) -> None:
        get_path(document, path[:-1])[path[-1]] = value(get_path(document, path))

    return change


def drop(path: tuple) -> Callable[[dict], None]:
    return lambda document: get_path(document, path[:-1]).pop(path[-1])


C, I, M = "collection.json", ITEM, MODEL_ITEM
ZERO = "0" * 64
VECTORS_ALL = FORMS
NOT_BINARY = tuple(f for f in FORMS if f != "binary")
FLOATS = ("none", "float16")
INT8_SYMMETRIC = ("int8", "int8-per-dimension", "int8-per-row")

# collection: every field that restates the data, against footers and rows
plant("collection", "emb:dimensions off by one", "JSN006", edit_json(C, at(("emb:dimensions",), lambda v: v + 1)), forms=FORMS)
plant("collection", "data_type of another form", "JSN006", edit_forms_json(C, lambda c, f: c.update(data_type=other_dtype(f))), forms=FORMS)
plant("collection", "gsd doubled", "JSN006", edit_json(C, at(("gsd",), lambda v: v * 2)))
plant("collection", "chip layout chip_size", "JSN006", edit_json(C, at(("emb:chip_layout", "chip_size"), lambda v: [16, 16])))
plant("collection", "chip layout stride", "JSN006", edit_json(C, at(("emb:chip_layout", "stride"), lambda v: [4, 4])))
plant("collection", "chip layout grid_id", "JSN006", edit_json(C, at(("emb:chip_layout", "grid_id"), lambda v: "utm-10000m")))
plant("collection", "chip layout type", "JSN006", edit_json(C, at(("emb:chip_layout", "layout_type"), lambda v: "regular_grid")))
plant("collection", "spatial extent short of the rows", "JSN006", edit_json(C, at(("extent", "spatial", "bbox", 0, 2), lambda v: v - 0.005)))
plant("collection", "spatial extent beyond the rows", "JSN006", edit_json(C, at(("extent", "spatial", "bbox", 0, 0), lambda v: v - 0.5)))
plant("collection", "spatial extent ymin", "JSN006", edit_json(C, at(("extent", "spatial", "bbox", 0, 1), lambda v: v + 0.001)))
plant("collection", "temporal extent starts early", "JSN006", edit_json(C, at(("extent", "temporal", "interval", 0, 0), lambda v: later(v, -1))))
plant("collection", "temporal extent ends late", "JSN006", edit_json(C, at(("extent", "temporal", "interval", 0, 1), lambda v: later(v, 1))))
plant("collection", "temporal extent ends before the rows", "IDT002", edit_json(C, at(("extent", "temporal", "interval", 0, 1), lambda v: later(v, -1))))
plant("collection", "summaries emb:dimensions", "JSN006", edit_json(C, at(("summaries", "emb:dimensions"), lambda v: [v[0] * 2])))
plant("collection", "summaries data_type", "JSN006", edit_json(C, at(("summaries", "data_type"), lambda v: ["int8"])))
plant("collection", "provenance start", "JSN006", edit_json(C, at(("eoembed:provenance", "start"), lambda v: later(v, -1))))
plant("collection", "provenance end", "JSN006", edit_json(C, at(("eoembed:provenance", "end"), lambda v: later(v, 1))))
plant("collection", "provenance energy", "JSN006", edit_json(C, at(("eoembed:provenance",), lambda v: dict(v, energy={"device_type": "cpu", "inference_duration_s": 12345.0}))))
plant("collection", "licence", "JSN005", edit_json(C, at(("license",), lambda v: "MIT")))
plant("collection", "model version", "JSN005", edit_json(C, at(("eoembed:model", "version"), lambda v: "2")))
plant("collection", "embedding metric", "JSN005", edit_json(C, at(("eoembed:embedding", "metric"), lambda v: "dot")), forms=FORMS)
plant("collection", "grid id", "JSN005", edit_json(C, at(("eoembed:grid", "id"), lambda v: "majortom-20km")))
plant("collection", "spec version", "JSN002", edit_json(C, at(("eoembed:spec_version",), lambda v: "0.9.0")))
plant("collection", "emb:dimensions zero", "JSN001", edit_json(C, at(("emb:dimensions",), lambda v: 0)))
plant("collection", "unknown eoembed field", "JSN001", edit_json(C, lambda c: c.update({"eoembed:colour": "blue"})))
plant("collection", "chip size zero", "JSN002", edit_json(C, at(("eoembed:model", "input", "chip_size_px"), lambda v: 0)))
plant("collection", "emb:model link removed", "STR001", edit_json(C, at(("links",), lambda v: [k for k in v if k["rel"] != "emb:model"])))
plant("collection", "item links removed", "STR009", edit_json(C, at(("links",), lambda v: [k for k in v if k["rel"] != "item"])))
plant("collection", "item link leaves the product", "STR008", edit_json(C, at(("links",), lambda v: v + [{"rel": "item", "href": "../../elsewhere.json"}])))
plant("collection", "not JSON", "JSN003", overwrite(C, "{not json"))
plant("collection", "missing", "STR001", delete(C))

# items: each against its data file
plant("item", "bbox short of the rows", "JSN007", edit_json(I, at(("bbox", 2), lambda v: v - 0.005)))
plant("item", "bbox beyond the rows", "JSN007", edit_json(I, at(("bbox", 0), lambda v: v - 0.5)))
plant("item", "geometry moved", "JSN007", edit_json(I, at(("geometry", "coordinates", 0), lambda ring: [[x + 0.01, y] for x, y in ring])))
plant("item", "start_datetime early", "JSN007", edit_json(I, at(("properties", "start_datetime"), lambda v: later(v, -1))))
plant("item", "end_datetime late", "JSN007", edit_json(I, at(("properties", "end_datetime"), lambda v: later(v, 1))))
plant("item", "row count", "JSN007", edit_json(I, at(("properties", "table:row_count"), lambda v: v + 1)))
plant("item", "table columns short", "JSN007", edit_json(I, at(("properties", "table:columns"), lambda v: v[:-1])))
plant("item", "table column type", "JSN007", edit_json(I, at(("properties", "table:columns", 0, "type"), lambda v: "large_string")))
plant("item", "primary geometry", "JSN007", edit_json(I, at(("properties", "table:primary_geometry"), lambda v: "geom")))
plant("item", "proj:code", "JSN007", edit_json(I, at(("properties", "proj:code"), lambda v: "EPSG:32119")))
plant("item", "eoembed:quantization", "JSN007", edit_json(I, at(("properties", "eoembed:quantization", "original_dtype"), lambda v: "float64")), forms=FORMS)
plant("item", "emb:quantization dtype", "JSN007", edit_forms_json(I, lambda i, f: i["properties"]["emb:quantization"].update(quantized_dtype=other_dtype(f))), forms=FORMS)
plant("item", "spec version", "JSN007", edit_json(I, at(("properties", "eoembed:spec_version"), lambda v: "0.9.0")))
plant("item", "energy", "JSN007", edit_json(I, at(("properties",), lambda v: dict(v, **{"emb:energy": {"device_type": "gpu", "inference_duration_s": 99.0}}))))
plant("item", "file:size", "JSN007", edit_json(I, at(("assets", "embeddings", "file:size"), lambda v: v + 1)), sealed=False)
plant("item", "file:checksum", "JSN007", edit_json(I, at(("assets", "embeddings", "file:checksum"), lambda v: "1220" + ZERO)), sealed=False)
plant("item", "asset names the other file", "STR009", edit_json(I, at(("assets", "embeddings", "href"), lambda v: "../" + OTHER)))
plant("item", "absolute href", "STR008", edit_json(I, at(("assets", "embeddings", "href"), lambda v: "/" + PART)))
plant("item", "datetime not a time", "JSN001", edit_json(I, at(("properties", "start_datetime"), lambda v: "yesterday")))
plant("item", "not JSON", "JSN003", overwrite(I, "{not json"))
plant("item", "missing", "STR001", delete(I))

# the MLM model item: against the model contract of the footers
plant("model item", "mlm:name", "JSN008", edit_json(M, at(("properties", "mlm:name"), lambda v: "rcf-2")))
plant("model item", "architecture", "JSN008", edit_json(M, at(("properties", "mlm:architecture"), lambda v: "ViT-S/16")))
plant("model item", "framework", "JSN008", edit_json(M, at(("properties", "mlm:framework"), lambda v: "TensorFlow")))
plant("model item", "pretrained", "JSN008", edit_json(M, at(("properties", "mlm:pretrained"), lambda v: not v)))
plant("model item", "band order", "JSN008", edit_json(M, at(("properties", "mlm:input", 0, "bands"), lambda v: v[::-1])))
plant("model item", "input chip size", "JSN008", edit_json(M, at(("properties", "mlm:input", 0, "input", "shape"), lambda v: [-1, v[1], 16, 16])))
plant("model item", "input band count", "JSN008", edit_json(M, at(("properties", "mlm:input", 0, "input", "shape"), lambda v: [-1, v[1] - 1, v[2], v[3]])))
plant("model item", "value scaling", "JSN008", edit_json(M, at(("properties", "mlm:input", 0, "value_scaling", 0, "mean"), lambda v: v + 1)))
plant("model item", "output shape", "JSN008", edit_json(M, at(("properties", "mlm:output", 0, "result", "shape"), lambda v: [-1, v[1] + 1])), forms=FORMS)
plant("model item", "hyperparameters", "JSN008", edit_json(M, at(("properties", "mlm:hyperparameters", "seed"), lambda v: 1)))
plant("model item", "band name", "JSN008", edit_json(M, at(("properties", "bands", 0, "name"), lambda v: "B9")))
plant("model item", "weights checksum", "JSN008", edit_json(M, at(("assets", "model", "file:checksum"), lambda v: "1220" + ZERO)))
plant("model item", "asset band order", "JSN008", edit_json(M, at(("assets", "model", "bands"), lambda v: v[::-1])))
plant("model item", "bbox", "JSN008", edit_json(M, at(("bbox", 0), lambda v: v - 0.5)))
plant("model item", "time range", "JSN008", edit_json(M, at(("properties", "start_datetime"), lambda v: later(v, -1))))
plant("model item", "mlm:name missing", "JSN001", edit_json(M, drop(("properties", "mlm:name"))))
plant("model item", "not JSON", "JSN003", overwrite(M, "{not json"))
plant("model item", "missing", "STR001", delete(M))

# manifest: against the data files
plant("manifest", "bbox", "STR011", manifest_edit(lambda rows: rows[0]["bbox"].update(xmin=rows[0]["bbox"]["xmin"] - 0.01)))
plant("manifest", "start_datetime", "STR011", manifest_edit(lambda rows: rows[0].update(start_datetime=rows[0]["start_datetime"] - timedelta(days=1))))
plant("manifest", "end_datetime", "STR011", manifest_edit(lambda rows: rows[1].update(end_datetime=rows[1]["end_datetime"] + timedelta(days=1))))
plant("manifest", "rows", "STR007", manifest_edit(lambda rows: rows[0].update(rows=rows[0]["rows"] + 1)))
plant("manifest", "bytes", "STR005", manifest_edit(lambda rows: rows[0].update(bytes=rows[0]["bytes"] + 1)), sealed=False)
plant("manifest", "sha256", "STR006", manifest_edit(lambda rows: rows[0].update(sha256=ZERO)), sealed=False)
plant("manifest", "file listed twice", "STR004", manifest_edit(lambda rows: rows.append(dict(rows[0]))))
plant("manifest", "file not listed", "STR003", manifest_edit(lambda rows: rows.pop(1)))
plant("manifest", "listed file missing", "STR002", lambda root, form: (root / PART).rename(root / "data/part-00000.bak"))
plant("manifest", "sha256 column missing", "STR001", lambda root, form: pq.write_table(pq.read_table(root / "manifest.parquet").drop_columns(["sha256"]), root / "manifest.parquet"))
plant("manifest", "missing", "STR001", delete("manifest.parquet"))


def scaled_everywhere(factor: float) -> Callable[[Path, str], None]:
    """Linear scales multiplied in every document that states them: metadata consistent, codes not."""
    def scale(q: dict) -> None:
        q["scale"] = [s * factor for s in q["scale"]]

    items = [edit_json(f"items/part-0000{i}.json", lambda d: (scale(d["properties"]["eoembed:quantization"]), scale(d["properties"]["emb:quantization"])))
             for i in (0, 1)]
    return steps(everywhere(scale, section=lambda f: f["embedding"]["quantization"]), *items)


# footers: against the collection, the other footers and the spec's cross-field rules
plant("footer", "model version", "JSN005", footer_edit(at(("model", "version"), lambda v: "2")))
plant("footer", "another file's model", "IDT003", footer_edit(at(("model", "architecture"), lambda v: "ViT-S/16"), OTHER))
plant("footer", "dim off by one", "JSN002", footer_edit(at(("embedding", "dim"), lambda v: v + 1)), forms=FORMS)
plant("footer", "dtype differs from quantization", "JSN002", edit_data(lambda t, m, f: (t, at(("eoembed", "embedding", "dtype"), lambda v: other_dtype(f))(m) or m)), forms=FORMS)
plant("footer", "missing", "JSN004", edit_data(lambda t, m, f: (t, {"geo": m["geo"]})))
plant("footer", "unknown field", "JSN002", footer_edit(lambda footer: footer["embedding"].update(colour="blue")))
plant("footer", "licence", "JSN005", footer_edit(at(("license",), lambda v: "MIT")))
plant("footer", "grid", "JSN005", footer_edit(at(("grid", "id"), lambda v: "majortom-20km")))
plant("footer", "spec version", "JSN002", footer_edit(at(("spec_version",), lambda v: "0.9.0")))
plant("footer", "provenance time", "JSN002", footer_edit(at(("provenance", "start"), lambda v: "yesterday")))
plant("footer", "unknown quantization", "EMB005", everywhere(lambda q: q.update(method="pq"), section=lambda f: f["embedding"]["quantization"]))
plant("footer", "binary declared not normalised", "JSN002", everywhere(lambda e: e.update(normalized=False), section=lambda f: f["embedding"]), forms=("binary",))
plant("footer", "linear scales that do not fit the codes", "EMB004", scaled_everywhere(2.0), forms=INT8_LINEAR)
plant("footer", "scale list of the wrong length", "JSN002", everywhere(lambda q: q.update(scale=q["scale"][:1] * 3), section=lambda f: f["embedding"]["quantization"]), forms=INT8_LINEAR)


def write_raw_key(key: bytes, raw: bytes) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        table = pq.read_table(root / PART)
        metadata = dict(table.schema.metadata)
        metadata[key] = raw
        pq.write_table(table.replace_schema_metadata(metadata), root / PART, row_group_size=50)

    return apply


plant("footer", "not JSON", "JSN004", write_raw_key(b"eoembed", b"{not json"))

# GeoParquet metadata: against the rows
plant("geo", "missing", "GEO001", edit_data(lambda t, m, f: (t, {"eoembed": m["eoembed"]})))
plant("geo", "not JSON", "GEO001", write_raw_key(b"geo", b"{not json"))
plant("geo", "version 1.0.0", "GEO002", geo_root_edit(at(("version",), lambda v: "1.0.0")))
plant("geo", "primary column", "GEO002", geo_root_edit(at(("primary_column",), lambda v: "geom")))
plant("geo", "crs null", "GEO003", geo_edit(at(("crs",), lambda v: None)))
plant("geo", "crs of the native raster", "GEO003", geo_edit(at(("crs",), lambda v: projjson("EPSG:32119"))))
plant("geo", "encoding", "GEO003", geo_edit(at(("encoding",), lambda v: "point")))
plant("geo", "covering missing", "GEO004", geo_edit(drop(("covering",))))
plant("geo", "covering column", "GEO004", geo_edit(at(("covering", "bbox"), lambda v: {k: ["box", k] for k in v})))
plant("geo", "bbox too small", "GEO006", geo_edit(at(("bbox", 2), lambda v: v - 0.005)))
plant("geo", "bbox too large", "GEO006", geo_edit(at(("bbox", 0), lambda v: v - 0.5)))
plant("geo", "geometry types", "GEO009", geo_edit(at(("geometry_types",), lambda v: ["Point"])))
plant("geo", "edges", "GEO011", geo_edit(at(("edges",), lambda v: "spherical")))
plant("geo", "epoch", "GEO011", geo_edit(lambda g: g.update(epoch=2020.5)))
plant("geo", "clockwise ring", "GEO010", geometry_edit([5], lambda xy: xy[::-1]))


def bowtie(xy: np.ndarray) -> np.ndarray:
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    return np.array([[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]])


def stats(**options: Any) -> Callable[[Path, str], None]:
    return edit_data(lambda t, m, f: (t, m), **options)


def empty(table: pa.Table, meta: dict, form: str):
    return table.slice(0, 0), meta


def retype(name: str, kind: pa.DataType):
    return lambda t, m, f: (set_column(t, name, t.column(name).cast(kind)), m)


# rows: each column against its meaning and derivation
plant("rows", "bbox off its geometry", "GEO005", bbox_edit(3, "xmax", lambda v: v + 0.001))
plant("rows", "bbox NaN", "GEO005", bbox_edit(3, "ymin", lambda v: float("nan")))
plant("rows", "bbox field null", "IDT005", bbox_edit(3, "xmin", lambda v: None))
plant("rows", "chip_id null", "IDT005", edit_data(column_edit("chip_id", 4, None)))
plant("rows", "source_id null", "IDT005", edit_data(column_edit("source_id", 4, None)))
plant("rows", "grid_cell null", "IDT005", edit_data(column_edit("grid_cell", 4, None)))
plant("rows", "datetime null", "IDT005", edit_data(column_edit("datetime", 4, None)))
plant("rows", "geometry null", "GEO012", edit_data(column_edit("geometry", 4, None)))
plant("rows", "invalid polygon", "GEO008", geometry_edit([5], bowtie))
plant("rows", "longitude out of range", "GEO007", geometry_edit([3], lambda xy: xy + [300.0, 0.0]))
plant("rows", "lon/lat swapped in one row", "GEO013", geometry_edit([3], lambda xy: xy[:, ::-1]))
plant("rows", "lon/lat swapped in every row", "GEO013", geometry_edit(slice(None), lambda xy: xy[:, ::-1]))
plant("rows", "footprint of the next chip", "GEO013", geometry_edit([3], lambda xy: xy + [0.0025, 0.0]))
plant("rows", "native footprint moved", "GEO013", geometry_edit([3], lambda xy: xy + [1000.0, 0.0], native=True))
plant("rows", "native_crs of another zone", "GEO013", edit_data(column_edit("native_crs", 3, "EPSG:32617")))
plant("rows", "native_crs unknown", "GEO013", edit_data(column_edit("native_crs", 3, "EPSG:99999")))
plant("rows", "grid_cell of another cell", "IDT008", edit_data(column_edit("grid_cell", 6, "0U_0R")))
plant("rows", "chip_id not derived", "IDT009", edit_data(column_edit("chip_id", 6, lambda v: v[::-1])))
plant("rows", "chip_id duplicated", "IDT001", edit_data(lambda t, m, f: column_edit("chip_id", 9, t.column("chip_id")[8].as_py())(t, m, f)))
plant("rows", "pixel_bbox moved", "IDT009", edit_data(column_edit("pixel_bbox", 6, lambda v: [v[0] + 8, v[1], v[2] + 8, v[3]])))
plant("rows", "source_id of another scene", "IDT009", edit_data(column_edit("source_id", 6, "another-scene")))
plant("rows", "datetime outside the extent", "IDT002", edit_data(column_edit("datetime", 4, lambda v: v.replace(year=2031))))
plant("rows", "datetime without time zone", "IDT007", edit_data(retype("datetime", pa.timestamp("us"))))
plant("rows", "datetime in another zone", "IDT007", edit_data(retype("datetime", pa.timestamp("us", tz="America/New_York"))))
plant("rows", "datetime as text", "IDT002", edit_data(retype("datetime", pa.string())))
plant("rows", "valid_fraction above 1", "IDT010", edit_data(column_edit("valid_fraction", 7, 1.5)))
plant("rows", "valid_fraction below 0", "IDT010", edit_data(column_edit("valid_fraction", 7, -0.1)))
plant("rows", "valid_fraction NaN", "IDT010", edit_data(column_edit("valid_fraction", 7, float("nan"))))
plant("rows", "source_id column missing", "IDT004", edit_data(lambda t, m, f: (t.drop_columns(["source_id"]), m)))
plant("rows", "grid_cell column missing", "IDT004", edit_data(lambda t, m, f: (t.drop_columns(["grid_cell"]), m)))
plant("rows", "datetime column missing", "IDT004", edit_data(lambda t, m, f: (t.drop_columns(["datetime"]), m)))
plant("rows", "no row-group statistics", "STR013", stats(write_statistics=False))
plant("rows", "no bbox statistics", "STR013", edit_data(lambda t, m, f: (t, m), write_statistics=["chip_id", "geometry", "datetime", "embedding"]))
plant("rows", "zero chips", "STR012", steps(edit_data(empty), edit_data(empty, OTHER)))
plant("rows", "data file not Parquet", "STR010", overwrite(PART, "PAR1 not really parquet PAR1"))
plant("rows", "unlisted data file", "STR003", lambda root, form: shutil.copy(root / PART, root / "data/part-00099.parquet"))
plant("rows", "start after end", "IDT006", edit_data(lambda t, m, f: (set_column(set_column(t, "start_datetime", t.column("end_datetime")), "end_datetime", t.column("start_datetime")), m)), forms=("range",))
plant("rows", "start_datetime null", "IDT005", edit_data(column_edit("start_datetime", 4, None)), forms=("range",))
plant("rows", "end_datetime without time zone", "IDT007", edit_data(retype("end_datetime", pa.timestamp("us"))), forms=("range",))
plant("rows", "end_datetime outside the extent", "IDT002", edit_data(column_edit("end_datetime", 4, lambda v: v.replace(year=2031))), forms=("range",))

# vectors and their quantisation, on every form they apply to
plant("vectors", "zero vector", "EMB003", vector_edit(11, lambda v, f: v * 0), forms=NOT_BINARY)
plant("vectors", "shorter than unit", "EMB004", vector_edit(12, halve, scale=lambda s: s * 0.5), forms=NOT_BINARY)
plant("vectors", "NaN", "EMB002", vector_edit(7, lambda v, f: np.where(np.arange(len(v)) == 2, np.nan, v).astype(v.dtype)), forms=FLOATS)
plant("vectors", "infinity", "EMB002", vector_edit(7, lambda v, f: np.where(np.arange(len(v)) == 2, np.inf, v).astype(v.dtype)), forms=FLOATS)
plant("vectors", "null vector", "EMB002", edit_data(column_edit("embedding", 7, None)), forms=FORMS)
plant("vectors", "code -128", "EMB007", vector_edit(9, lambda v, f: np.where(np.arange(len(v)) == 0, -128, v).astype(v.dtype)), forms=INT8_SYMMETRIC)
plant("vectors", "width one short", "EMB001", edit_data(lambda t, m, f: (with_codes(vectors_of(t)[:, :-1], t), m)), forms=FORMS)
plant("vectors", "element type", "EMB001", embedding_cast(lambda kind, width: pa.list_(pa.float64(), width)), forms=FORMS)
plant("vectors", "variable-length lists", "EMB001", embedding_cast(lambda kind, width: pa.list_(kind)), forms=FORMS)
plant("vectors", "per-row scale NaN", "EMB006", edit_data(column_edit("scale", 6, float("nan"))), forms=("int8-per-row",))
plant("vectors", "per-row scale negative", "EMB006", edit_data(column_edit("scale", 6, lambda v: -v)), forms=("int8-per-row",))
plant("vectors", "per-row scale null", "IDT005", edit_data(column_edit("scale", 6, None)), forms=("int8-per-row",))
plant("vectors", "per-row scale column missing", "EMB006", edit_data(lambda t, m, f: (t.drop_columns(["scale"]), m)), forms=("int8-per-row",))


def grid_everywhere(grid_id: str) -> Callable[[Path, str], None]:
    """Every document names another grid; the rows keep the cells of the old one."""
    from eoembed import get_grid

    grid = get_grid(grid_id)
    section = {"id": grid.id, "definition": grid.definition()}

    def set_grid(footer: dict) -> None:
        footer["grid"] = section

    return steps(*(footer_edit(set_grid, rel) for rel in (PART, OTHER)),
                 edit_json(C, lambda c: (c.update({"eoembed:grid": section}), c["emb:chip_layout"].update(grid_id=grid.id))),
                 edit_json("grid.json", lambda g: (g.clear(), g.update(section))))


# grid.json and sources.json: against the footers and the rows
plant("grid/sources", "grid.json id", "JSN009", edit_json("grid.json", at(("id",), lambda v: "majortom-20km")))
plant("grid/sources", "grid.json definition", "JSN009", edit_json("grid.json", at(("definition", "dist_km"), lambda v: 20)))
plant("grid/sources", "grid.json not JSON", "JSN003", overwrite("grid.json", "{not json"))
plant("grid/sources", "grid.json missing", "STR001", delete("grid.json"))
plant("grid/sources", "rows in cells of another grid", "IDT008", grid_everywhere("utm-10000m"))
plant("grid/sources", "source missing", "JSN009", edit_json("sources.json", at(("source_ids",), lambda v: [])))
plant("grid/sources", "source not in any row", "JSN009", edit_json("sources.json", at(("source_ids",), lambda v: v + ["elsewhere"])))
plant("grid/sources", "source listed twice", "JSN009", edit_json("sources.json", at(("source_ids",), lambda v: v + v)))
plant("grid/sources", "sources.json missing", "STR001", delete("sources.json"))


def index_file(key: str, rel: str = ITEM) -> Callable[[Path], Path]:
    def locate(root: Path) -> Path:
        item = json.loads((root / rel).read_text())
        return ((root / rel).parent / item["assets"][key]["href"]).resolve()

    return locate


def npy_edit(key: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        path = index_file(key)(root)
        np.save(path, change(np.load(path)))

    return apply


def copy_index_of_other_file(key: str) -> Callable[[Path, str], None]:
    def apply(root: Path, form: str) -> None:
        shutil.copy(index_file(key, "items/part-00001.json")(root), index_file(key)(root))

    return apply


def bump(array: np.ndarray, row: int, value: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    array = array.copy()
    array[row] = value(array[row])
    return array


INT8_KEY, BINARY_KEY, HNSW_KEY, IVF_KEY = "index-int8-cosine", "index-binary", "index-hnsw-cosine", "index-ivf-cosine"
INDEXED = ("indexed",)

# index assets: present, sealed, built from the current data
plant("index", "int8 index missing", "IDX001", lambda root, form: index_file(INT8_KEY)(root).unlink(), forms=INDEXED)
plant("index", "hnsw index missing", "IDX001", lambda root, form: index_file(HNSW_KEY)(root).unlink(), forms=INDEXED)
plant("index", "int8 file:size", "IDX002", edit_json(I, at(("assets", INT8_KEY, "file:size"), lambda v: v + 1)), forms=INDEXED, sealed=False)
plant("index", "binary file:checksum", "IDX002", edit_json(I, at(("assets", BINARY_KEY, "file:checksum"), lambda v: "1220" + ZERO)), forms=INDEXED, sealed=False)
plant("index", "int8 codes changed", "IDX003", npy_edit(INT8_KEY, lambda a: bump(a, 2, lambda r: np.clip(r.astype(np.int16) + 5, -127, 127).astype(np.int8))), forms=INDEXED)
plant("index", "binary bits flipped", "IDX003", npy_edit(BINARY_KEY, lambda a: bump(a, 2, lambda r: ~r)), forms=INDEXED)
plant("index", "int8 index a row short", "IDX003", npy_edit(INT8_KEY, lambda a: a[:-1]), forms=INDEXED)
plant("index", "data_sha256 of another file", "IDX003", edit_json(I, at(("assets", INT8_KEY, "eoembed:index", "data_sha256"), lambda v: ZERO)), forms=INDEXED, sealed=False)
plant("index", "rows", "IDX003", edit_json(I, at(("assets", BINARY_KEY, "eoembed:index", "rows"), lambda v: v + 1)), forms=INDEXED)
plant("index", "int8 scale", "IDX003", edit_json(I, at(("assets", INT8_KEY, "eoembed:index", "scale"), lambda v: v * 2)), forms=INDEXED)
plant("index", "kind under another key", "IDX003", edit_json(I, at(("assets", INT8_KEY, "eoembed:index", "kind"), lambda v: "binary")), forms=INDEXED)
plant("index", "hnsw of the other file", "IDX003", copy_index_of_other_file(HNSW_KEY), forms=INDEXED)
plant("index", "ivf of the other file", "IDX003", copy_index_of_other_file(IVF_KEY), forms=INDEXED)
plant("index", "data rewritten, index not", "IDX003", edit_data(lambda t, m, f: (with_codes(-vectors_of(t), t), m)), forms=INDEXED)
plant("index", "unknown eoembed field", "JSN001", edit_json(I, at(("assets", INT8_KEY, "eoembed:index"), lambda v: dict(v, colour="blue"))), forms=INDEXED)
plant("index", "href leaves the product", "STR008", edit_json(I, at(("assets", BINARY_KEY, "href"), lambda v: "../../elsewhere.npy")), forms=INDEXED)

def cases() -> list[tuple[Mutation, str]]:
    return [case for item in MUTATIONS for case in item.cases()]


def run_case(bases: dict[str, Path], item: Mutation, form: str, folder: Path):
    import eoembed

    root = folder / "p"
    shutil.copytree(bases[form], root)
    apply_case(root, item, form)
    return eoembed.validate(root)


def caught(report, item: Mutation) -> bool:
    """The planted code is reported, and nothing says the product was left unsealed."""
    if item.code not in report.codes:
        return False
    if item.sealed:
        if SEAL_CODES & set(report.codes) - {item.code}:
            return False
        if any(f.column in SEAL_COLUMNS for f in report.findings):
            return False
    return True


def table(bases: dict[str, Path], folder: Path) -> str:
    levels: dict[str, list[int]] = {}
    for n, (item, form) in enumerate(cases()):
        report = run_case(bases, item, form, folder / f"{n}")
        shutil.rmtree(folder / f"{n}")
        counts = levels.setdefault(item.level, [0, 0, 0])
        counts[1] += 1
        counts[2] += caught(report, item)
    for item in MUTATIONS:
        levels[item.level][0] += 1
    lines = ["| level | mutations | cases (x forms) | caught |", "|---|---:|---:|---:|"]
    for level, (mutations, total, found) in levels.items():
        lines.append(f"| {level} | {mutations} | {total} | {found} |")
    sums = np.sum(list(levels.values()), axis=0)
    lines.append(f"| all | {sums[0]} | {sums[1]} | {sums[2]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import tempfile

    from tests.conftest import SHARED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print corpus size and caught count per level (Markdown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eoembed-mutations-") as tmp:
        made = build_bases(Path(tmp) / "bases", SHARED / "data")
        print(table(made, Path(tmp) / "cases") if args.table else f"{len(MUTATIONS)} mutations, {len(cases())} cases")
