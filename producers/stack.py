"""Band stacks: encoder inputs gathered from many files, resolutions and sensors onto one pixel grid.

A :class:`Stack` is a virtual multi-band scene. Each band comes from its own file (a
:class:`BandSource`); the stack's grid is the grid of one reference band (by default the finest).
Reading a window resamples every other band onto that grid:

* a band on exactly the reference grid is read directly (bit-exact values);
* a band on another grid (another resolution, an offset, another CRS) is read through a rasterio
  ``WarpedVRT`` covering the whole reference grid, so a pixel's value never depends on the window
  it is read through. Bands in another CRS are listed in :attr:`Stack.reprojected`.

Pixels that are nodata in their own file, non-finite, or outside that file's footprint come back as
NaN in their band, and the validity mask is False there (as in :func:`~eoembed.producers.read.read_window`,
a pixel is valid only where every band is). A Stack, like a Scene, is plain frozen metadata (no open
file), so it pickles.

:func:`iter_stack_chip_batches` cuts a Stack into the same :class:`~eoembed.producers.tile.ChipBatch`
objects that :func:`~eoembed.producers.tile.iter_chip_batches` makes from one file.

BigEarthNet helpers build the 12-band Sentinel-2 L2A stack of one patch folder
(:func:`bigearthnet_s2_stack`) and find the co-located Sentinel-1 patch (:func:`find_s1_for_s2`).

Data cubes ``(time, channel, y, x)`` are read by :func:`open_cube` from a ``.npy``/``.npz`` array with
a JSON sidecar. Zarr stores need the optional ``zarr`` package (``pip install zarr``); without it a
``.zarr`` path raises :class:`~eoembed._errors.MissingDependencyError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from eoembed._errors import BandMappingError, ImageryError, TilingError
from eoembed._optional import require

from .read import Scene, check_window, open_scene
from .tile import ChipBatch, ChipWindow, _positive_int, chip_windows, strip_batches

__all__ = [
    "BandSource",
    "Stack",
    "build_stack",
    "read_stack_window",
    "iter_stack_chip_batches",
    "map_bands",
    "S2_BANDS_12",
    "S1_BANDS",
    "S2_SOURCE",
    "S1_SOURCE",
    "bigearthnet_s2_stack",
    "temporal_stack",
    "find_s1_for_s2",
    "Cube",
    "open_cube",
    "read_cube_window",
    "iter_cube_chip_batches",
]

log = logging.getLogger(__name__)

#: the 12 Sentinel-2 L2A bands of BigEarthNet, in the standard order (B10 is not in L2A products)
S2_BANDS_12: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
#: the Sentinel-1 GRD polarisations of BigEarthNet-S1, in the order they are appended to a stack
S1_BANDS: tuple[str, ...] = ("VV", "VH")
S2_SOURCE = "Sentinel-2 L2A"
S1_SOURCE = "Sentinel-1 GRD"

#: resampling methods the GDAL warper accepts (rasterio.enums.Resampling names)
WARP_RESAMPLINGS = (
    "nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode",
    "max", "min", "med", "q1", "q3", "sum", "rms",
)


@dataclass(frozen=True)
class BandSource:
    """One encoder input band: ``name`` as the encoder knows it, read from band ``band`` (1-based) of ``path``."""

    name: str
    path: str
    band: int = 1
    source: str = ""  # sensor / product label for the model contract, e.g. "Sentinel-2 L2A"
    nodata: float | None = None  # overrides the file's own nodata value


@dataclass(frozen=True)
class Stack:
    """A virtual multi-band scene on one reference grid.

    It has the attributes a tile step reads from a :class:`~eoembed.producers.read.Scene` (``path``,
    ``crs``, ``transform``, ``width``, ``height``, ``res``, ``band_names``, ``count``, ``nodata``,
    ``datetime``, ``dtype``). ``nodata`` is None: invalid pixels are NaN and flagged by the mask.
    """

    path: str
    crs: str
    transform: Affine
    width: int
    height: int
    res: tuple[float, float]
    bands: tuple[BandSource, ...]
    band_names: tuple[str, ...]
    count: int
    nodata: float | None
    datetime: datetime | tuple[datetime, datetime] | None  # a (start, end) range for several dates
    dtype: str = "float32"
    reference: str = ""  # name of the band whose grid the stack uses
    resampling: str = "bilinear"
    reprojected: tuple[str, ...] = ()  # bands warped from another CRS onto the reference grid

    @property
    def band_sources(self) -> tuple[str, ...]:
        """Per band, its sensor label, or its file name when no label was given (for the model contract)."""
        return tuple(b.source or os.path.basename(b.path) for b in self.bands)


# ---------------------------------------------------------------------------------------------
# band mapping and stack building


def _check_band_source(b: BandSource) -> None:
    if not isinstance(b, BandSource):
        raise BandMappingError(f"{b!r} is not a BandSource; pass BandSource(name, path, band, source)")
    if not isinstance(b.name, str) or not b.name:
        raise BandMappingError(f"{b!r}: the band name is empty; give every band the name the encoder expects")
    if isinstance(b.band, bool) or not isinstance(b.band, int):
        raise BandMappingError(f"band {b.name!r}: band index {b.band!r} in {b.path} is not an integer; pass a 1-based index")


def _open_band(b: BandSource) -> Scene:
    """Metadata of the file holding ``b``; BandMappingError naming the band and file when it is not there."""
    _check_band_source(b)
    path = os.fspath(b.path)
    if not os.path.exists(path) and "://" not in path and not path.startswith("/vsi"):
        raise BandMappingError(f"band {b.name!r}: file {path} does not exist; check the band's path")
    try:
        scene = open_scene(path)
    except ImageryError as exc:
        raise ImageryError(f"band {b.name!r}: {exc}") from exc
    if not 1 <= b.band <= scene.count:
        raise BandMappingError(
            f"band {b.name!r}: band index {b.band} is not in {path}, which has {scene.count} band(s) "
            f"(1-based, 1..{scene.count}); fix the band index"
        )
    return scene


def map_bands(available: Mapping[str, BandSource], wanted: Sequence[str] | Mapping[str, str]) -> list[BandSource]:
    """The sources of the encoder's input bands, in the encoder's order.

    ``available`` maps source band names to where they are stored. ``wanted`` lists the encoder's band
    names (each must be a key of ``available``), or maps encoder band names to source band names
    (``{"RED": "B04"}``): the returned BandSource then carries the encoder name. Each chosen file is
    opened to check that it exists and holds the band index. Raises :class:`BandMappingError` naming
    the band and the file(s) searched.
    """
    pairs = list(wanted.items()) if isinstance(wanted, Mapping) else [(w, w) for w in wanted]
    if not pairs:
        raise BandMappingError("no bands wanted; list the encoder's input band names")
    files = sorted({os.fspath(b.path) for b in available.values()})
    searched = ", ".join(files) if files else "(no files)"
    seen: set[str] = set()
    out: list[BandSource] = []
    for enc_name, src_name in pairs:
        if enc_name in seen:
            raise BandMappingError(f"band {enc_name!r} is wanted twice; each encoder band needs one source")
        seen.add(enc_name)
        if src_name not in available:
            raise BandMappingError(
                f"band {src_name!r} is not among the source bands ({', '.join(available) or 'none'}); "
                f"files searched: {searched}"
            )
        src = available[src_name]
        _open_band(src)
        out.append(src if src.name == enc_name else dataclasses.replace(src, name=enc_name))
    return out


def _ground_res(scene: Scene) -> float:
    """Approximate pixel size in metres (geometric mean of x and y), to pick the finest band across CRSs."""
    crs = CRS.from_user_input(scene.crs)
    rx, ry = abs(scene.res[0]), abs(scene.res[1])
    if crs.is_geographic:
        a, b, c, d, e, f = scene.transform[:6]
        lat = f + e * scene.height / 2 + d * scene.width / 2
        m = 111_320.0
        return math.sqrt(rx * m * max(math.cos(math.radians(lat)), 1e-6) * ry * m)
    try:
        factor = float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - CRS without linear units: compare in native units
        factor = 1.0
    return math.sqrt(rx * ry) * factor


def _bounds(scene: Scene) -> tuple[float, float, float, float]:
    a, b, c, d, e, f = scene.transform[:6]
    xs = [c, a * scene.width + c, b * scene.height + c, a * scene.width + b * scene.height + c]
    ys = [f, d * scene.width + f, e * scene.height + f, d * scene.width + e * scene.height + f]
    return min(xs), min(ys), max(xs), max(ys)


def _same_crs(a: str, b: str) -> bool:
    return a == b or CRS.from_user_input(a) == CRS.from_user_input(b)


def _common_folder(paths: Sequence[str]) -> str | None:
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    return folders.pop() if len(folders) == 1 else None


def build_stack(
    bands: Sequence[BandSource],
    *,
    reference: str | None = None,
    resampling: str = "bilinear",
    datetime: datetime | tuple[datetime, datetime] | None = None,
    path: str | os.PathLike | None = None,
) -> Stack:
    """A :class:`Stack` of ``bands`` on the grid of band ``reference`` (default: the finest-resolution band).

    Every band must overlap the reference grid; a band in another CRS is reprojected when read
    (rasterio ``WarpedVRT``) and listed in ``Stack.reprojected``. ``resampling`` (a
    ``rasterio.enums.Resampling`` name the warper accepts) applies to every band not on the
    reference grid. ``datetime`` defaults to the reference file's TIFFTAG_DATETIME; ``path`` (the
    stack's id) to the folder holding all files, else the reference file.

    Raises :class:`BandMappingError` for a missing file, a band index outside its file, a duplicate
    or unknown band name; :class:`ImageryError` for a band that does not overlap the reference grid.
    """
    bands = tuple(bands)
    if not bands:
        raise BandMappingError("no bands given; pass at least one BandSource")
    names = [b.name if isinstance(b, BandSource) else None for b in bands]
    scenes = [_open_band(b) for b in bands]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BandMappingError(f"band name(s) {', '.join(map(repr, dup))} appear more than once; each band needs one name")
    if resampling not in WARP_RESAMPLINGS:
        raise ImageryError(f"resampling={resampling!r} is not supported; use one of {', '.join(WARP_RESAMPLINGS)}")

    if reference is None:
        sizes = [_ground_res(s) for s in scenes]
        ref_i = min(range(len(bands)), key=lambda i: (sizes[i], i))
    else:
        if reference not in names:
            raise BandMappingError(
                f"reference band {reference!r} is not in the stack ({', '.join(names)}); "
                f"files searched: {', '.join(sorted({b.path for b in bands}))}"
            )
        ref_i = names.index(reference)
    ref = scenes[ref_i]
    rx0, ry0, rx1, ry1 = _bounds(ref)

    reprojected = []
    for b, s in zip(bands, scenes):
        same = _same_crs(s.crs, ref.crs)
        if same:
            bx0, by0, bx1, by1 = _bounds(s)
        else:
            try:
                bx0, by0, bx1, by1 = transform_bounds(s.crs, ref.crs, *_bounds(s), densify_pts=21)
            except Exception as exc:  # noqa: BLE001 - pyproj/GDAL errors of many kinds
                raise ImageryError(
                    f"band {b.name!r}: {b.path} ({s.crs}) cannot be projected to the reference CRS {ref.crs} ({exc})"
                ) from exc
            reprojected.append(b.name)
        if not (min(bx1, rx1) > max(bx0, rx0) and min(by1, ry1) > max(by0, ry0)):
            raise ImageryError(
                f"band {b.name!r}: {b.path} does not overlap the reference grid of band {names[ref_i]!r} "
                f"({bands[ref_i].path}, bounds {rx0, ry0, rx1, ry1} in {ref.crs}); check that the files show the same place"
            )
    if reprojected:
        log.info("stack: band(s) %s are reprojected onto %s", ", ".join(reprojected), ref.crs)

    if path is None:
        path = _common_folder([b.path for b in bands]) or ref.path
    return Stack(
        path=os.fspath(path),
        crs=ref.crs,
        transform=ref.transform,
        width=ref.width,
        height=ref.height,
        res=ref.res,
        bands=bands,
        band_names=tuple(names),
        count=len(bands),
        nodata=None,
        datetime=datetime if datetime is not None else ref.datetime,
        dtype="float32",
        reference=names[ref_i],
        resampling=resampling,
        reprojected=tuple(reprojected),
    )


# ---------------------------------------------------------------------------------------------
# reading


def _nodata_mask(raw: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where ``raw`` equals ``nodata`` (None when nodata cannot occur in this dtype)."""
    if nodata is None or np.isnan(nodata):
        return None
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        if not (info.min <= nodata <= info.max and float(nodata).is_integer()):
            return None
    return raw == raw.dtype.type(nodata)


class _StackReader:
    """Open files of a stack (one dataset, and one WarpedVRT where needed, per file)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self._exit = ExitStack()
        self._groups: list[tuple[object, list[int], list[int], bool, float | None, str]] = []
        by_path: dict[str, list[int]] = {}
        for i, b in enumerate(stack.bands):
            by_path.setdefault(os.fspath(b.path), []).append(i)
        try:
            for path, positions in by_path.items():
                names = ", ".join(stack.band_names[i] for i in positions)
                try:
                    ds = self._exit.enter_context(rasterio.open(path))
                except RasterioError as exc:
                    raise ImageryError(
                        f"band(s) {names}: rasterio cannot open {path} ({exc}); check that the file is still there"
                    ) from exc
                indexes = [stack.bands[i].band for i in positions]
                if max(indexes) > ds.count:
                    raise BandMappingError(
                        f"band(s) {names}: {path} now has {ds.count} band(s), fewer than index {max(indexes)}; rebuild the stack"
                    )
                nodata = stack.bands[positions[0]].nodata
                nodata = ds.nodata if nodata is None else nodata
                direct = (
                    ds.crs is not None
                    and _same_crs(ds.crs.to_string(), stack.crs)
                    and ds.transform.almost_equals(stack.transform, precision=1e-9)
                    and ds.width >= stack.width
                    and ds.height >= stack.height
                )
                if direct:
                    reader = ds
                else:
                    reader = self._exit.enter_context(
                        WarpedVRT(
                            ds,
                            crs=stack.crs,
                            transform=stack.transform,
                            width=stack.width,
                            height=stack.height,
                            resampling=Resampling[stack.resampling],
                            src_nodata=nodata,
                            nodata=float("nan"),
                            dtype="float32",
                        )
                    )
                self._groups.append((reader, indexes, positions, direct, nodata, path))
        except BaseException:
            self._exit.close()
            raise

    def __enter__(self) -> "_StackReader":
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def read(self, *, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((self.stack.count, height, width), dtype=np.float32)
        window = Window(col_off, row_off, width, height)
        for reader, indexes, positions, direct, nodata, path in self._groups:
            try:
                raw = reader.read(indexes, window=window)
            except RasterioError as exc:
                raise ImageryError(
                    f"{path}: reading window cols {col_off}..{col_off + width}, rows {row_off}..{row_off + height} "
                    f"of stack {self.stack.path} failed ({exc}); the file may be damaged or truncated"
                ) from exc
            pixels = raw.astype(np.float32)
            if direct:
                bad = _nodata_mask(raw, nodata)
                if bad is not None:
                    pixels[bad] = np.nan
            out[positions] = pixels
        # nodata (now NaN), NaN/inf in a file, float64 beyond the float32 range, outside a band's footprint
        valid = np.isfinite(out).all(axis=0)
        out[~np.isfinite(out)] = np.nan
        return out, valid


def read_stack_window(stack: Stack, *, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of the reference grid from every band.

    Returns ``(pixels, valid)``: float32 ``(bands, height, width)`` resampled onto the reference grid
    (NaN where a band has no data) and a bool ``(height, width)`` mask, False where any band is NaN.
    """
    check_window(stack, col_off, row_off, width, height)
    with _StackReader(stack) as reader:
        return reader.read(col_off=col_off, row_off=row_off, width=width, height=height)


def _iter_batches(
    grid,
    read: Callable[..., tuple[np.ndarray, np.ndarray]],
    *,
    chip_size: int,
    stride: int | None,
    batch_size: int,
    min_valid_fraction: float,
    windows: Sequence[ChipWindow] | None = None,
) -> Iterator[ChipBatch]:
    """:func:`~eoembed.producers.tile.strip_batches` with the window checked against ``grid`` first."""

    def checked(*, col_off: int, row_off: int, width: int, height: int):
        check_window(grid, col_off, row_off, width, height)
        return read(col_off=col_off, row_off=row_off, width=width, height=height)

    yield from strip_batches(grid, checked, chip_size=chip_size, stride=stride, batch_size=batch_size,
                             min_valid_fraction=min_valid_fraction, windows=windows)


def iter_stack_chip_batches(
    stack: Stack,
    *,
    chip_size: int,
    stride: int | None = None,
    batch_size: int = 256,
    min_valid_fraction: float = 0.0,
    windows: Sequence[ChipWindow] | None = None,
) -> Iterator[ChipBatch]:
    """Chips of ``stack`` in batches, exactly as :func:`~eoembed.producers.tile.iter_chip_batches` cuts a scene.

    Same windows (:func:`~eoembed.producers.tile.chip_windows` order, or the given ``windows``
    subset, as there), same ChipBatch fields and footprints; one strip per chip row is read through
    :func:`read_stack_window`'s reader, with all files opened once.
    """
    _positive_int("batch_size", batch_size)
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise TilingError(f"min_valid_fraction={min_valid_fraction!r} is outside [0, 1]; pass a fraction of pixels")
    if windows is None:  # argument errors before any file is opened
        windows = getattr(stack, "windows", None) or chip_windows(stack.width, stack.height, chip_size=chip_size, stride=stride)
    if not windows:
        return
    with _StackReader(stack) as reader:
        yield from _iter_batches(stack, reader.read, chip_size=chip_size, stride=stride, batch_size=batch_size,
                                 min_valid_fraction=min_valid_fraction, windows=windows)


# ---------------------------------------------------------------------------------------------
# BigEarthNet


def _labels_json(folder: Path) -> dict | None:
    path = folder / f"{folder.name}_labels_metadata.json"
    if not path.is_file():
        found = sorted(folder.glob("*_labels_metadata.json"))
        if not found:
            return None
        path = found[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageryError(f"{path}: cannot read the labels metadata ({exc}); check that it is a complete JSON file") from exc


def _parse_time(value) -> datetime | None:
    if not value:
        return None
    text = str(value).strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _folder(value: str | os.PathLike, what: str) -> Path:
    folder = Path(value)
    if not folder.is_dir():
        raise ImageryError(f"{folder}: no such {what} folder; pass the folder of one patch")
    return folder


def bigearthnet_s2_stack(
    folder: str | os.PathLike,
    *,
    bands: Sequence[str] = S2_BANDS_12,
    with_s1: str | os.PathLike | None = None,
    resampling: str = "bilinear",
) -> Stack:
    """The Sentinel-2 L2A stack of one BigEarthNet patch folder (one GeoTIFF per band), on the 10 m grid.

    ``bands`` defaults to the 12 bands in the standard order; ``datetime`` is the ``acquisition_date``
    of the patch's labels JSON (UTC). ``with_s1`` is the folder of the co-located Sentinel-1 patch
    (see :func:`find_s1_for_s2`): its VV and VH bands are appended (unless ``bands`` places them).
    """
    folder = _folder(folder, "BigEarthNet-S2 patch")
    patch = folder.name
    available = {b: BandSource(b, str(folder / f"{patch}_{b}.tif"), 1, S2_SOURCE) for b in S2_BANDS_12}
    wanted = list(bands)
    if with_s1 is not None:
        s1 = _folder(with_s1, "BigEarthNet-S1 patch")
        meta = _labels_json(s1) or {}
        partner = meta.get("corresponding_s2_patch")
        if partner and partner != patch:
            raise ImageryError(
                f"{s1}: this Sentinel-1 patch belongs to S2 patch {partner}, not {patch}; "
                "use find_s1_for_s2 to find the matching one"
            )
        for b in S1_BANDS:
            available[b] = BandSource(b, str(s1 / f"{s1.name}_{b}.tif"), 1, S1_SOURCE)
        wanted += [b for b in S1_BANDS if b not in wanted]
    sources = map_bands(available, wanted)
    meta = _labels_json(folder) or {}
    when = _parse_time(meta.get("acquisition_date"))
    return build_stack(sources, resampling=resampling, datetime=when, path=str(folder))


def find_s1_for_s2(s2_folder: str | os.PathLike, s1_root: str | os.PathLike) -> Path | None:
    """The BigEarthNet-S1 patch folder under ``s1_root`` co-located with the S2 patch ``s2_folder``, or None.

    Each S1 patch's ``*_labels_metadata.json`` names its S2 patch in ``corresponding_s2_patch``;
    that field is the only link used (patch names alone are ambiguous across tiles).
    """
    target = Path(s2_folder).name
    root = Path(s1_root)
    if not root.is_dir():
        raise ImageryError(f"{root}: no such BigEarthNet-S1 folder; pass the folder holding the S1 patch folders")
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = _labels_json(child)
        if meta and meta.get("corresponding_s2_patch") == target:
            return child
    return None


# ---------------------------------------------------------------------------------------------
# several dates or sensors, one GeoTIFF each


def temporal_stack(
    files: Sequence[str | os.PathLike],
    *,
    times: Sequence[str | datetime | None] | None = None,
    labels: Sequence[str] | None = None,
    resampling: str = "bilinear",
    nodata: float | None = None,
    path: str | os.PathLike | None = None,
) -> Stack:
    """One stack of every band of several scenes of one place (several dates, or several sensors),
    on the grid of the finest, in time order.

    Bands are named ``BAND@LABEL`` in time-major order, as a cube's are: the label is the scene's
    date (``YYYY-MM-DD``) unless ``labels`` are given (needed when two scenes share a date). A
    scene's time is its TIFFTAG_DATETIME unless ``times`` gives one; the stack's time is the range
    from the first to the last. ``nodata`` overrides the files' own nodata value.
    """
    files = [os.fspath(f) for f in files]
    if len(files) < 2:
        raise BandMappingError(f"a temporal stack needs at least two scenes, got {files}")
    for name, given in (("times", times), ("labels", labels)):
        if given is not None and len(given) != len(files):
            raise BandMappingError(f"{len(given)} {name} for {len(files)} files ({', '.join(files)}); give one per file")
    scenes = [open_scene(f) for f in files]
    when: list[datetime] = []
    for k, scene in enumerate(scenes):
        given = times[k] if times is not None else None
        moment = given if isinstance(given, datetime) else _parse_time(given) if given else scene.datetime
        if given and moment is None:
            raise BandMappingError(f"time {given!r} for {scene.path} is not an ISO 8601 date or date-time")
        if moment is None:
            raise ImageryError(f"{scene.path} has no acquisition time (no TIFFTAG_DATETIME); give its time in the stack's times")
        when.append(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    order = sorted(range(len(files)), key=lambda k: (when[k], k))
    names = [labels[k] if labels is not None else f"{when[k]:%Y-%m-%d}" for k in range(len(files))]
    if len(set(names)) != len(names):
        raise BandMappingError(
            f"scenes {', '.join(files)} share a label ({', '.join(names)}); give distinct labels (e.g. the sensor)"
        )
    bands = [
        BandSource(name=f"{band}@{names[k]}", path=scenes[k].path, band=index, source=Path(scenes[k].path).name,
                   nodata=nodata)
        for k in order
        for band, index in zip(scenes[k].band_names, scenes[k].band_indexes or range(1, scenes[k].count + 1))
    ]
    start, end = when[order[0]], when[order[-1]]
    return build_stack(bands, resampling=resampling, datetime=(start, end) if start != end else start,
                       path=path if path is not None else scenes[order[0]].path)


# ---------------------------------------------------------------------------------------------
# data cubes (time, channel, y, x)


@dataclass(frozen=True)
class Cube:
    """Metadata of a ``(time, channel, y, x)`` array on one grid; pixels are read on demand.

    Stored as ``.npy`` / ``.npz`` (array ``data``, or the only array) plus a JSON sidecar with the
    same stem: ``{"crs": "EPSG:32633", "transform": [a, b, c, d, e, f], "band_names": [...],
    "times": ["2020-01-01T00:00:00Z", ...], "nodata": null}`` (``transform`` in rasterio/affine
    order). A ``.zarr`` store (with the optional ``zarr`` package) carries the same keys in its attributes.
    """

    path: str
    crs: str
    transform: Affine
    width: int
    height: int
    res: tuple[float, float]
    band_names: tuple[str, ...]
    count: int
    times: tuple[datetime, ...]
    nodata: float | None
    dtype: str

    @property
    def datetime(self) -> datetime | None:
        return self.times[0] if self.times else None


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json")))


def _zarr_array(path: Path):
    zarr = require("zarr", extra="zarr")  # or save the cube as .npy/.npz with a JSON sidecar
    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds
        raise ImageryError(f"{path}: zarr cannot open it as one array ({exc}); point at the (time, channel, y, x) array") from exc


def _cube_array(path: Path):
    """The array of a cube file: a read-only memmap (.npy), an ndarray (.npz) or a zarr array."""
    if _is_zarr(path):
        return _zarr_array(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if "data" in keys:
                    return npz["data"]
                if len(keys) == 1:
                    return npz[keys[0]]
                raise ImageryError(f"{path}: holds arrays {keys}; name the cube array 'data'")
    except ImageryError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageryError(f"{path}: numpy cannot read it ({exc}); check that it is a complete .npy/.npz file") from exc
    raise ImageryError(f"{path}: a cube must be a .npy, .npz or .zarr path")


def open_cube(path: str | os.PathLike) -> Cube:
    """Read the metadata of a ``(time, channel, y, x)`` data cube (see :class:`Cube` for the layout)."""
    p = Path(path)
    if not p.exists():
        raise ImageryError(f"{p}: no such file; check the path")
    arr = _cube_array(p)
    if _is_zarr(p):
        meta = dict(arr.attrs)
        where = f"{p} (zarr attributes)"
    else:
        side = p.with_suffix(".json")
        if not side.is_file():
            raise ImageryError(f"{p}: no JSON sidecar {side}; write crs, transform, band_names and times there")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise ImageryError(f"{side}: cannot read the sidecar ({exc}); check that it is complete JSON") from exc
        where = str(side)
    if len(arr.shape) != 4:
        raise ImageryError(f"{p}: the array has shape {tuple(arr.shape)}; a cube is (time, channel, y, x)")
    nt, nc, ny, nx = (int(n) for n in arr.shape)
    missing = [k for k in ("crs", "transform", "band_names") if k not in meta]
    if missing:
        raise ImageryError(f"{where}: missing key(s) {', '.join(missing)}")
    try:
        crs = CRS.from_user_input(meta["crs"]).to_string()
    except Exception as exc:  # noqa: BLE001
        raise ImageryError(f"{where}: crs {meta['crs']!r} is not a CRS ({exc})") from exc
    t = meta["transform"]
    if not (isinstance(t, (list, tuple)) and len(t) in (6, 9) and all(isinstance(v, (int, float)) for v in t)):
        raise ImageryError(f"{where}: transform {t!r} is not 6 numbers [a, b, c, d, e, f] (affine order)")
    transform = Affine(*[float(v) for v in t[:6]])
    if transform.determinant == 0:
        raise ImageryError(f"{where}: transform {t!r} is singular")
    names = tuple(str(n) for n in meta["band_names"])
    if len(names) != nc:
        raise ImageryError(f"{where}: {len(names)} band_names for {nc} channels in {p}")
    raw_times = meta.get("times") or []
    times = tuple(_parse_time(v) for v in raw_times)
    if len(times) != nt or any(v is None for v in times):
        raise ImageryError(f"{where}: times must list {nt} ISO 8601 datetimes, one per time step; got {raw_times!r}")
    nodata = meta.get("nodata")
    return Cube(
        path=str(p),
        crs=crs,
        transform=transform,
        width=nx,
        height=ny,
        res=(abs(transform.a), abs(transform.e)),
        band_names=names,
        count=nc,
        times=times,  # type: ignore[arg-type]
        nodata=None if nodata is None else float(nodata),
        dtype=str(arr.dtype),
    )


def _cube_read(arr, cube: Cube, t: int | slice, col_off: int, row_off: int, width: int, height: int):
    raw = np.asarray(arr[t, :, row_off : row_off + height, col_off : col_off + width])
    single = raw.ndim == 3
    if single:
        raw = raw[None]
    bad = ~np.isfinite(raw.astype(np.float32)) if np.issubdtype(raw.dtype, np.floating) else np.zeros(raw.shape, bool)
    nd = _nodata_mask(raw, cube.nodata)
    if nd is not None:
        bad |= nd
    pixels = raw.astype(np.float32)
    valid = ~bad.any(axis=1)
    return (pixels[0], valid[0]) if single else (pixels, valid)


def read_cube_window(
    cube: Cube, *, col_off: int, row_off: int, width: int, height: int, time: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A window of the cube: float32 ``(time, channel, h, w)`` and bool ``(time, h, w)`` validity
    (``time`` given: ``(channel, h, w)`` and ``(h, w)`` for that step). Values are as stored."""
    check_window(cube, col_off, row_off, width, height)
    t: int | slice = slice(None) if time is None else _time_index(cube, time)
    return _cube_read(_cube_array(Path(cube.path)), cube, t, col_off, row_off, width, height)


def _time_index(cube: Cube, time) -> int:
    if isinstance(time, bool) or not isinstance(time, (int, np.integer)) or not -len(cube.times) <= time < len(cube.times):
        raise ImageryError(f"{cube.path}: time index {time!r} is outside 0..{len(cube.times) - 1}")
    return int(time) % len(cube.times)


def iter_cube_chip_batches(
    cube: Cube,
    *,
    time: int,
    chip_size: int,
    stride: int | None = None,
    batch_size: int = 256,
    min_valid_fraction: float = 0.0,
) -> Iterator[ChipBatch]:
    """Chips of one time step of a cube, as :func:`~eoembed.producers.tile.iter_chip_batches` makes them."""
    t = _time_index(cube, time)
    arr = _cube_array(Path(cube.path))

    def read(*, col_off, row_off, width, height):
        return _cube_read(arr, cube, t, col_off, row_off, width, height)

    yield from _iter_batches(cube, read, chip_size=chip_size, stride=stride, batch_size=batch_size,
                             min_valid_fraction=min_valid_fraction)


@dataclass(frozen=True)
class CubeScene:
    """A cube read as one scene whose encoder inputs are every (time, channel) pair, named
    ``BAND@YYYY-MM-DD`` in time-major order (the Embed2Scale layout: seasons x channels per chip).
    Its chips carry the cube's time range."""

    cube: Cube

    path = property(lambda self: self.cube.path)
    crs = property(lambda self: self.cube.crs)
    transform = property(lambda self: self.cube.transform)
    width = property(lambda self: self.cube.width)
    height = property(lambda self: self.cube.height)
    res = property(lambda self: self.cube.res)
    nodata = property(lambda self: self.cube.nodata)
    dtype = property(lambda self: self.cube.dtype)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(f"{band}@{t:%Y-%m-%d}" for t in self.cube.times for band in self.cube.band_names)

    @property
    def count(self) -> int:
        return len(self.band_names)

    @property
    def band_sources(self) -> tuple[str, ...]:
        return (Path(self.cube.path).name,) * self.count

    @property
    def datetime(self):
        times = self.cube.times
        return (times[0], times[-1]) if len(times) > 1 else times[0]


def iter_cube_scene_batches(
    scene: CubeScene,
    *,
    chip_size: int,
    stride: int | None = None,
    batch_size: int = 256,
    min_valid_fraction: float = 0.0,
    windows: Sequence[ChipWindow] | None = None,
) -> Iterator[ChipBatch]:
    """Chips of every time step at once, time-major; a pixel is valid when it is valid at every step."""
    arr = _cube_array(Path(scene.cube.path))

    def read(*, col_off, row_off, width, height):
        pixels, valid = _cube_read(arr, scene.cube, slice(None), col_off, row_off, width, height)
        return pixels.reshape(-1, height, width), valid.all(axis=0)

    yield from _iter_batches(scene, read, chip_size=chip_size, stride=stride, batch_size=batch_size,
                             min_valid_fraction=min_valid_fraction, windows=windows)
