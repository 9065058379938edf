"""The `eoembed` command line, run as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import write

EOEMBED = str(Path(sys.executable).parent / "eoembed")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EOEMBED, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("cli") / "p", n=120, quantization="int8")


def test_validate_exit_codes(product, tmp_path):
    ok = run("validate", str(product))
    assert ok.returncode == 0 and "valid (0 errors" in ok.stdout
    report = json.loads(run("validate", str(product), "--json").stdout)
    assert report["valid"] is True and report["findings"] == []
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(product), str(broken)], check=True)
    (broken / "manifest.parquet").unlink()
    bad = run("validate", str(broken), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["findings"][0]["code"] == "STR001"
    missing = run("validate", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_query_formats_and_bound_parameters(product, tmp_path):
    table = run("query", str(product), "SELECT grid_cell, count(*) AS n FROM embeddings GROUP BY 1 ORDER BY 1")
    assert table.returncode == 0 and "397U_712L" in table.stdout and "(2 rows)" in table.stdout
    as_csv = run("query", str(product), "SELECT count(*) AS n FROM embeddings WHERE source_id = ?", "--param", "scene-1", "--format", "csv")
    assert list(csv.DictReader(io.StringIO(as_csv.stdout))) == [{"n": "40"}]
    as_json = run("query", str(product), "SELECT chip_id FROM embeddings ORDER BY chip_id LIMIT 2", "--format", "json")
    assert [r["chip_id"] for r in json.loads(as_json.stdout)] == ["chip-0000000", "chip-0000001"]
    out = tmp_path / "r.parquet"
    assert run("query", str(product), "SELECT chip_id, embedding FROM embeddings", "--format", "parquet", "--out", str(out)).returncode == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 120
    bad = run("query", str(product), "SELECT nope FROM embeddings")
    assert bad.returncode == 2 and "query: SELECT nope" in bad.stderr


def test_info_grids_encoders(product):
    info = json.loads(run("info", str(product)).stdout)
    assert info["rows"] == 120 and info["quantization"]["method"] == "linear" and info["bands"] == ["B1", "B2", "B3"]
    grids = [json.loads(line)["id"] for line in run("grids").stdout.splitlines()]
    assert grids == ["majortom-10km", "utm-10000m"]
    encoders = [json.loads(line)["name"] for line in run("encoders").stdout.splitlines()]
    assert "stats" in encoders


def test_version_names_the_spec():
    from eoembed import SPEC_VERSION

    assert f"spec {SPEC_VERSION}" in run("--version").stdout


@pytest.mark.parametrize("verb", ["info", "validate"])  # every verb in-process: tests/sdk/test_damaged.py
def test_a_damaged_product_gets_one_line_and_no_traceback(product, tmp_path, verb):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(product), str(broken)], check=True)
    data = broken / "data" / "part-00000.parquet"
    data.write_bytes(data.read_bytes()[:100])
    result = run(verb, str(broken))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    if verb == "validate":
        assert "part-00000.parquet" in result.stdout and "STR005" in result.stdout
    else:
        assert result.stderr.count("\n") == 1 and "part-00000.parquet: has 100 bytes" in result.stderr


def test_unreadable_vector_files_and_params_get_one_line(product, tmp_path):
    vector = tmp_path / "q.txt"
    vector.write_text("1 2 x")
    bad_vector = run("search", str(product), "--vector", str(vector))
    assert bad_vector.returncode == 2 and "Traceback" not in bad_vector.stderr
    assert bad_vector.stderr.count("\n") == 1 and "q.txt: cannot be read" in bad_vector.stderr
    bad_param = run("query", str(product), "SELECT ?", "--param", "[1,")
    assert bad_param.returncode == 1 and "Traceback" not in bad_param.stderr and "--param '[1,' is not valid JSON" in bad_param.stderr


def test_info_describes_a_pixel_product(tmp_path):
    from tests.sdk.test_pixel import _write

    product = _write(tmp_path / "pixels", "zarr", "sqrt")
    result = run("info", str(product))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "pixel" and summary["tiles"] == 9 and summary["pixels"] == 70 * 90
    assert summary["crs"] == "EPSG:32618" and summary["pixel"]["format"] == "zarr" and summary["quantization"]["method"] == "sqrt"
