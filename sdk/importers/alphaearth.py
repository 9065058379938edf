"""AlphaEarth Foundations (Google Satellite Embedding V1) tiles: GeoTIFF/COG exports with 64 int8
bands ``A00``..``A63``, 10 m pixels in UTM, one tile per calendar year; each pixel's codes
de-quantise as ``sign(q) * (q / 127.5) ** 2`` (eoembed's ``sqrt`` form) to a unit vector, and
``-128`` is nodata.

A tile imports into chips of ``chip_size`` x ``chip_size`` pixels whose vector is the mean of the
valid pixels' de-quantised vectors (``model.pooling`` and ``model.parameters.pooling`` record it),
or, with :func:`eoembed.import_pixels`, into a pixel product that keeps its codes as they are.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import EmbeddingTile, PooledTileImporter, time_option
from ._registry import ImportSession, register_importer

BANDS = 64
NODATA = -128


@register_importer
class AlphaEarthImporter(PooledTileImporter):
    kind = "alphaearth"
    description = "AlphaEarth / Satellite Embedding V1 GeoTIFF tiles (64 int8 bands, sqrt de-quantisation), pooled into chips"
    dim = BANDS
    model_name = "alphaearth-foundations"
    model_version = "satellite-embedding-v1"
    band_source = "Sentinel-2, Landsat, Sentinel-1 and other inputs of AlphaEarth (not listed per band by the source)"
    pixel_vectors = "de-quantised AlphaEarth pixel vectors"
    license = "CC-BY-4.0"
    source = {"format": "AlphaEarth GeoTIFF (64 int8 bands, sqrt quantisation, -128 nodata)",
              "url": "https://developers.google.com/earth-engine/datasets/catalog/GOOGLE_SATELLITE_EMBEDDING_V1_ANNUAL",
              "stated": "64-d unit vectors per 10 m pixel, one calendar year, codes sign(q)(q/127.5)^2"}

    @contextmanager
    def open_tile(self, path: Path, *, session: ImportSession, datetime: Any) -> Iterator[EmbeddingTile]:
        from eoembed._optional import require

        rasterio = require("rasterio", extra="produce")
        from rasterio.windows import Window

        from eoembed._quantize import Quantization, dequantize
        from eoembed.producers.read import _parse_datetime

        quantization = Quantization(method="sqrt", dtype="int8", dim=BANDS)
        with rasterio.open(path) as ds:
            if ds.count != BANDS or ds.dtypes[0] != "int8":
                raise SourceFormatError(f"{path} has {ds.count} {ds.dtypes[0]} bands; an AlphaEarth tile has {BANDS} int8 bands")
            if ds.crs is None:
                raise SourceFormatError(f"{path} has no CRS; an AlphaEarth tile is in its UTM zone")
            if ds.nodata is None:
                session.note(f"{path.name}: no nodata tag; -128 is read as nodata, as the format defines")
            elif ds.nodata != NODATA:
                session.defect(path, f"nodata is {ds.nodata}, the format's is {NODATA}")
            stated = _parse_datetime(ds.tags().get("TIFFTAG_DATETIME"))

            def read_rows(row0: int, row1: int) -> tuple[np.ndarray, np.ndarray]:
                codes = np.moveaxis(ds.read(window=Window(0, row0, ds.width, row1 - row0)), 0, -1)
                valid = (codes != NODATA).all(axis=-1)
                vectors = dequantize(np.ascontiguousarray(codes.reshape(-1, BANDS)), quantization)
                return np.nan_to_num(vectors, nan=0.0).reshape(codes.shape), valid

            def read_codes(row0: int, row1: int) -> tuple[np.ndarray, None]:
                codes = np.ascontiguousarray(np.moveaxis(ds.read(window=Window(0, row0, ds.width, row1 - row0)), 0, -1))
                codes[(codes == NODATA).any(axis=-1)] = NODATA  # a pixel without data in one band has none
                return codes, None

            yield EmbeddingTile(width=ds.width, height=ds.height, transform=ds.transform, crs=ds.crs.to_string(),
                                time=time_option(datetime if datetime is not None else stated, path=path, what="embeddings"),
                                read_rows=read_rows, read_codes=read_codes, quantization=quantization)
