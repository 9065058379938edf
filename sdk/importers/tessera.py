"""TESSERA tiles (geotessera): ``grid_{lon}_{lat}.npy`` int8 ``(H, W, 128)`` codes with the per-pixel
float32 scales ``grid_{lon}_{lat}_scales.npy`` ``(H, W)``, so a pixel's vector is ``codes * scale``;
the tile's landmask GeoTIFF (``grid_{lon}_{lat}.tiff``, or ``reference=``) places it on Earth.
A pixel whose scale is not finite and positive has no vector.

As for AlphaEarth, tiles import into chips by pooling: the mean of the valid pixels' vectors over
``chip_size`` x ``chip_size`` pixels, recorded in ``model.pooling`` and ``model.parameters.pooling``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import EmbeddingTile, PooledTileImporter, time_option
from ._registry import ImportSession, register_importer

DIM = 128


@register_importer
class TesseraImporter(PooledTileImporter):
    kind = "tessera"
    description = "TESSERA tiles (int8 .npy + _scales.npy, georeferenced by the tile's GeoTIFF), pooled into chips"
    dim = DIM
    model_name = "tessera"
    band_source = "Sentinel-1 and Sentinel-2 time series (TESSERA's inputs; not listed per band in the tile files)"
    pixel_vectors = "TESSERA pixel vectors (codes x scale)"
    source = {"format": "TESSERA tile (int8 .npy + float32 _scales.npy)", "url": "https://github.com/ucam-eo/geotessera",
              "stated": "128-d int8 codes with one float32 scale per pixel; georeferencing by the landmask GeoTIFF"}
    tile_options = ("reference",)

    @contextmanager
    def open_tile(self, path: Path, *, session: ImportSession, datetime: Any,
                  reference: str | None = None) -> Iterator[EmbeddingTile]:
        from eoembed._optional import require

        rasterio = require("rasterio", extra="produce")

        codes = np.load(path, mmap_mode="r")
        scales_path = path.with_name(f"{path.stem}_scales.npy")
        if not scales_path.exists():
            raise SourceFormatError(f"{path} has no scales file {scales_path.name} beside it; TESSERA vectors are codes x scale")
        scales = np.load(scales_path, mmap_mode="r")
        if codes.ndim != 3 or codes.dtype != np.int8 or codes.shape[2] != DIM:
            raise SourceFormatError(f"{path} holds {codes.dtype} {codes.shape}; a TESSERA tile is int8 (H, W, {DIM})")
        if scales.shape != codes.shape[:2]:
            raise SourceFormatError(f"{scales_path} has shape {scales.shape}, the codes need {codes.shape[:2]} (H, W)")
        georef = Path(reference) if reference else next(
            (p for p in (path.with_suffix(".tiff"), path.with_suffix(".tif")) if p.exists()), None)
        if georef is None:
            raise SourceFormatError(f"{path} is not georeferenced: put the tile's landmask GeoTIFF {path.stem}.tiff beside it "
                                    "or pass reference=GeoTIFF")
        with rasterio.open(georef) as ds:
            if (ds.height, ds.width) != codes.shape[:2] or ds.crs is None:
                raise SourceFormatError(f"{georef} is {ds.width} x {ds.height} px with CRS {ds.crs}; it must be the tile's "
                                        f"{codes.shape[1]} x {codes.shape[0]} px grid with a CRS")
            transform, crs = ds.transform, ds.crs.to_string()

        def read_rows(row0: int, row1: int) -> tuple[np.ndarray, np.ndarray]:
            scale = np.asarray(scales[row0:row1], dtype=np.float32)
            valid = np.isfinite(scale) & (scale > 0)
            vectors = np.asarray(codes[row0:row1], dtype=np.float32) * np.where(valid, scale, 0.0)[..., None]
            return vectors, valid

        def read_codes(row0: int, row1: int) -> tuple[np.ndarray, np.ndarray]:
            scale = np.array(scales[row0:row1], dtype=np.float32)
            valid = np.isfinite(scale) & (scale > 0)
            stored = np.array(codes[row0:row1], dtype=np.int8)
            stored[~valid] = -128  # eoembed's pixel without data; its scale 1.0
            return stored, np.where(valid, scale, np.float32(1.0))

        from eoembed._quantize import Quantization

        yield EmbeddingTile(width=codes.shape[1], height=codes.shape[0], transform=transform, crs=crs,
                            time=time_option(datetime, path=path, what="embeddings"), read_rows=read_rows,
                            read_codes=read_codes, quantization=Quantization(method="per-row", dtype="int8", dim=DIM))
