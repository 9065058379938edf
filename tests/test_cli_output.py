"""The command line's common conventions: -q/-v and --json on the verbs, negative numbers as
option values, bare dates, shell completion and the warnings about misleading vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed._cli import JSON_VERBS, build_parser, join_negative_values, value_options
from tests.factories import chips, model_contract, write

EOEMBED = str(Path(sys.executable).parent / "eoembed")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EOEMBED, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("cli-output") / "p", n=120)


def _verbs():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_verb_takes_quiet_verbose_and_the_result_verbs_json():
    for name, verb in _verbs().items():
        strings = {s for a in verb._actions for s in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= strings, name
        assert ("--json" in strings) == (name in JSON_VERBS), name


def test_negative_numbers_are_option_values():
    options = value_options(build_parser())
    argv = ["search", "P", "--point", "-78.7,35.7", "--bbox", "-79,35,-78,36", "--json", "-k", "3"]
    joined = join_negative_values(argv, options)
    assert joined == ["search", "P", "--point=-78.7,35.7", "--bbox=-79,35,-78,36", "--json", "-k", "3"]
    assert join_negative_values(["query", "P", "SELECT ?", "--param", "-.5"], options)[-1] == "--param=-.5"
    assert join_negative_values(["validate", "P", "--json", "-q"], options) == ["validate", "P", "--json", "-q"]


def test_search_with_negative_point_and_bbox_and_a_bare_date(product):
    table = eoembed.open(product).sql("SELECT strftime(datetime, '%Y-%m-%d') AS d, (bbox.xmin + bbox.xmax) / 2 AS x, "
                                      "(bbox.ymin + bbox.ymax) / 2 AS y FROM embeddings LIMIT 1")
    day, x, y = (table.column(c)[0].as_py() for c in ("d", "x", "y"))
    hits = run("search", str(product), "--point", f"{x},{y}", "--bbox", "-78.8,35.6,-78.6,35.8",
               "--datetime", day, "-k", "200", "--json")
    assert hits.returncode == 0, hits.stderr
    rows = json.loads(hits.stdout)
    assert rows and {r["datetime"][:10] for r in rows} == {day}
    assert rows[0]["geometry"]["type"] == "Polygon"


@pytest.mark.slow
def test_quiet_silences_progress_and_per_unit_lines(tmp_path):
    import rasterio
    from affine import Affine

    scene = tmp_path / "scene.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32617",
                       transform=Affine(10, 0, 700_000, 0, -10, 3_950_000)) as dataset:
        dataset.write(pixels)
    loud = run("produce", str(scene), "--out", str(tmp_path / "loud"), "--chip-size", "16", "--unit-chips", "4",
               "--datetime", "2020-05-18")
    assert loud.returncode == 0 and "[rank 0] u00000" in loud.stderr
    interval = eoembed.open(tmp_path / "loud").collection["extent"]["temporal"]["interval"][0]
    assert interval == ["2020-05-18T00:00:00Z", "2020-05-18T23:59:59.999999Z"]  # a bare date is that whole day
    # -q sets --no-progress (eoembed._cli.configure_output), so one run covers both.
    quiet = run("produce", str(scene), "--out", str(tmp_path / "quiet"), "--chip-size", "16", "--unit-chips", "4",
                "--datetime", "2020-05-18T10:00:00Z", "-q")
    assert quiet.returncode == 0 and "[rank" not in quiet.stderr and "chip/s" not in quiet.stderr, quiet.stderr


def test_json_is_one_convention(product, tmp_path):
    sql = "SELECT chip_id FROM embeddings ORDER BY chip_id LIMIT 3"
    assert json.loads(run("query", str(product), sql, "--json").stdout) == json.loads(run("query", str(product), sql, "--format", "json").stdout)
    assert json.loads(run("validate", str(product), "--json").stdout)["valid"] is True
    preview = json.loads(run("preview", str(product), "--out", str(tmp_path / "p.png"), "--json").stdout)
    assert preview["rows"] == 120 and len(preview["explained_variance"][0]) == 3
    assert "warnings" in json.loads(run("info", str(product), "--json").stdout)


def test_bash_completion_completes_verbs_options_and_choices(tmp_path):
    script = run("completion", "bash")
    assert script.returncode == 0
    (tmp_path / "c.sh").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        shell = f'source {tmp_path / "c.sh"}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _eoembed; printf "%s\\n" "${{COMPREPLY[@]}}"'
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert {"preview", "completion", "query", "search"} <= set(complete("eoembed", "p")) | set(complete("eoembed", ""))
    assert "--pca" in complete("eoembed", "preview", "--p")
    assert set(complete("eoembed", "query", "P", "--format", "")) == {"table", "csv", "json", "parquet", "geoparquet", "geojson"}


def test_nearly_identical_vectors_are_warned_about(tmp_path, product):
    batch = chips(80, 16)
    # Band statistics of one bright scene: one large shared mean, tiny differences.
    batch["embedding"] = (100 + np.random.default_rng(1).normal(size=(80, 16))).astype(np.float32)
    same = eoembed.write_product(tmp_path / "same", batch, model=model_contract(16), normalize=False)
    flagged = run("search", str(same), "--chip", "chip-0000001", "-k", "3")
    assert flagged.returncode == 0 and "cosine similarity above 0.98" in flagged.stderr and "standardise" in flagged.stderr
    assert json.loads(run("info", str(same)).stdout)["warnings"]
    clean = run("search", str(product), "--chip", "chip-0000001", "-k", "3")
    assert clean.returncode == 0 and "warning" not in clean.stderr


def test_low_index_recall_is_warned_about():
    from eoembed._diagnose import recall_messages

    assert recall_messages({"kind": "binary", "recall_at_10": 0.99, "recall_queries": 100}) == []
    (message,) = recall_messages({"kind": "binary", "recall_at_10": 0.41, "recall_queries": 100})
    assert "0.410" in message and "--candidates" in message


def test_fewshot_plot_draws_accuracy_against_shots(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    labels = np.repeat(["water", "forest", "town"], 40)
    features = rng.normal(size=(120, 8)) + np.repeat(np.eye(3, 8) * 3, 40, axis=0)
    report = eoembed.fewshot(features, labels, shots=[1, 5, 10], episodes=20, queries=5)
    image = matplotlib.image.imread(report.plot(tmp_path / "shots.png"))
    assert image.shape[0] > 300 and image[..., :3].std() > 0.05
