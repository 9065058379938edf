"""Validation of one tile of a pixel product (codes ``PIX``, and the shared ``JSN``/``EMB``/``IDT`` checks).

:class:`TileChecker` is the chip checker (:class:`eoembed._validate_file._DataFileChecker`) with the
tile's reading in place of Parquet streaming: the footer, quantisation, vector, round-trip and norm
checks are the chip product's own, run on the tile's pixels with data. The product checker calls it
for every data file of a pixel product and compares the Item and manifest with the record it gives.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import numpy as np

from ._errors import GeoreferenceError, ImageryError, QuantizationError, SpecError
from ._spec import FOOTER_KEY
from ._validate_file import _DataFileChecker

_DIMENSIONS = ["y", "x", "dim"]


class TileChecker(_DataFileChecker):
    """Georeferencing, layout, nodata and embedding checks for one tile file."""

    geo = None
    _tile: dict[str, Any] | None = None
    _start: datetime | None = None
    _end: datetime | None = None

    def record(self, *, size: int, sha256: str):
        from ._tiles import tile_bbox
        from ._write import _FileRecord

        if self.rows is None or self.footer is None or not self.footer_valid or self.geo is None or self._start is None:
            return None
        return _FileRecord(path=self.name, rows=self.rows, bytes=size, sha256=sha256, bbox=tile_bbox(self.geo),
                           start=self._start, end=self._end, geometry_types=["Polygon"], footer=self.footer,
                           sources=sorted(self.sources), tile=self.geo.stac())

    def run(self) -> None:
        from ._tiles import read_tile, tile_format

        try:
            tile = read_tile(self.path)
        except GeoreferenceError as error:
            self.add("PIX001", f"{error}; a tile needs its CRS and a north-up transform")
            return
        except SpecError as error:
            self.add("JSN004", f"{error}; an eoembed tile carries its metadata object there")
            return
        except ImageryError as error:
            self.add("STR010", str(error))
            return
        self.footer = self._check_footer({FOOTER_KEY: json.dumps(tile.metadata).encode()})
        self._check_tile_times(tile.tile)
        if not self._check_geo(tile):
            return
        rows, cols = tile.geo.shape
        self.rows = rows * cols
        pixel = (self.footer or {}).get("pixel")
        form = tile_format(self.path)
        if not isinstance(pixel, dict):
            self.add("PIX002", "the metadata object has no 'pixel' section: not a tile of a pixel product")
            self.footer_valid = False  # no Item can be rebuilt from it
            return
        if pixel.get("format") != form:
            self.add("PIX002", f"the file is a {form} tile, but pixel.format says {pixel.get('format')!r}")
        size = pixel.get("tile_size_px")
        if isinstance(size, int) and (rows > size or cols > size):
            self.add("PIX002", f"the tile is {rows} x {cols} pixels, larger than pixel.tile_size_px = {size}")
        if form == "zarr" and tile.extra.get("dimension_names") != _DIMENSIONS:
            self.add("PIX002", f"array 'embedding' has dimensions {tile.extra.get('dimension_names')}; a tile stores {_DIMENSIONS}",
                     column="embedding")
        quant = self._quantization(tile)
        if quant is None:
            return
        self._check_pixels(tile, quant)

    # metadata -----------------------------------------------------------------------------------

    def _check_tile_times(self, tile: dict[str, Any]) -> None:
        from ._tiles import parse_time

        source = tile.get("source_id")
        if not isinstance(source, str) or not source:
            self.add("IDT005", f"the tile's source_id is {source!r}; every tile names the scene it was made from")
        else:
            self.sources.add(source)
        try:
            start, end = parse_time(tile["start_datetime"]), parse_time(tile["end_datetime"])
        except (KeyError, TypeError, ValueError, AttributeError):
            self.add("IDT002", f"the tile's start_datetime/end_datetime are not RFC 3339 times: {tile!r}")
            return
        if start.tzinfo is None or end.tzinfo is None or start.utcoffset() or end.utcoffset():
            self.add("IDT007", f"the tile's times {start} .. {end} are not in UTC")
            return
        if start > end:
            self.add("IDT006", f"the tile's start_datetime {start} is after its end_datetime {end}")
        if self.temporal is not None:
            lo, hi = self.temporal
            if (lo is not None and np.datetime64(start.replace(tzinfo=None), "us") < lo) or (
                    hi is not None and np.datetime64(end.replace(tzinfo=None), "us") > hi):
                self.add("IDT002", f"the tile's time range {start} .. {end} lies outside the Collection's temporal extent")
        self._start, self._end = start, end

    def _check_geo(self, tile) -> bool:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(tile.geo.code)
        except CRSError as error:
            self.add("PIX001", f"proj:code {tile.geo.code!r} is not a CRS: {error}")
            return False
        a, b, _, d, e, _ = tile.geo.transform
        if not np.isfinite(tile.geo.transform).all() or b != 0 or d != 0 or not a > 0 or not e < 0:
            self.add("PIX001", f"proj:transform {list(tile.geo.transform)} is not a north-up grid (b = d = 0, a > 0, e < 0, finite)")
            return False
        if "nodata" in tile.extra:
            from ._tiles import nodata_value

            stated, wanted = tile.extra["nodata"], nodata_value(tile.dtype)
            if stated is None or not (stated == wanted or (np.isnan(wanted) and np.isnan(stated))):
                self.add("PIX004", f"the GeoTIFF's nodata is {stated}, but pixels without data of {tile.dtype} codes are {wanted}")
        if "dimension_names" in tile.extra:  # a Zarr tile: its coordinate arrays must match its transform
            xs, ys = tile.geo.centres()
            for name, expected in (("x", xs), ("y", ys)):
                stated = tile.extra.get(name)
                if stated is None or np.shape(stated) != expected.shape or not np.allclose(stated, expected, rtol=0, atol=abs(a) * 1e-6):
                    self.add("PIX003", f"coordinate array {name!r} is not the pixel centres of proj:transform "
                             f"(first {expected[:1].tolist()}, got {None if stated is None else np.ravel(stated)[:1].tolist()})", column=name)
        self.geo = tile.geo
        return True

    def _quantization(self, tile):
        from ._quantize import Quantization

        if self.footer is None:
            return None
        try:
            embedding = self.footer["embedding"]
            quant = Quantization.from_dict(embedding["quantization"], dim=int(embedding["dim"]))
        except (KeyError, TypeError, ValueError, QuantizationError) as error:
            self.add("EMB005", f"quantization in the metadata is unusable: {error}", column="embedding")
            return None
        if tile.dtype != quant.dtype or tile.width != quant.stored_width():
            self.add("EMB001", f"the tile stores {tile.width} values of {tile.dtype} a pixel, but the metadata declares dim "
                     f"{quant.dim} as {quant.dtype} ({quant.stored_width()} values)", column="embedding")
            return None
        if quant.method == "per-row" and not tile.has_scale:
            self.add("EMB006", "per-row quantization needs the per-pixel scale array 'scale', which is missing", column="scale")
            return None
        if quant.method == "per-row" and tile.scale.shape != tile.geo.shape:
            self.add("EMB006", f"the per-pixel scale is {tile.scale.shape} for {tile.geo.shape} pixels", column="scale")
            return None
        return quant

    # pixels -------------------------------------------------------------------------------------

    def _check_pixels(self, tile, quant) -> None:
        from ._quantize import NODATA_CODE

        rows, cols = tile.geo.shape
        codes = tile.codes.reshape(rows * cols, -1)
        marked = np.isnan(codes) if codes.dtype.kind == "f" else codes == NODATA_CODE
        nodata = marked.all(axis=1)
        partial = marked.any(axis=1) & ~nodata
        if codes.dtype.kind == "f" or quant.method == "sqrt":
            # -128 under linear codes fails the round trip (no quantiser writes it); here it would be read as nodata.
            if partial.any():
                y, x = divmod(int(np.flatnonzero(partial)[0]), cols)
                self.add("PIX005", f"pixel (row {y}, col {x}) is nodata in some dimensions only; a pixel without data is "
                         f"{'NaN' if codes.dtype.kind == 'f' else NODATA_CODE} in every dimension", row=y * cols + x, column="embedding")
                nodata |= partial
        scale = None
        if quant.method == "per-row":
            scale = np.asarray(tile.scale, dtype=np.float32).reshape(rows * cols)
            bad = ~np.isfinite(scale) | (scale <= 0)
            if bad.any():
                y, x = divmod(int(np.flatnonzero(bad)[0]), cols)
                self.add("EMB006", f"per-pixel scale at (row {y}, col {x}) is {scale[y * cols + x]}; every scale must be finite "
                         "and > 0 (1.0 at pixels without data)", row=y * cols + x, column="scale")
                return
        keep = np.flatnonzero(~nodata)
        if not len(keep):
            return
        seen: set[str] = set()

        def once(code: str, message: str, **kw: Any) -> None:
            # Rows of the shared checks count pixels with data; findings name the pixel.
            if code in seen:
                return
            seen.add(code)
            row = kw.pop("row", None)
            kw.pop("row_group", None)
            if row is not None:
                y, x = divmod(int(keep[row]), cols)
                message = f"pixel (row {y}, col {x}): {message}"
                kw["row"] = y * cols + x
            self.add(code, message, **kw)

        self._check_codes(codes[keep], None if scale is None else scale[keep], quant, 0, None, once)
