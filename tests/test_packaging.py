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
    "eoembed/producers/encode.py",
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


@pytest.mark.slow
def test_wheel_installs_and_validates_outside_the_checkout(tmp_path: Path) -> None:
    env = _clean_env()

    # 1. Build the wheel offline from a copy of the tree (keeps build/ and *.egg-info out of the
    #    checkout, which other processes may be using). `wheel` is not needed by setuptools >= 70.1,
    #    so the dependency check is skipped rather than failing on it.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", dist, source],
        cwd=tmp_path, env=env, timeout=120,
    )
    wheels = sorted(dist.glob("eoembed-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
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
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
         "--no-compile", wheel],
        cwd=tmp_path, env=env, timeout=120,
    )
    venv_purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env).stdout.strip()
    )
    assert venv_purelib.is_relative_to(venv), venv_purelib
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
