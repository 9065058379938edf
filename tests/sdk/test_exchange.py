"""subset, merge and append: outputs are valid products holding exactly the chips selected, with
the stored vectors unchanged; refusals name what differs."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed._cli import main
from eoembed._exchange import _groups_that_may_pass, recorded_job
from eoembed._schemas import validate_stac
from tests.conftest import NC_SCENE
from tests.factories import chips, model_contract, write
from tests.sdk.test_validate_external import _gpv_ok
from tests.sdk.test_write import stac_documents

# Selections over the factory's chips (lon -78.8..-78.6, lat 35.6..35.8, 2020-05-18 + 0..29 days), each
# with the SQL predicate over the `embeddings` view that selects the same chips.
BOX = (-78.75, 35.65, -78.7, 35.72)
BOX_SQL = f"bbox.xmax >= {BOX[0]} AND bbox.xmin <= {BOX[2]} AND bbox.ymax >= {BOX[1]} AND bbox.ymin <= {BOX[3]}"
SELECTIONS = {
    "bbox": ({"bbox": BOX}, BOX_SQL),
    "datetime": ({"datetime": "2020-05-25/2020-06-01"},
                 "datetime >= TIMESTAMPTZ '2020-05-25' AND datetime < TIMESTAMPTZ '2020-06-02'"),
    "where": ({"where": "valid_fraction > ? AND source_id <> ?", "params": [0.7, "scene-1"]},
              "valid_fraction > 0.7 AND source_id <> 'scene-1'"),
    "all-three": ({"bbox": BOX, "datetime": "2020-05-25/..", "where": "grid_cell = ?", "params": ["397U_712L"]},
                  f"{BOX_SQL} AND datetime >= TIMESTAMPTZ '2020-05-25' AND grid_cell = '397U_712L'"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Per-row int8 (codes plus a scale column), three data files of four row groups each."""
    return write(tmp_path_factory.mktemp("exchange") / "p", n=600, quantization="int8-per-row",
                 row_group_size=50, max_rows_per_file=200)


def stored(path: Path) -> dict[str, tuple[bytes, float | None]]:
    """chip id -> (stored vector bytes, per-row scale) of a product."""
    product = eoembed.open(path)
    table = product.to_arrow().read_all()
    codes = product.to_numpy(dequantize=False)
    scales = table.column("scale").to_pylist() if "scale" in table.column_names else [None] * len(codes)
    return {chip: (row.tobytes(), scale) for chip, row, scale in zip(table.column("chip_id").to_pylist(), codes, scales)}


def assert_valid_everywhere(path: Path) -> None:
    """eoembed's validator, geoparquet-validator on every data file and the STAC schemas agree."""
    report = eoembed.validate(path)
    assert report.ok, str(report)
    product = eoembed.open(path)
    assert all(_gpv_ok(file) for file in product.files)
    for document in stac_documents(path):
        assert validate_stac(json.loads(document.read_text())) == [], document


@pytest.mark.parametrize("name", SELECTIONS)
def test_subset_holds_what_the_same_query_selects(tmp_path, source, name):
    options, predicate = SELECTIONS[name]
    out = eoembed.subset(source, out=tmp_path / "s", **options)
    expected = eoembed.open(source).sql(f"SELECT chip_id FROM embeddings WHERE {predicate}").column(0).to_pylist()
    got = stored(out)
    assert 0 < len(got) < 600
    assert sorted(got) == sorted(expected)
    whole = stored(source)
    assert all(got[chip] == whole[chip] for chip in got)  # codes and scales copied, not re-quantised
    assert eoembed.open(out).metadata["embedding"] == eoembed.open(source).metadata["embedding"]
    assert_valid_everywhere(out)


def test_subset_reads_only_row_groups_the_bbox_statistics_keep(source):
    product = eoembed.open(source)
    box = (-78.8, 35.6, -78.78, 35.62)  # a corner: 1 % of the extent
    kept = total = 0
    for path in product.files:
        handle = pq.ParquetFile(path)
        groups = _groups_that_may_pass(handle.metadata, handle.schema_arrow, box, None)
        kept, total = kept + len(groups), total + handle.metadata.num_row_groups
        for group in set(range(handle.metadata.num_row_groups)) - set(groups):  # pruned groups hold no match
            rows = handle.read_row_group(group, columns=["bbox"]).column(0).to_pylist()
            assert not any(r["xmax"] >= box[0] and r["xmin"] <= box[2] and r["ymax"] >= box[1] and r["ymin"] <= box[3] for r in rows)
    assert kept < total


def test_subset_with_no_chip_is_refused_and_writes_nothing(tmp_path, source):
    with pytest.raises(eoembed.SpecError, match="no chip of"):
        eoembed.subset(source, out=tmp_path / "s", bbox=(10, 10, 11, 11))
    assert not any(tmp_path.iterdir())


def test_merge_of_two_halves_is_the_whole(tmp_path, source):
    a = eoembed.subset(source, out=tmp_path / "a", where="chip_id < ?", params=["chip-0000300"])
    b = eoembed.subset(source, out=tmp_path / "b", where="chip_id >= ?", params=["chip-0000300"])
    merged = eoembed.merge([a, b], out=tmp_path / "m")
    assert stored(merged) == stored(source)
    assert_valid_everywhere(merged)


def test_duplicate_chips_are_refused_by_default_and_resolved_by_the_rule(tmp_path):
    # The same chip ids with other vectors: which product's vector survives shows the rule.
    a = write(tmp_path / "a", n=100, seed=1)
    b = write(tmp_path / "b", n=100, seed=2)
    with pytest.raises(eoembed.DuplicateChipError, match=r"chip id 'chip-\d+' is in both .*100 shared.*on_duplicate"):
        eoembed.merge([a, b], out=tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert stored(eoembed.merge([a, b], out=tmp_path / "first", on_duplicate="first")) == stored(a)
    assert stored(eoembed.merge([a, b], out=tmp_path / "last", on_duplicate="last")) == stored(b)


@pytest.mark.parametrize(("change", "key"), [
    ({"model": model_contract(32, name="other-encoder")}, "model.name: 'test-encoder' != 'other-encoder'"),
    ({"quantization": "float16"}, "embedding.dtype: 'int8' != 'float16'"),
    ({"license": "CC0-1.0"}, "license: 'CC-BY-4.0' != 'CC0-1.0'"),
    ({"grid": "utm-10000m"}, "grid.definition"),
])
def test_mixed_contracts_are_refused_with_the_differing_key(tmp_path, change, key):
    a = write(tmp_path / "a", n=50, quantization="int8-per-row")
    options = {"quantization": "int8-per-row", "model": model_contract(32)} | change
    b = eoembed.write_product(tmp_path / "b", chips(50, seed=1, first=1000), normalize=True, **options)
    with pytest.raises(eoembed.ModelContractMismatchError) as caught:
        eoembed.merge([a, b], out=tmp_path / "m")
    assert key in str(caught.value)


def test_float32_chips_join_with_the_products_frozen_quantisation(tmp_path):
    int8 = write(tmp_path / "int8", n=100, quantization="int8")
    extra = chips(80, seed=5, first=1000)
    as_float = eoembed.write_product(tmp_path / "f32", extra, model=model_contract(32), normalize=True)
    merged = eoembed.merge([int8, as_float], out=tmp_path / "m")
    # The writer of the int8 product, given the new chips with its fitted parameters, stores the same codes.
    direct = eoembed.write_product(tmp_path / "direct", extra, model=model_contract(32), normalize=True,
                                   quantization=eoembed.open(int8).quantization)
    got = stored(merged)
    assert {chip: got[chip] for chip in stored(direct)} == stored(direct)
    assert eoembed.open(merged).quantization == eoembed.open(int8).quantization
    assert eoembed.validate(merged).ok


def test_append_is_a_new_version_and_the_old_readers_keep_theirs(tmp_path, source):
    base = eoembed.subset(source, out=tmp_path / "p", where="chip_id < ?", params=["chip-0000300"])
    rest = eoembed.subset(source, out=tmp_path / "rest", where="chip_id >= ?", params=["chip-0000300"])
    reader = eoembed.open(base)  # opened before the switch
    before = reader.to_numpy()
    count = "SELECT count(*) FROM embeddings"
    assert reader.sql(count).column(0)[0].as_py() == len(before)
    inodes = {path.name: path.stat().st_ino for path in reader.files}

    eoembed.append(base, [rest])

    assert np.array_equal(reader.to_numpy(), before)  # the old version, still readable
    assert reader.sql(count).column(0)[0].as_py() == len(before)
    assert {path.name: path.stat().st_ino for path in reader.files} == inodes  # never rewritten nor deleted
    assert stored(base) == stored(source)  # a new reader sees the new version
    assert_valid_everywhere(base)
    assert sorted(os.listdir(tmp_path)) == ["p", "rest"]  # no staging or old version left beside it

    with pytest.raises(eoembed.DuplicateChipError, match="on_duplicate='first'"):
        eoembed.append(base, [rest])
    manifest = (base / "manifest.parquet").read_bytes()
    assert eoembed.append(base, [rest], on_duplicate="first") == base
    assert (base / "manifest.parquet").read_bytes() == manifest  # nothing new: no new version


def test_cli_verbs_write_valid_products(tmp_path, source, capsys):
    assert main(["subset", str(source), "--out", str(tmp_path / "s"), "--bbox=-78.75,35.65,-78.7,35.72",
                 "--where", "valid_fraction > ?", "--param", "0.6"]) == 0
    assert main(["merge", str(source), str(tmp_path / "s"), "--out", str(tmp_path / "m"), "--on-duplicate", "first"]) == 0
    assert stored(tmp_path / "m") == stored(source)
    assert main(["append", str(tmp_path / "s"), str(source), "--on-duplicate", "first"]) == 0
    assert stored(tmp_path / "s") == stored(source)
    out = capsys.readouterr().out
    assert "wrote" in out and "appended to" in out and "600 chips" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["subset", "{p}", "--out", "{t}/s", "--bbox", "1,2,3"], "must be four finite numbers"),
    (["subset", "{p}", "--out", "{t}/s", "--where", "1=1) UNION SELECT * FROM read_text('/etc/passwd') --"], "where"),
    (["subset", "{t}/missing", "--out", "{t}/s"], "does not exist"),
    (["merge", "{p}", "{p}", "--out", "{t}/m"], "is in both"),
    (["merge", "{p}", "--out", "{t}/m"], "at least two products"),
    (["append", "{p}", "{p}"], "--on-duplicate first"),
    (["append", "{p}", "{t}/scene.tif"], "records no producer job"),
])
def test_cli_refusals_name_the_problem_without_a_traceback(tmp_path, source, capsys, argv, message):
    argv = [a.format(p=source, t=tmp_path) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_append_produces_new_scenes_with_the_recorded_settings(tmp_path, shared_data, capsys):
    scene = str(shared_data / NC_SCENE)
    product = tmp_path / "nc"
    assert main(["produce", scene, "--out", str(product), "--chip-size", "8", "--quantization", "int8",
                 "--datetime", "2000-06-01", "--no-progress", "-q"]) == 0
    first = stored(product)
    quant = eoembed.open(product).quantization
    part = eoembed.subset(product, where="true", out=tmp_path / "part")  # a cut keeps the recorded job
    assert recorded_job(eoembed.open(part)) == recorded_job(eoembed.open(product))

    assert main(["append", str(product), scene, "--datetime", "2000-06-01", "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"the scenes {scene}" in err and "Traceback" not in err  # the same scene twice: duplicate chip ids

    assert main(["append", str(product), scene, "--datetime", "2001-06-01", "--no-progress", "-q"]) == 0
    after = eoembed.open(product)
    assert after.num_rows == 2 * len(first)
    assert after.quantization == quant  # new chips quantised with the frozen parameters
    assert {chip: value for chip, value in stored(product).items() if chip in first} == first
    times = after.sql("SELECT year(start_datetime) AS y, count(*) AS n FROM embeddings GROUP BY 1 ORDER BY 1").to_pylist()
    assert times == [{"y": 2000, "n": len(first)}, {"y": 2001, "n": len(first)}]
    assert eoembed.validate(product).ok
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch product is gone
    assert recorded_job(after)["encoder"] == "stats"
    assert datetime(2001, 6, 1, tzinfo=timezone.utc).isoformat()[:10] in after.collection["extent"]["temporal"]["interval"][0][1]


def test_an_append_that_lost_the_race_is_refused_and_changes_nothing(tmp_path, source, monkeypatch):
    from eoembed._write import ProductWriter

    base = eoembed.subset(source, out=tmp_path / "p", where="chip_id < ?", params=["chip-0000200"])
    one = eoembed.subset(source, out=tmp_path / "one", where="chip_id >= ? AND chip_id < ?", params=["chip-0000200", "chip-0000400"])
    two = eoembed.subset(source, out=tmp_path / "two", where="chip_id >= ?", params=["chip-0000400"])
    commit = ProductWriter.commit
    raced = []

    def other_append_first(writer, files, **options):  # another process publishes while this one stages
        if not raced:
            raced.append(True)
            eoembed.append(base, [two])
        return commit(writer, files, **options)

    monkeypatch.setattr(ProductWriter, "commit", other_append_first)
    with pytest.raises(eoembed.ProductExistsError, match="gained another version while appending; run the append again"):
        eoembed.append(base, [one])
    monkeypatch.undo()
    now = set(stored(base))
    assert set(stored(two)) <= now and not set(stored(one)) & now
    assert len(stored(base)) == 400 and eoembed.validate(base).ok  # the winner's version, whole
    assert sorted(os.listdir(tmp_path)) == ["one", "p", "two"]
