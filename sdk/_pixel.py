"""Pixel products: one vector per pixel, stored as tiles on each scene's pixel grid.

A pixel product is a product like any other (spec Section 12): the same collection, items, model
item, manifest, footer sections and quantisation as a chip product, written by the same
:class:`~eoembed._write.ProductWriter` machinery; only its data files differ: tiles (see
:mod:`eoembed._tiles`) instead of GeoParquet files. :class:`PixelProductWriter` cuts a scene's
``(y, x, dim)`` array into tiles of ``tile_size`` pixels from the scene's top-left pixel.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from . import _quantize
from ._errors import DimensionMismatchError, SpecError
from ._stac import slug
from ._tiles import TILE_SUFFIX, TileGeo, crs_code, read_tile, tile_bbox
from ._tiles import write_tile as write_tile_file
from ._write import DATA_DIR, ProductWriter, _FileRecord, _iso, _utcnow, sha256_file

__all__ = ["PixelProductWriter", "tile_record", "write_pixel_product"]

TileFormat = Literal["zarr", "cog"]


def tile_record(path: Path, *, root: Path) -> _FileRecord:
    """The manifest facts of a written tile, read back from the tile itself."""
    from ._tiles import parse_time

    tile = read_tile(path, data=False)
    rows, cols = tile.geo.shape
    return _FileRecord(
        path=path.relative_to(root).as_posix(), rows=rows * cols, bytes=path.stat().st_size, sha256=sha256_file(path),
        bbox=tile_bbox(tile.geo), start=parse_time(tile.tile["start_datetime"]), end=parse_time(tile.tile["end_datetime"]),
        geometry_types=["Polygon"], footer=tile.metadata, sources=[str(tile.tile["source_id"])], tile=tile.geo.stac(),
    )


def _north_up(transform: Any) -> tuple[float, float, float, float, float, float]:
    values = tuple(float(v) for v in (list(transform)[:6]))
    if len(values) != 6 or not np.isfinite(values).all():
        raise SpecError(f"transform must be 6 finite numbers a, b, c, d, e, f (rasterio's Affine), got {transform!r}")
    a, b, _, d, e, _ = values
    if b != 0 or d != 0 or a <= 0 or e >= 0:
        raise SpecError(f"transform {values} is not north-up (b = d = 0, a > 0, e < 0); warp the scene first")
    return values  # type: ignore[return-value]


class PixelProductWriter(ProductWriter):
    """Write scenes of per-pixel embeddings ``(y, x, dim)`` as tiles; publish atomically on close.

    Options are :class:`~eoembed._write.ProductWriter`'s, plus ``format`` (``zarr`` or ``cog``),
    ``tile_size`` (pixels, the edge of a full tile) and ``chunk_size`` (a Zarr chunk or COG block).
    """

    def __init__(self, path: str | os.PathLike, *, model: Mapping[str, Any], format: TileFormat = "zarr",
                 tile_size: int = 512, chunk_size: int = 256, **options: Any) -> None:
        if format not in TILE_SUFFIX:
            raise SpecError(f"unknown tile format {format!r}; use zarr or cog")
        for name, value in (("tile_size", tile_size), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name} must be a positive number of pixels, got {value!r}")
        self.pixel = {"format": format, "tile_size_px": tile_size, "chunk_size_px": min(chunk_size, tile_size)}
        if options.get("quantization") in ("binary",):
            raise SpecError("binary codes are not a pixel storage form; use none, float16, int8, int8-per-row or sqrt")
        if format == "cog" and options.get("quantization") == "float16":
            raise SpecError("float16 COG tiles need GDAL 3.11 or later, which rasterio does not offer yet; use format='zarr' "
                            "or quantization='none'")
        if format == "cog" and options.get("quantization") == "int8-per-row":
            raise SpecError("int8-per-row keeps a per-pixel scale array, which a GeoTIFF cannot hold beside int8 bands; "
                            "use format='zarr'")
        super().__init__(path, model=model, **options)

    def footer(self, *, end: datetime | None = None) -> dict[str, Any]:
        section = super().footer(end=end)
        section["pixel"] = dict(self.pixel)
        return section

    def write_scene(self, embeddings: Any, *, crs: Any, transform: Any, source_id: str, datetime: datetime | None = None,
                    start_datetime: datetime | None = None, end_datetime: datetime | None = None,
                    name: str | None = None) -> list[_FileRecord]:
        """Add one scene's pixel embeddings ``(y, x, dim)`` (all-NaN pixels have no data), on the grid
        of ``crs`` and ``transform``; returns the records of its tiles, named ``{name}-rRRRRR-cCCCCC``."""
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        array = np.asarray(embeddings)
        if array.ndim != 3:
            raise DimensionMismatchError(f"pixel embeddings of {source_id} must be (y, x, dim), got shape {array.shape}")
        if (datetime is None) == (start_datetime is None or end_datetime is None):
            raise SpecError(f"{source_id}: give datetime, or start_datetime and end_datetime")
        start, end = (datetime, datetime) if datetime is not None else (start_datetime, end_datetime)
        if start.tzinfo is None or end.tzinfo is None or start > end:
            raise SpecError(f"{source_id}: times must be timezone-aware with start <= end, got {start} .. {end}")
        geo = TileGeo(crs_code(crs), _north_up(transform), array.shape[:2])
        self._pixel_quantization(array)  # fitted on the whole first scene, not on its first tile
        base = name or slug(str(source_id))[:64]
        size = self.pixel["tile_size_px"]
        records = []
        for row in range(0, array.shape[0], size):
            for col in range(0, array.shape[1], size):
                block = array[row:row + size, col:col + size]
                records.append(self.write_tile(f"{base}-r{row:06d}-c{col:06d}", block, geo=geo.window(row, col, *block.shape[:2]),
                                               start=start, end=end, source_id=str(source_id)))
        return records

    def write_tile(self, name: str, embeddings: np.ndarray, *, geo: TileGeo, start: datetime, end: datetime,
                   source_id: str) -> _FileRecord:
        """Write one tile ``data/NAME`` (plus the format's suffix) of pixel embeddings ``(y, x, dim)``
        on ``geo`` right away (a work unit of a distributed job); returns its record."""
        codes, scale = _quantize.quantize_pixels(embeddings, self._pixel_quantization(embeddings))
        return self._stage_tile(name, codes, scale, geo=geo, start=start, end=end, source_id=source_id)

    def write_codes(self, name: str, codes: np.ndarray, scale: np.ndarray | None, *, geo: TileGeo, start: datetime,
                    end: datetime, source_id: str) -> _FileRecord:
        """Write one tile of codes already in the product's storage form (an import that keeps a
        source's int8 codes and per-pixel scales as they are); returns its record."""
        quant = self.quantization
        if quant is None:
            raise SpecError("write_codes needs the writer's quantization given as an eoembed.Quantization")
        if codes.ndim != 3 or codes.dtype != np.dtype(quant.dtype) or codes.shape[2] != quant.stored_width():
            raise DimensionMismatchError(f"{name}: codes are {codes.dtype} {codes.shape}; the product stores "
                                         f"(y, x, {quant.stored_width()}) {quant.dtype}")
        if (scale is None) != (quant.method != "per-row") or (scale is not None and scale.shape != codes.shape[:2]):
            raise DimensionMismatchError(f"{name}: per-row codes need a per-pixel scale of shape {codes.shape[:2]}, other forms none")
        return self._stage_tile(name, codes, scale, geo=geo, start=start, end=end, source_id=source_id)

    def _stage_tile(self, name: str, codes: np.ndarray, scale: np.ndarray | None, *, geo: TileGeo, start: datetime,
                    end: datetime, source_id: str) -> _FileRecord:
        rel = f"{DATA_DIR}/{name}{TILE_SUFFIX[self.pixel['format']]}"
        tile = {"start_datetime": _iso(start), "end_datetime": _iso(end), "source_id": source_id}
        write_tile_file(self.staging / rel, codes, scale, geo=geo, metadata=self.footer(end=_utcnow()), tile=tile,
                        chunk=self.pixel["chunk_size_px"])
        record = tile_record(self.staging / rel, root=self.staging)
        self._files.append(record)
        self._rows_seen += record.rows
        return record

    def _pixel_quantization(self, array: np.ndarray) -> _quantize.Quantization:
        if self.quantization is not None:
            if self.quantization.dim != array.shape[2]:
                raise DimensionMismatchError(
                    f"pixel embeddings have dimension {array.shape[2]} but the product's is {self.quantization.dim}")
            return self.quantization
        rows = array.reshape(-1, array.shape[2])
        valid = rows[~np.isnan(rows).all(axis=1)] if rows.dtype.kind == "f" else rows
        # Linear parameters are fitted on the first tile's pixels with data and frozen, as for chips.
        return self._ensure_quantization(valid)


def write_pixel_product(path: str | os.PathLike, scenes: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                        **options: Any) -> Path:
    """Write a pixel product from one scene or a list of scenes and publish it atomically.

    A scene maps ``embeddings`` (``(y, x, dim)``), ``crs``, ``transform``, ``source_id`` and
    ``datetime`` (or ``start_datetime`` and ``end_datetime``); options are those of
    :class:`PixelProductWriter` (``model`` is required). Returns the product path.
    """
    batches = [scenes] if isinstance(scenes, Mapping) else list(scenes)
    with PixelProductWriter(path, **options) as writer:
        for scene in batches:
            scene = dict(scene)
            writer.write_scene(scene.pop("embeddings"), **scene)
    return writer.path
