"""The validator: valid products give no finding; each one-change defect gives its exact code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed._write import sha256_file
from tests.factories import QUANTIZATIONS, chips, model_contract, write

PART = "data/part-00000.parquet"


@pytest.fixture(scope="module")
def valid_product(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("valid") / "p", n=400, quantization="int8-per-row", row_group_size=100)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_valid_products_of_every_form_have_no_finding(tmp_path, quantization):
    path = write(tmp_path / "p", n=300, quantization=quantization, max_rows_per_file=120, row_group_size=50)
    report = eoembed.validate(path)
    assert report.findings == [], str(report)
    # Single data files and the collection.json path validate as well.
    assert eoembed.validate(path / PART).findings == []
    assert eoembed.validate(path / "collection.json").ok


# -- helpers that change exactly one thing ---------------------------------------------------------


def _json_edit(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        doc = json.loads((root / rel).read_text())
        change(doc)
        (root / rel).write_text(json.dumps(doc))

    return apply


def _fix_checksums(root: Path) -> None:
    """Bring manifest and item sizes/checksums in line with the files, so only the intended defect remains."""
    manifest = pq.read_table(root / "manifest.parquet").to_pylist()
    for row in manifest:
        path = root / row["path"]
        if path.exists():
            row["bytes"], row["sha256"] = path.stat().st_size, sha256_file(path)
    schema = pq.read_schema(root / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(manifest, schema=schema), root / "manifest.parquet")
    for item_path in (root / "items").glob("*.json"):
        item = json.loads(item_path.read_text())
        asset = item["assets"]["embeddings"]
        data = (item_path.parent / asset["href"]).resolve()
        if data.exists():
            asset["file:size"], asset["file:checksum"] = data.stat().st_size, "1220" + sha256_file(data)
        item_path.write_text(json.dumps(item))


def _rewrite(change: Callable[[pa.Table, dict], tuple[pa.Table, dict]], rel: str = PART) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        table = pq.read_table(root / rel)
        meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items() if k in (b"geo", b"eoembed")}
        table, meta = change(table, meta)
        encoded = {k.encode(): json.dumps(v).encode() for k, v in meta.items()}
        pq.write_table(table.replace_schema_metadata(encoded), root / rel, row_group_size=100, compression="zstd")
        _fix_checksums(root)

    return apply


def _set_column(name: str, values) -> Callable[[pa.Table, dict], tuple[pa.Table, dict]]:
    def change(table: pa.Table, meta: dict):
        return table.set_column(table.column_names.index(name), name, values(table)), meta

    return change


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(-1, column.type.list_size).copy()


def _with_vector(row: int, value: Callable[[np.ndarray], np.ndarray], *, scale: float | None = None):
    def change(table: pa.Table, meta: dict):
        codes = _vectors(table)
        codes[row] = value(codes[row])
        kind = table.schema.field("embedding").type
        array = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), kind.value_type), kind.list_size)
        table = table.set_column(table.column_names.index("embedding"), "embedding", array)
        if scale is not None:
            s = table.column("scale").to_numpy().copy()
            s[row] = scale
            table = table.set_column(table.column_names.index("scale"), "scale", pa.array(s, pa.float32()))
        return table, meta

    return change


def _geo(change: Callable[[dict], None]):
    def apply(table: pa.Table, meta: dict):
        change(meta["geo"])
        return table, meta

    return apply


def _footer(change: Callable[[dict], None]):
    def apply(table: pa.Table, meta: dict):
        change(meta["eoembed"])
        return table, meta

    return apply


def _both_quantization(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Change the quantisation consistently in footer and collection (a bad value, not a disagreement)."""
    footer = _rewrite(_footer(lambda f: change(f["embedding"]["quantization"])))
    collection = _json_edit("collection.json", lambda c: change(c["eoembed:embedding"]["quantization"]))

    def apply(root: Path) -> None:
        footer(root)
        collection(root)

    return apply


def _shift_one_geometry(dx: float):
    import shapely

    def change(table: pa.Table, meta: dict):
        geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        geoms[3] = shapely.transform(geoms[3], lambda xy: xy + [dx, 0])
        wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
        bounds = shapely.bounds(geoms)
        bbox = pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"])
        table = table.set_column(table.column_names.index("geometry"), "geometry", wkb)
        table = table.set_column(table.column_names.index("bbox"), "bbox", bbox)
        column = meta["geo"]["columns"]["geometry"]
        column["bbox"] = [float(bounds[:, 0].min()), float(bounds[:, 1].min()), float(bounds[:, 2].max()), float(bounds[:, 3].max())]
        return table, meta

    return change


def _bowtie(table: pa.Table, meta: dict):
    import shapely

    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    x0, y0, x1, y1 = shapely.bounds(geoms[5])
    geoms[5] = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)])
    return table.set_column(table.column_names.index("geometry"), "geometry", pa.array(shapely.to_wkb(geoms), pa.binary())), meta


def _duplicate_chip_id(table: pa.Table, meta: dict):
    ids = table.column("chip_id").to_pylist()
    ids[9] = ids[8]
    return table.set_column(table.column_names.index("chip_id"), "chip_id", pa.array(ids, pa.string())), meta


def _late_datetime(table: pa.Table, meta: dict):
    values = table.column("datetime").to_pylist()
    values[4] = values[4].replace(year=2031)
    return table.set_column(table.column_names.index("datetime"), "datetime", pa.array(values, table.schema.field("datetime").type)), meta


def _manifest(change: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        schema = pq.read_schema(root / "manifest.parquet")
        rows = pq.read_table(root / "manifest.parquet").to_pylist()
        change(rows)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "manifest.parquet")

    return apply


def _second_file_other_model(root: Path) -> None:
    """Split the data in two files whose footers name different models."""
    table = pq.read_table(root / PART)
    meta = {k.decode(): json.loads(v) for k, v in table.schema.metadata.items() if k in (b"geo", b"eoembed")}
    other = json.loads(json.dumps(meta))
    other["eoembed"]["model"]["version"] = "2"
    for rel, part, m in ((PART, table.slice(0, 200), meta), ("data/part-00001.parquet", table.slice(200), other)):
        encoded = {k.encode(): json.dumps(v).encode() for k, v in m.items()}
        pq.write_table(part.replace_schema_metadata(encoded), root / rel)
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    rows.append(dict(rows[0], path="data/part-00001.parquet"))
    rows[0]["rows"], rows[1]["rows"] = 200, 200
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(root / "manifest.parquet")), root / "manifest.parquet")
    item = json.loads((root / "items/part-00000.json").read_text())
    item["id"] += "-b"
    item["assets"]["embeddings"]["href"] = "../data/part-00001.parquet"
    (root / "items/part-00001.json").write_text(json.dumps(item))
    collection = json.loads((root / "collection.json").read_text())
    collection["links"].append({"rel": "item", "href": "./items/part-00001.json", "type": "application/geo+json"})
    (root / "collection.json").write_text(json.dumps(collection))
    _fix_checksums(root)


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    # structure and manifest
    "collection-missing": ("STR001", _delete("collection.json")),
    "manifest-missing": ("STR001", _delete("manifest.parquet")),
    "model-item-missing": ("STR001", _delete("models/test-encoder-1.json")),
    "listed-file-missing": ("STR002", lambda r: (r / PART).rename(r / "part.bak")),
    "unlisted-data-file": ("STR003", lambda r: shutil.copy(r / PART, r / "data/part-00099.parquet")),
    "file-listed-twice": ("STR004", _manifest(lambda rows: rows.append(dict(rows[0])))),
    "manifest-size-wrong": ("STR005", _manifest(lambda rows: rows[0].update(bytes=rows[0]["bytes"] + 1))),
    "manifest-sha256-wrong": ("STR006", _manifest(lambda rows: rows[0].update(sha256="0" * 64))),
    "manifest-rows-wrong": ("STR007", _manifest(lambda rows: rows[0].update(rows=401))),
    "href-leaves-product": ("STR008", _json_edit("collection.json", lambda c: c["links"].append({"rel": "item", "href": "../../elsewhere/item.json"}))),
    "absolute-href": ("STR008", _json_edit("items/part-00000.json", lambda i: i["assets"]["embeddings"].update(href="/data/part-00000.parquet"))),
    "item-link-removed": ("STR009", _json_edit("collection.json", lambda c: c.update(links=[lk for lk in c["links"] if lk["rel"] != "item"]))),
    "data-file-garbage": ("STR010", lambda r: ((r / PART).write_bytes(b"PAR1 not really parquet PAR1"), _fix_checksums(r))),
    # JSON metadata
    "emb-dimensions-zero": ("JSN001", _json_edit("collection.json", lambda c: c.update({"emb:dimensions": 0}))),
    "mlm-name-missing": ("JSN001", _json_edit("models/test-encoder-1.json", lambda m: m["properties"].pop("mlm:name"))),
    "item-datetime-garbage": ("JSN001", _json_edit("items/part-00000.json", lambda i: i["properties"].update(start_datetime="yesterday"))),
    "collection-chip-size-zero": ("JSN002", _json_edit("collection.json", lambda c: c["eoembed:model"]["input"].update(chip_size_px=0))),
    "collection-unknown-eoembed-field": ("JSN002", _json_edit("collection.json", lambda c: c["eoembed:model"].update(colour="blue"))),
    "collection-not-json": ("JSN003", lambda r: (r / "collection.json").write_text("{not json")),
    "footer-missing": ("JSN004", _rewrite(lambda t, m: (t, {"geo": m["geo"]}))),
    "footer-disagrees-with-collection": ("JSN005", _rewrite(_footer(lambda f: f["model"].update(version="2")))),
    "footer-licence-disagrees": ("JSN005", _rewrite(_footer(lambda f: f.update(license="MIT")))),
    # GeoParquet
    "geo-metadata-missing": ("GEO001", _rewrite(lambda t, m: (t, {"eoembed": m["eoembed"]}))),
    "geo-version-1.0": ("GEO002", _rewrite(_geo(lambda g: g.update(version="1.0.0")))),
    "geo-primary-column-wrong": ("GEO002", _rewrite(_geo(lambda g: g.update(primary_column="geom")))),
    "geo-crs-null": ("GEO003", _rewrite(_geo(lambda g: g["columns"]["geometry"].update(crs=None)))),
    "geo-encoding-wrong": ("GEO003", _rewrite(_geo(lambda g: g["columns"]["geometry"].update(encoding="point")))),
    "covering-missing": ("GEO004", _rewrite(_geo(lambda g: g["columns"]["geometry"].pop("covering")))),
    "bbox-disagrees-with-geometry": ("GEO005", _rewrite(_set_column("bbox", lambda t: pa.StructArray.from_arrays(
        [pa.array(np.asarray(t.column("bbox").combine_chunks().field(k)) + (0.5 if k == "xmin" else 0.0)) for k in ("xmin", "ymin", "xmax", "ymax")],
        names=["xmin", "ymin", "xmax", "ymax"])))),
    "declared-bbox-too-small": ("GEO006", _rewrite(_geo(lambda g: g["columns"]["geometry"].update(bbox=[-78.7, 35.7, -78.65, 35.75])))),
    "coordinates-outside-crs84": ("GEO007", _rewrite(_shift_one_geometry(300.0))),
    "invalid-polygon": ("GEO008", _rewrite(_bowtie)),
    # embeddings
    "embedding-not-fixed-size": ("EMB001", _rewrite(_set_column("embedding", lambda t: t.column("embedding").combine_chunks().cast(pa.list_(pa.int8()))))),
    "embedding-width-differs": ("EMB001", _rewrite(_set_column("embedding", lambda t: pa.FixedSizeListArray.from_arrays(
        pa.array(_vectors(t)[:, :31].reshape(-1), pa.int8()), 31)))),
    "dtype-declared-float16": ("EMB001", _rewrite(_footer(lambda f: f["embedding"].update(dtype="float16")))),
    "scale-nan": ("EMB006", _rewrite(_with_vector(6, lambda v: v, scale=float("nan")))),
    "zero-vector": ("EMB003", _rewrite(_with_vector(11, lambda v: v * 0))),
    "not-unit-norm": ("EMB004", _rewrite(_with_vector(12, lambda v: v // 2))),
    "quantization-unknown-method": ("EMB005", _both_quantization(lambda q: q.update(method="pq"))),
    "scale-column-missing": ("EMB006", _rewrite(lambda t, m: (t.drop_columns(["scale"]), m))),
    "scale-negative": ("EMB006", _rewrite(_with_vector(13, lambda v: v, scale=-0.01))),
    # identity and time
    "duplicate-chip-id": ("IDT001", _rewrite(_duplicate_chip_id)),
    "datetime-outside-extent": ("IDT002", _rewrite(_late_datetime)),
    "two-model-contracts": ("IDT003", _second_file_other_model),
    "required-column-missing": ("IDT004", _rewrite(lambda t, m: (t.drop_columns(["source_id"]), m))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_broken_product_gets_its_code(tmp_path, valid_product, case):
    code, breaks = CASES[case]
    root = tmp_path / "p"
    shutil.copytree(valid_product, root)
    breaks(root)
    report = eoembed.validate(root)
    assert not report.ok, f"{case}: no error found"
    assert code in report.codes, f"{case}: expected {code}, got\n{report}"
    finding = next(f for f in report.findings if f.code == code)
    assert finding.message and str(finding).startswith(code)


def test_nan_in_a_float_product_is_caught(tmp_path):
    root = write(tmp_path / "p", n=50, quantization="none")
    _rewrite(_with_vector(7, lambda v: np.where(np.arange(len(v)) == 2, np.nan, v).astype(np.float32)))(root)
    report = eoembed.validate(root)
    finding = next(f for f in report.findings if f.code == "EMB002")
    assert finding.row == 7 and finding.column == "embedding" and finding.file == PART


def test_findings_name_file_row_group_row_and_column(tmp_path, valid_product):
    root = tmp_path / "p"
    shutil.copytree(valid_product, root)
    _rewrite(_with_vector(250, lambda v: v * 0))(root)
    report = eoembed.validate(root)
    (finding,) = report.findings
    assert (finding.code, finding.file, finding.row, finding.row_group, finding.column) == ("EMB003", PART, 250, 2, "embedding")
    data = json.loads(report.to_json())
    assert data["valid"] is False and data["findings"][0]["code"] == "EMB003"


def test_max_errors_truncates(tmp_path, valid_product):
    root = tmp_path / "p"
    shutil.copytree(valid_product, root)
    _delete("manifest.parquet")(root)
    _json_edit("collection.json", lambda c: c.update({"emb:dimensions": 0}))(root)
    assert len(eoembed.validate(root).errors) >= 2
    report = eoembed.validate(root, max_errors=1)
    assert len(report.errors) == 1 and report.truncated


def test_missing_path_is_an_error_not_a_finding(tmp_path):
    with pytest.raises(eoembed.ProductNotFoundError):
        eoembed.validate(tmp_path / "nope")
