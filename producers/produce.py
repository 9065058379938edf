"""Produce a product from scenes in one process: read, tile, encode, write.

The stages are the modules beside this one (``read`` -> ``tile`` -> ``encode``) and the SDK's
writer. Distributing scenes over MPI ranks builds on :func:`encode_scene`, which turns one scene
into writer batches and knows nothing of where they go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from eoembed._chipid import chip_ids
from eoembed._errors import ImageryError
from eoembed._grid import get_grid
from eoembed._write import ProductWriter

from .encoders import Encoder, get_encoder
from .read import Scene, open_scene
from .tile import _positive_int, iter_chip_batches


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Within this block the cyclic garbage collector skips every object alive at its start (the
    modules of torch, GDAL, pyarrow ...: millions of objects). A job's tens of thousands of chips
    trigger full collections again and again, and each would otherwise walk all of those."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def prefetch(items: Iterator[Any], *, depth: int = 2) -> Iterator[Any]:
    """Yield ``items`` in order while a background thread already produces the next ``depth``:
    raster reads (which release the GIL) overlap with encoding. Errors reach the caller."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(done)
        except BaseException as error:  # handed to the consumer, which re-raises it
            buffer.put(error)
        finally:
            # Close the source here: raster handles belong to this thread's GDAL environment.
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="eoembed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def chip_batches(scene, **options: Any):
    """Chip batches of a Scene (one file), a Stack (bands from several files or sensors on one grid),
    a CubeScene (time x channel) or a SampleScene (one sample of Embed2Scale files), all cut the same way."""
    from .embed2scale import SampleScene, iter_sample_chip_batches
    from .stack import CubeScene, Stack, iter_cube_scene_batches, iter_stack_chip_batches

    if isinstance(scene, SampleScene):
        return iter_sample_chip_batches(scene, **options)
    if isinstance(scene, Stack):
        return iter_stack_chip_batches(scene, **options)
    if isinstance(scene, CubeScene):
        return iter_cube_scene_batches(scene, **options)
    return iter_chip_batches(scene, **options)


def encode_scene(
    scene: Scene,
    encoder: Encoder,
    *,
    chip_size: int,
    stride: int | None = None,
    grid_id: str = "majortom-10km",
    min_valid_fraction: float = 0.5,
    batch_size: int = 256,
    time: datetime | tuple[datetime, datetime] | None = None,
    source_id: str | None = None,
    windows: Sequence[Any] | None = None,
    prefetch_depth: int = 0,
    meter: Any = None,
    empty_chips: str = "drop",
    outside_grid: str = "drop",
    dropped: dict[str, dict[str, int]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Writer batches (see :meth:`ProductWriter.write`) for every chip of one scene. ``meter`` (an
    :class:`~.energy.EnergyMeter`) counts the seconds and energy spent in the encoder.

    Chips whose vector is all zeros (``empty_chips="drop"``; ``"keep"`` keeps them, for a writer that
    declares ``nodata_zero_vector``) or whose centre lies outside the grid's latitude range
    (``outside_grid="drop"``; ``"error"`` refuses the scene) are left out and counted in ``dropped``
    (source id -> reason -> chips)."""
    check_drop_options(empty_chips=empty_chips, outside_grid=outside_grid)
    when = time if time is not None else scene.datetime
    if when is None:
        raise ImageryError(missing_time_message([scene.path]))
    grid = get_grid(grid_id)
    # a scene that is one sample of a file names its chips by the sample's id, not the file's
    source = source_id or getattr(scene, "source_id", None) or Path(scene.path).stem
    batches = chip_batches(scene, chip_size=chip_size, stride=stride, min_valid_fraction=min_valid_fraction,
                           windows=windows, batch_size=tiling_batch(batch_size, bands=scene.count, chip_size=chip_size))
    # Overlapping reads with encoding pays when the encoder runs on an accelerator; on a few busy
    # CPU cores the hand-off costs more than it saves (benchmarks/produce_scaling.py).
    stamps = tuple(np.datetime64(_utc_naive(t), "us") for t in (when if isinstance(when, tuple) else (when,)))
    for batch in (prefetch(batches, depth=prefetch_depth) if prefetch_depth > 0 else batches):
        lon = (batch.lonlat_bounds[:, 0] + batch.lonlat_bounds[:, 2]) / 2
        lat = (batch.lonlat_bounds[:, 1] + batch.lonlat_bounds[:, 3]) / 2
        cells = _cells_or_none(grid, lon, lat, refuse=outside_grid == "error", where=scene.path)
        vectors = _encode(encoder, batch, batch_size=batch_size, meter=meter)
        keep = np.not_equal(cells, None)  # elementwise over the object array
        _count(dropped, source, DROPPED_OUTSIDE_GRID, int((~keep).sum()))
        if empty_chips == "drop":
            zero = keep & ~np.asarray(vectors).any(axis=1)
            _count(dropped, source, DROPPED_ZERO_VECTOR, int(zero.sum()))
            keep &= ~zero
        if not keep.any():
            continue
        n = int(keep.sum())
        pixel_bbox = batch.pixel_bbox[keep]
        grid_cells = cells[keep]
        chips: dict[str, Any] = {
            "embedding": np.asarray(vectors)[keep],
            "bounds": batch.lonlat_bounds[keep],
            "source_id": source,
            "grid_cell": grid_cells,
            # the writer's own derivation, done here where the time is one value for the whole scene
            "chip_id": chip_ids(grid_id=grid.id, grid_cells=grid_cells, col_offs=pixel_bbox[:, 0], row_offs=pixel_bbox[:, 1],
                                chip_size=chip_size, times=[when] * n, source_ids=[source] * n),
            "native_crs": scene.crs,
            "native_bounds": batch.native_bounds[keep],
            "pixel_bbox": pixel_bbox,
            "valid_fraction": np.asarray(batch.valid_fraction)[keep],
        }
        # times as numpy datetime64 columns: the writer converts those without a Python object per chip
        if isinstance(when, tuple):
            chips["start_datetime"], chips["end_datetime"] = (np.full(n, t) for t in stamps)
        else:
            chips["datetime"] = np.full(n, stamps[0])
        yield chips


#: chips a writer batch gathers: the writer's cost per batch (a few ms) then weighs little
WRITER_BATCH_ROWS = 4096


def writer_batches(batches: Iterable[dict[str, Any]], *, rows: int = WRITER_BATCH_ROWS) -> Iterator[dict[str, Any]]:
    """The batches of :func:`encode_scene` joined, in order, into batches of at least ``rows`` chips
    (the last one smaller): the same rows, fewer writer calls."""
    pending: list[dict[str, Any]] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch["embedding"])
        if count >= rows:
            yield _join(pending)
            pending, count = [], 0
    if pending:
        yield _join(pending)


def _join(batches: list[dict[str, Any]]) -> dict[str, Any]:
    if len(batches) == 1:
        return batches[0]
    joined: dict[str, Any] = {}
    for key, first in batches[0].items():
        if isinstance(first, str):  # one value for the whole scene
            joined[key] = first
        elif isinstance(first, list):
            joined[key] = [v for batch in batches for v in batch[key]]
        else:
            joined[key] = np.concatenate([batch[key] for batch in batches])
    return joined


def _utc_naive(when: datetime) -> datetime:
    """UTC without a zone, as numpy holds it; a naive time is UTC already (as the writer reads it)."""
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo is not None else when


#: float32 pixel bytes of one tiling batch: chips are cut, placed on Earth and named many encoder
#: batches at a time, since each of those steps costs about as much per call as per chip
TILING_BYTES = 64 << 20


def tiling_batch(batch_size: int, *, bands: int, chip_size: int) -> int:
    """Chips a tiling batch holds: a whole number of encoder batches within :data:`TILING_BYTES`
    (at least one), so the encoder sees the same batches whatever the tiling."""
    batch_size, chip_size = _positive_int("batch_size", batch_size), _positive_int("chip_size", chip_size)
    per_chip = max(int(bands), 1) * chip_size**2 * 4
    return batch_size * max(1, TILING_BYTES // (per_chip * batch_size))


def _encode(encoder: Encoder, batch, *, batch_size: int, meter: Any) -> np.ndarray:
    """The vectors of a tiling batch, ``batch_size`` chips an encoder call."""
    parts = []
    for start in range(0, len(batch), batch_size):
        pixels, valid = batch.pixels[start : start + batch_size], batch.valid[start : start + batch_size]
        parts.append(np.asarray(meter.measure(encoder.encode, pixels, valid) if meter else encoder.encode(pixels, valid)))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


DROPPED_ZERO_VECTOR = "all-zero vector (--empty-chips keep keeps them)"
DROPPED_OUTSIDE_GRID = "outside the grid's latitude range (--outside-grid error refuses them)"
EMPTY_CHIP_CHOICES = ("drop", "keep")
OUTSIDE_GRID_CHOICES = ("drop", "error")


def check_drop_options(*, empty_chips: str, outside_grid: str) -> None:
    from eoembed._errors import TilingError

    for name, value, choices in (("empty_chips", empty_chips, EMPTY_CHIP_CHOICES),
                                 ("outside_grid", outside_grid, OUTSIDE_GRID_CHOICES)):
        if value not in choices:
            raise TilingError(f"{name}={value!r} is not one of {', '.join(choices)}")


def missing_time_message(paths: Sequence[str]) -> str:
    return (f"{', '.join(map(str, paths))}: no acquisition time (no TIFFTAG_DATETIME, no Landsat or Sentinel-2 product "
            "id in the file name, no MTL file beside it); pass --datetime (ISO 8601, or START/END), or time= in Python")


def _cells_or_none(grid, lon: np.ndarray, lat: np.ndarray, *, refuse: bool, where: str) -> np.ndarray:
    """The grid cell of each chip centre; None for a centre outside the grid (or the error, with ``refuse``)."""
    from eoembed._errors import GridError

    try:
        return np.asarray(grid.cell_of(lon, lat), dtype=object)
    except GridError as error:
        if refuse:
            raise GridError(f"{where}: {error}; pass --outside-grid drop to leave such chips out") from error
    cells = np.empty(len(lon), dtype=object)
    for i, (x, y) in enumerate(zip(lon, lat)):  # only a batch that crosses the grid's edge pays for this
        try:
            cells[i] = grid.cell_of(float(x), float(y))
        except GridError:
            cells[i] = None
    return cells


def _count(dropped: dict[str, dict[str, int]] | None, source: str, reason: str, chips: int) -> None:
    if dropped is not None and chips:
        dropped.setdefault(source, {}).setdefault(reason, 0)
        dropped[source][reason] += chips


def produce(
    inputs: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    encoder: str | Encoder = "stats",
    chip_size: int,
    stride: int | None = None,
    grid: str = "majortom-10km",
    quantization: str = "none",
    min_valid_fraction: float = 0.5,
    time: datetime | tuple[datetime, datetime] | None = None,
    band_sources: Sequence[str] | None = None,
    nodata: float | None = None,
    align: str = "scene",
    resolution: float | None = None,
    resampling: str = "bilinear",
    overwrite: bool = False,
    license: str = "CC-BY-4.0",
    empty_chips: str = "drop",
    outside_grid: str = "drop",
    **writer_options: Any,
) -> Path:
    """Encode every chip of every scene in ``inputs`` into one product at ``out`` (one process).

    All scenes must share band layout and resolution, since one product holds one model contract.
    ``nodata`` overrides the scenes' declared nodata value (many scenes leave their fill undeclared).
    ``align="cell"`` cuts chips on the lattice of each cell of ``grid`` (see :mod:`.align`) at
    ``resolution`` metres (default: the scenes' own pixel size). ``empty_chips`` and ``outside_grid``
    are those of :func:`encode_scene`; kept all-zero vectors are declared as ``nodata_zero_vector``.
    """
    from .align import align_scenes, grid_section

    scenes = [open_scene(p) for p in inputs]
    if nodata is not None:
        scenes = [dataclasses.replace(scene, nodata=float(nodata)) for scene in scenes]
    if not scenes:
        raise ImageryError("no input scenes given")
    scenes, errors, pixel_size = align_scenes(scenes, align=align, grid=grid, chip_size=chip_size, stride=stride,
                                              resolution=resolution, resampling=resampling)
    if errors:
        raise ImageryError("; ".join(f"{e['input']}: {e['reason']}" for e in errors))
    if not scenes:
        raise ImageryError(f"no chip of {', '.join(map(str, inputs))} lies in a cell of {grid}")
    model = encoder if isinstance(encoder, Encoder) else get_encoder(encoder)
    first = scenes[0]
    stride = stride or chip_size
    contract = model.contract(bands=first.band_names, chip_size=chip_size, stride=stride, gsd=float(abs(first.res[0])),
                              band_sources=band_sources or [Path(first.path).name] * first.count)
    with startup_objects_frozen(), ProductWriter(out, model=contract, grid=grid_section(grid, align=align, pixel_size=pixel_size, resampling=resampling),
                       quantization=quantization, overwrite=overwrite,
                       nodata_zero_vector=writer_options.pop("nodata_zero_vector", False) or empty_chips == "keep",
                       license=license, **writer_options) as writer:
        for scene in scenes:
            if scene.band_names != first.band_names or scene.count != first.count:
                raise ImageryError(
                    f"{scene.path} has bands {scene.band_names}, but {first.path} has {first.band_names}; "
                    "one product holds one band layout"
                )
            for chips in writer_batches(encode_scene(scene, model, chip_size=chip_size, stride=stride, grid_id=grid,
                                                     min_valid_fraction=min_valid_fraction, time=time,
                                                     empty_chips=empty_chips, outside_grid=outside_grid)):
                writer.write(chips)
    return writer.path
