"""Pixel-level production: every pixel of a scene encoded (a 1-pixel chip: its bands, or its time
series for a stack), written as the tiles of a pixel product.

The distributed job (:mod:`.distribute`) runs this in place of chip units when ``level="pixel"``:
a work unit is one tile (``uSSSSS-rRRRRRR-cCCCCCC``, scene and top-left pixel), named and cut the
same whatever the number of ranks; a unit whose tile file exists is done, so a resumed job skips it.
Pixels are read and batched by the chip reader (chip size 1), so every input kind the chip producer
reads (single files, band stacks of several resolutions, temporal stacks) works here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eoembed._errors import TilingError
from eoembed._tiles import TILE_SUFFIX, TileGeo, crs_code

from .tile import ChipWindow

__all__ = ["TileUnit", "encode_tile", "plan_tiles", "tile_geo"]


@dataclass(frozen=True)
class TileUnit:
    id: str
    scene: int
    row: int
    col: int
    rows: int
    cols: int

    # The job's progress counts a unit's windows as first..stop: here its pixels.
    @property
    def first(self) -> int:
        return 0

    @property
    def stop(self) -> int:
        return self.rows * self.cols


def plan_tiles(scenes: Sequence[Any], *, tile_size: int) -> list[TileUnit]:
    """Units in a fixed order: scene by scene, tiles row by row from each scene's top-left pixel."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise TilingError(f"tile_size={tile_size!r} is not a number of pixels; pass an integer >= 1")
    units = []
    for s, scene in enumerate(scenes):
        for row in range(0, scene.height, tile_size):
            for col in range(0, scene.width, tile_size):
                units.append(TileUnit(id=f"u{s:05d}-r{row:06d}-c{col:06d}", scene=s, row=row, col=col,
                                      rows=min(tile_size, scene.height - row), cols=min(tile_size, scene.width - col)))
    return units


def tile_path(staging: Path, unit: TileUnit, *, form: str) -> Path:
    from eoembed._write import DATA_DIR

    return staging / DATA_DIR / f"{unit.id}{TILE_SUFFIX[form]}"


def tile_geo(scene: Any, unit: TileUnit) -> TileGeo:
    t = scene.transform
    whole = TileGeo(crs_code(scene.crs), (t.a, t.b, t.c, t.d, t.e, t.f), (scene.height, scene.width))
    return whole.window(unit.row, unit.col, unit.rows, unit.cols)


def encode_tile(scene: Any, encoder: Any, unit: TileUnit, *, batch_size: int, meter: Any = None) -> np.ndarray:
    """The tile's pixel embeddings ``(rows, cols, D)``; pixels without valid data in every input
    band are NaN (nodata)."""
    from .produce import _encode, chip_batches, tiling_batch

    windows = [ChipWindow(col, row, 1) for row in range(unit.row, unit.row + unit.rows)
               for col in range(unit.col, unit.col + unit.cols)]
    out: np.ndarray | None = None
    batches = chip_batches(scene, chip_size=1, stride=1, min_valid_fraction=1.0, windows=windows,
                           batch_size=tiling_batch(batch_size, bands=scene.count, chip_size=1))
    if hasattr(encoder, "encode_map"):
        return _encode_tile_map(encoder, unit, batches, meter=meter)
    for batch in batches:
        vectors = np.asarray(_encode(encoder, batch, batch_size=batch_size, meter=meter), dtype=np.float32)
        if out is None:
            out = np.full((unit.rows, unit.cols, vectors.shape[1]), np.nan, dtype=np.float32)
        out[batch.pixel_bbox[:, 1] - unit.row, batch.pixel_bbox[:, 0] - unit.col] = vectors
    if out is None:  # no pixel with data: the dimension comes from the encoder's contract
        dim = encoder.contract(bands=scene.band_names, chip_size=1, stride=1, gsd=float(abs(scene.res[0])),
                               band_sources=[Path(scene.path).name] * scene.count)["output"]["dim"]
        out = np.full((unit.rows, unit.cols, dim), np.nan, dtype=np.float32)
    return out


def _encode_tile_map(encoder: Any, unit: TileUnit, batches: Any, *, meter: Any) -> np.ndarray:
    """A model of feature maps (users' (B, C, H, W) -> (B, D, H, W) models) sees the tile whole: its
    pixels, read as by every pixel encoder, are laid out on the tile (NaN where a band lacks data) and
    the model's map is the tile's vectors. The tile is cut the same on any number of ranks, so the
    vectors at tile edges (where the model's context ends) are the same too."""
    image, has_data = None, np.zeros((unit.rows, unit.cols), dtype=bool)
    for batch in batches:
        pixels = np.asarray(batch.pixels, dtype=np.float32)
        if image is None:
            image = np.full((1, pixels.shape[1], unit.rows, unit.cols), np.nan, dtype=np.float32)
        rows, cols = batch.pixel_bbox[:, 1] - unit.row, batch.pixel_bbox[:, 0] - unit.col
        image[0, :, rows, cols] = pixels[:, :, 0, 0]
        has_data[rows, cols] = True
    if image is None:  # no pixel with data
        return np.full((unit.rows, unit.cols, encoder.dim(0)), np.nan, dtype=np.float32)
    vectors = meter.measure(encoder.encode_map, image) if meter else encoder.encode_map(image)
    out = np.moveaxis(vectors[0], 0, -1).astype(np.float32)
    out[~has_data] = np.nan
    return out
