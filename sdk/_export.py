"""Products and query results into the formats of the Python and GIS ecosystem.

One converter per output format, each told which columns are geometries by :func:`geometry_columns`:
WKB columns that DuckDB marks ``geoarrow.wkb`` and the product's own ``geometry`` (lon/lat,
OGC:CRS84) and ``native_footprint`` (in each row's ``native_crs``). Geometries become WKT in CSV,
GeoJSON objects in JSON and GeoJSON, and stay WKB with GeoParquet 1.1 ``geo`` metadata in Parquet.
Struct columns are flattened (``bbox.xmin``...) where a format holds only scalars, and list columns
become JSON text there, so no column type makes a format fail.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._errors import ExportError

if TYPE_CHECKING:
    import pyarrow as pa

    from ._read import Product

Format = Literal["table", "csv", "json", "parquet", "geoparquet", "geojson"]
FORMATS = ("table", "csv", "json", "parquet", "geoparquet", "geojson")
# Geometry columns the spec defines: the primary one is in OGC:CRS84; the footprint is in its row's
# native CRS, so it is never written as GeoJSON (which is lon/lat only) nor declared with a CRS.
_LONLAT_GEOMETRY = "geometry"
_NATIVE_GEOMETRY = "native_footprint"


def geometry_columns(schema: pa.Schema) -> dict[str, bool]:
    """WKB geometry columns of ``schema``, each mapped to whether it is in lon/lat (OGC:CRS84)."""
    import pyarrow as pa

    found: dict[str, bool] = {}
    for field in schema:
        if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            continue
        extension = (field.metadata or {}).get(b"ARROW:extension:name", b"")
        if extension == b"geoarrow.wkb" or field.name in (_LONLAT_GEOMETRY, _NATIVE_GEOMETRY):
            found[field.name] = field.name != _NATIVE_GEOMETRY
    return found


def _wkb_to(values: list[bytes | None], how: Literal["wkt", "geojson"]) -> list[Any]:
    import shapely

    geoms = shapely.from_wkb(values)
    if how == "wkt":
        return [None if g is None else g.wkt for g in geoms.tolist()]
    return [None if g is None else shapely.geometry.mapping(g) for g in geoms.tolist()]


def _plain(value: Any) -> Any:
    """A value JSON can hold: bytes as base64, times as ISO 8601, decimals as floats, intervals as
    their parts, containers recursively, anything else as its text."""
    import decimal

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if all(hasattr(value, k) for k in ("months", "days", "nanoseconds")):  # an interval
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if hasattr(value, "_asdict"):  # named tuples
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _is_scalar_text_type(kind) -> bool:
    """Types that CSV and Parquet writers take as they are."""
    import pyarrow as pa

    return any(test(kind) for test in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean,
                                       pa.types.is_string, pa.types.is_large_string, pa.types.is_timestamp,
                                       pa.types.is_date, pa.types.is_time, pa.types.is_null))


def _as_json_text(column) -> Any:
    import pyarrow as pa

    return pa.array([None if v is None else json.dumps(_plain(v)) for v in column.to_pylist()], pa.string())


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: lon/lat geometries as GeoJSON objects, native footprints as WKT."""
    geometries = geometry_columns(table.schema)
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if name in geometries:
            values = _wkb_to(values, "geojson" if geometries[name] else "wkt")
        columns[name] = values if name in geometries else [_plain(v) for v in values]
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def to_flat(table: pa.Table) -> pa.Table:
    """Scalars only: geometries as WKT, structs flattened to ``parent.child``, lists as JSON text."""
    import pyarrow as pa

    geometries = geometry_columns(table.schema)
    out = {}
    for field, column in zip(table.schema, table.columns):
        if field.name in geometries:
            out[field.name] = pa.array(_wkb_to(column.to_pylist(), "wkt"), pa.string())
        elif pa.types.is_struct(field.type):
            inner = pa.table({f"{field.name}.{child.name}": column.combine_chunks().field(i)
                              for i, child in enumerate(field.type)})
            out.update(zip(inner.column_names, to_flat(inner).columns))
        elif _is_scalar_text_type(field.type):
            out[field.name] = column
        else:  # lists, maps, binary, intervals, UUIDs...
            out[field.name] = _as_json_text(column)
    return pa.table(out)


def _geo_metadata(table: pa.Table) -> dict[str, Any] | None:
    """GeoParquet 1.1 ``geo`` metadata for the lon/lat geometry columns (a bbox covering when present)."""
    import pyarrow as pa

    import shapely

    from ._write import crs84_projjson

    lonlat = [name for name, is_lonlat in geometry_columns(table.schema).items() if is_lonlat]
    if not lonlat:
        return None
    columns = {}
    for name in lonlat:
        geoms = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
        types = sorted({t for t in shapely.get_type_id(geoms[~shapely.is_missing(geoms)]).tolist()})
        names = ["Point", "LineString", "LinearRing", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon", "GeometryCollection"]
        column: dict[str, Any] = {"encoding": "WKB", "geometry_types": [names[t] for t in types], "crs": crs84_projjson(),
                                  "edges": "planar"}
        if len(geoms):
            column["bbox"] = [float(v) for v in shapely.total_bounds(geoms)]
        if name == _LONLAT_GEOMETRY and "bbox" in table.column_names and pa.types.is_struct(table.schema.field("bbox").type):
            column["covering"] = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
        columns[name] = column
    primary = _LONLAT_GEOMETRY if _LONLAT_GEOMETRY in columns else lonlat[0]
    return {"version": "1.1.0", "primary_column": primary, "columns": columns}


def to_geoparquet_table(table: pa.Table) -> pa.Table:
    """``table`` with plain WKB geometry columns and GeoParquet 1.1 ``geo`` metadata (geopandas reads it)."""
    import pyarrow as pa

    geometries = geometry_columns(table.schema)
    # DuckDB's geoarrow extension type is dropped: GeoParquet declares geometries in ``geo``.
    fields = [pa.field(f.name, pa.binary()) if f.name in geometries else f for f in table.schema]
    table = table.cast(pa.schema(fields))
    # Parquet has no interval type: those columns are written as JSON text.
    for i, field in enumerate(table.schema):
        if pa.types.is_interval(field.type):
            table = table.set_column(i, field.name, _as_json_text(table.column(i)))
    geo = _geo_metadata(table)
    metadata = dict(table.schema.metadata or {})
    metadata.pop(b"geo", None)
    if geo is not None:
        metadata[b"geo"] = json.dumps(geo).encode()
    return table.replace_schema_metadata(metadata)


def to_geojson(table: pa.Table) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: the primary lon/lat geometry, every other column a property."""
    lonlat = [name for name, is_lonlat in geometry_columns(table.schema).items() if is_lonlat]
    if not lonlat:
        raise ExportError(
            f"GeoJSON needs a lon/lat geometry column; the result has {table.column_names}: select `geometry` too")
    primary = _LONLAT_GEOMETRY if _LONLAT_GEOMETRY in lonlat else lonlat[0]
    features = []
    for row in _records(table):
        geometry = row.pop(primary)
        features.append({"type": "Feature", "id": row.get("chip_id"), "geometry": geometry, "properties": row})
    return {"type": "FeatureCollection", "features": features}


def format_table(table: pa.Table, *, limit: int = 50) -> str:
    """A fixed-width text table of the first ``limit`` rows (long vectors and geometries abridged)."""
    names = table.column_names
    head = table.slice(0, limit)
    geometries = geometry_columns(table.schema)
    columns = {n: (_wkb_to(head.column(n).to_pylist(), "wkt") if n in geometries else head.column(n).to_pylist()) for n in names}

    def cell(value) -> str:
        if isinstance(value, (list, tuple)) and len(value) > 6:
            value = f"[{', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in value[:4])}, ... ({len(value)} values)]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        text = str(value)
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[cell(v) for v in row] for row in zip(*columns.values())] if names else []
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    if table.num_rows > limit:
        lines.append(f"... {table.num_rows - limit} more rows")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


def write_result(table: pa.Table, *, fmt: Format, out: str | os.PathLike | None = None) -> None:
    """Print ``table`` (or save it to ``out``) as table, csv, json, geojson, parquet or geoparquet."""
    if fmt in ("parquet", "geoparquet"):
        if not out:
            raise ExportError(f"--format {fmt} writes a file: give --out FILE.parquet")
        if fmt == "geoparquet" and not any(geometry_columns(table.schema).values()):
            raise ExportError(f"GeoParquet needs a lon/lat geometry column; the result has {table.column_names}: select `geometry` too")
        import pyarrow.parquet as pq

        pq.write_table(to_geoparquet_table(table), out, compression="zstd")
        return
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(to_flat(table), buffer)
        text = buffer.getvalue().decode()
    elif fmt == "json":
        text = json.dumps(_records(table), indent=1)
    elif fmt == "geojson":
        text = json.dumps(to_geojson(table))
    elif fmt == "table":
        text = format_table(table)
    else:
        raise ExportError(f"unknown format {fmt!r}; give one of {', '.join(FORMATS)}")
    if out:
        Path(out).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    else:
        print(text, end="" if text.endswith("\n") else "\n")


# -- the Python ecosystem ---------------------------------------------------------------------------


def to_pandas(product: "Product", *, columns: list[str] | None = None, dequantize: bool = True):
    """Every row as a pandas DataFrame; ``embedding`` holds de-quantised float32 arrays (one per row)."""
    import numpy as np

    from ._optional import require

    require("pandas", extra="pandas")  # pyarrow's to_pandas imports it
    table = product.to_arrow(columns=columns).read_all()
    frame = table.drop_columns([c for c in ("embedding",) if c in table.column_names]).to_pandas()
    if "embedding" in table.column_names:
        vectors = product.decode(table, dequantize=dequantize)
        frame["embedding"] = list(np.ascontiguousarray(vectors))
    return frame


def to_geopandas(product: "Product", *, columns: list[str] | None = None, dequantize: bool = True):
    """Every row as a geopandas GeoDataFrame on ``geometry`` in OGC:CRS84 (EPSG:4326 axis order lon/lat)."""
    from ._optional import require

    geopandas = require("geopandas", extra="fewshot")
    if columns is not None and "geometry" not in columns:
        columns = [*columns, "geometry"]
    frame = to_pandas(product, columns=columns, dequantize=dequantize)
    frame["geometry"] = geopandas.GeoSeries.from_wkb(frame["geometry"], crs="OGC:CRS84")
    return geopandas.GeoDataFrame(frame, geometry="geometry")


def stac_collection(product: "Product"):
    """The product's collection.json as a ``pystac.Collection`` (links resolve inside the product folder)."""
    import pystac

    collection = pystac.Collection.from_dict(product.collection, migrate=False)
    collection.set_self_href(str(product.path / "collection.json"))
    return collection


def stac_items(product: "Product") -> list:
    """The item of each data file (and none of the model item) as ``pystac.Item`` objects."""
    import pystac

    items = []
    for link in product.collection.get("links", []):
        if link.get("rel") == "item":
            path = (product.path / link["href"]).resolve()
            items.append(pystac.Item.from_dict(json.loads(path.read_text(encoding="utf-8")), href=str(path), migrate=False))
    return items
