"""Tile files of a pixel product: one vector per pixel, as a Zarr v3 zip store or a COG.

A tile holds stored codes ``(y, x, W)`` on a north-up grid (``proj:transform``, 6 numbers in
rasterio's order ``a, b, c, d, e, f``), the file's ``eoembed`` metadata object (the footer of a chip
product's data file, with its ``pixel`` section) and the tile's time range and source.

* ``zarr``: a Zarr v3 store zipped with its entries stored uncompressed (``.zarr.zip``): the array
  ``embedding`` (``y, x, dim``), one shard per tile of Blosc-ZSTD chunks; ``scale`` (``y, x``)
  float32 for ``per-row`` codes; coordinate arrays ``x``, ``y`` (pixel centres) and a CF
  ``spatial_ref`` grid mapping, so xarray opens it with coordinates and CRS. The group's attributes
  hold ``eoembed``, ``eoembed:tile``, ``proj:code`` and ``proj:transform``. Entries are sorted and
  dated 1980-01-01, so equal tiles are equal files.
* ``cog``: a Cloud-Optimised GeoTIFF, one band per dimension, its nodata the form's nodata code
  (-128, or NaN for float forms); GDAL metadata ``EOEMBED`` and ``EOEMBED_TILE`` hold the same
  objects. ``per-row`` codes need the ``zarr`` form (a GeoTIFF's bands share one type), and so do
  float16 codes (GDAL before 3.11 has no Float16 GeoTIFF).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import GeoreferenceError, ImageryError, MissingDependencyError, SpecError
from ._optional import require

TILE_SUFFIX = {"zarr": ".zarr.zip", "cog": ".tif"}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_TILE_KEYS = ("start_datetime", "end_datetime", "source_id")


@dataclass(frozen=True)
class TileGeo:
    """Where a tile's pixels are: CRS (``EPSG:32618``), affine transform and ``(rows, cols)``."""

    code: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    def stac(self) -> dict[str, Any]:
        return {"proj:code": self.code, "proj:transform": list(self.transform), "proj:shape": list(self.shape)}

    def window(self, row: int, col: int, rows: int, cols: int) -> "TileGeo":
        """The geo of the block of ``rows x cols`` pixels starting at pixel (``row``, ``col``)."""
        a, b, c, d, e, f = self.transform
        return TileGeo(self.code, (a, b, c + col * a + row * b, d, e, f + col * d + row * e), (rows, cols))

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x of each column's and y of each row's pixel centre (north-up tiles)."""
        a, _, c, _, e, f = self.transform
        rows, cols = self.shape
        return c + (np.arange(cols) + 0.5) * a, f + (np.arange(rows) + 0.5) * e


@dataclass
class Tile:
    """A tile read back: metadata always, codes and scale when asked for."""

    geo: TileGeo
    metadata: dict[str, Any]  # the eoembed footer object
    tile: dict[str, Any]  # start_datetime, end_datetime, source_id
    dtype: str
    width: int
    has_scale: bool
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    extra: dict[str, Any] | None = None  # format facts the validator checks (nodata, coordinates)


def crs_code(crs: Any) -> str:
    """``EPSG:NNNN`` for an EPSG CRS, else its WKT: the ``proj:code`` a tile is written with."""
    from pyproj import CRS

    parsed = CRS.from_user_input(crs)
    epsg = parsed.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else parsed.to_wkt()


@lru_cache(maxsize=64)
def _to_crs84(code: str):
    from pyproj import Transformer

    return Transformer.from_crs(code, "OGC:CRS84", always_xy=True)


def tile_bbox(geo: TileGeo) -> tuple[float, float, float, float]:
    """The tile's footprint in OGC:CRS84 (edges densified, so curved edges stay inside)."""
    a, b, c, d, e, f = geo.transform
    rows, cols = geo.shape
    xs = [c, c + cols * a + rows * b]
    ys = [f, f + cols * d + rows * e]
    bounds = _to_crs84(geo.code).transform_bounds(min(xs), min(ys), max(xs), max(ys), densify_pts=21)
    return tuple(round(float(v), 9) for v in bounds)  # type: ignore[return-value]


def nodata_value(dtype: str) -> float:
    return float("nan") if dtype in ("float32", "float16") else -128.0


# -- writing --------------------------------------------------------------------------------------


def write_tile(path: Path, codes: np.ndarray, scale: np.ndarray | None, *, geo: TileGeo, metadata: dict[str, Any],
               tile: dict[str, Any], chunk: int) -> None:
    """Write one tile file at ``path`` in the footer's ``pixel.format``."""
    form = metadata["pixel"]["format"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "zarr":
        _write_zarr(path, codes, scale, geo=geo, metadata=metadata, tile=tile, chunk=chunk)
    elif form == "cog":
        if scale is not None:
            raise SpecError("per-row codes need a per-pixel scale array: write the zarr form (a GeoTIFF's bands share one type)")
        _write_cog(path, codes, geo=geo, metadata=metadata, tile=tile, chunk=chunk)
    else:  # the footer schema allows no other
        raise SpecError(f"unknown tile format {form!r}; use zarr or cog")


def _write_zarr(path: Path, codes: np.ndarray, scale: np.ndarray | None, *, geo: TileGeo, metadata: dict[str, Any],
                tile: dict[str, Any], chunk: int) -> None:
    zarr = require("zarr", extra="zarr")
    from pyproj import CRS
    from zarr.codecs import BloscCodec

    rows, cols, width = codes.shape
    blosc = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
    c = max(1, min(chunk, rows, cols))
    # A shard must be a whole number of chunks; it may reach past the array's edge.
    shard = (-(-rows // c) * c, -(-cols // c) * c)
    wkt = CRS.from_user_input(geo.code).to_wkt()
    a, b, x0, d, e, y0 = geo.transform
    with tempfile.TemporaryDirectory(prefix=".tile-", dir=path.parent) as scratch:
        folder = Path(scratch) / "tile.zarr"
        root = zarr.create_group(store=str(folder), zarr_format=3, attributes={
            "eoembed": metadata, "eoembed:tile": tile, "proj:code": geo.code, "proj:transform": list(geo.transform)})
        fill = np.nan if codes.dtype.kind == "f" else -128
        array = root.create_array("embedding", shape=codes.shape, dtype=codes.dtype, chunks=(c, c, width),
                                  shards=(*shard, width), compressors=blosc, fill_value=fill,
                                  dimension_names=["y", "x", "dim"], attributes={"grid_mapping": "spatial_ref"})
        array[...] = codes
        if scale is not None:
            s = root.create_array("scale", shape=scale.shape, dtype="float32", chunks=(c, c), shards=shard,
                                  compressors=blosc, fill_value=1.0, dimension_names=["y", "x"],
                                  attributes={"grid_mapping": "spatial_ref"})
            s[...] = scale
        xs, ys = geo.centres()
        for name, values in (("x", xs), ("y", ys)):
            coordinate = root.create_array(name, shape=values.shape, dtype="float64", chunks=values.shape,
                                           compressors=None, dimension_names=[name])
            coordinate[...] = values
        root.create_array("spatial_ref", shape=(), dtype="int8", fill_value=0, compressors=None, dimension_names=[],
                          attributes={"crs_wkt": wkt, "spatial_ref": wkt,
                                      "GeoTransform": " ".join(repr(float(v)) for v in (x0, a, b, y0, d, e))})
        with warnings.catch_warnings():
            # Zarr warns that consolidated metadata is not in the v3 spec yet; every array's own
            # zarr.json is there too, the consolidated copy only saves remote readers requests.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(str(folder))
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(file.relative_to(folder).as_posix(), date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                archive.writestr(info, file.read_bytes())
        os.replace(partial, path)


def _write_cog(path: Path, codes: np.ndarray, *, geo: TileGeo, metadata: dict[str, Any], tile: dict[str, Any],
               chunk: int) -> None:
    rasterio = require("rasterio", extra="produce")
    from affine import Affine

    rows, cols, width = codes.shape
    block = min(512, max(128, chunk // 16 * 16))  # the COG driver takes multiples of 16 from 128 up
    profile = {"driver": "COG", "width": cols, "height": rows, "count": width, "dtype": codes.dtype.name,
               "crs": geo.code, "transform": Affine(*geo.transform), "nodata": nodata_value(codes.dtype.name),
               "compress": "ZSTD", "blocksize": block, "overviews": "NONE", "bigtiff": "IF_SAFER"}
    partial = path.with_name(path.name + ".partial")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(codes.transpose(2, 0, 1)))
        dst.update_tags(EOEMBED=json.dumps(metadata, sort_keys=True), EOEMBED_TILE=json.dumps(tile, sort_keys=True))
        for band in range(width):
            dst.set_band_description(band + 1, f"dim_{band:03d}")
    os.replace(partial, path)


# -- reading --------------------------------------------------------------------------------------


def tile_format(path: Path) -> str:
    name = path.name if hasattr(path, "name") else Path(path).name  # a Path, a UPath or a string
    for form, suffix in TILE_SUFFIX.items():
        if name.endswith(suffix):
            return form
    raise ImageryError(f"{path} is not a tile of a pixel product (expected a name ending {' or '.join(TILE_SUFFIX.values())})")


def read_tile(path: Path, *, window: tuple[int, int, int, int] | None = None, data: bool = True) -> Tile:
    """Open a tile; with ``data``, read its codes (and scale) in ``window`` ``(row0, col0, row1, col1)``
    or whole. Raises :class:`ImageryError` naming the file when it cannot be read as a tile."""
    form = tile_format(path)
    try:
        return _read_zarr(path, window, data) if form == "zarr" else _read_cog(path, window, data)
    except (ImageryError, SpecError, MissingDependencyError):  # GeoreferenceError is an ImageryError
        raise
    except Exception as error:  # any library's failure on a damaged file becomes one clear error
        raise ImageryError(f"{path} cannot be read as a {form} tile: {error}") from error


def _json_attr(value: Any, what: str, path: Path) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise SpecError(f"{path}: {what} is not JSON ({error})") from error
    if not isinstance(value, dict):
        raise SpecError(f"{path}: {what} is missing or not a JSON object")
    return value


def _transform(value: Any, path: Path) -> tuple[float, float, float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) not in (6, 9) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise GeoreferenceError(f"{path}: proj:transform must be 6 numbers a, b, c, d, e, f, got {value!r}")
    return tuple(float(v) for v in value[:6])  # type: ignore[return-value]


def _zip_store(path: Any):
    """A read-only ZipStore of a local tile, or of one at a URL read in exact byte ranges: the zip's
    directory, then the chunks a window needs (zipfile seeks in a remote file as in a local one)."""
    import threading

    from zarr.storage import ZipStore

    if isinstance(path, Path):
        return ZipStore(path, mode="r")
    from ._store import open_input

    class RemoteZipStore(ZipStore):
        def _sync_open(self) -> None:
            self._handle = open_input(path)
            self._lock = threading.RLock()
            self._zf = zipfile.ZipFile(self._handle, mode="r")
            self._is_open = True

        def close(self) -> None:
            super().close()
            self._handle.close()

    return RemoteZipStore(Path(path.name), mode="r")


def _read_zarr(path: Path, window, data: bool) -> Tile:
    zarr = require("zarr", extra="zarr")

    store = _zip_store(path)
    try:
        # The arrays' own metadata, not the consolidated copy: what is checked is what is there.
        root = zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=False)
        attrs = dict(root.attrs)
        if "eoembed" not in attrs:
            raise SpecError(f"{path}: the group has no 'eoembed' attribute (the tile's metadata object)")
        metadata = _json_attr(attrs.get("eoembed"), "attribute 'eoembed'", path)
        tile = _json_attr(attrs.get("eoembed:tile"), "attribute 'eoembed:tile'", path)
        array = root["embedding"]
        if len(array.shape) != 3:
            raise SpecError(f"{path}: array 'embedding' has shape {array.shape}; a tile stores (y, x, dim)")
        geo = TileGeo(str(attrs.get("proj:code")), _transform(attrs.get("proj:transform"), path), tuple(array.shape[:2]))
        names = set(root.array_keys())
        out = Tile(geo=geo, metadata=metadata, tile=tile, dtype=array.dtype.name, width=int(array.shape[2]),
                   has_scale="scale" in names, extra={"dimension_names": list(array.metadata.dimension_names or [])})
        if "x" in names and "y" in names:
            out.extra["x"], out.extra["y"] = root["x"][...], root["y"][...]
        if out.has_scale:
            out.extra["scale_shape"] = tuple(root["scale"].shape)
        if data:
            r0, c0, r1, c1 = window or (0, 0, *geo.shape)
            out.codes = np.asarray(array[r0:r1, c0:c1, :])
            if out.has_scale:
                out.scale = np.asarray(root["scale"][r0:r1, c0:c1])
        return out
    finally:
        store.close()


def _read_cog(path: Path, window, data: bool) -> Tile:
    rasterio = require("rasterio", extra="produce")
    from rasterio.windows import Window

    # At a URL, GDAL reads the COG's header and blocks through the store's file system, range by range.
    with (rasterio.open(path) if isinstance(path, Path) else rasterio.open(path.path, opener=path.fs)) as src:
        if src.crs is None:
            raise GeoreferenceError(f"{path}: the GeoTIFF has no CRS")
        tags = src.tags()
        if "EOEMBED" not in tags:
            raise SpecError(f"{path}: no EOEMBED metadata item (the tile's metadata object)")
        metadata = _json_attr(tags.get("EOEMBED"), "metadata item EOEMBED", path)
        tile = _json_attr(tags.get("EOEMBED_TILE"), "metadata item EOEMBED_TILE", path)
        t = src.transform
        geo = TileGeo(crs_code(src.crs), (t.a, t.b, t.c, t.d, t.e, t.f), (src.height, src.width))
        dtypes = set(src.dtypes)
        out = Tile(geo=geo, metadata=metadata, tile=tile, dtype=src.dtypes[0] if len(dtypes) == 1 else "mixed",
                   width=src.count, has_scale=False, extra={"nodata": src.nodata, "driver": src.driver,
                                                            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")})
        if data:
            r0, c0, r1, c1 = window or (0, 0, *geo.shape)
            out.codes = np.ascontiguousarray(src.read(window=Window(c0, r0, c1 - c0, r1 - r0)).transpose(1, 2, 0))
        return out


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
