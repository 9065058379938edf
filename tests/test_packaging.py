"""The built wheel works on its own: schemas, producers and the console script ship in it.

The wheel is built offline (no build isolation, no index) from a copy of the source tree, installed
into a fresh virtual environment that sees the project's third-party packages but not the
editable checkout, and exercised from a folder outside the repository: a product is written, then
validated both through the API (STAC JSON checked against the vendored schemas, found through
importlib.resources) and through the installed ``eoembed`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Build products and caches that must not travel into the copy of the source tree.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.pyc",
    "demo", "out", ".eoembed-cache",
)

WHEEL_MEMBERS = (
    "eoembed/__init__.py",
    "eoembed/_cli.py",
    "eoembed/spec/schemas/footer.schema.json",
    "eoembed/spec/schemas/stac-extension.schema.json",
    "eoembed/spec/external/stac-extensions.github.io/embeddings/v0.0.1/schema.json",
    "eoembed/spec/external/schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
    "eoembed/spec/external/schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "eoembed/producers/encoders/registry.py",
    "eoembed/producers/encoders/stats.py",
)

# Runs in the fresh venv, with the wheel installed, from a folder outside the repository.
_SMOKE = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime, timezone
    from pathlib import Path

    import numpy as np

    import eoembed
    from eoembed import _schemas

    rng = np.random.default_rng(0)
    n, dim = 64, 16
    lon = rng.uniform(10.0, 11.0, n)
    lat = rng.uniform(45.0, 46.0, n)
    model = {
        "name": "packaging-smoke", "version": "1", "framework": "numpy", "weights_sha256": None,
        "architecture": "random", "pooling": "none",
        "input": {"bands": [{"name": "B1", "source": "synthetic"}], "chip_size_px": 8, "stride_px": 8,
                  "gsd_m": 10.0, "normalization": {"method": "none"}},
        "output": {"dim": dim},
    }
    product = Path(sys.argv[1])
    with eoembed.ProductWriter(product, model=model, quantization="int8", normalize=True) as writer:
        writer.write({
            "embedding": rng.normal(size=(n, dim)).astype(np.float32),
            "bounds": np.stack([lon, lat, lon + 0.01, lat + 0.01], axis=1),
            "datetime": datetime(2020, 5, 1, tzinfo=timezone.utc),
            "source_id": "scene-a",
            "grid_cell": [f"cell-{i}" for i in range(n)],
            "chip_id": [f"chip-{i}" for i in range(n)],
        })

    report = eoembed.validate(product)
    assert report.ok, str(report)
    assert eoembed.open(product).to_numpy().shape == (n, dim)

    # The vendored schemas really are consulted: a broken collection is rejected.
    collection = json.loads((product / "collection.json").read_text())
    assert _schemas.validate_stac(collection) == []
    assert _schemas.validate_stac({**collection, "extent": "everywhere"}), "schema check found nothing"

    print(json.dumps({
        "eoembed": eoembed.__file__,
        "schema_root": str(_schemas.schema_root()),
        "sys_path": sys.path,
    }))
    """
)


def _purelib_dirs() -> list[str]:
    """This interpreter's site-packages (the project venv's), purelib first."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of the tree (keeps build/ and *.egg-info out of
    the checkout, which other processes may be using). `wheel` is not needed by setuptools >= 70.1,
    so the dependency check is skipped rather than failing on it."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", dist, source],
        cwd=tmp_path, env=_clean_env(), timeout=120,
    )
    wheels = sorted(dist.glob("eoembed-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(root: Path, wheel: Path, *, env: dict[str, str]) -> tuple[Path, Path]:
    """A venv with the wheel alone installed (no dependencies): its python and its site-packages."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
         "--no-compile", wheel],
        cwd=root, env=env, timeout=120,
    )
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root, env=env).stdout.strip())
    assert purelib.is_relative_to(venv), purelib
    return python, purelib


@pytest.mark.slow
def test_wheel_installs_and_validates_outside_the_checkout(tmp_path: Path, wheel: Path) -> None:
    env = _clean_env()

    # 1. The wheel holds the package, its schemas and the console script, and no source folders.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        missing = [m for m in WHEEL_MEMBERS if m not in names]
        assert not missing, f"{wheel.name} lacks {missing}"
        assert not any(n.startswith(("tests/", "sdk/", "spec/", "producers/")) for n in names), "source dirs leaked"
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1, entry_points
        text = archive.read(entry_points[0]).decode()
    assert "[console_scripts]" in text
    assert any(line.replace(" ", "") == "eoembed=eoembed._cli:main" for line in text.splitlines()), text

    # 2. A fresh venv; the wheel is installed before the project's packages become visible, so pip
    #    sees no other eoembed (the checkout's editable dist-info) and can uninstall nothing.
    python, venv_purelib = _fresh_venv(tmp_path, wheel, env=env)
    venv = tmp_path / "venv"
    # A plain path line adds the project's site-packages to sys.path without processing the .pth
    # files inside it, so the checkout's editable finder (__editable__.eoembed-*.pth) stays inactive.
    (venv_purelib / "zz_project_site_packages.pth").write_text("\n".join(_purelib_dirs()) + "\n")

    # 3. Use the installed package from outside the repository.
    work = tmp_path / "work"
    work.mkdir()
    script = work / "smoke.py"
    script.write_text(_SMOKE)
    product = work / "product"
    result = _run([python, script, product], cwd=work, env=env, timeout=120)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    module = Path(seen["eoembed"]).resolve()
    assert module.is_relative_to(venv.resolve()), f"eoembed imported from {module}, not from the wheel in {venv}"
    assert not module.is_relative_to(REPO), module
    assert Path(seen["schema_root"]).resolve().is_relative_to(venv.resolve()), seen["schema_root"]
    assert str(REPO) not in seen["sys_path"] and str(REPO / "sdk") not in seen["sys_path"], seen["sys_path"]

    console = venv / "bin" / "eoembed"
    assert console.exists(), "pip did not install the eoembed console script"
    result = _run([console, "validate", product], cwd=work, env=env)
    assert "valid" in result.stdout and "INVALID" not in result.stdout, result.stdout
    result = _run([console, "validate", "--json", product], cwd=work, env=env)
    assert json.loads(result.stdout)["valid"] is True


# -- the core install: `pip install eoembed` without extras ------------------------------------------

# What only extras bring; none may be importable in a core install.
EXTRA_ONLY = ("torch", "rasterio", "faiss", "mpi4py", "numkong", "matplotlib", "geopandas", "zarr", "xarray")

# Runs in the core venv: the answers a consumer gets, and the hint a compressed search gives.
_CORE = textwrap.dedent(
    """
    import json, sys

    import eoembed

    product, chip = sys.argv[1], sys.argv[2]
    report = eoembed.validate(product)
    opened = eoembed.open(product)
    rows = opened.sql("SELECT count(*) AS n, min(chip_id) AS first FROM embeddings WHERE bbox.xmin > ?", [-78.7]).to_pylist()
    hits = opened.search(chip, k=5)
    try:
        opened.search(chip, k=5, mode="int8")
        refused = None
    except eoembed.MissingDependencyError as error:
        refused = str(error)
    print(json.dumps({"valid": report.ok, "rows": rows, "hits": hits.column("chip_id").to_pylist(),
                      "distances": hits.column("distance").to_pylist(), "refused": refused}))
    """
)


def _core_distributions(wheel: Path) -> list:
    """What `pip install eoembed` brings: the wheel's Requires-Dist outside every extra, and theirs in
    turn, as installed in this (the project's) environment."""
    import email.parser
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        pending = email.parser.Parser().parsestr(archive.read(name).decode()).get_all("Requires-Dist") or []
    found: dict[str, metadata.Distribution] = {}
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(requirement.name)
        if key in found:
            continue
        dist = metadata.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (str(requirement), dist.version)
        found[key] = dist
        pending.extend(dist.requires or [])
    return list(found.values())


def _install_from_project(purelib: Path, distributions: list) -> None:
    """Each distribution's top-level files and metadata, linked from the project's site-packages
    (offline, and nothing but what the distributions' own RECORD lists)."""
    for dist in distributions:
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}
        for top in sorted(tops):
            target = purelib / top
            if not target.exists():
                target.symlink_to(Path(dist.locate_file(top)))


@pytest.mark.slow
def test_core_install_without_extras_reads_validates_queries_and_searches(tmp_path: Path, wheel: Path) -> None:
    from tests.factories import write

    import eoembed

    env = _clean_env()
    python, purelib = _fresh_venv(tmp_path, wheel, env=env)
    distributions = _core_distributions(wheel)
    _install_from_project(purelib, distributions)
    names = sorted(d.metadata["Name"].lower() for d in distributions)
    present = _run([python, "-c", f"import importlib.util as u; print([m for m in {EXTRA_ONLY!r} if u.find_spec(m)])"],
                   cwd=tmp_path, env=env).stdout.strip()
    assert present == "[]", f"a core install can import {present} (core distributions: {names})"

    # A product written by the project's environment (with every extra), read by the core install.
    product = write(tmp_path / "product", n=300, quantization="int8")
    chip = "chip-0000042"
    opened = eoembed.open(product)
    expected = opened.search(chip, k=5)
    work = tmp_path / "work"
    work.mkdir()
    (work / "core.py").write_text(_CORE)
    seen = json.loads(_run([python, work / "core.py", product, chip], cwd=work, env=env, timeout=120).stdout.strip().splitlines()[-1])
    assert seen["valid"] is True
    assert seen["rows"] == opened.sql("SELECT count(*) AS n, min(chip_id) AS first FROM embeddings WHERE bbox.xmin > ?",
                                      [-78.7]).to_pylist()
    assert seen["rows"][0]["n"] > 0
    assert seen["hits"] == expected.column("chip_id").to_pylist()
    assert seen["distances"] == pytest.approx(expected.column("distance").to_pylist(), abs=1e-6)
    assert seen["refused"] is not None and "pip install 'eoembed[search]'" in seen["refused"], seen["refused"]

    # The console script: verbs of the core work, a compressed search says what to install in one line.
    console = python.parent / "eoembed"
    assert "valid" in _run([console, "validate", product], cwd=work, env=env).stdout
    table = _run([console, "query", product, "SELECT count(*) AS n FROM embeddings", "--format", "csv"], cwd=work, env=env)
    assert table.stdout.split() == ['"n"', "300"], table.stdout
    refused = subprocess.run([str(console), "search", str(product), "--chip", chip, "--mode", "int8"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "pip install 'eoembed[search]'" in refused.stderr, refused.stderr
    # Measured, not asserted: the core install's size on disk (links followed).
    size = _run(["du", "-sLm", purelib], cwd=tmp_path, env=env).stdout.split()[0]
    print(f"core install: {size} MB in {purelib} ({len(names)} distributions: {', '.join(names)})")
