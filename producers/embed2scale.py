"""Inputs in the Embed2Scale form: SSL4EO-S12 v1.1 ``.zarr.zip`` files, each sample one scene.

The layout, as its authors publish it (github.com/DLR-MF-DAS/SSL4EO-S12-v1.1, ``README.md`` and
``zarr_dataset.py``; github.com/DLR-MF-DAS/embed2scale-challenge-supplement, ``README_base.md``):

* one Zarr v2 store per file, zipped (``*.zarr.zip``, consolidated metadata), an xarray Dataset; one
  folder per modality (``S1GRD``, ``S2L1C``, ``S2L2A``, ``S2RGB``), the files of one set of samples
  named alike in every folder; 64 samples (locations) a file, four timestamps (seasons) each;
* data variable ``bands`` with dims ``(sample, time, band, y, x)``: ``int16`` for S2 (the S2 values
  "include a +1000 offset to align with the newest ESA processing version", so reflectance x 10 000
  is the stored value minus 1000; the challenge's downstream files do not carry that shift, so the
  offset is an option), ``float16`` dB for S1; timestamps chunked separately;
* coordinates ``band`` (``B01`` ... ``B12``; ``vv``, ``vh``), ``sample`` (the location's id, e.g.
  ``0080717``), ``time`` (0..3), ``y``/``x`` (pixel indexes 0..263);
* per-sample variables ``crs`` (EPSG code), ``x_`` ``(sample, x)`` and ``y_`` ``(sample, y)``
  (projected coordinates, taken here as pixel centres: the convention of xarray coordinates read
  from GeoTIFFs by rioxarray), ``time_`` ``(sample, time)`` (acquisition times), ``file_id`` and
  ``sample_id`` ``(sample, time)``, ``center_lat`` / ``center_lon``, and for S2 ``cloud_mask``
  ``(sample, time, y, x)`` (uint8; 0 is clear, any other value a cloud or shadow class).

The files are opened read-only with zarr 3 (``zarr.storage.ZipStore(path, mode="r")``, Zarr format 2)
and xarray (``open_zarr``, which decodes ``time_``).

:func:`open_embed2scale` opens a file (with its sibling modality files) or a folder of modality
folders and returns one :class:`SampleScene` per sample: the modalities fused into one cube of
seasons x channels, band ``MODALITY:BAND@tK`` in time-major order (``S1GRD:VV@t0``,
``S2L2A:B04@t0``, ...; ``@LABEL`` as :func:`~.stack.temporal_stack` names the scenes of a stack,
the season index as label since every sample has its own dates), georeferenced from the sample's
``crs`` and ``x_``/``y_``, timed by the range of its ``time_``. Pixels come back as float32: S2 as
reflectance x 10 000 (offset undone), S1 in dB; a pixel is invalid where an S2 value is 0 (ESA's
NODATA), a value is not finite, or (``mask_clouds``) the cloud mask is not clear, and valid only
where every band of every season is (the producer's valid-fraction rules then apply, as for cubes).

Reading a sample decodes its whole file set once per process and keeps the last one (the producer
reads a file's samples in a row): about 1 GB for a full set of four modalities.
"""

from __future__ import annotations

import os
import threading
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from affine import Affine

from eoembed._errors import BandMappingError, ImageryError
from eoembed._optional import require

__all__ = ["MODALITIES", "S2_OFFSET", "SampleScene", "is_embed2scale", "open_embed2scale", "read_sample",
           "iter_sample_chip_batches"]

SUFFIX = ".zarr.zip"
DIMS = ("sample", "time", "band", "y", "x")
#: the variables every file of the layout holds (others are read where present)
REQUIRED = ("bands", "crs", "x_", "y_", "time_")
#: the stored S2 values minus this are reflectance x 10 000 (SSL4EO-S12 v1.1)
S2_OFFSET = 1000
#: ESA's NODATA value of stored Sentinel-2 DN
S2_NODATA = 0
CLEAR = 0


@dataclass(frozen=True)
class Modality:
    source: str  # the sensor label of its bands in the model contract
    optical: bool  # stored with the S2 offset and NODATA 0


#: the modality folders of the layout, in the order their bands are fused
MODALITIES: dict[str, Modality] = {
    "S1GRD": Modality("Sentinel-1 GRD", optical=False),
    "S2L1C": Modality("Sentinel-2 L1C", optical=True),
    "S2L2A": Modality("Sentinel-2 L2A", optical=True),
    "S2RGB": Modality("Sentinel-2 RGB", optical=False),
}


@dataclass(frozen=True)
class SampleScene:
    """One sample of a set of modality files, read as one scene (plain metadata: it pickles).

    It has the attributes the tiling and the writer read from a scene (``path``, ``crs``,
    ``transform``, ``width``, ``height``, ``res``, ``band_names``, ``count``, ``nodata``,
    ``datetime``, ``dtype``, ``band_sources``) and ``source_id``, the sample's id, which names its
    chips (``source_id`` column and chip ids)."""

    path: str  # FILE#SAMPLE, FILE the first modality's file
    files: tuple[tuple[str, str], ...]  # (modality, file) in fusion order
    index: int  # the sample's position in every file
    sample_id: str
    crs: str
    transform: Affine
    width: int
    height: int
    times: tuple[datetime, ...]  # every acquisition of the sample, all modalities, in order
    all_band_names: tuple[str, ...]  # every fused band, time-major
    all_band_sources: tuple[str, ...]
    channels: tuple[int, ...] | None = None  # positions in all_band_names kept by a band selection
    s2_offset: int = S2_OFFSET
    mask_clouds: bool = True
    nodata: float | None = None  # invalid pixels are flagged by the mask
    dtype: str = "float32"

    @property
    def source_id(self) -> str:
        return self.sample_id

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def band_names(self) -> tuple[str, ...]:
        return self._pick(self.all_band_names)

    @property
    def band_sources(self) -> tuple[str, ...]:
        return self._pick(self.all_band_sources)

    @property
    def count(self) -> int:
        return len(self.band_names)

    @property
    def datetime(self) -> datetime | tuple[datetime, datetime]:
        return (self.times[0], self.times[-1]) if self.times[0] != self.times[-1] else self.times[0]

    def _pick(self, values: tuple[str, ...]) -> tuple[str, ...]:
        return values if self.channels is None else tuple(values[i] for i in self.channels)

    def select(self, wanted: Sequence[str]) -> "SampleScene":
        """The scene with only ``wanted`` bands (names, or 1-based indexes, in the order given)."""
        names = self.band_names
        kept = list(self.channels) if self.channels is not None else list(range(len(self.all_band_names)))
        chosen = []
        for entry in wanted:
            if "=" in entry:
                raise BandMappingError(f"band {entry!r}: the bands of {self.path} cannot be renamed; "
                                       "select them by name or 1-based index")
            if entry in names:
                chosen.append(kept[names.index(entry)])
            elif entry.isdigit() and 1 <= int(entry) <= len(names):
                chosen.append(kept[int(entry) - 1])
            else:
                raise BandMappingError(f"band {entry!r} is not in {self.path} (it has {', '.join(names)}, "
                                       f"or indexes 1..{len(names)})")
        if len(set(chosen)) != len(chosen):
            raise BandMappingError(f"bands {list(wanted)} name one band of {self.path} twice; give each once")
        return replace(self, channels=tuple(chosen))


def is_embed2scale(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.zarr.zip`` file, a modality folder of them or a folder of modality folders."""
    p = Path(path)
    if p.name.endswith(SUFFIX):
        return True
    return p.is_dir() and (_is_modality_folder(p) or any(_is_modality_folder(p / m) for m in MODALITIES))


def _is_modality_folder(p: Path) -> bool:
    return p.name in MODALITIES and p.is_dir() and any(p.glob(f"*{SUFFIX}"))


def file_sets(path: str | os.PathLike) -> list[tuple[tuple[str, str], ...]]:
    """The modality files of each file set under ``path``: a file (and the files of the same name in
    its sibling modality folders) or a folder of modality folders (every file name found there). A
    file set must have its file in every modality folder present. A modality folder gives the sets
    of its files."""
    p = Path(path)
    if _is_modality_folder(p):
        return [files for f in sorted(p.glob(f"*{SUFFIX}")) for files in file_sets(f)]
    if p.name.endswith(SUFFIX):
        if not p.is_file():
            raise ImageryError(f"{p}: no such file; check the path")
        if p.parent.name not in MODALITIES:
            raise ImageryError(f"{p}: the file is not in a modality folder ({', '.join(MODALITIES)}), so what it "
                               "holds is unknown; keep the layout's folders (ROOT/S2L2A/NAME.zarr.zip)")
        root, names = p.parent.parent, [p.name]
        folders = [m for m in MODALITIES if _is_modality_folder(root / m)]
    else:
        root = p
        folders = [m for m in MODALITIES if _is_modality_folder(p / m)]
        if not folders:
            raise ImageryError(f"{p}: no modality folder ({', '.join(MODALITIES)}) with {SUFFIX} files; "
                               "pass the folder holding them, or the files")
        names = sorted({f.name for m in folders for f in (p / m).glob(f"*{SUFFIX}")})
    sets = []
    for name in names:
        present = [m for m in folders if (root / m / name).is_file()]
        missing = [m for m in folders if m not in present]
        if missing:
            raise ImageryError(f"{root / present[0] / name}: its partner file {name} is missing from "
                               f"{', '.join(str(root / m) for m in missing)}; every modality folder needs "
                               "the same files (complete the download, or move the folder aside)")
        sets.append(tuple((m, str(root / m / name)) for m in folders))
    return sets


# ---------------------------------------------------------------------------------------------
# metadata


def _open_dataset(path: str):
    """The file's xarray Dataset, lazily (no pixels read), with ImageryError naming the file."""
    if not zipfile.is_zipfile(path):
        raise ImageryError(f"{path}: not a zip archive; an Embed2Scale input is a Zarr v2 store in a zip "
                           "(*.zarr.zip): download it again, or zip the store's folder")
    xr = require("xarray", extra="zarr")
    zarr = require("zarr", extra="zarr")
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        # values as stored (no fill value turned into NaN, no scale): the reader applies the layout's own rules
        return xr.open_zarr(store, chunks=None, zarr_format=2, consolidated=None, mask_and_scale=False)
    except Exception as exc:  # noqa: BLE001 - zarr and xarray raise many kinds
        store.close()
        raise ImageryError(f"{path}: cannot be read as a Zarr v2 store ({type(exc).__name__}: {exc}); "
                           "check that it is a complete SSL4EO-S12 v1.1 / Embed2Scale file") from exc


@dataclass(frozen=True)
class _FileMeta:
    modality: str
    path: str
    samples: tuple[str, ...]
    bands: tuple[str, ...]
    times: int
    height: int
    width: int
    dtype: str
    crs: np.ndarray  # (sample,) EPSG codes
    x: np.ndarray  # (sample, x) pixel-centre coordinates
    y: np.ndarray  # (sample, y)
    when: np.ndarray  # (sample, time) datetime64[ns]
    has_cloud_mask: bool


def _file_meta(modality: str, path: str) -> _FileMeta:
    ds = _open_dataset(path)
    try:
        missing = [v for v in REQUIRED if v not in ds.variables]
        if missing:
            raise ImageryError(f"{path}: variable(s) {', '.join(missing)} missing (it has {', '.join(sorted(map(str, ds.variables)))}); "
                               f"an SSL4EO-S12 v1.1 / Embed2Scale file holds {', '.join(REQUIRED)}: check that it is one")
        bands = ds["bands"]
        if tuple(bands.dims) != DIMS:
            raise ImageryError(f"{path}: variable 'bands' has dims {tuple(bands.dims)}; the layout is {DIMS}: "
                               "rewrite the file with its dims in that order (xarray transpose)")
        for name, dims in (("crs", ("sample",)), ("x_", ("sample", "x")), ("y_", ("sample", "y")), ("time_", ("sample", "time"))):
            if tuple(ds[name].dims) != dims:
                raise ImageryError(f"{path}: variable {name!r} has dims {tuple(ds[name].dims)}, not {dims}; check the file's layout")
        if not np.issubdtype(ds["time_"].dtype, np.datetime64):
            raise ImageryError(f"{path}: variable 'time_' holds {ds['time_'].dtype}, not times; check the file's layout")
        samples = tuple(str(s) for s in (ds["sample"].values if "sample" in ds.coords else range(bands.shape[0])))
        band_names = tuple(str(b) for b in (ds["band"].values if "band" in ds.coords else range(1, bands.shape[2] + 1)))
        return _FileMeta(
            modality=modality, path=path, samples=samples, bands=band_names, times=int(bands.shape[1]),
            height=int(bands.shape[3]), width=int(bands.shape[4]), dtype=str(bands.dtype),
            crs=np.asarray(ds["crs"].values), x=np.asarray(ds["x_"].values, dtype=np.float64),
            y=np.asarray(ds["y_"].values, dtype=np.float64), when=np.asarray(ds["time_"].values),
            has_cloud_mask="cloud_mask" in ds.variables)
    finally:
        ds.close()


def _check_same_samples(metas: Sequence[_FileMeta]) -> None:
    first = metas[0]
    for other in metas[1:]:
        what = None
        if other.samples != first.samples:
            at = next((i for i, (a, b) in enumerate(zip(first.samples, other.samples)) if a != b),
                      min(len(first.samples), len(other.samples)))
            what = (f"holds other samples than {first.path} ({len(other.samples)} vs {len(first.samples)}; at position {at}: "
                    f"{_sample_at(other, at)} vs {_sample_at(first, at)})")
        elif (other.height, other.width, other.times) != (first.height, first.width, first.times):
            what = (f"has {other.times} timestamps of {other.height}x{other.width} px, {first.path} "
                    f"{first.times} of {first.height}x{first.width} px")
        elif not (np.array_equal(other.crs, first.crs) and np.allclose(other.x, first.x) and np.allclose(other.y, first.y)):
            what = f"places its samples elsewhere than {first.path} (crs, x_ or y_ differ)"
        if what:
            raise ImageryError(f"{other.path} {what}; the modality files of one set must hold the same samples on the "
                               "same grids, in the same order: take every modality folder from one download")


def _sample_at(meta: _FileMeta, position: int) -> str:
    return meta.samples[position] if position < len(meta.samples) else "(none)"


def _transform(meta: _FileMeta, s: int) -> Affine:
    """The affine transform of sample ``s`` from its pixel-centre coordinates (regularly spaced)."""
    where = f"{meta.path}, sample {meta.samples[s]}"
    xs, ys = meta.x[s], meta.y[s]
    if len(xs) < 2 or len(ys) < 2 or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ImageryError(f"{where}: x_ / y_ hold no usable pixel coordinates; check the file")
    dx, dy = (xs[-1] - xs[0]) / (len(xs) - 1), (ys[-1] - ys[0]) / (len(ys) - 1)
    if dx == 0 or dy == 0 or not (np.allclose(np.diff(xs), dx, rtol=0, atol=abs(dx) * 1e-6)
                                  and np.allclose(np.diff(ys), dy, rtol=0, atol=abs(dy) * 1e-6)):
        raise ImageryError(f"{where}: x_ / y_ are not evenly spaced pixel centres; the sample has no affine grid")
    return Affine(dx, 0.0, xs[0] - dx / 2, 0.0, dy, ys[0] - dy / 2)


def _crs(meta: _FileMeta, s: int) -> str:
    from rasterio.crs import CRS

    code = meta.crs[s]
    try:
        return CRS.from_epsg(int(code)).to_string()
    except Exception as exc:  # noqa: BLE001 - rasterio raises CRSError or ValueError
        raise ImageryError(f"{meta.path}, sample {meta.samples[s]}: crs {code!r} is not an EPSG code ({exc}); check the file") from exc


def _utc(value: np.datetime64) -> datetime:
    seconds = value.astype("datetime64[us]").astype(datetime)
    return seconds.replace(tzinfo=timezone.utc)


def open_embed2scale(
    path: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    s2_offset: int = S2_OFFSET,
    mask_clouds: bool = True,
) -> list[SampleScene]:
    """One :class:`SampleScene` per sample of the file set(s) at ``path`` (see the module docs).

    ``modalities`` keeps only those folders (default: every one present); ``s2_offset`` is what the
    S2 values are stored above reflectance x 10 000 (1000 in SSL4EO-S12 v1.1, 0 in the challenge's
    downstream files); ``mask_clouds=False`` keeps cloudy S2 pixels valid."""
    if modalities is not None:
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ImageryError(f"modalities {list(modalities)}: choose from {', '.join(MODALITIES)}")
    scenes = []
    for files in file_sets(path):
        chosen = tuple((m, f) for m, f in files if modalities is None or m in modalities)
        if not chosen:
            raise ImageryError(f"{files[0][1]}: none of the modalities {list(modalities or [])} is in its set "
                               f"({', '.join(m for m, _ in files)})")
        metas = [_file_meta(m, f) for m, f in chosen]
        _check_same_samples(metas)
        first = metas[0]
        names = tuple(f"{m.modality}:{b.upper()}@t{t}" for t in range(first.times) for m in metas for b in m.bands)
        sources = tuple(MODALITIES[m.modality].source for t in range(first.times) for m in metas for _ in m.bands)
        for s, sample in enumerate(first.samples):
            stamps = sorted(_utc(v) for m in metas for v in m.when[s] if not np.isnat(v))
            if not stamps:
                raise ImageryError(f"{first.path}, sample {sample}: time_ holds no acquisition time; check the file")
            scenes.append(SampleScene(
                path=f"{first.path}#{sample}", files=chosen, index=s, sample_id=sample, crs=_crs(first, s),
                transform=_transform(first, s), width=first.width, height=first.height, times=tuple(stamps),
                all_band_names=names, all_band_sources=sources, s2_offset=int(s2_offset), mask_clouds=bool(mask_clouds)))
    return scenes


# ---------------------------------------------------------------------------------------------
# pixels


class _LastFileSet:
    """The decoded arrays of the file set read last (one per process): a file's samples are read in a row."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.arrays: list[tuple[np.ndarray, np.ndarray | None]] = []

    def get(self, files: tuple[tuple[str, str], ...]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        with self.lock:
            if self.key != files:
                self.key, self.arrays = None, []  # free the last set before the next is decoded
                self.arrays = [_decode(path) for _, path in files]
                self.key = files
            return self.arrays

    def clear(self) -> None:
        with self.lock:
            self.key, self.arrays = None, []


def _decode(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``bands`` (and ``cloud_mask`` where present) of a whole file, as stored."""
    ds = _open_dataset(path)
    try:
        bands = np.asarray(ds["bands"].values)
        clouds = np.asarray(ds["cloud_mask"].values) if "cloud_mask" in ds.variables else None
    except Exception as exc:  # noqa: BLE001 - codec and zip errors of many kinds
        raise ImageryError(f"{path}: reading its bands failed ({type(exc).__name__}: {exc}); the file may be damaged: "
                           "download it again") from exc
    finally:
        ds.close()
    return bands, clouds


_CACHE = _LastFileSet()


def read_sample(scene: SampleScene) -> tuple[np.ndarray, np.ndarray]:
    """The whole sample: float32 ``(bands, height, width)`` in ``band_names`` order (S2 offset
    undone, S1 in dB) and the bool ``(height, width)`` mask of pixels valid in every band read."""
    decoded = _CACHE.get(scene.files)
    pixels, invalid = [], []
    for (modality, _), (bands, clouds) in zip(scene.files, decoded):
        raw = bands[scene.index]  # (time, band, y, x), as stored
        values = raw.astype(np.float32)
        bad = ~np.isfinite(values) if np.issubdtype(raw.dtype, np.floating) else np.zeros(raw.shape, dtype=bool)
        if MODALITIES[modality].optical:
            bad |= raw == S2_NODATA
            values -= np.float32(scene.s2_offset)
        if scene.mask_clouds and clouds is not None:
            bad |= (clouds[scene.index] != CLEAR)[:, None]  # a season's mask covers that season's bands
        pixels.append(values)
        invalid.append(bad)
    # modalities side by side within each season, seasons one after the other: band_names' order
    fused = np.concatenate(pixels, axis=1).reshape(-1, scene.height, scene.width)
    flags = np.concatenate(invalid, axis=1).reshape(-1, scene.height, scene.width)
    if scene.channels is not None:
        fused, flags = fused[list(scene.channels)], flags[list(scene.channels)]
    return fused, ~flags.any(axis=0)


def iter_sample_chip_batches(
    scene: SampleScene,
    *,
    chip_size: int,
    stride: int | None = None,
    batch_size: int = 256,
    min_valid_fraction: float = 0.0,
    windows: Sequence | None = None,
) -> Iterator:
    """Chips of one sample, cut as :func:`~.tile.iter_chip_batches` cuts a scene (same options)."""
    from .stack import _iter_batches

    pixels, valid = read_sample(scene)

    def read(*, col_off: int, row_off: int, width: int, height: int):
        rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
        return pixels[:, rows, cols], valid[rows, cols]

    yield from _iter_batches(scene, read, chip_size=chip_size, stride=stride, batch_size=batch_size,
                             min_valid_fraction=min_valid_fraction, windows=windows)
