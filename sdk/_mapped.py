"""Files that search reads a few rows of, mapped for random reads: the re-rank rows (``.npy``) and
the rows' metadata (Arrow IPC) of files larger than memory.

A page fault of a plain mapping reads around the page (32 pages here), which for a row spread over
a file that is not in memory reads 32 times the bytes it needs, one fault waiting for the disk at a
time. These mappings tell the kernel they are read at random (``MADV_RANDOM``: a fault reads its
page alone) and ask for the pages of the rows a query needs before reading them (``MADV_WILLNEED``:
the kernel reads them all at once). Measured on this machine's disk, 4,000 rows not in memory: 250 ms
read by faults, 50 ms asked for first; about 1 us a row when they are in memory.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

PAGE = mmap.PAGESIZE
_CAN_ADVISE = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_WILLNEED")


def _map(path: Path) -> mmap.mmap:
    """A read-only mapping of the whole file, told it is read at random."""
    with path.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if _CAN_ADVISE and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return mapping


@lru_cache(maxsize=1)
def _libc_madvise():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise


def _advise_willneed(address: int, length: int) -> None:
    """``MADV_WILLNEED`` over ``length`` bytes of mapped memory at ``address`` (page-aligned): by
    address, not by mapping, so that the pages of many files' rows are asked for in one pass."""
    _libc_madvise()(address, length, mmap.MADV_WILLNEED)


def _advise_spans(first: np.ndarray, end: np.ndarray, limit: int) -> None:
    """Ask for the pages of the byte spans [first, end), absolute addresses in mapped files (runs
    cut at the address ``limit``)."""
    if not _CAN_ADVISE or not len(first):
        return
    for start, length in zip(*(part.tolist() for part in page_runs(first, end, limit))):
        _advise_willneed(start, length)


def page_runs(first: np.ndarray, end: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first byte, length) of each run of pages that the byte spans ``[first, end)`` lie on, in
    order, page-aligned, merged where spans share or neighbour a page, and cut at ``size``."""
    first, end = np.asarray(first, dtype=np.int64), np.asarray(end, dtype=np.int64)
    keep = end > first
    first, end = first[keep], end[keep]
    if not len(first):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.argsort(first, kind="stable")
    first_page, last_page = first[order] // PAGE, (end[order] - 1) // PAGE
    reach = np.maximum.accumulate(last_page)  # the last page of the runs so far
    new_run = np.concatenate([[True], first_page[1:] > reach[:-1] + 1])
    starts = first_page[new_run]
    ends = np.maximum.reduceat(last_page, np.flatnonzero(new_run))
    return starts * PAGE, np.minimum((ends + 1) * PAGE, size) - starts * PAGE


class _Mapped:
    def __init__(self, path: Path) -> None:
        self._mapping = _map(path)
        self._size = len(self._mapping)
        self._base = pa.py_buffer(self._mapping).address  # page-aligned, as every mapping is


class RandomAccessRows(_Mapped):
    """A ``.npy`` file's rows over a mapping read at random. :attr:`array` is a plain array, not
    ``np.memmap``, whose own indexing costs more than the gather."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path} holds a {'Fortran-ordered' if fortran else 'object'} array; re-rank rows are C-ordered numbers")
        count = int(np.prod(shape))
        if offset + count * dtype.itemsize > self._size:
            raise ValueError(f"{path} is shorter than the {shape} {dtype} array its header declares")
        self.array = np.frombuffer(self._mapping, dtype=dtype, count=count, offset=offset).reshape(shape)
        self._offset = offset
        self._row_bytes = dtype.itemsize * int(np.prod(shape[1:]))

    def _spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = self._offset + np.asarray(rows, dtype=np.int64) * self._row_bytes
        return first, first + self._row_bytes

    def pages(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first byte, length) of each run of mapped pages that ``rows`` lie on (see :func:`page_runs`)."""
        return page_runs(*self._spans(rows), self._size)


class RandomAccessTable(_Mapped):
    """An Arrow IPC file's table over a mapping read at random (zero-copy: its buffers are the
    mapped bytes). :meth:`prefetch_rows` asks for the pages a row's values lie on in every column
    before they are read; :meth:`prefetch_columns` for whole columns that are about to be read end
    to end (a mapping read at random has no read-around to serve a full read)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mapping))).read_all()
        self.batches = self.table.to_batches()
        self.batch_starts = np.cumsum([0] + [b.num_rows for b in self.batches[:-1]]).astype(np.int64)

    def prefetch_rows(self, rows: Iterable[int]) -> None:
        """Have the kernel read the pages of these rows' values (see :func:`prefetch_table_rows`)."""
        prefetch_table_rows([(self, rows)])

    @cached_property
    def _layout(self) -> "_Layout":
        return _Layout.of(self.batches)

    @cached_property
    def _bytes(self) -> np.ndarray:
        return np.frombuffer(self._mapping, dtype=np.uint8)

    def _read_offsets(self, addresses: np.ndarray, size: int) -> np.ndarray:
        """The little-endian offsets of ``size`` bytes at these absolute addresses of the mapping."""
        raw = np.ascontiguousarray(self._bytes[(addresses - self._base)[..., None] + np.arange(size)])
        return raw.view(np.int32 if size == 4 else np.int64)[..., 0].astype(np.int64)

    def prefetch_columns(self, names: Iterable[str]) -> None:
        """Have the kernel read every buffer of these columns."""
        spans = np.asarray([(buffer.address, buffer.address + buffer.size) for name in names
                            for chunk in self.table.column(name).chunks for buffer in chunk.buffers() if buffer is not None],
                           dtype=np.int64).reshape(-1, 2)
        self._prefetch_addresses(spans[:, 0], spans[:, 1])

    def _prefetch_addresses(self, first: np.ndarray, end: np.ndarray) -> None:
        """Prefetch the byte spans [first, end) given as absolute addresses inside the mapping."""
        _advise_spans(first, end, self._base + self._size)


def prefetch_array_rows(parts: Iterable[tuple[RandomAccessRows, np.ndarray]]) -> None:
    """Have the kernel read the pages of these rows of these ``.npy`` files, all in one pass."""
    spans = [(file._base + first, file._base + end) for file, rows in parts if len(rows)
             for first, end in [file._spans(rows)]]
    if spans:
        _advise_spans(np.concatenate([f for f, _ in spans]), np.concatenate([e for _, e in spans]), _NO_LIMIT)


def prefetch_table_rows(parts: Iterable[tuple[RandomAccessTable, Iterable[int]]]) -> None:
    """Have the kernel read the pages of the values of these rows of these tables, in two rounds:
    the fixed-width values and the offsets of variable-width ones first, then the variable-width
    bytes those offsets point at (read from the pages the first round asked for).

    Computed at once for every row of every table that shares a schema (one array operation a
    round, over rows x buffers): a loop in Python over rows and buffers, a table at a time, cost
    more than the reads it asked for (about 1.5 ms a query for 10 hits in 8 files, measured)."""
    if not _CAN_ADVISE:
        return
    groups: dict[tuple, list[tuple[RandomAccessTable, np.ndarray]]] = {}
    for table, rows in parts:
        rows = np.unique(np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64))
        if len(rows) and table.batches:
            groups.setdefault(table._layout.kinds, []).append((table, rows))
    if not groups:
        return
    first: list[np.ndarray] = []
    end: list[np.ndarray] = []
    later = []
    for members in groups.values():
        picked = []
        for table, rows in members:
            batch = np.searchsorted(table.batch_starts, rows, side="right") - 1
            layout = table._layout
            picked.append((layout.buffers[batch], rows - table.batch_starts[batch]))
        layout = members[0][0]._layout
        buffers = np.concatenate([b for b, _ in picked])  # (rows, arrays, 4)
        at = buffers[..., 0] + np.concatenate([r for _, r in picked])[:, None]  # each value's index in its array
        validity = buffers[..., 1]
        has = validity >= 0
        first.append(validity[has] + at[has] // 8)
        end.append(first[-1] + 1)
        fixed, width = layout.width > 0, layout.width[layout.width > 0]
        values = buffers[:, fixed, 2]
        first.append((values + at[:, fixed] * width // 8).ravel())
        end.append((values + ((at[:, fixed] + 1) * width + 7) // 8).ravel())
        variable, size = layout.offset_size > 0, layout.offset_size[layout.offset_size > 0]
        offsets = buffers[:, variable, 2] + at[:, variable] * size
        first.append(offsets.ravel())
        end.append((offsets + 2 * size).ravel())
        later.append((members, [len(r) for _, r in members], offsets, buffers[:, variable, 3], size))
    _advise_spans(np.concatenate(first), np.concatenate(end), _NO_LIMIT)
    first, end = [], []
    for members, counts, offsets, data, size in later:
        if not offsets.shape[1]:
            continue
        begin, stop = np.empty(offsets.shape, np.int64), np.empty(offsets.shape, np.int64)
        at = 0
        for (table, _), count in zip(members, counts):  # a table's offsets lie in its own mapping
            for n in np.unique(size).tolist():  # 4-byte and 8-byte offsets apart
                columns = np.flatnonzero(size == n)
                o = offsets[at : at + count][:, columns]
                both = table._read_offsets(np.stack([o, o + n]), n)
                begin[at : at + count, columns], stop[at : at + count, columns] = both[0], both[1]
            at += count
        first.append((data + begin).ravel())
        end.append((data + stop).ravel())
    if first:
        _advise_spans(np.concatenate(first), np.concatenate(end), _NO_LIMIT)


_NO_LIMIT = np.iinfo(np.int64).max // 2  # spans of many mappings: each lies in its own


def _walk(array: pa.Array):
    """``array`` and, for a struct, each of its fields (sliced as the struct is)."""
    yield array
    if pa.types.is_struct(array.type):
        for child in array.flatten():
            yield from _walk(child)


_OFFSET_SIZE = {pa.types.is_binary: 4, pa.types.is_string: 4, pa.types.is_large_binary: 8, pa.types.is_large_string: 8}


@dataclass(frozen=True)
class _Layout:
    """Where a file's values lie: for every batch and every array of the schema (struct fields
    too), ``buffers[batch, array]`` = (offset, validity address or -1, values address, data
    address); ``width``: bits a fixed-width value (0 if not); ``offset_size``: bytes an offset of
    binary / string values (0 if not). Types other than these and structs of them are left to
    their page faults."""

    kinds: tuple
    buffers: np.ndarray
    width: np.ndarray
    offset_size: np.ndarray

    @classmethod
    def of(cls, batches: list[pa.RecordBatch]) -> "_Layout":
        per_batch = [[array for column in batch.columns for array in _walk(column)] for batch in batches]
        kinds = tuple(array.type for array in per_batch[0])
        width, offset_size = [], []
        for j, kind in enumerate(kinds):
            size = next((size for test, size in _OFFSET_SIZE.items() if test(kind)), 0)
            bits = 0
            if not size and not pa.types.is_struct(kind):
                try:
                    bits = kind.bit_width
                except ValueError:  # not fixed-width
                    bits = 0
                if any(len(arrays[j].buffers()) != 2 or arrays[j].buffers()[1] is None for arrays in per_batch):
                    bits = 0
            width.append(bits)
            offset_size.append(size)

        def address(array: pa.Array, position: int) -> int:
            found = array.buffers()[position] if len(array.buffers()) > position else None
            return -1 if found is None else found.address

        buffers = np.asarray([[(array.offset, address(array, 0), address(array, 1), address(array, 2)) for array in arrays]
                              for arrays in per_batch], dtype=np.int64)
        return cls(kinds=kinds, buffers=buffers, width=np.asarray(width, dtype=np.int64),
                   offset_size=np.asarray(offset_size, dtype=np.int64))
