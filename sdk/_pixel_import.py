"""Importing pixel-embedding tiles (AlphaEarth COGs, TESSERA npy + scales) as pixel products.

The source's codes are kept as they are: AlphaEarth's int8 ``sqrt`` codes and TESSERA's int8 codes
with their per-pixel float32 scales (``per-row``) are eoembed pixel storage forms, so each source
tile is cut into product tiles without de-quantising. Tiles are opened by the chip importers'
own readers (:mod:`eoembed.importers`); the contract states what the source states.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ._errors import SourceFormatError

__all__ = ["import_pixels"]


def import_pixels(kind: str, sources: Sequence[str | os.PathLike], *, out: str | os.PathLike, datetime: Any = None,
                  format: str = "zarr", tile_size: int = 512, overwrite: bool = False, **tile_options: Any) -> Path:
    """Write the pixel product of ``sources`` (tiles of importer ``kind``: ``alphaearth`` or
    ``tessera``); ``datetime`` (ISO, ``START/END`` or a year) where the tiles do not state it;
    ``tile_options`` are the importer's (TESSERA: ``reference``). Returns ``out``."""
    from ._pixel import PixelProductWriter
    from ._tiles import TileGeo, crs_code
    from .importers import ImportSession
    from .importers._common import imported_contract
    from .importers._registry import get_importer

    importer = get_importer(kind)
    if not hasattr(importer, "open_tile"):
        raise SourceFormatError(f"importer {kind!r} reads chips, not pixel tiles; pixel imports take alphaearth or tessera")
    paths = [Path(p) for p in sources]
    session = ImportSession(kind=kind)
    writer = None
    try:
        for path in paths:
            with importer.open_tile(path, session=session, datetime=datetime, **tile_options) as tile:
                if tile.read_codes is None:
                    raise SourceFormatError(f"{kind} tiles have no pixel storage form eoembed keeps; import them as chips")
                t = tile.transform
                geo = TileGeo(crs_code(tile.crs), (t.a, t.b, t.c, t.d, t.e, t.f), (tile.height, tile.width))
                if writer is None:
                    model = imported_contract(
                        dim=importer.dim, name=importer.model_name, version=importer.model_version, chip_size_px=1,
                        stride_px=1, gsd_m=float(abs(t.a)), pooling="none", band_source=importer.band_source,
                        source=dict(importer.source), output_description=f"{importer.dim}-d {importer.pixel_vectors}, one a pixel")
                    writer = PixelProductWriter(out, model=model, quantization=tile.quantization, format=format, tile_size=tile_size,
                                                license=importer.license, metric="cosine", overwrite=overwrite,
                                                provenance={"config": {"import": kind, "sources": [str(p) for p in paths]}})
                elif tile.quantization != writer.quantization:
                    raise SourceFormatError(f"{path} stores {tile.quantization.method} codes, the first tile "
                                            f"{writer.quantization.method}; one product holds one storage form")
                start, end = tile.time if isinstance(tile.time, tuple) else (tile.time, tile.time)
                for row in range(0, tile.height, tile_size):
                    rows = min(tile_size, tile.height - row)
                    codes, scale = tile.read_codes(row, row + rows)
                    for col in range(0, tile.width, tile_size):
                        cols = min(tile_size, tile.width - col)
                        writer.write_codes(f"{path.stem}-r{row:06d}-c{col:06d}", codes[:, col:col + cols].copy(),
                                           None if scale is None else scale[:, col:col + cols].copy(),
                                           geo=geo.window(row, col, rows, cols), start=start, end=end, source_id=path.stem)
        if writer is None:
            raise SourceFormatError(f"no {kind} tile given")
        session.refuse_unrepaired()  # a defect of a source (e.g. a wrong nodata tag) is an error, as for chips
        return writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

