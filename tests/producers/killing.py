"""Kill a real ``mpirun -n 2 eoembed produce`` at chosen moments, resume it, and check what is left.

Shared by ``test_kill_resume.py`` (a few seeded cases) and ``benchmarks/kill_resume.py`` (many).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eoembed.producers.staging import _process_stat

BIN = Path(sys.executable).parent
KINDS = ("kill9-rank1", "kill9-both", "sigint-mpirun", "sigterm-mpirun")


@dataclass(frozen=True)
class Moment:
    """Once this run holds the lock and has committed ``units`` more units, wait ``delay_s``, then kill.
    0 units: while rank 0 plans; all units (10 here): while rank 0 commits and publishes."""

    units: int
    delay_s: float

    def __str__(self) -> str:
        return f"{self.units}u+{self.delay_s:.2f}s"


@dataclass(frozen=True)
class KillCase:
    kind: str  # one of KINDS
    moment: Moment
    again_during_resume: Moment | None = None  # kill the first resume too


def random_cases(count: int, *, seed: int, units: int = 10) -> list[KillCase]:
    """Every kind in turn, at seeded random moments; every third case also kills the resume."""
    chosen = random.Random(seed)

    def moment() -> Moment:
        done = chosen.randint(0, units)
        return Moment(units=done, delay_s=round(chosen.uniform(0, 0.5 if done in (0, units) else 0.05), 3))

    return [KillCase(kind=KINDS[i % len(KINDS)], moment=moment(), again_during_resume=moment() if i % 3 == 2 else None)
            for i in range(count)]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the MPI ranks below a launcher process (the ranks carry PMI_RANK)."""
    tree, found, todo = _children(), {}, [launcher]
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"PMI_RANK="):
                found[int(item.split(b"=", 1)[1])] = pid
    return found


def _start(arguments: list[str]) -> subprocess.Popen:
    command = [str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "produce", "--no-progress", *arguments]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(job: subprocess.Popen, kind: str) -> None:
    if kind == "sigint-mpirun":
        job.send_signal(signal.SIGINT)
    elif kind == "sigterm-mpirun":
        job.send_signal(signal.SIGTERM)
    else:
        ranks = rank_pids(job.pid)
        for rank in ([1] if kind == "kill9-rank1" else [0, 1]):
            if rank in ranks:
                try:
                    os.kill(ranks[rank], signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it finished on its own first


def _units(staging: Path) -> int:
    return len(list((staging / "data").glob("u*.parquet")))


def _holder(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    fields = _process_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _wait_for_ranks(ranks: dict[int, int], *, timeout_s: float = 60.0) -> None:
    """The launcher may exit a moment before the ranks it aborted: a user's next command, like the test's,
    comes after they are gone. A rank outliving its launcher by a minute is a hang, and fails the test."""
    deadline = time.monotonic() + timeout_s
    while any(_running(pid) for pid in ranks.values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"ranks {ranks} still run {timeout_s:.0f} s after their launcher exited")
        time.sleep(0.02)


def run_killed(arguments: list[str], *, kind: str, moment: Moment, lock: Path) -> str:
    """Run the job and kill it at ``moment``; returns the launcher's stderr once it and its ranks have exited."""
    before, stale = _units(lock.parent), _holder(lock)
    job = _start(arguments)
    while job.poll() is None:
        holder = _holder(lock)
        if holder is not None and holder != stale and _units(lock.parent) >= before + moment.units:
            break
        time.sleep(0.005)
    time.sleep(moment.delay_s)
    ranks = rank_pids(job.pid) if job.poll() is None else {}
    if job.poll() is None:
        _kill(job, kind)
    _, stderr = job.communicate(timeout=300)  # a hang here is a failure: one dead rank must not hang the job
    _wait_for_ranks(ranks)
    return stderr


def _state(out: Path, staging: Path) -> str:
    """What a kill left: the product, a staging folder with N committed units, or nothing."""
    if (out / "collection.json").exists():
        return "published"
    if staging.exists():
        return f"staging, {len(list((staging / 'data').glob('u*.parquet')))} units"
    return "nothing"


def kill_and_resume(case: KillCase, *, arguments: list[str], out: Path, lock: Path) -> dict[str, object]:
    """One case: the killed run, optionally a killed resume, then resumes until the product exists."""
    outcome: dict[str, object] = {"case": case}
    outcome["first"] = run_killed(arguments, kind=case.kind, moment=case.moment, lock=lock)
    outcome["left_by_kill"] = _state(out, lock.parent)
    if case.again_during_resume is not None and not (out / "collection.json").exists():
        outcome["second"] = run_killed([*arguments, "--resume"], kind=case.kind, moment=case.again_during_resume, lock=lock)
        outcome["left_by_second_kill"] = _state(out, lock.parent)
    outcome["published_by_kill_run"] = (out / "collection.json").exists()
    if not (out / "collection.json").exists():
        finish = subprocess.run([str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "produce", "--no-progress",
                                 *arguments, "--resume"], capture_output=True, text=True, timeout=300)
        outcome["resume_rc"], outcome["resume_stderr"] = finish.returncode, finish.stderr
    return outcome
