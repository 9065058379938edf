"""Faithful fixtures of peer formats that have no real file in ../shared, built by code from each
format's public description (the module docstrings of eoembed.importers say which)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# A Major TOM 10 km cell in the Po valley, northern Italy (lon 10.0, lat 45.0).
MAJORTOM_POINT = (10.0, 45.0)
IMAGE_PX = 1068  # Major TOM Core images: 1068 x 1068 px at 10 m, anchored at the cell's bottom-left corner
TIMESTAMP = "2020-07-14 10:20:31"
PRODUCT = "S2B_MSIL1C_20200714T102029_N0209_R065_T32TNR_20200714T123313"


def _geo_metadata(crs, bounds) -> bytes:
    """GeoParquet 1.0 'geo' metadata as geopandas writes it (crs None = null: a GeoDataFrame without CRS)."""
    return json.dumps({"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "crs": crs, "geometry_types": ["Polygon"], "bbox": [float(v) for v in bounds]}}}).encode()


def majortom_shard(path: Path, *, dim: int = 64, fragment: int = 128, per_side: int = 9, seed: int = 0) -> Path:
    """A Major TOM embedding shard as MajorTOM_Embedder writes it: the fragments of one cell's image,
    with overlapping offsets and border shift, WGS84 footprints in a GeoDataFrame without CRS."""
    import shapely
    from pyproj import Transformer

    from eoembed._grid import get_grid

    grid = get_grid("majortom-10km")
    cell = grid.cell_of(*MAJORTOM_POINT)
    row_u, col_r = grid.parse(cell)
    crs = grid.native_crs(cell)
    west, south = grid.cell_bounds(cell)[:2]
    x0, y0 = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(west, south)
    top = y0 + IMAGE_PX * 10.0
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    offsets = np.linspace(0, IMAGE_PX - fragment, per_side).round().astype(int)  # ~10 % overlap, last one at the border
    rng = np.random.default_rng(seed)
    rows = []
    for y in offsets:
        for x in offsets:
            utm = shapely.box(x0 + 10.0 * x, top - 10.0 * (y + fragment), x0 + 10.0 * (x + fragment), top - 10.0 * y)
            geometry = shapely.transform(utm, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
            embedding = rng.normal(size=dim).astype(np.float32)
            rows.append({
                "unique_id": hashlib.sha256(f"{geometry}_{TIMESTAMP}_{PRODUCT}_{embedding}".encode()).hexdigest(),
                "embedding": embedding.tolist(), "timestamp": TIMESTAMP, "product_id": PRODUCT, "grid_cell": cell,
                "grid_row_u": row_u, "grid_col_r": col_r, "geometry": shapely.to_wkb(geometry),
                "centre_lat": float(geometry.centroid.y), "centre_lon": float(geometry.centroid.x),
                "utm_footprint": utm.wkt, "utm_crs": crs, "pixel_bbox": [int(x), int(y), int(x + fragment), int(y + fragment)],
            })
    schema = pa.schema([
        ("unique_id", pa.string()), ("embedding", pa.list_(pa.float32())), ("timestamp", pa.string()),
        ("product_id", pa.string()), ("grid_cell", pa.string()), ("grid_row_u", pa.int16()), ("grid_col_r", pa.int16()),
        ("geometry", pa.binary()), ("centre_lat", pa.float32()), ("centre_lon", pa.float32()),
        ("utm_footprint", pa.string()), ("utm_crs", pa.string()), ("pixel_bbox", pa.list_(pa.int64())),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    bounds = shapely.total_bounds(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))
    pq.write_table(table.replace_schema_metadata({b"geo": _geo_metadata(None, bounds)}), path)
    return path


def earthindex_file(path: Path, *, real: Path, rows: int = 12, seed: int = 0) -> Path:
    """An Earth Index file with rows: the real sample's schema and 'emb'/'geo' metadata (read from
    ``real`` at test time, never copied into the repository) and 384-d tiles inside its bbox."""
    import shapely

    real_schema = pq.read_schema(real)
    geo = json.loads(real_schema.metadata[b"geo"])
    xmin, ymin, xmax, ymax = geo["columns"]["geometry"]["bbox"]
    rng = np.random.default_rng(seed)
    size = 0.0045  # about 500 m tiles
    lon = xmin + (xmax - xmin - size) * (np.arange(rows) % 4) / 4
    lat = ymin + (ymax - ymin - size) * (np.arange(rows) // 4) / max(rows // 4, 1)
    boxes = shapely.box(lon, lat, lon + size, lat + size)
    dim = real_schema.field("embedding").type.list_size
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    table = pa.table({
        "id": pa.array([f"21MNT_{i:05d}" for i in range(rows)]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "geometry": pa.array(shapely.to_wkb(boxes), pa.binary()),
    }, schema=real_schema.remove_metadata())
    pq.write_table(table.replace_schema_metadata(real_schema.metadata), path)
    return path


def alphaearth_cog(path: Path, *, width: int = 40, height: int = 24, seed: int = 0, nodata_block: bool = True) -> Path:
    """An AlphaEarth (Satellite Embedding V1) tile: a tiled GeoTIFF with 64 int8 bands A00..A63,
    nodata -128, 10 m pixels in UTM 17N, codes q = round(sign(v) sqrt(|v|) 127.5) of unit vectors."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(height, width, 64))
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    codes = np.clip(np.round(np.sign(vectors) * np.sqrt(np.abs(vectors)) * 127.5), -127, 127).astype(np.int8)
    if nodata_block:
        codes[:8, :8] = -128  # the first 8 x 8 chip has no data
        codes[8:16, :3] = -128  # part of a chip has no data
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 64, "dtype": "int8", "nodata": -128,
               "crs": "EPSG:32617", "transform": Affine(10.0, 0.0, 710000.0, 0.0, -10.0, 3960000.0), "tiled": True,
               "blockxsize": 16, "blockysize": 16, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(codes, -1, 0))
        dst.descriptions = tuple(f"A{i:02d}" for i in range(64))
    return path


def tessera_tile(folder: Path, *, lon: float = 0.15, lat: float = 52.05, width: int = 24, height: int = 20,
                 seed: int = 0) -> Path:
    """A TESSERA tile as geotessera stores it: ``grid_{lon}_{lat}.npy`` int8 (H, W, 128), the per-pixel
    float32 scales ``grid_{lon}_{lat}_scales.npy`` (H, W) and the tile's landmask GeoTIFF
    ``grid_{lon}_{lat}.tiff`` that georeferences it (UTM, 10 m)."""
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"grid_{lon:.2f}_{lat:.2f}"
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, size=(height, width, 128), dtype=np.int8)
    scales = rng.uniform(0.005, 0.02, size=(height, width)).astype(np.float32)
    scales[:4, :4] = 0.0  # no observation: a zero scale
    np.save(folder / f"{stem}.npy", codes)
    np.save(folder / f"{stem}_scales.npy", scales)
    zone = int((lon + 180) // 6) + 1
    crs = f"EPSG:{32600 + zone}"
    x, y = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(lon - 0.05, lat + 0.05)
    with rasterio.open(folder / f"{stem}.tiff", "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs=crs, transform=Affine(10.0, 0.0, round(x, -1), 0.0, -10.0, round(y, -1))) as dst:
        dst.write(np.ones((1, height, width), np.uint8))
    return folder / f"{stem}.npy"


SURVEY = "third_party_embeddings/geo-embeddings-survey"


def assert_valid_everywhere(product: Path) -> None:
    """What every product we write passes: eoembed's validator, geoparquet-validator (core and
    covering) on each data file, and the STAC core and extension schemas on each document."""
    import subprocess
    import sys

    import eoembed
    from eoembed._schemas import validate_stac

    report = eoembed.validate(product)
    assert report.errors == [], str(report)
    gpv = str(Path(sys.executable).parent / "geoparquet-validator")
    for data in sorted((product / "data").glob("*.parquet")):
        for conformance in ("core", "covering"):
            run = subprocess.run([gpv, "check", str(data), "--class", conformance], capture_output=True, text=True)
            assert run.returncode == 0, run.stdout + run.stderr
    documents = [product / "collection.json", *sorted((product / "items").glob("*.json")), *sorted((product / "models").glob("*.json"))]
    for document in documents:
        assert validate_stac(json.loads(document.read_text())) == [], document
