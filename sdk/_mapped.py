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


def _advise_willneed(mapping: mmap.mmap, start: int, length: int) -> None:
    mapping.madvise(mmap.MADV_WILLNEED, start, length)


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

    def _prefetch_spans(self, first: np.ndarray, end: np.ndarray) -> None:
        """Have the kernel start reading the pages of these byte spans (nothing where the platform
        has no ``madvise``)."""
        if not _CAN_ADVISE:
            return
        for start, length in zip(*(part.tolist() for part in page_runs(first, end, self._size))):
            _advise_willneed(self._mapping, start, length)


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

    def prefetch(self, rows: np.ndarray) -> None:
        """Have the kernel start reading the pages of ``rows``."""
        self._prefetch_spans(*self._spans(rows))


class RandomAccessTable(_Mapped):
    """An Arrow IPC file's table over a mapping read at random (zero-copy: its buffers are the
    mapped bytes). :meth:`prefetch_rows` asks for the pages a row's values lie on in every column
    before they are read; :meth:`prefetch_columns` for whole columns that are about to be read end
    to end (a mapping read at random has no read-around to serve a full read)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._base = pa.py_buffer(self._mapping).address
        self.table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mapping))).read_all()
        self.batches = self.table.to_batches()
        self.batch_starts = np.cumsum([0] + [b.num_rows for b in self.batches[:-1]]).astype(np.int64)

    def prefetch_rows(self, rows: Iterable[int]) -> None:
        """Have the kernel read the pages of these rows' values, in two rounds: the fixed-width
        values and the offsets of variable-width ones first, then the variable-width bytes those
        offsets point at (read from the pages the first round asked for)."""
        located = []
        for row in sorted(set(int(r) for r in rows)):
            b = int(np.searchsorted(self.batch_starts, row, side="right")) - 1
            located.append((self.batches[b], row - int(self.batch_starts[b])))
        fixed: list[tuple[int, int]] = []
        variable: list[tuple[pa.Buffer, pa.Buffer, np.dtype, int]] = []
        for batch, row in located:
            for column in batch.columns:
                _value_spans(column, row, fixed, variable)
        self._prefetch_addresses(fixed)
        spans = []
        for offsets, data, dtype, at in variable:
            begin, stop = np.frombuffer(offsets, dtype=dtype, count=2, offset=at * dtype.itemsize).tolist()
            spans.append((data.address + begin, data.address + stop))
        self._prefetch_addresses(spans)

    def prefetch_columns(self, names: Iterable[str]) -> None:
        """Have the kernel read every buffer of these columns."""
        spans = [(buffer.address, buffer.address + buffer.size)
                 for name in names for chunk in self.table.column(name).chunks for buffer in chunk.buffers() if buffer is not None]
        self._prefetch_addresses(spans)

    def _prefetch_addresses(self, spans: list[tuple[int, int]]) -> None:
        if spans:
            addresses = np.asarray(spans, dtype=np.int64) - self._base
            self._prefetch_spans(addresses[:, 0], addresses[:, 1])


def _value_spans(array: pa.Array, row: int, fixed: list, variable: list) -> None:
    """Add the byte spans (absolute addresses) of ``array[row]``'s fixed-width parts to ``fixed`` and
    (offsets buffer, data buffer, offset dtype, index) of its variable-width parts to ``variable``.
    Types other than fixed-width, binary / string and structs of them are left to their page faults."""
    at = array.offset + row
    buffers = array.buffers()
    kind = array.type
    if buffers[0] is not None:  # validity bitmap
        fixed.append((buffers[0].address + at // 8, buffers[0].address + at // 8 + 1))
    if pa.types.is_struct(kind):
        for child in array.flatten():  # each child sliced as the struct is
            _value_spans(child, row, fixed, variable)
        return
    if pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_binary(kind) or pa.types.is_large_string(kind):
        dtype = np.dtype(np.int64 if pa.types.is_large_binary(kind) or pa.types.is_large_string(kind) else np.int32)
        offsets = buffers[1]
        fixed.append((offsets.address + at * dtype.itemsize, offsets.address + (at + 2) * dtype.itemsize))
        variable.append((offsets, buffers[2], dtype, at))
        return
    try:
        bits = kind.bit_width
    except ValueError:  # not fixed-width
        return
    if len(buffers) == 2 and buffers[1] is not None:
        fixed.append((buffers[1].address + at * bits // 8, buffers[1].address + ((at + 1) * bits + 7) // 8))
