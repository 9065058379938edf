"""Read scenes through rasterio: metadata once, pixel windows on demand.

A :class:`Scene` is plain, frozen metadata (no open file handle), so it pickles and can be sent to
other processes (MPI ranks); :func:`read_window` opens the file for each read.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from eoembed._errors import ImageryError

from .sceneid import acquisition_time

__all__ = ["Scene", "open_scene", "read_window"]

_DATETIME_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y:%m:%d")


@dataclass(frozen=True)
class Scene:
    """Metadata of one raster file. ``transform`` maps (col, row) to scene-CRS (x, y)."""

    path: str
    crs: str
    transform: Affine
    width: int
    height: int
    count: int
    band_names: tuple[str, ...]
    dtype: str
    nodata: float | None
    datetime: datetime | None
    res: tuple[float, float]
    # 1-based file bands read, in order, when the encoder takes a selection (``count`` and
    # ``band_names`` then describe the selection); None reads every band.
    band_indexes: tuple[int, ...] | None = None


def _parse_datetime(value: str | None) -> datetime | None:
    """TIFFTAG_DATETIME ("YYYY:MM:DD HH:MM:SS" by the TIFF spec) as a UTC datetime; None if absent or malformed."""
    if not value:
        return None
    text = value.strip().rstrip("\x00").strip()
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _check_not_truncated(ds, path: str) -> None:
    """Fail now, not mid-run, when the last data block of a GeoTIFF lies beyond the end of the file.

    GDAL opens a truncated file whose directory sits at the start (COG layout) without complaint.
    """
    if ds.driver != "GTiff" or not os.path.isfile(path):
        return
    size = os.path.getsize(path)
    block_h, block_w = ds.block_shapes[0]
    last = f"BLOCK_OFFSET_{(ds.width - 1) // block_w}_{(ds.height - 1) // block_h}"
    last_size = last.replace("OFFSET", "SIZE")
    for bidx in range(1, ds.count + 1):
        offset = ds.get_tag_item(last, "TIFF", bidx=bidx)
        nbytes = ds.get_tag_item(last_size, "TIFF", bidx=bidx)
        if offset is None or nbytes is None:
            continue
        end = int(offset) + int(nbytes)
        if end > size:
            raise ImageryError(
                f"{path}: the file is truncated (band {bidx} data ends at byte {end}, the file has {size} bytes); "
                "copy or download it again"
            )


def open_scene(path: str | os.PathLike) -> Scene:
    """Read the metadata of a raster (no pixels).

    Raises :class:`ImageryError` naming the file when rasterio cannot open it, when it is truncated,
    or when it has no CRS or no geotransform.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and "://" not in path and not path.startswith("/vsi"):
        raise ImageryError(f"{path}: no such file; check the path")
    try:
        with warnings.catch_warnings():
            # an ungeoreferenced file is rejected below with a clearer error than rasterio's warning
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            if ds.crs is None:
                raise ImageryError(
                    f"{path}: the raster has no CRS, so its chips cannot be placed on Earth; "
                    "georeference it first (e.g. gdal_edit.py -a_srs EPSG:xxxx)"
                )
            if ds.transform.is_identity or ds.transform.determinant == 0:
                raise ImageryError(
                    f"{path}: the raster has a CRS but no usable geotransform ({tuple(ds.transform)[:6]}); "
                    "georeference it first (e.g. gdal_translate -a_ullr)"
                )
            _check_not_truncated(ds, path)
            names = tuple(
                desc if desc else f"B{i}" for i, desc in enumerate(ds.descriptions, start=1)
            )
            if len(set(names)) != len(names):  # duplicate descriptions: fall back to positions
                names = tuple(f"B{i}" for i in range(1, ds.count + 1))
            tags = ds.tags()
            return Scene(
                path=path,
                crs=ds.crs.to_string(),
                transform=ds.transform,
                width=int(ds.width),
                height=int(ds.height),
                count=int(ds.count),
                band_names=names,
                dtype=str(ds.dtypes[0]),
                nodata=None if ds.nodata is None else float(ds.nodata),
                # Distributed scenes often have no TIFF date; their product id or MTL file has it.
                datetime=_parse_datetime(tags.get("TIFFTAG_DATETIME")) or acquisition_time(path),
                res=(float(ds.res[0]), float(ds.res[1])),
            )
    except ImageryError:
        raise
    except RasterioError as exc:
        raise ImageryError(f"{path}: rasterio cannot open it ({exc}); check that it is a complete raster file") from exc


def _band_indexes(scene: Scene, bands: Sequence[int] | None) -> list[int]:
    if bands is None:
        return list(scene.band_indexes) if scene.band_indexes else list(range(1, scene.count + 1))
    indexes = [int(b) for b in bands]
    if not indexes:
        raise ImageryError(f"{scene.path}: no bands requested; pass 1-based band indexes or None for all")
    for b in indexes:
        if not 1 <= b <= scene.count:
            raise ImageryError(
                f"{scene.path}: band {b} does not exist; bands are 1-based, 1..{scene.count} "
                f"({', '.join(scene.band_names)})"
            )
    return indexes


_KEPT = threading.local()  # the datasets a keep_datasets_open() block of this thread holds


@contextlib.contextmanager
def keep_datasets_open() -> Iterator[None]:
    """Within this block, rasters opened by :func:`open_dataset` in this thread stay open, one handle
    a file, until the block ends: the work units of one scene then reuse GDAL's cache of decoded
    blocks instead of decoding the scene's tiles again for every unit."""
    if getattr(_KEPT, "datasets", None) is not None:  # nested: the outer block owns them
        yield
        return
    _KEPT.datasets = {}
    try:
        yield
    finally:
        datasets, _KEPT.datasets = _KEPT.datasets, None
        for ds in datasets.values():
            ds.close()


def open_dataset(path: str) -> contextlib.AbstractContextManager:
    """``rasterio.open(path)`` to read, as a context manager that closes it, unless a
    :func:`keep_datasets_open` block of this thread holds it open."""
    kept = getattr(_KEPT, "datasets", None)
    if kept is None:
        return rasterio.open(path)
    ds = kept.get(path)
    if ds is None or ds.closed:
        ds = kept[path] = rasterio.open(path)
    return contextlib.nullcontext(ds)


def check_window(grid, col_off: int, row_off: int, width: int, height: int) -> None:
    """Refuse an empty window or one reaching outside ``grid`` (a scene, stack or cube)."""
    if width < 1 or height < 1:
        raise ImageryError(f"{grid.path}: window size {width}x{height} is empty; width and height must be >= 1")
    if col_off < 0 or row_off < 0 or col_off + width > grid.width or row_off + height > grid.height:
        raise ImageryError(
            f"{grid.path}: window cols {col_off}..{col_off + width}, rows {row_off}..{row_off + height} "
            f"is outside the {grid.width}x{grid.height} image; keep windows inside the image"
        )


def read_window(
    scene: Scene,
    *,
    col_off: int,
    row_off: int,
    width: int,
    height: int,
    bands: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window inside the scene.

    ``bands`` are 1-based rasterio band indexes (None: all). Returns ``(pixels, valid)``: pixels as
    float32 ``(bands, height, width)`` and a bool ``(height, width)`` mask, False where any band
    equals the nodata value or is not finite. The window must lie inside the image.
    """
    check_window(scene, col_off, row_off, width, height)
    indexes = _band_indexes(scene, bands)
    try:
        with rasterio.open(scene.path) as ds:
            return _read_open(ds, scene, col_off=col_off, row_off=row_off, width=width, height=height, indexes=indexes)
    except RasterioError as exc:
        raise ImageryError(f"{scene.path}: rasterio cannot open it ({exc}); check that the file is still there") from exc


def _read_open(
    ds, scene: Scene, *, col_off: int, row_off: int, width: int, height: int, indexes: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a checked window from an already open dataset (lets callers reuse GDAL's block cache)."""
    window = Window(col_off, row_off, width, height)
    try:
        raw = ds.read(indexes, window=window, boundless=False)
    except RasterioError as exc:
        raise ImageryError(
            f"{scene.path}: reading window cols {col_off}..{col_off + width}, rows {row_off}..{row_off + height} "
            f"failed ({exc}); the file may be damaged or truncated"
        ) from exc
    return _to_float_and_mask(raw, scene.nodata)


def _to_float_and_mask(raw: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    height, width = raw.shape[1:]
    invalid = np.zeros((height, width), dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        if np.issubdtype(raw.dtype, np.integer):
            info = np.iinfo(raw.dtype)
            if info.min <= nodata <= info.max and float(nodata).is_integer():
                invalid |= (raw == raw.dtype.type(nodata)).any(axis=0)
        else:
            invalid |= (raw == raw.dtype.type(nodata)).any(axis=0)
    pixels = raw.astype(np.float32, copy=False)
    if np.issubdtype(raw.dtype, np.floating):
        # NaN/inf in the file, or float64 values beyond the float32 range
        invalid |= ~np.isfinite(pixels).all(axis=0)
    return pixels, ~invalid
