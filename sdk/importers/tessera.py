"""TESSERA tiles (geotessera): ``grid_{lon}_{lat}.npy`` int8 ``(H, W, 128)`` codes with the per-pixel
float32 scales ``grid_{lon}_{lat}_scales.npy`` ``(H, W)``, so a pixel's vector is ``codes * scale``;
the tile's landmask GeoTIFF (``grid_{lon}_{lat}.tiff``, or ``reference=``) places it on Earth.
A pixel whose scale is not finite and positive has no vector.

As for AlphaEarth, tiles import into chips by pooling: the mean of the valid pixels' vectors over
``chip_size`` x ``chip_size`` pixels, recorded in ``model.pooling`` and ``model.parameters.pooling``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import imported_contract, pooled_chips, pooling_record, time_option
from ._registry import Importer, ImportPlan, ImportSession, register_importer

DIM = 128
SOURCE_URL = "https://github.com/ucam-eo/geotessera"


@register_importer
class TesseraImporter(Importer):
    kind = "tessera"
    description = "TESSERA tiles (int8 .npy + _scales.npy, georeferenced by the tile's GeoTIFF), pooled into chips"

    def read(self, sources: list[Path], *, session: ImportSession, chip_size: int = 16, datetime: Any = None,
             reference: str | None = None, **options: Any) -> ImportPlan:
        import rasterio

        self.refuse_options(options, takes=("chip_size", "datetime", "reference"))
        batches, gsds = [], set()
        for path in sources:
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
            gsds.add(round(abs(transform.a), 6))
            time = time_option(datetime, path=path, what="embeddings")

            def read_rows(row0: int, row1: int, codes=codes, scales=scales) -> tuple[np.ndarray, np.ndarray]:
                scale = np.asarray(scales[row0:row1], dtype=np.float32)
                valid = np.isfinite(scale) & (scale > 0)
                vectors = np.asarray(codes[row0:row1], dtype=np.float32) * np.where(valid, scale, 0.0)[..., None]
                return vectors, valid

            batch = pooled_chips(path=path, width=codes.shape[1], height=codes.shape[0], transform=transform, crs=crs,
                                 chip_size=chip_size, read_rows=read_rows, time=time, source_id=path.stem)
            if batch is None:
                session.note(f"{path.name}: no {chip_size} x {chip_size} chip holds a valid pixel")
            else:
                batches.append(batch)
        if len(gsds) > 1:
            raise SourceFormatError(f"tiles have pixel sizes {sorted(gsds)} m; one product holds one chip geometry")
        model = imported_contract(
            dim=DIM, name="tessera", chip_size_px=chip_size, stride_px=chip_size, gsd_m=float(gsds.pop()), pooling="mean",
            band_source="Sentinel-1 and Sentinel-2 time series (TESSERA's inputs; not listed per band in the tile files)",
            output_description="mean of the valid pixels' 128-d TESSERA vectors (codes x scale)",
            source={"format": "TESSERA tile (int8 .npy + float32 _scales.npy)", "url": SOURCE_URL,
                    "stated": "128-d int8 codes with one float32 scale per pixel; georeferencing by the landmask GeoTIFF"},
            parameters={"pooling": pooling_record(chip_size=chip_size, of="TESSERA pixel vectors (codes x scale)")},
        )
        return ImportPlan(model=model, batches=batches, license="CC-BY-4.0", normalized=False,
                          description="TESSERA embeddings pooled into chips")
