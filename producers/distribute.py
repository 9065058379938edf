"""Produce a product on many MPI ranks (``mpirun -n N eoembed produce ...``, ``srun``, or one process).

The job is cut into work units: a scene x a block of consecutive chips. Units are planned the same
way whatever the number of ranks, assigned round-robin, and each becomes exactly one data file named
after the unit, so ``-n 1``, ``-n 2`` and ``-n 4`` give the same product (same chip ids, vectors and
row order). A unit's file appears atomically; a restarted job (``resume=True``) skips units whose file
exists. Rank 0 plans, fits what needs fitting on a fixed sample, and finally commits the manifest,
items, model item and collection and publishes the product with one rename.

All ranks write into one staging folder beside the output, ``.NAME.eoembed-staging-job``, guarded by a
lock file so that a second producer writing to the same output refuses to start, and holding the
job's configuration so that a resume with other settings is refused (see :mod:`.staging`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eoembed._errors import EoembedError, ImageryError, ProductExistsError, TilingError
from eoembed._write import DATA_DIR, STAGING_MARK, ProductWriter, file_record

from .align import align_scenes, grid_section
from .embed2scale import S2_OFFSET
from .encoders import Encoder, get_encoder, select_device
from .energy import EnergyMeter
from .produce import (
    check_drop_options,
    chip_batches,
    encode_scene,
    missing_time_message,
    startup_objects_frozen,
    writer_batches,
)
from .read import Scene, keep_datasets_open, open_scene
from .staging import (
    LOCK,  # noqa: F401  (re-exported: the lock file's name belongs to the job's public surface)
    check_output_path,
    disk_full_fault,
    dropped_totals,
    open_staging,
    record_dropped,
    release_after_failed_start,
    remove_job_files,
    writing_output,
)
from .tile import chip_windows

ERRORS = "errors.json"
EXIT_PARTIAL = 3
# Testing recovery: a rank SIGKILLs itself after committing this many units ("RANK:N").
FAULT_ENV = "EOEMBED_FAULT_KILL_AFTER_UNITS"


@dataclass(frozen=True)
class Unit:
    id: str
    scene: int
    first: int  # index of the first chip window of the unit in chip_windows order
    stop: int


@dataclass
class JobConfig:
    inputs: list[str]
    out: str
    encoder: str = "stats"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    chip_size: int = 32
    stride: int | None = None
    grid: str = "majortom-10km"
    quantization: str = "none"
    min_valid_fraction: float = 0.5
    time: Any = None  # datetime, (start, end), or None to use each scene's TIFFTAG_DATETIME
    nodata: float | None = None
    unit_chips: int = 1024
    batch_size: int = 256
    fit_chips: int = 1024
    resume: bool = False
    overwrite: bool = False
    license: str = "CC-BY-4.0"
    collection_id: str | None = None
    progress: bool = True
    s1_root: str | None = None  # BigEarthNet: add each S2 patch's co-located S1 VV/VH bands from here
    bands: list[str] | None = None  # encoder inputs: source band names or 1-based indexes, "new=old" renames
    prefetch: int | None = None  # batches read ahead while encoding; None: 2 on a GPU, 0 on the CPU
    align: str = "scene"  # "cell": chips on the lattice of each grid cell (producers/align.py)
    resolution: float | None = None  # lattice pixel size in metres for align="cell" (default: the inputs')
    resampling: str = "bilinear"  # how inputs are resampled onto a cell lattice or a temporal stack's grid
    # scenes of one place at several dates (or sensors), one stack each: {"files": [...], "times"?, "labels"?}
    stacks: list[dict[str, Any]] = field(default_factory=list)
    empty_chips: str = "drop"  # a chip whose vector is all zeros: "drop" (counted) or "keep" (declares nodata_zero_vector)
    outside_grid: str = "drop"  # a chip outside the grid's latitude range: "drop" (counted) or "error"
    # Embed2Scale files: S2 stored this far above reflectance x 10 000 (0 for the challenge's downstream files);
    # whether pixels the cloud mask does not call clear are invalid
    s2_offset: int = S2_OFFSET
    mask_clouds: bool = True
    # "pixel": one vector per pixel (chip_size 1), written as tiles of tile_size px (producers/pixel.py)
    level: str = "chip"
    tile_size: int = 256
    tile_format: str = "zarr"


# Settings that change how a job runs, not what it makes: a resume may change them.
RUN_ONLY_SETTINGS = frozenset({"resume", "overwrite", "progress", "prefetch"})


def job_document(config: JobConfig) -> dict[str, Any]:
    """The canonical configuration of a job: every setting that shapes the product, resolved (absolute
    input paths, the stride, ISO times), and the software version. Resume compares it key by key."""
    from eoembed import __version__

    document = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in RUN_ONLY_SETTINGS}
    document["inputs"] = [str(Path(p).absolute()) for p in config.inputs]
    document["out"] = str(Path(config.out).absolute())
    document["stride"] = config.stride or config.chip_size
    when = document.pop("time")  # named and written as --datetime takes it
    document["datetime"] = "/".join(t.isoformat() for t in when) if isinstance(when, tuple) else when
    document["software_version"] = __version__
    return json.loads(json.dumps(document, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


@dataclass
class Summary:
    chips: int = 0
    units: int = 0
    units_skipped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    ranks: int = 1
    errors: list[dict[str, Any]] = field(default_factory=list)  # inputs skipped, and chips dropped per source
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> chips, over the whole job

    @property
    def skipped_inputs(self) -> list[dict[str, Any]]:
        return [e for e in self.errors if "dropped" not in e]

    @property
    def compression(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else float("nan")


def staging_folder(out: Path) -> Path:
    return out.parent / f".{out.name}{STAGING_MARK}job"


def scene_windows(scene, *, chip_size: int, stride: int) -> list:
    """The chip windows of a scene: its own chip grid, or the chips a cell-aligned stack carries."""
    windows = getattr(scene, "windows", None)
    return list(windows) if windows else chip_windows(scene.width, scene.height, chip_size=chip_size, stride=stride)


def plan_units(scenes: Sequence[Scene], *, chip_size: int, stride: int, unit_chips: int) -> list[Unit]:
    """Units in a fixed order: scene by scene, blocks of ``unit_chips`` chip windows."""
    units = []
    for s, scene in enumerate(scenes):
        count = len(scene_windows(scene, chip_size=chip_size, stride=stride))
        for b, first in enumerate(range(0, count, unit_chips)):
            units.append(Unit(id=f"u{s:05d}-{b:05d}", scene=s, first=first, stop=min(first + unit_chips, count)))
    return units


def _world():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    return comm, local.Get_size(), local.Get_rank()


def _set_threads(local_ranks: int) -> None:
    """Each rank's share of the node's cores, unless OMP_NUM_THREADS says otherwise."""
    import torch

    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _take_staging(config: JobConfig, ranks: int) -> Path:
    """Rank 0: check the output and take the staging folder for this job (see :func:`.staging.open_staging`)."""
    check_drop_options(empty_chips=config.empty_chips, outside_grid=config.outside_grid)
    out = Path(config.out).absolute()
    check_output_path(out)
    if (out / "collection.json").exists() and not config.overwrite:
        raise ProductExistsError(f"{out} already holds a product; pass --overwrite to replace it")
    staging = staging_folder(out)
    with writing_output(staging):
        open_staging(staging, job_document(config), resume=config.resume, ranks=ranks)
    return staging


def _prepare(config: JobConfig) -> tuple[list[Scene], list[dict[str, str]], float | None]:
    """Rank 0: open the inputs (bad ones go to the errors list) and align them."""
    import dataclasses

    scenes, errors = [], []
    for path in [*config.inputs, *config.stacks]:
        try:
            if isinstance(path, dict):
                opened = [_open_temporal_stack(path, config)]
            else:
                opened = open_inputs(path, s1_root=config.s1_root, s2_offset=config.s2_offset,
                                     mask_clouds=config.mask_clouds)
        except EoembedError as error:
            errors.append({"input": str(path.get("files") if isinstance(path, dict) else path), "reason": str(error)})
            continue
        for scene in opened:
            if isinstance(scene, dict):  # an item of a collection that could not be opened
                errors.append(scene)
                continue
            if config.bands:
                try:
                    scene = select_bands(scene, config.bands)
                except EoembedError as error:
                    errors.append({"input": str(scene.path), "reason": str(error)})
                    continue
            if config.nodata is not None:
                scene = dataclasses.replace(scene, nodata=float(config.nodata))
            scenes.append(scene)
    if scenes:
        first = scenes[0]
        kept = [first]
        for scene in scenes[1:]:
            if scene.band_names != first.band_names:
                errors.append({"input": scene.path, "reason": f"bands {scene.band_names} differ from {first.band_names} "
                               f"of {first.path}; one product holds one band layout"})
            else:
                kept.append(scene)
        scenes = kept
    if config.time is None and any(scene.datetime is None for scene in scenes):
        raise ImageryError(missing_time_message([scene.path for scene in scenes if scene.datetime is None]))
    scenes, align_errors, pixel_size = align_scenes(
        scenes, align=config.align, grid=config.grid, chip_size=config.chip_size, stride=config.stride,
        resolution=config.resolution, resampling=config.resampling)
    return scenes, errors + align_errors, pixel_size


def _open_temporal_stack(entry: dict[str, Any], config: JobConfig):
    from .stack import temporal_stack

    unknown = sorted(set(entry) - {"files", "times", "labels"})
    if unknown or not isinstance(entry.get("files"), list):
        raise ImageryError(f"stack {entry}: expected keys files (a list of GeoTIFFs), times and labels; "
                           f"{'unknown: ' + ', '.join(unknown) if unknown else 'files is missing'}")
    return temporal_stack(entry["files"], times=entry.get("times"), labels=entry.get("labels"),
                          resampling=config.resampling, nodata=config.nodata)


def open_inputs(path: str, *, s1_root: str | None = None, s2_offset: int = S2_OFFSET, mask_clouds: bool = True) -> list:
    """Every scene one input path holds: one per item of a STAC ItemCollection (``{"input", "reason"}``
    dicts for items that cannot be opened), one per sample of Embed2Scale ``.zarr.zip`` files (a file
    with its sibling modality files, or a folder of modality folders; ``s2_offset`` and
    ``mask_clouds`` as :func:`~.embed2scale.open_embed2scale` takes them), else :func:`open_input`'s one."""
    from .embed2scale import is_embed2scale, open_embed2scale

    if str(path).endswith(".json"):
        return open_item_collection(path)
    if is_embed2scale(path):
        return list(open_embed2scale(path, s2_offset=s2_offset, mask_clouds=mask_clouds))
    return [open_input(path, s1_root=s1_root)]


def open_input(path: str, *, s1_root: str | None = None):
    """A GeoTIFF as a Scene, a folder holding one band per file (a BigEarthNet S2 patch) as a Stack,
    or a (time, channel, y, x) cube (``.npy``/``.npz`` with a JSON sidecar, ``.zarr``) as a CubeScene."""
    folder = Path(path)
    if folder.suffix in (".npy", ".npz", ".zarr"):
        from .stack import CubeScene, open_cube

        return CubeScene(open_cube(folder))
    if folder.is_dir():
        from .stack import bigearthnet_s2_stack, find_s1_for_s2

        if not list(folder.glob("*_B02.tif")):
            raise ImageryError(f"{folder} is a folder without *_B02.tif band files; give GeoTIFFs or BigEarthNet S2 patch folders")
        s1 = None
        if s1_root:
            s1 = find_s1_for_s2(folder, s1_root)
            if s1 is None:
                raise ImageryError(f"no Sentinel-1 patch in {s1_root} names {folder.name} as its S2 patch")
        return bigearthnet_s2_stack(folder, with_s1=s1)
    return open_scene(path)


_RASTER_TYPES = ("image/tiff", "image/tiff; application=geotiff", "image/tiff; application=geotiff; profile=cloud-optimized")


def open_item_collection(path: str) -> list:
    """The scenes of a local STAC ItemCollection: an item with one GeoTIFF data asset is a scene, an
    item with several single-band GeoTIFF assets a stack of them (asset keys are the band names).
    Items that cannot be opened come back as ``{"input", "reason"}`` dicts."""
    import dataclasses

    from .stack import BandSource, build_stack

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("type") != "FeatureCollection":
        raise ImageryError(f"{path} is not a STAC ItemCollection (type {document.get('type')!r})")
    base = Path(path).parent
    out: list = []
    for item in document.get("features", []):
        name = f"{path}#{item.get('id')}"
        try:
            when = item.get("properties", {}).get("datetime")
            when = datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
            assets = [(key, asset) for key, asset in sorted(item.get("assets", {}).items())
                      if asset.get("type", "image/tiff").split(";")[0] == "image/tiff" and "data" in asset.get("roles", ["data"])]
            if not assets:
                raise ImageryError(f"item {item.get('id')!r} has no GeoTIFF data asset")
            hrefs = [(key, str(base / a["href"]) if "://" not in a["href"] and not Path(a["href"]).is_absolute() else a["href"]) for key, a in assets]
            if len(hrefs) == 1:
                scene = dataclasses.replace(open_scene(hrefs[0][1]), **({"datetime": when} if when else {}))
            else:
                scene = build_stack([BandSource(name=key, path=href, source=str(item.get("collection", ""))) for key, href in hrefs],
                                    datetime=when, path=name)
            out.append(scene)
        except (EoembedError, OSError, ValueError) as error:
            out.append({"input": name, "reason": str(error)})
    return out


def select_bands(scene, wanted: Sequence[str]):
    """The encoder's inputs picked (and renamed) from a scene's or stack's bands.

    ``wanted`` holds source band names or 1-based indexes, optionally as ``new=old`` to rename. A band
    that is not there is a :class:`BandMappingError` naming the band and the file."""
    from eoembed._errors import BandMappingError

    from .stack import BandSource, Stack, build_stack

    if hasattr(scene, "select"):  # a scene that reads its own bands (an Embed2Scale sample)
        return scene.select(wanted)
    if isinstance(scene, Stack):
        available = {b.name: b for b in scene.bands}
    else:
        available = {name: BandSource(name=name, path=scene.path, band=i + 1) for i, name in enumerate(scene.band_names)}
    by_index = {str(i + 1): b for i, b in enumerate(available.values())}
    chosen = []
    for entry in wanted:
        new, _, old = entry.partition("=") if "=" in entry else (entry, "", entry)
        source = available.get(old) or by_index.get(old)
        if source is None:
            raise BandMappingError(
                f"band {old!r} is not in {scene.path} (it has {', '.join(available)}, or indexes 1..{len(available)})"
            )
        chosen.append(BandSource(name=new, path=source.path, band=source.band, source=source.source or Path(source.path).name))
    if isinstance(scene, Stack):
        return build_stack(chosen, datetime=scene.datetime, path=scene.path, resampling=scene.resampling)
    # One file: read the chosen bands directly (nodata and every other scene setting stay as they are).
    import dataclasses

    return dataclasses.replace(scene, band_indexes=tuple(b.band for b in chosen), band_names=tuple(b.name for b in chosen),
                               count=len(chosen))


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _fit_encoder(encoder: Encoder, scenes: Sequence[Scene], config: JobConfig, stride: int) -> None:
    """Fit encoders that need it on the first ``fit_chips`` chips (the same sample for any rank count)."""
    pixels, valid, seen = [], [], 0
    for scene in scenes:
        for batch in chip_batches(scene, chip_size=config.chip_size, stride=stride, batch_size=config.batch_size,
                                       min_valid_fraction=config.min_valid_fraction):
            pixels.append(batch.pixels)
            valid.append(batch.valid)
            seen += len(batch)
            if seen >= config.fit_chips:
                break
        if seen >= config.fit_chips:
            break
    if not pixels:
        raise ImageryError("no chip passes the valid-fraction threshold: nothing to fit the encoder on")
    encoder.fit(np.concatenate(pixels)[: config.fit_chips], np.concatenate(valid)[: config.fit_chips])


def fault_after(variable: str = FAULT_ENV) -> tuple[int, int] | None:
    """(rank, count) from a fault-injection variable "RANK:N" for recovery tests; None when unset."""
    value = os.environ.get(variable)
    if not value:
        return None
    rank, count = value.split(":")
    return int(rank), int(count)


def run_job(config: JobConfig) -> Summary:
    """Run the job on every rank of MPI.COMM_WORLD (one rank without mpirun). Returns rank 0's summary."""
    with startup_objects_frozen():
        return _run_job(config)


def _run_job(config: JobConfig) -> Summary:
    comm, local_ranks, local_rank = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    _set_threads(local_ranks)
    started = time.perf_counter()
    stride = config.stride or config.chip_size

    # Rank 0 plans; everyone learns the plan (or the reason there is none) in one broadcast.
    plan: dict[str, Any] | Exception
    if rank == 0:
        staging = None
        try:
            staging = _take_staging(config, size)
            scenes, errors, pixel_size = _prepare(config)
            if not scenes:
                raise ImageryError(f"none of the {len(config.inputs) + len(config.stacks)} inputs can be read: " + "; ".join(e["reason"] for e in errors))
            if config.level not in ("chip", "pixel"):
                raise TilingError(f"level {config.level!r} is not a product kind; use chip or pixel")
            if config.level == "pixel" and (config.chip_size != 1 or stride != 1):
                raise TilingError(f"a pixel-level product encodes each pixel: chip size and stride must be 1, got "
                                  f"{config.chip_size} and {stride} (leave --chip-size out)")
            if config.level == "chip" and not plan_units(scenes, chip_size=config.chip_size, stride=stride, unit_chips=config.unit_chips):
                largest = max(scenes, key=lambda s: s.width * s.height)
                raise ImageryError(f"no chip of {config.chip_size} px fits in the inputs (the largest, {largest.path}, "
                                   f"is {largest.width}x{largest.height} px); give a smaller --chip-size")
            encoder = get_encoder(config.encoder, **config.encoder_options)
            if hasattr(encoder, "fit") and hasattr(encoder, "state"):
                _fit_encoder(encoder, scenes, config, stride)
            plan = {"staging": staging, "scenes": scenes, "errors": errors, "pixel_size": pixel_size,
                    "encoder_state": encoder.state() if hasattr(encoder, "state") else None,
                    "quantization": _fit_quantization(config, encoder, scenes, stride)}
        except Exception as error:  # every rank must learn it, or the others would wait forever
            if staging is not None:
                release_after_failed_start(staging)  # nothing may block the corrected command
            plan = error
    else:
        plan = None
    plan = comm.bcast(plan, root=0)
    if isinstance(plan, Exception):
        if rank != 0:
            plan.reported_by_rank_0 = True
        raise plan
    staging, scenes, errors = plan["staging"], plan["scenes"], plan["errors"]
    encoder = get_encoder(config.encoder, **config.encoder_options)
    if plan["encoder_state"] is not None:
        encoder = type(encoder).from_state(plan["encoder_state"])
    device = select_device(local_rank)
    encoder.to(device)
    depth = config.prefetch if config.prefetch is not None else (2 if getattr(encoder, "device", "cpu") != "cpu" else 0)

    first = scenes[0]
    sources = list(first.band_sources) if hasattr(first, "band_sources") else [Path(first.path).name] * first.count
    contract = encoder.contract(bands=first.band_names, chip_size=config.chip_size, stride=stride,
                                gsd=float(abs(first.res[0])), band_sources=sources)
    if config.level == "pixel":
        from .pixel import plan_tiles

        units = plan_tiles(scenes, tile_size=config.tile_size)
    else:
        units = plan_units(scenes, chip_size=config.chip_size, stride=stride, unit_chips=config.unit_chips)
    mine = units[rank::size]
    quantization = plan["quantization"]
    provenance = {"ranks": size, "config": _config_json(config), "device": _device_name(device),
                  "host": socket.gethostname()}
    grid = grid_section(config.grid, align=config.align, pixel_size=plan["pixel_size"], resampling=config.resampling)
    options = dict(model=contract, grid=grid, quantization=quantization, license=config.license,
                   collection_id=config.collection_id, staging=staging, overwrite=config.overwrite, provenance=provenance,
                   nodata_zero_vector=config.empty_chips == "keep")
    if config.level == "pixel":
        from eoembed._pixel import PixelProductWriter

        writer: ProductWriter = PixelProductWriter(config.out, format=config.tile_format, tile_size=config.tile_size, **options)
    else:
        writer = ProductWriter(config.out, **options)

    fault = fault_after()
    meter = EnergyMeter(device, ranks_on_node=local_ranks)
    done = skipped = chips = 0
    progress = _Progress(comm, rank, units, show=config.progress)
    windows_of: dict[int, list] = {}
    written = []  # records of the units this rank wrote: rank 0 need not read those files again
    with keep_datasets_open():  # a scene's units share one open dataset and its decoded blocks
        for unit in mine if config.level == "pixel" else ():
            from .pixel import encode_tile, tile_geo, tile_path

            if tile_path(staging, unit, form=config.tile_format).exists():
                skipped += 1
                progress.unit_done(unit, 0)
                continue
            scene = scenes[unit.scene]
            when = config.time if config.time is not None else scene.datetime
            if when is None:
                raise ImageryError(missing_time_message([scene.path]))
            start, end = when if isinstance(when, tuple) else (when, when)
            embeddings = encode_tile(scene, encoder, unit, batch_size=config.batch_size, meter=meter)
            with writing_output(staging):
                disk_full_fault(done)
                record = writer.write_tile(unit.id, embeddings, geo=tile_geo(scene, unit), start=start, end=end,
                                           source_id=getattr(scene, "source_id", None) or Path(scene.path).stem)
            written.append(record)
            chips += record.rows
            done += 1
            progress.unit_done(unit, record.rows)
            if fault and fault[0] == rank and done >= fault[1]:
                os.kill(os.getpid(), signal.SIGKILL)
        for unit in mine if config.level == "chip" else ():
            target = staging / DATA_DIR / f"{unit.id}.parquet"
            if target.exists():
                skipped += 1
                progress.unit_done(unit, 0)
                continue
            t0 = time.perf_counter()
            scene = scenes[unit.scene]
            if unit.scene not in windows_of:  # computed once per scene, not once per unit
                windows_of[unit.scene] = scene_windows(scene, chip_size=config.chip_size, stride=stride)
            windows = windows_of[unit.scene][unit.first : unit.stop]
            dropped: dict[str, dict[str, int]] = {}
            batches = list(writer_batches(encode_scene(scene, encoder, chip_size=config.chip_size, stride=stride, grid_id=config.grid,
                                        min_valid_fraction=config.min_valid_fraction, batch_size=config.batch_size,
                                        time=config.time, windows=windows, prefetch_depth=depth, meter=meter,
                                        empty_chips=config.empty_chips, outside_grid=config.outside_grid, dropped=dropped),
                                         rows=unit.stop - unit.first))
            with writing_output(staging):
                disk_full_fault(done)
                record_dropped(staging, unit.id, dropped)  # before the unit file: a unit that exists has its count
                record = writer.write_unit(unit.id, batches, energy=meter.take())
            if record is not None:
                written.append(record)
            rows = record.rows if record else 0
            chips += rows
            done += 1
            if config.progress:  # --no-progress and -q silence the per-unit lines too
                print(f"[rank {rank}] {unit.id}: {rows} chips from {Path(scene.path).name} in {time.perf_counter() - t0:.2f} s",
                      file=sys.stderr, flush=True)
            progress.unit_done(unit, rows)
            if fault and fault[0] == rank and done >= fault[1]:
                os.kill(os.getpid(), signal.SIGKILL)
    progress.finish()
    totals = comm.gather((done, skipped, chips, written), root=0)

    summary = Summary(ranks=size, errors=errors)
    if rank == 0:
        known = {r.path: r for t in totals for r in t[3]}
        with writing_output(staging):
            summary = _commit(writer, staging, config, summary, known)
        summary.units = sum(t[0] for t in totals)
        summary.units_skipped = sum(t[1] for t in totals)
        summary.seconds = time.perf_counter() - started
    comm.Barrier()
    return summary


def _fit_quantization(config: JobConfig, encoder: Encoder, scenes, stride: int):
    """Linear int8 parameters are fitted once, on rank 0 while it plans, from a fixed sample."""
    from eoembed._quantize import fit
    from eoembed._write import _QUANTIZATION_SHORTHANDS

    request = dict(_QUANTIZATION_SHORTHANDS[config.quantization])
    if request["method"] != "linear":
        return config.quantization
    sample = []
    for batch in chip_batches(scenes[0], chip_size=config.chip_size, stride=stride,
                              min_valid_fraction=config.min_valid_fraction):
        sample.append(encoder.encode(batch.pixels, batch.valid))
        if sum(len(s) for s in sample) >= config.fit_chips:
            break
    if not sample:
        raise ImageryError(f"no chip of {scenes[0].path} passes --min-valid {config.min_valid_fraction}: nothing to fit "
                           f"{config.quantization} quantization on; lower --min-valid or check --nodata")
    method = request.pop("method")
    return fit(np.concatenate(sample), method=method, **request)


def _config_json(config: JobConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))


_TAG = 17


class _Progress:
    """Unit reports: other ranks send one message per unit; rank 0 counts them with its own and
    shows one bar for the whole job."""

    def __init__(self, comm, rank: int, units: Sequence[Unit], *, show: bool) -> None:
        self.comm, self.rank, self.total = comm, rank, len(units)
        self.seen = 0
        self.bar = None
        if rank == 0 and show:
            from tqdm import tqdm

            # Chips done / total, chips/s and ETA; chips below the valid-fraction threshold count as done.
            self.bar = tqdm(total=sum(u.stop - u.first for u in units), unit="chip", unit_scale=True,
                            desc="eoembed produce", file=sys.stderr, dynamic_ncols=True)

    def _count(self, chips: int) -> None:
        self.seen += 1
        if self.bar is not None:
            self.bar.update(chips)

    def unit_done(self, unit: Unit, rows: int) -> None:
        chips = unit.stop - unit.first
        if self.rank != 0:
            self.comm.send((unit.id, chips), dest=0, tag=_TAG)
            return
        self._count(chips)
        self.poll()

    def poll(self) -> None:
        from mpi4py import MPI

        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG):
            _, chips = self.comm.recv(source=MPI.ANY_SOURCE, tag=_TAG)
            self._count(chips)

    def finish(self) -> None:
        """Rank 0 waits for every unit's report, then closes the bar."""
        from mpi4py import MPI

        if self.rank != 0:
            return
        while self.seen < self.total:
            _, chips = self.comm.recv(source=MPI.ANY_SOURCE, tag=_TAG)
            self._count(chips)
        if self.bar is not None:
            self.bar.close()


def _commit(writer: ProductWriter, staging: Path, config: JobConfig, summary: Summary, known: dict) -> Summary:
    if config.level == "pixel":
        from eoembed._pixel import tile_record
        from eoembed._tiles import TILE_SUFFIX

        files, read_back = sorted((staging / DATA_DIR).glob(f"u*{TILE_SUFFIX[config.tile_format]}")), tile_record
        for leftover in (staging / DATA_DIR).glob("*.partial"):
            leftover.unlink()  # a tile killed mid-write; its unit was redone
        for leftover in (staging / DATA_DIR).glob(".tile-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    else:
        files, read_back = sorted((staging / DATA_DIR).glob("u*.parquet")), file_record
    for leftover in (staging / DATA_DIR).glob(".*.tmp"):
        leftover.unlink()  # a unit killed mid-write; its unit was redone
    # Units written in this run come with their records; those of an earlier, interrupted run are read back.
    records = [known.get(path.relative_to(staging).as_posix()) or read_back(path, root=staging) for path in files]
    for source, reasons in dropped_totals(staging).items():
        for reason, chips in reasons.items():
            summary.errors.append({"input": source, "reason": f"{chips} chips dropped: {reason}", "dropped": chips})
            summary.dropped[reason] = summary.dropped.get(reason, 0) + chips
    if summary.errors:
        (staging / ERRORS).write_text(json.dumps(summary.errors, indent=2) + "\n")
    # The job's own files go as late as possible: until then a killed commit resumes like any other.
    writer.commit(records, before_publish=lambda: remove_job_files(staging))
    summary.chips = sum(r.rows for r in records)
    bands = len(writer.model["input"]["bands"])
    summary.bytes_in = summary.chips * bands * config.chip_size**2 * 4  # float32 pixels fed to the encoder
    quant = writer.quantization
    width = quant.stored_width() * np.dtype(quant.dtype).itemsize if quant else 0
    summary.bytes_out = summary.chips * width
    return summary


def run_or_abort(work, *, command: str) -> tuple[Any, int | None]:
    """Run ``work()`` on this rank of MPI.COMM_WORLD: one failing rank aborts the whole job instead of
    hanging it. Returns ``(result, None)``, or ``(None, exit code)`` after an :class:`EoembedError`,
    which rank 0 prints as ``eoembed COMMAND: message``."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        return work(), None
    except EoembedError as error:
        rank = comm.Get_rank()
        if rank == 0:
            print(f"eoembed {command}: {error}", file=sys.stderr)
        elif not getattr(error, "reported_by_rank_0", False):  # this rank's own failure: only it can tell
            print(f"eoembed {command} [rank {rank}]: {error}", file=sys.stderr)
        sys.stderr.flush()
        if comm.Get_size() > 1:
            # The abort kills every rank at once, the launcher's forwarding of stderr included: give rank 0's
            # message time to reach the terminal (most errors arise on every rank, so the others wait longer).
            time.sleep(0.5 if comm.Get_rank() == 0 else 1.0)
            comm.Abort(2)
        return None, 2
    except KeyboardInterrupt:
        if comm.Get_rank() == 0:
            print(f"eoembed {command}: interrupted; re-run the same command with --resume to finish", file=sys.stderr)
        sys.stderr.flush()
        if comm.Get_size() > 1:
            comm.Abort(130)
        return None, 130
    except MPI.Exception as error:
        # A failed collective means a peer rank died (killed, out of memory, its node lost): the
        # staging folder keeps every committed unit, so the job resumes where it stopped.
        print(f"eoembed {command} [rank {comm.Get_rank()}]: lost contact with another rank of this job "
              f"(MPI error class {error.Get_error_class()}); it has probably died (killed, or out of memory). "
              f"Re-run the same command with --resume to finish", file=sys.stderr)
        sys.stderr.flush()
        if comm.Get_size() > 1:
            comm.Abort(1)
        return None, 1
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        if comm.Get_size() > 1:
            comm.Abort(1)
        raise


def main_job(config: JobConfig) -> int:
    """Run a job with MPI error handling: one failing rank aborts the whole job instead of hanging it."""
    from mpi4py import MPI

    summary, failed = run_or_abort(lambda: run_job(config), command="produce")
    if failed is not None:
        return failed
    comm = MPI.COMM_WORLD
    if comm.Get_rank() != 0:
        return 0
    print(
        f"produced {config.out}: {summary.chips} chips in {summary.units} units ({summary.units_skipped} already done) "
        f"on {summary.ranks} rank(s), {summary.seconds:.1f} s, {summary.chips / max(summary.seconds, 1e-9):.0f} chips/s; "
        f"{summary.bytes_in / 1e6:.1f} MB of pixels in, {summary.bytes_out / 1e6:.2f} MB of embeddings out "
        f"(compression {summary.compression:.0f}x)",
        file=sys.stderr,
    )
    for error in summary.errors:
        print(f"  {'dropped from' if 'dropped' in error else 'skipped'} {error['input']}: {error['reason']}", file=sys.stderr)
    # Dropped chips are the documented handling of legitimate data; only skipped inputs make a partial product.
    return EXIT_PARTIAL if summary.skipped_inputs else 0
