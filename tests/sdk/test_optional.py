"""Optional extras: the core install stays light, and a missing extra is named, never a traceback.

A package is made missing the way Python itself reports one: ``sys.modules[name] = None`` makes every
``import name`` raise ModuleNotFoundError, in this process (monkeypatch) or in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed import _optional
from tests.factories import write

REPO = Path(__file__).resolve().parents[2]
# What the core install must not pull in: each comes with an extra.
HEAVY = ("torch", "rasterio", "mpi4py", "faiss", "numkong", "matplotlib", "geopandas", "zarr", "xarray")

# Runs the command line in a child process in which the packages named in argv[1] are missing.
_CLI_WITHOUT = (
    "import sys; blocked, argv = sys.argv[1].split(','), sys.argv[2:]; sys.modules.update(dict.fromkeys(blocked)); "
    "from eoembed._cli import main; sys.exit(main(argv))"
)


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("optional") / "p", n=200, quantization="int8")


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert _optional.require("numpy", extra="search") is np
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(eoembed.MissingDependencyError, match=r"'faiss' is not installed; it is needed for compressed search .*: pip install 'eoembed\[search\]'") as caught:
        _optional.require("faiss", extra="search")
    assert isinstance(caught.value, ImportError)
    assert _optional.available("faiss") is False and _optional.available("numpy") is True
    for name in ("mpi4py", "mpi4py.MPI"):  # MPI may be imported already by an earlier test
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(eoembed.MissingDependencyError, match=r"'mpi4py'.*eoembed\[mpi\]"):
        _optional.require("mpi4py.MPI", extra="mpi")


def test_require_refuses_an_extra_the_package_does_not_have():
    with pytest.raises(ValueError, match="unknown extra 'serach'"):
        _optional.require("numpy", extra="serach")


def test_every_named_extra_exists_and_all_and_test_hold_every_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(_optional.EXTRAS) <= set(extras), set(_optional.EXTRAS) - set(extras)
    named_in_all = extras["all"][0].partition("[")[2].rstrip("]").split(",")
    assert sorted(named_in_all) == sorted(set(extras) - {"all", "test"})
    assert "eoembed[all]" in extras["test"]


def test_core_reading_never_imports_an_extra(product):
    """``import eoembed``, open, SQL, validate and exact search load none of the heavy packages."""
    script = (
        "import json, sys, eoembed\n"
        f"p = eoembed.open({str(product)!r})\n"
        "assert p.sql('SELECT count(*) AS n FROM embeddings').column('n')[0].as_py() == 200\n"
        f"assert eoembed.validate({str(product)!r}).ok\n"
        "assert p.search(p.to_numpy()[0], k=3).num_rows == 3\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_exact_search_needs_no_search_extra_and_compressed_search_names_it(product, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "numkong", None)
    opened = eoembed.open(product)
    vectors = opened.to_numpy()
    query = vectors[7]
    hits = opened.search(query, k=5, metric="cosine")
    ids = opened.to_pandas(columns=["chip_id"])["chip_id"].to_numpy()
    expected = ids[np.argsort(-(vectors @ query) / np.linalg.norm(vectors, axis=1), kind="stable")[:5]]
    assert hits.column("chip_id").to_pylist() == expected.tolist()
    for mode in ("int8", "binary", "hnsw"):
        with pytest.raises(eoembed.MissingDependencyError, match=r"pip install 'eoembed\[search\]'"):
            opened.search(query, k=5, mode=mode)


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("faiss,numkong", ["search", "{product}", "--chip", "chip-0000003", "--mode", "int8"], "search"),
        ("faiss", ["index", "build", "{product}", "--kind", "hnsw"], "search"),
        ("rasterio", ["encoders"], "produce"),
        ("torch", ["produce", "scene.tif", "--out", "{tmp}/out"], "produce"),
        ("matplotlib", ["preview", "{product}", "--out", "{tmp}/p.png"], "plot"),
    ],
)
def test_a_verb_without_its_extra_says_so_in_one_line(product, tmp_path, blocked, argv, extra):
    argv = [a.format(product=product, tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-c", _CLI_WITHOUT, blocked, *argv], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'eoembed[{extra}]'" in lines[0], result.stderr
