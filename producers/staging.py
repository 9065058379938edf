"""The staging folder of a distributed job: its lock, its job document, and what a start may reuse.

A job writes into ``.NAME.eoembed-staging-job`` beside its output. Three files there make restarts
safe:

- ``LOCK.json`` names the holder (host, pid, process start). A second live producer is refused; a
  holder that is dead (same host, pid gone or reused) is reported and taken over.
- ``job.json`` is the job's canonical configuration, written at the first start. ``--resume`` with
  any difference is refused before a unit is written (:class:`ResumeMismatchError`, naming each key
  with both values): units made under two configurations would make a mixed product.
- ``dropped/UNIT.json`` counts the chips a unit dropped (all-zero vectors, outside the grid), so
  that a resumed job reports the drops of units written before the interruption too.

A staging folder that holds no committed unit is worth nothing: a failed start removes it, and the
next start removes one left by a killed job, so nothing blocks the corrected command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from eoembed._errors import OutputError, ProductExistsError, ResumeMismatchError
from eoembed._write import DATA_DIR

LOCK = "LOCK.json"
JOB = "job.json"
DROPPED_DIR = "dropped"
# Testing the disk-full path where no small file system can be mounted: the Nth unit write fails with ENOSPC.
FAULT_DISK_FULL_ENV = "EOEMBED_FAULT_DISK_FULL_AT_UNIT"


def committed_units(staging: Path) -> list[Path]:
    """The unit files of a job: GeoParquet files of chips, or tiles of a pixel-level job."""
    from eoembed._tiles import TILE_SUFFIX

    return sorted(p for suffix in (".parquet", *TILE_SUFFIX.values()) for p in (staging / DATA_DIR).glob(f"u*{suffix}"))


def _process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None where /proc has none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot); None where /proc has none."""
    fields = _process_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _holder_alive(holder: Mapping[str, Any]) -> bool:
    """Whether a lock's holder may still run: on another host it cannot be checked, so it may."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _process_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # a killed rank whose parent (the launcher) is gone stays a zombie until reaped: it runs no more
    recorded = holder.get("process_start")
    return recorded is None or (fields is not None and len(fields) > 19 and recorded == fields[19])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except ValueError:
        return {}  # cut short by a kill while it was written


def take_lock(staging: Path, *, ranks: int) -> None:
    """Create the job's lock; refuse a live holder, report and take over a dead one."""
    lock = staging / LOCK
    if lock.exists():
        holder = _read_json(lock)
        where = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('start')}"
        if _holder_alive(holder):
            raise ProductExistsError(
                f"{staging} is in use by another producer ({where}); wait for it to finish, or stop it first"
            )
        print(f"eoembed produce: taking over {lock} from a producer that is gone ({where})", file=sys.stderr)
        lock.unlink(missing_ok=True)
    staging.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "ranks": ranks,
                   "process_start": _process_start(os.getpid()),
                   "start": datetime.now(timezone.utc).isoformat()}, handle)


def release_after_failed_start(staging: Path) -> None:
    """Leave nothing that blocks the next start: no committed unit, no folder; else no lock."""
    if not staging.exists():
        return
    if committed_units(staging):
        (staging / LOCK).unlink(missing_ok=True)
    else:
        shutil.rmtree(staging, ignore_errors=True)


def open_staging(staging: Path, job: Mapping[str, Any], *, resume: bool, ranks: int) -> None:
    """Take the staging folder for ``job``: fresh, or (``resume``) holding units of the same job.

    Raises before anything is written when another producer holds it, when it holds units but
    ``resume`` is off, or when ``job`` differs from the job that wrote them.
    """
    take_lock(staging, ranks=ranks)
    try:
        if not committed_units(staging):
            # Nothing to reuse (a start that failed or was killed before its first unit): start clean.
            for entry in staging.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        elif not resume:
            raise ProductExistsError(
                f"{staging} holds {len(committed_units(staging))} units of an unfinished run; re-run with --resume "
                "to finish it, or delete the folder to start again"
            )
        else:
            recorded = _read_json(staging / JOB) if (staging / JOB).exists() else None
            if recorded is None:
                # An older eoembed's job, or a commit killed between removing the job files and publishing.
                raise ResumeMismatchError(f"{staging} holds units but no {JOB}, so this command cannot be checked "
                                          "against the job that wrote them: delete the folder and produce again")
            differences = job_differences(recorded, job)
            if differences:
                raise ResumeMismatchError(
                    f"--resume refused: this command differs from the job that wrote {staging}: "
                    + "; ".join(differences) + ". Re-run with the recorded values, or delete the folder to start again"
                )
            reset_to_units(staging)
        write_json_atomically(staging / JOB, job)
    except BaseException:
        release_after_failed_start(staging)
        raise


def job_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded X, now Y`` for every key whose value differs."""
    return [f"{key}: recorded {recorded.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def reset_to_units(staging: Path) -> None:
    """Remove what an interrupted commit may have left (metadata, half-written unit files)."""
    keep = {LOCK, JOB, DATA_DIR, DROPPED_DIR}
    for entry in staging.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for partial in (*(staging / DATA_DIR).glob(".*.tmp"), *(staging / DATA_DIR).glob("*.partial"),
                    *(staging / DROPPED_DIR).glob(".*.tmp")):
        partial.unlink()
    for scratch in (staging / DATA_DIR).glob(".tile-*"):  # a tile killed while its Zarr store was being built
        shutil.rmtree(scratch, ignore_errors=True)


def write_json_atomically(path: Path, document: Any) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def record_dropped(staging: Path, unit_id: str, dropped: Mapping[str, Mapping[str, int]]) -> None:
    """Keep a unit's drop counts (source -> reason -> chips) with the unit, before its file appears."""
    path = staging / DROPPED_DIR / f"{unit_id}.json"
    if dropped:
        write_json_atomically(path, dropped)
    else:
        path.unlink(missing_ok=True)


def dropped_totals(staging: Path) -> dict[str, dict[str, int]]:
    """Every unit's drop counts summed per source and reason."""
    totals: dict[str, dict[str, int]] = {}
    folder = staging / DROPPED_DIR
    for path in sorted(folder.glob("u*.json")):
        for source, reasons in _read_json(path).items():
            for reason, count in reasons.items():
                totals.setdefault(source, {}).setdefault(reason, 0)
                totals[source][reason] += int(count)
    return totals


def remove_job_files(staging: Path) -> None:
    """What only the job needs leaves the staging folder, just before it is published as the product."""
    shutil.rmtree(staging / DROPPED_DIR, ignore_errors=True)
    (staging / JOB).unlink()
    (staging / LOCK).unlink()


def check_output_path(out: Path) -> None:
    """Refuse an ``--out`` that names a file, or whose parent cannot hold a folder, before any work."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; give the path of a new folder for the product")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"--out {out}: {parent} is a file, not a folder; give a path inside a folder")


@contextlib.contextmanager
def writing_output(where: Path) -> Iterator[None]:
    """Turn a failure of the output file system (full, read-only, no permission) into an
    :class:`OutputError` that says what to do; the job can then be finished with ``--resume``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(
            f"cannot write to {getattr(error, 'filename', None) or where}: {error.strerror or error}. "
            "Free space or make the folder writable (or choose another --out), then re-run with --resume "
            "to finish the job"
        ) from error


def disk_full_fault(units_written: int) -> None:
    """Fail like a full disk at the unit number that :data:`FAULT_DISK_FULL_ENV` names."""
    import errno

    value = os.environ.get(FAULT_DISK_FULL_ENV)
    if value and units_written + 1 >= int(value):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
