"""Damaged products: every reader entry point refuses them with an eoembed error naming the file.

A corpus of damage kinds (each one change to a valid product, made by code) crossed with the entry
points a user has: the Python API (open, to_numpy, to_torch, dataset, search, sql) and the CLI verbs
(info, query, search, validate). A kind found by ``open`` is refused by every entry point; a kind
only the vectors show (NaN, a NaN per-row scale, a null vector) is refused by every entry point
that decodes vectors, and by the validator.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eoembed
from eoembed import _cli
from tests.factories import replace_data_file, set_manifest, sha256_of, write

DIM = 16
DATA = "data/part-00001.parquet"  # the file the data damage kinds change (the second of two)


# -- making damage ------------------------------------------------------------------------------


def _manifest_table(root: Path, transform: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(transform(pq.read_table(root / "manifest.parquet")), root / "manifest.parquet")


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1).copy()


def _with_vectors(table: pa.Table, vectors: np.ndarray, *, mask: np.ndarray | None = None) -> pa.Table:
    values = pa.array(vectors.reshape(-1), pa.from_numpy_dtype(vectors.dtype))
    column = pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=None if mask is None else pa.array(mask))
    return table.set_column(table.schema.get_field_index("embedding"), pa.field("embedding", column.type), column)


def _set_vector_value(value: float) -> Callable[[pa.Table], pa.Table]:
    def transform(table: pa.Table) -> pa.Table:
        vectors = _vectors(table)
        vectors[7, 3] = value
        return _with_vectors(table, vectors)

    return transform


def _set_scale(value: float) -> Callable[[pa.Table], pa.Table]:
    def transform(table: pa.Table) -> pa.Table:
        scale = table.column("scale").to_numpy().copy()
        scale[7] = value
        return table.set_column(table.schema.get_field_index("scale"), "scale", pa.array(scale, pa.float32()))

    return transform


def _null_vector(table: pa.Table) -> pa.Table:
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[7] = True
    return _with_vectors(table, _vectors(table), mask=mask)


def _variable_length(table: pa.Table) -> pa.Table:
    vectors = _vectors(table)
    lists = pa.array([row[: DIM - (i % 2)].tolist() for i, row in enumerate(vectors)], pa.list_(pa.float32()))
    return table.set_column(table.schema.get_field_index("embedding"), "embedding", lists)


def _garble_pages(root: Path) -> None:
    """Garbage in the middle of a data file: the footer still reads, the pages do not."""
    path = root / DATA
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[64 : middle] = np.random.default_rng(0).integers(0, 256, middle - 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _data_bytes(content: Callable[[bytes], bytes], *, keep_manifest: bool = False) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / DATA
        path.write_bytes(content(path.read_bytes()))
        if not keep_manifest:  # the manifest agrees, so the reader meets the bytes themselves
            set_manifest(root, 1, bytes=path.stat().st_size, sha256=sha256_of(path))

    return damage


def _json(rel: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / rel
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return damage


def _link(rel: str, href: str) -> Callable[[dict], dict]:
    def edit(document: dict) -> dict:
        next(link for link in document["links"] if link["rel"] == rel)["href"] = href
        return document

    return edit


def _duplicate_row(table: pa.Table) -> pa.Table:
    return pa.concat_tables([table, table.slice(0, 1)])


@dataclass(frozen=True)
class Damage:
    apply: Callable[[Path], None]
    names: str  # the file every message must name
    found_by_open: bool = True  # else only readers that decode vectors (and the validator) find it
    quantization: str = "none"


DAMAGES = {
    "data truncated": Damage(_data_bytes(lambda raw: raw[: len(raw) // 2], keep_manifest=True), DATA),
    "data truncated, manifest agrees": Damage(_data_bytes(lambda raw: raw[: len(raw) // 2]), DATA),
    "data empty": Damage(_data_bytes(lambda raw: b""), DATA),
    "data garbage": Damage(_data_bytes(lambda raw: bytes(range(256)) * (len(raw) // 256)), DATA),
    "data pages garbage": Damage(_garble_pages, DATA, found_by_open=False),
    "data file missing": Damage(lambda root: (root / DATA).unlink(), DATA),
    "no eoembed footer": Damage(lambda root: replace_data_file(root, DATA, lambda t: t.replace_schema_metadata(
        {k: v for k, v in t.schema.metadata.items() if k != b"eoembed"})), DATA),
    "missing column": Damage(lambda root: replace_data_file(root, DATA, lambda t: t.drop_columns(["bbox"])), DATA),
    "variable-length vectors": Damage(lambda root: replace_data_file(root, DATA, _variable_length), DATA),
    "vector holds NaN": Damage(lambda root: replace_data_file(root, DATA, _set_vector_value(np.nan)), DATA,
                               found_by_open=False),
    "vector holds infinity": Damage(lambda root: replace_data_file(root, DATA, _set_vector_value(np.inf)), DATA),
    "null vector": Damage(lambda root: replace_data_file(root, DATA, _null_vector), DATA, found_by_open=False),
    "per-row scale zero": Damage(lambda root: replace_data_file(root, DATA, _set_scale(0.0)), DATA,
                                 quantization="int8-per-row"),
    "per-row scale negative": Damage(lambda root: replace_data_file(root, DATA, _set_scale(-0.5)), DATA,
                                     quantization="int8-per-row"),
    "per-row scale infinite": Damage(lambda root: replace_data_file(root, DATA, _set_scale(np.inf)), DATA,
                                     quantization="int8-per-row"),
    "per-row scale NaN": Damage(lambda root: replace_data_file(root, DATA, _set_scale(np.nan)), DATA,
                                found_by_open=False, quantization="int8-per-row"),
    "manifest garbage": Damage(lambda root: (root / "manifest.parquet").write_bytes(b"PAR1 not a manifest PAR1"),
                               "manifest.parquet"),
    "manifest lacks rows": Damage(lambda root: _manifest_table(root, lambda t: t.drop_columns(["rows"])),
                                  "manifest.parquet"),
    "manifest row repeated": Damage(lambda root: _manifest_table(root, _duplicate_row), "manifest.parquet"),
    "manifest rows disagree": Damage(lambda root: set_manifest(root, 1, rows=999), DATA),
    "manifest path ..": Damage(lambda root: set_manifest(root, 1, path="../outside.parquet"), "manifest.parquet"),
    "manifest path absolute": Damage(lambda root: set_manifest(root, 1, path=str((root / DATA).absolute())),
                                     "manifest.parquet"),
    "manifest path file URI": Damage(lambda root: set_manifest(root, 1, path=(root / DATA).absolute().as_uri()),
                                     "manifest.parquet"),
    "manifest path https": Damage(lambda root: set_manifest(root, 1, path="https://example.org/p.parquet"),
                                  "manifest.parquet"),
    "collection broken JSON": Damage(lambda root: (root / "collection.json").write_text('{"type": "Collection",'),
                                     "collection.json"),
    "collection not an object": Damage(_json("collection.json", lambda d: [d]), "collection.json"),
    "collection lacks eoembed:model": Damage(_json("collection.json", lambda d: {k: v for k, v in d.items()
                                                                                 if k != "eoembed:model"}),
                                             "collection.json"),
    "item link ..": Damage(_json("collection.json", _link("item", "../../items/part-00000.json")), "collection.json"),
    "model link absolute": Damage(_json("collection.json", _link("emb:model", "/etc/passwd")), "collection.json"),
}


# -- the corpus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One valid product of two data files per quantisation the corpus damages."""
    root = tmp_path_factory.mktemp("pristine")
    return {q: write(root / q, quantization=q, n=240, dim=DIM, max_rows_per_file=120, row_group_size=64)
            for q in sorted({d.quantization for d in DAMAGES.values()})}


@pytest.fixture(scope="module")
def damaged(pristine, tmp_path_factory) -> Callable[[str], Path]:
    """A copy of a valid product with one damage kind applied, made once per kind."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            damage = DAMAGES[kind]
            target = tmp_path_factory.mktemp("damaged") / "p"
            shutil.copytree(pristine[damage.quantization], target)
            damage.apply(target)
            (target.parent / "q.txt").write_text(" ".join(["1"] * DIM))
            made[kind] = target
        return made[kind]

    return make


def _cli_run(capsys, *args: str) -> tuple[int, str, str]:
    code = _cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


API = {
    "open": lambda p: eoembed.open(p),
    "to_numpy": lambda p: eoembed.open(p).to_numpy(),
    "to_torch": lambda p: eoembed.open(p).to_torch(),
    "dataset": lambda p: eoembed.open(p).dataset()[0],
    "dataset streaming": lambda p: list(eoembed.open(p).dataset(streaming=True)),
    "search": lambda p: eoembed.open(p).search(np.ones(DIM, np.float32), k=5),
    "sql": lambda p: eoembed.open(p).sql("SELECT chip_id, embedding FROM embeddings"),
    "eoembed.sql": lambda p: eoembed.sql("SELECT count(*) FROM a", products={"a": p}),
    "subset": lambda p: eoembed.subset(p, out=p.parent / "subset", where="true"),
    "merge": lambda p: eoembed.merge([p, p], out=p.parent / "merged", on_duplicate="first"),
}
DECODING = {"to_numpy", "to_torch", "dataset", "dataset streaming", "search", "subset", "merge"}
CLI = {
    "info": lambda p: ["info", str(p)],
    "query": lambda p: ["query", str(p), "SELECT chip_id, embedding FROM embeddings"],
    "search": lambda p: ["search", str(p), "--vector", str(p.parent / "q.txt")],
}


def _cases(entries, decoding) -> list[tuple[str, str]]:
    """(damage kind, entry point) pairs where the entry point meets the damage."""
    return [(kind, entry) for kind in sorted(DAMAGES) for entry in sorted(entries)
            if DAMAGES[kind].found_by_open or entry in decoding]


@pytest.fixture(autouse=True)
def _cache_outside(monkeypatch, tmp_path):
    monkeypatch.setenv("EOEMBED_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("kind, entry", _cases(API, DECODING))
def test_api_refuses_damage(damaged, kind, entry):
    with pytest.raises(eoembed.EoembedError) as caught:
        API[entry](damaged(kind))
    message = str(caught.value)
    assert DAMAGES[kind].names in message and "\n" not in message


@pytest.mark.parametrize("kind, verb", _cases(CLI, {"search"}))
def test_cli_refuses_damage(damaged, kind, verb, capsys):
    code, out, err = _cli_run(capsys, *CLI[verb](damaged(kind)))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("eoembed: ") and err.count("\n") == 1 and DAMAGES[kind].names in err


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_validate_reports_damage(damaged, kind, capsys):
    code, out, err = _cli_run(capsys, "validate", str(damaged(kind)))
    assert code in (1, 2) and "Traceback" not in err
    assert DAMAGES[kind].names in out + err
