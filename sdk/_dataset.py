"""torch datasets over a product: (vector, metadata) pairs with the search filters, for DataLoader use.

``EmbeddingDataset`` (map-style) reads vectors from the memory-mapped decoded-vector cache, so
random access costs one row; ``StreamingEmbeddingDataset`` (iterable) streams the Parquet files and
splits them across DataLoader workers, for products that are read once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from ._damage import reading
from ._errors import SearchError
from ._optional import require
from ._search import Searcher, _rows_in, metadata_rows, parse_bbox, parse_datetime, where_rows
from ._store import open_input

torch = require("torch", extra="learn")
from torch.utils.data import Dataset, IterableDataset, get_worker_info  # noqa: E402  after the install hint

if TYPE_CHECKING:
    from ._read import Product


def _check_columns(product: "Product", columns: Sequence[str]) -> list[str]:
    """Metadata columns every data file holds (files may differ in optional ones)."""
    schemas = product._schemas
    names = [n for n in schemas[0].names if all(n in s.names for s in schemas)]
    unknown = [c for c in columns if c not in names or c == "embedding"]
    if unknown:
        raise SearchError(f"metadata column(s) {unknown} are not in every data file of {product.path}; choose from "
                          f"{[n for n in names if n != 'embedding']}")
    return list(columns)


def _selection(product: "Product", searcher: Searcher, bbox, interval, where, params) -> tuple[np.ndarray, np.ndarray]:
    """(file, row) of every row passing the filters, in product order."""
    where_map = where_rows(product, where, params) if where else None
    files, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    overlapping = set(product.files_overlapping(bbox, interval))  # the others are never decoded
    for index in (i for i in searcher.file_indexes if i in overlapping):
        cache = searcher.cache(index)
        selected = _rows_in(cache, bbox, interval)
        if selected is None:
            selected = np.arange(cache.rows)
        if where_map is not None:
            selected = np.intersect1d(selected, where_map.get(index, np.zeros(0, np.int64)), assume_unique=True)
        files.append(np.full(len(selected), index))
        rows.append(selected)
    return np.concatenate(files), np.concatenate(rows)


class EmbeddingDataset(Dataset):
    """Map-style: item i is (float32 tensor (D,), {column: value}) of the i-th selected chip."""

    def __init__(self, product: "Product", *, bbox=None, datetime=None, where=None, params=None,
                 columns: Sequence[str] = ("chip_id",)) -> None:
        self.product = product
        self.columns = _check_columns(product, columns)
        self._searcher = Searcher(product)
        self.files, self.rows = _selection(product, self._searcher, parse_bbox(bbox), parse_datetime(datetime), where, params)
        meta = metadata_rows(self._searcher, self.files, self.rows).select(self.columns)
        self._meta = {c: meta.column(c).to_pylist() for c in self.columns}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} chips")
        f, r = int(self.files[i]), int(self.rows[i])
        vector = torch.from_numpy(np.array(self._searcher.cache(f).vectors[r]))
        return vector, {c: self._meta[c][i] for c in self.columns}


class StreamingEmbeddingDataset(IterableDataset):
    """Iterable: streams the data files (split across DataLoader workers), filtering each batch."""

    def __init__(self, product: "Product", *, bbox=None, datetime=None, where=None, params=None,
                 columns: Sequence[str] = ("chip_id",)) -> None:
        self.product = product
        self.columns = _check_columns(product, columns)
        self.bbox, self.interval = parse_bbox(bbox), parse_datetime(datetime)
        self.where_map = where_rows(product, where, params) if where else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        worker = get_worker_info()
        indexes = self.product.files_overlapping(self.bbox, self.interval)  # the others hold no row to yield
        if worker is not None:
            indexes = indexes[worker.id :: worker.num_workers]
        for index in indexes:
            with reading(self.product.files[index]):
                yield from self._file_items(index)

    def _file_items(self, index: int) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        from ._search import _as_us, _time_columns

        path = self.product.files[index]
        handle = pq.ParquetFile(open_input(path), pre_buffer=False)
        times = _time_columns(handle.schema_arrow)
        wanted = list(dict.fromkeys(self.product._vector_columns() + ["bbox"] + times + self.columns))
        first = 0
        for batch in handle.iter_batches(batch_size=8192, columns=wanted):
            keep = np.ones(batch.num_rows, dtype=bool)
            if self.bbox is not None:
                b = batch.column("bbox")
                xmin, ymin, xmax, ymax = (b.field(n).to_numpy(zero_copy_only=False) for n in ("xmin", "ymin", "xmax", "ymax"))
                x0, y0, x1, y1 = self.bbox
                keep &= (xmax >= x0) & (xmin <= x1) & (ymax >= y0) & (ymin <= y1)
            if self.interval is not None:
                start, end = _as_us(batch.column(times[0])), _as_us(batch.column(times[-1]))
                if self.interval[0] is not None:
                    keep &= end >= self.interval[0]
                if self.interval[1] is not None:
                    keep &= start <= self.interval[1]
            if self.where_map is not None:
                keep &= np.isin(np.arange(first, first + batch.num_rows), self.where_map.get(index, []))
            first += batch.num_rows
            if not keep.any():
                continue
            vectors = self.product.decode(batch, source=path, first_row=first - batch.num_rows)[keep]
            meta = {c: [v for v, ok in zip(batch.column(c).to_pylist(), keep) if ok] for c in self.columns}
            for j in range(len(vectors)):
                yield torch.from_numpy(vectors[j].copy()), {c: meta[c][j] for c in self.columns}


def make_dataset(product: "Product", *, streaming: bool = False, **options: Any) -> Dataset:
    cls = StreamingEmbeddingDataset if streaming else EmbeddingDataset
    return cls(product, **options)
