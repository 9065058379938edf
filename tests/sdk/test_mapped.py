"""Files mapped for random reads: the pages a prefetch asks for are exactly those its rows' values
lie on, checked against brute force (for tables: every other page is zeroed and the rows still read
the same)."""

from __future__ import annotations

import mmap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import eoembed._mapped as mapped_module
from eoembed._mapped import RandomAccessRows, RandomAccessTable, page_runs

page = mmap.PAGESIZE


def test_rows_prefetch_asks_for_exactly_the_pages_the_rows_lie_on(tmp_path):
    page = mmap.PAGESIZE
    path = tmp_path / "rows.npy"
    np.save(path, np.arange(5000 * 3, dtype=np.float32).reshape(5000, 3))  # 12 B rows: some straddle pages
    mapped = RandomAccessRows(path)
    np.testing.assert_array_equal(mapped.array, np.load(path))
    offset = len(path.read_bytes()) - mapped.array.nbytes
    straddling = (page - offset) // 12  # the first row that begins on one page and ends on the next
    assert (offset + 12 * straddling) // page != (offset + 12 * straddling + 11) // page
    rng = np.random.default_rng(0)
    for rows in (np.array([0]), np.array([straddling]), np.array([4999]), np.arange(0, 5000, 7), np.unique(rng.integers(0, 5000, 60))):
        starts, lengths = mapped.pages(rows)
        assert (starts % page == 0).all() and (lengths > 0).all()
        assert (starts[1:] > starts[:-1] + lengths[:-1]).all()  # runs neither overlap nor touch
        asked = {p for s, n in zip(starts, lengths) for p in range(s // page, -(-(s + n) // page))}
        wanted = {p for r in rows for p in range((offset + 12 * r) // page, (offset + 12 * r + 11) // page + 1)}
        assert asked == wanted
    assert mapped.pages(np.array([], dtype=np.int64))[0].size == 0


def test_page_runs_merge_spans_in_any_order_and_skip_empty_ones():
    starts, lengths = page_runs(np.array([5 * page + 10, 10, page - 1, 3 * page, 7]), np.array([5 * page + 20, 20, page + 1, 3 * page, 7]), 6 * page)
    np.testing.assert_array_equal(starts, [0, 5 * page])  # pages 0-1 (two spans, the second straddles), page 5; empty spans ask nothing
    np.testing.assert_array_equal(lengths, [2 * page, page])
    starts, lengths = page_runs(np.array([5 * page]), np.array([5 * page + 100]), 5 * page + 100)
    np.testing.assert_array_equal(lengths, [100])  # cut at the end of the file


def metadata_like(n: int = 40_000, *, seed: int = 0) -> pa.Table:
    """The column types of a product's metadata, with values long enough to straddle pages and a
    few much longer than a page, nulls in one column, in batches of uneven size."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n)
    lengths[rng.choice(n, 30, replace=False)] = rng.integers(page, 3 * page, 30)
    chip_id = [f"chip-{i}-" + "x" * int(m) for i, m in enumerate(lengths)]
    values = rng.normal(size=(n, 4)) + 1.0
    return pa.table({
        "chip_id": pa.array(chip_id, pa.string()),
        "geometry": pa.array([bytes([1 + i % 200]) * (21 + i % 70) for i in range(n)], pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(values[:, i]) for i in range(4)], ["xmin", "ymin", "xmax", "ymax"]),
        "datetime": pa.array(1_600_000_000_000_000 + np.arange(n) * 1_000_003, pa.timestamp("us", tz="UTC")),
        "cloud": pa.array([None if i % 3 == 0 else i + 1 for i in range(n)], pa.int64()),
        "note": pa.array([f"n{i}" * (1 + i % 5) for i in range(n)], pa.large_string()),
        "clear": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
    })


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A table file, mapped privately writable, and the page runs each prefetch asks for."""
    table = metadata_like()
    path = tmp_path / "meta.arrow"
    with pa.ipc.new_file(str(path), table.schema) as out:
        first = 0
        for size in (10_000, 3333, 20_000, 1, 6666):
            out.write_batch(table.slice(first, size).combine_chunks().to_batches()[0])
            first += size
    assert first == len(table)

    def private(path):
        with path.open("rb") as handle:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)

    asked = []
    monkeypatch.setattr(mapped_module, "_map", private)
    monkeypatch.setattr(mapped_module, "_CAN_ADVISE", True)
    monkeypatch.setattr(mapped_module, "_advise_willneed", lambda address, length: asked.append((address, length)))
    return table, RandomAccessTable(path), asked


def zero_all_pages_but(mapped: RandomAccessTable, asked) -> int:
    """Zero every page of the mapping that no prefetch asked for; the number of pages asked."""
    keep = np.zeros(-(-len(mapped._mapping) // page), dtype=bool)
    for address, length in asked:
        assert address % page == 0 and length > 0
        # Asked by address: a run may reach into another file mapped beside this one; its part here.
        start, end = max(address - mapped._base, 0), min(address + length - mapped._base, len(mapped._mapping))
        if start < end:
            keep[start // page : -(-end // page)] = True
    memory = np.frombuffer(mapped._mapping, dtype=np.uint8)
    for p in np.flatnonzero(~keep).tolist():
        memory[p * page : (p + 1) * page] = 0
    return int(keep.sum())


@pytest.mark.parametrize("seed", [0, 1, 2, "batch edges"])
def test_table_prefetch_asks_for_every_page_the_rows_values_lie_on(recorded, seed):
    table, mapped, asked = recorded
    assert mapped.table.equals(table)
    if seed == "batch edges":
        rows = np.array([0, 9999, 10_000, 13_332, 13_333, 33_333, 33_334, len(table) - 1])
    else:
        rows = np.random.default_rng(seed).choice(len(table), 30, replace=False)
    expected = [table.slice(int(r), 1).to_pylist()[0] for r in rows]
    mapped.prefetch_rows(rows)
    pages = zero_all_pages_but(mapped, asked)
    # The rows read the same from the asked pages alone ...
    assert [mapped.table.slice(int(r), 1).to_pylist()[0] for r in rows] == expected
    # ... which are a few a row (a dozen buffers, some values longer than a page), not the file.
    assert pages <= 16 * len(rows) < len(mapped._mapping) // page / 2
    changed = pc.invert(pc.equal(mapped.table.column("chip_id"), table.column("chip_id")))
    assert pc.sum(changed).as_py() > len(table) / 2  # the rest of the file is gone


def test_one_prefetch_of_many_tables_asks_for_each_rows_pages_in_its_own_file(recorded, tmp_path):
    table, mapped, asked = recorded
    other_table = metadata_like(5000).drop_columns(["note"]).append_column("extra", pa.array(np.arange(5000.0)))
    path = tmp_path / "other.arrow"
    with pa.ipc.new_file(str(path), other_table.schema) as out:
        out.write_table(other_table, max_chunksize=700)
    other = RandomAccessTable(path)
    rows, other_rows = np.array([5, 10_001, 39_999]), np.array([0, 699, 700, 4999])
    expected = [table.slice(int(r), 1).to_pylist()[0] for r in rows]
    other_expected = [other_table.slice(int(r), 1).to_pylist()[0] for r in other_rows]
    mapped_module.prefetch_table_rows([(mapped, rows), (other, other_rows), (other, [])])
    assert zero_all_pages_but(mapped, asked) <= 16 * len(rows) and zero_all_pages_but(other, asked) <= 16 * len(other_rows)
    assert [mapped.table.slice(int(r), 1).to_pylist()[0] for r in rows] == expected
    assert [other.table.slice(int(r), 1).to_pylist()[0] for r in other_rows] == other_expected
    assert not mapped.table.column("chip_id").equals(table.column("chip_id"))  # the rest is gone


def test_table_prefetch_of_columns_asks_for_the_whole_columns_alone(recorded):
    table, mapped, asked = recorded
    mapped.prefetch_columns(["bbox", "datetime"])
    pages = zero_all_pages_but(mapped, asked)
    assert mapped.table.select(["bbox", "datetime"]).equals(table.select(["bbox", "datetime"]))
    assert pages < len(mapped._mapping) // page / 4  # the string columns are most of the file
    assert not mapped.table.column("chip_id").equals(table.column("chip_id"))


def test_a_table_mapping_needs_no_advice_to_read(tmp_path, monkeypatch):
    table = metadata_like(50)
    path = tmp_path / "meta.arrow"
    with pa.ipc.new_file(str(path), table.schema) as out:
        out.write_table(table)
    monkeypatch.setattr(mapped_module, "_CAN_ADVISE", False)  # a platform without madvise
    mapped = RandomAccessTable(path)
    mapped.prefetch_rows([3, 7])
    mapped.prefetch_columns(["bbox"])
    assert mapped.table.equals(table)
