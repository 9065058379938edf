"""Write embedding products: validated rows in, GeoParquet 1.1 data files + STAC metadata out.

A product is published atomically. Everything is written into a hidden staging folder beside the
target (``.NAME.eoembed-staging-XXXX``) and renamed into place only when the manifest, the items and
the collection are complete, so a crashed write never leaves a folder that reads as a product.

Memory stays bounded: rows are buffered only up to ``max_rows_per_file``; each full buffer is sorted
along a Hilbert curve and written as one data file in row groups of ``row_group_size`` rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import queue
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import _geometry, _quantize
from ._chipid import chip_ids as _chip_ids
from ._errors import (
    DimensionMismatchError,
    ModelContractMismatchError,
    NonFiniteEmbeddingError,
    ProductExistsError,
    SpecError,
    UnknownFieldError,
)
from ._spec import FOOTER_KEY, SPEC_VERSION, check_footer

DATA_DIR = "data"
ITEMS_DIR = "items"
MODELS_DIR = "models"
STAGING_MARK = ".eoembed-staging-"
# Data files encoded at once, each on a thread of its own: Parquet encoding, most of a write, runs
# on one core a file, so a second file encodes beside the first while the writer's thread takes
# the next batches. Each holds its own array of gathered rows, a file's worth (see _GroupCodes).
ENCODING_FILES = 2
# The rows left at close are written as ENCODING_FILES files, encoded at once, when they hold at
# least this many bytes of vector codes (a quarter of a second of encoding here): nothing else is
# left to do by then, and one file would be encoded on one core while the others wait.
SPLIT_FINAL_BYTES = 64 << 20

REQUIRED_COLUMNS = ("chip_id", "geometry", "bbox", "source_id", "grid_cell", "embedding")
OPTIONAL_COLUMNS = ("scale", "native_crs", "native_footprint", "pixel_bbox", "valid_fraction", "content_hash")
# Keys a batch may hold: the columns, plus ``bounds`` and ``native_bounds`` as shortcuts for box
# geometries and box native footprints, and the time.
BATCH_KEYS = frozenset(REQUIRED_COLUMNS + OPTIONAL_COLUMNS
                       + ("bounds", "native_bounds", "datetime", "start_datetime", "end_datetime"))

_STORED_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "uint8": pa.uint8()}
_QUANTIZATION_SHORTHANDS: dict[str, dict[str, Any]] = {
    "none": {"method": "none", "dtype": "float32"},
    "float32": {"method": "none", "dtype": "float32"},
    "float16": {"method": "none", "dtype": "float16"},
    "int8": {"method": "linear", "per": "tensor"},
    "int8-per-dimension": {"method": "linear", "per": "dimension"},
    "int8-per-row": {"method": "per-row"},
    "sqrt": {"method": "sqrt"},
    "binary": {"method": "binary"},
}
QuantizationName = Literal["none", "float32", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bbox_type() -> pa.StructType:
    return pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])


def crs84_projjson() -> dict[str, Any]:
    import pyproj

    return pyproj.CRS("OGC:CRS84").to_json_dict()


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:  # a local Path or a remote UPath
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def contract_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "model") -> str | None:
    """The first field where two model contracts differ, as ``path: a != b``; None when equal."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            found = contract_difference(va, vb, f"{prefix}.{key}")
            if found:
                return found
        elif va != vb:
            return f"{prefix}.{key}: {va!r} != {vb!r}"
    return None


def publishable_weights(model: Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """The contract with ``weights_href`` as the product publishes it, and the local weights file to
    copy into the product (None when there is none).

    An http(s) URL (the encoder's published source) stays as it is. A local file (a path or a
    ``file:`` URI, e.g. a trained encoder's checkpoint) is copied beside the model item and named by
    its path inside the product, ``models/NAME-VERSION.weights.EXT``: a product never points at a
    file of the machine that made it, nor at a file it does not hold.
    """
    from urllib.parse import unquote, urlparse

    from ._paths import is_url
    from ._stac import model_item_name

    model = dict(model)
    href = model.get("weights_href")
    if href is None or (isinstance(href, str) and href.startswith(("https://", "http://"))):
        return model, None
    advice = "give the URL the encoder's weights are published at, or the path of the weights file"
    if not isinstance(href, str) or (is_url(href) and not href.startswith("file:")):
        raise SpecError(f"model weights_href {href!r} is neither an http(s) URL nor a local file; {advice}")
    local = Path(unquote(urlparse(href).path)) if href.startswith("file:") else Path(href)
    if not local.is_file():
        raise SpecError(f"model weights_href {href!r}: no such file {local}; {advice}")
    if model.get("weights_sha256") and sha256_file(local) != model["weights_sha256"]:
        raise ModelContractMismatchError(
            f"{local} is not the weights the contract names (weights_sha256 {model['weights_sha256']}); "
            "give the file the encoder was loaded from"
        )
    model["weights_href"] = f"{MODELS_DIR}/{Path(model_item_name(model)).stem}.weights{local.suffix}"
    return model, local


def _squared_norms(vectors: np.ndarray, *, rows: int = 2048) -> np.ndarray:
    """The rows' sums of squares, as ``np.add.reduce(vectors * vectors, axis=1)`` makes them (the same
    bits), a block of rows at a time: the squares of a block stay in the cache, where the squares of
    a whole batch would be fresh memory, made and freed for every batch."""
    squared = np.empty(len(vectors), dtype=vectors.dtype)
    block = np.empty((min(rows, len(vectors)), vectors.shape[1]), dtype=vectors.dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for start in range(0, len(vectors), rows):
            part = vectors[start : start + rows]
            np.multiply(part, part, out=block[: len(part)])
            np.add.reduce(block[: len(part)], axis=1, out=squared[start : start + rows])
    return squared


def populate_in_background(array: np.ndarray) -> "threading.Thread | None":
    """Have the kernel give ``array`` its memory now, on a thread of its own, without touching its
    contents (Linux ``madvise(MADV_POPULATE_WRITE)``, kernel 5.14 and later; elsewhere nothing is
    done). A fresh array's pages are otherwise made one fault at a time by the first write to each,
    in the thread that fills it, which costs as much as the filling itself (measured). The pages
    are made from the array's end, so that a thread filling it from the start makes its first
    pages itself and the two never wait for the same page; and they are small pages: a huge page
    needs a free 2 MiB block, which a virtual machine has usually handed back to its host (free
    page reporting), so that its first touch costs the host hundreds of faults (2.8x the time of
    small pages for 268 MiB, measured). Returns the thread, or None where nothing is done."""
    import sys

    if not sys.platform.startswith("linux") or array.nbytes < 64 << 20:
        return None
    import ctypes
    import mmap

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    page, populate_write, no_huge_pages, step = mmap.PAGESIZE, 23, 15, 16 << 20
    start = -(-array.ctypes.data // page) * page
    end = (array.ctypes.data + array.nbytes) // page * page
    madvise(start, end - start, no_huge_pages)

    def run() -> None:
        for offset in reversed(range(start, end, step)):  # in steps, so that a filling thread may meet it
            if madvise(offset, min(step, end - offset), populate_write) != 0:
                return  # an older kernel (EINVAL): the pages come one fault at a time, as usual

    # The thread holds the array, so its memory lives until the thread is done with it.
    thread = threading.Thread(target=lambda held=array: run(), name="eoembed-populate", daemon=True)
    thread.start()
    return thread


class _GrowingFileHash:
    """SHA-256 of a file that is being appended to, taken on a thread of its own as it grows: the
    bytes are read back from the page cache, which costs little beside the hash itself and less
    than passing every byte through Python on the way out (measured). :meth:`grew` says the file
    has grown (the hash catches up with its size then); :meth:`finish` hashes what is left and
    returns ``(size, hex digest)``."""

    def __init__(self, path: Path) -> None:
        self._path, self._digest, self._hashed = path, hashlib.sha256(), 0
        self._sizes: "queue.SimpleQueue[int | None]" = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"eoembed-hash-{path.name}", daemon=True)
        self._thread.start()

    def grew(self) -> None:
        self._sizes.put(self._path.stat().st_size)

    def _run(self) -> None:
        handle = None
        try:
            while (size := self._sizes.get()) is not None:
                if self._error is not None:
                    continue
                handle = handle or self._path.open("rb")
                while self._hashed < size:
                    block = handle.read(min(1 << 22, size - self._hashed))
                    if not block:
                        raise OSError(f"{self._path} is shorter than the {size} bytes written to it")
                    self._digest.update(block)
                    self._hashed += len(block)
        except BaseException as error:  # re-raised by finish()
            self._error = error
        finally:
            if handle is not None:
                handle.close()

    def stop(self) -> None:
        """No more growth: wait for the thread (it has hashed what it was told of by then)."""
        if self._thread.is_alive():
            self._sizes.put(None)
            self._thread.join()

    def finish(self) -> tuple[int, str]:
        self.stop()
        if self._error is not None:
            raise self._error
        return self._hashed, self._digest.hexdigest()


class _FileJob:
    """One data file on its way to disk. The caller puts its row groups, already in stored order
    (:meth:`put`), or an iterable that makes them (:meth:`put_all`), and a thread of the job's
    own encodes them as Parquet (Arrow releases the GIL while it encodes), while the writer takes
    the next batches; the file's checksum is taken as the file grows, by another thread
    (:class:`_GrowingFileHash`), so that only the footer is left to hash once the last group is
    encoded (:attr:`encoded` tells when the array of its groups, ``codes``, may serve another
    file). The file appears under its name only when complete."""

    def __init__(self, partial: Path, target: Path, schema: pa.Schema, options: Mapping[str, Any],
                 codes: "_GroupCodes") -> None:
        self.partial, self.target, self.codes = partial, target, codes
        self._schema, self._options = schema, dict(options)
        self._groups: "queue.Queue[Iterable[pa.Table] | None]" = queue.Queue()  # a file's groups at most
        self._cancelled = self._ending = False
        self.error: BaseException | None = None
        self.size, self.sha256 = 0, ""
        self.encoded = threading.Event()  # set once every group is written (or the job failed)
        self._thread = threading.Thread(target=self._run, name=f"eoembed-write-{target.name}", daemon=True)
        self._thread.start()

    def put(self, group: pa.Table) -> None:
        self._groups.put((group,))

    def put_all(self, groups: Iterable[pa.Table]) -> None:
        """Groups made on the job's thread, each once the one before is encoded."""
        self._groups.put(groups)

    def _run(self) -> None:
        ended = False  # the closing None was taken
        digest = _GrowingFileHash(self.partial)
        try:
            with pq.ParquetWriter(self.partial, self._schema, **self._options) as out:
                while (groups := self._groups.get()) is not None:
                    for group in groups:
                        if self._cancelled:
                            break
                        out.write_table(group, row_group_size=group.num_rows)
                        # A row group is on disk once written; Parquet never rewrites what it wrote.
                        digest.grew()
                ended = True
            self.encoded.set()
            if not self._cancelled:
                digest.grew()  # the footer
                size, sha256 = digest.finish()
                if not self._cancelled:  # asked again: the hash may still have been running
                    self.size, self.sha256 = size, sha256
                    os.replace(self.partial, self.target)
        except BaseException as error:  # re-raised by finish() in the writer's thread
            self.error = error
        finally:
            digest.stop()
            self.encoded.set()
            while not ended and self._groups.get() is not None:  # drop what is put after a failure
                pass
            if self.error is not None or self._cancelled:
                self.partial.unlink(missing_ok=True)

    def end(self) -> None:
        """No more groups: the file is closed once those put are encoded."""
        if not self._ending:
            self._ending = True
            self._groups.put(None)

    def finish(self) -> None:
        """Wait until the file is complete; raise what went wrong writing it."""
        self.end()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self._cancelled = True
        self.end()
        self._thread.join()


@dataclass
class _FileRecord:
    path: str
    rows: int
    bytes: int
    sha256: str
    bbox: tuple[float, float, float, float]
    start: datetime
    end: datetime
    geometry_types: list[str]
    footer: dict[str, Any]
    sources: list[str]  # distinct source ids in stored order: product summaries are built from the files
    # A pixel product's tile: its proj:code, proj:transform (6 numbers) and proj:shape ([rows, cols]).
    tile: dict[str, Any] | None = None


def file_record(path: Path, *, root: Path) -> _FileRecord:
    """The manifest facts of a written data file, read back from the file itself."""
    import pyarrow.compute as pc

    handle = pq.ParquetFile(path)
    metadata = handle.schema_arrow.metadata
    geo = json.loads(metadata[b"geo"])["columns"]["geometry"]
    footer = json.loads(metadata[FOOTER_KEY])
    names = handle.schema_arrow.names
    time_columns = ["datetime"] if "datetime" in names else ["start_datetime", "end_datetime"]
    times = handle.read(columns=[*time_columns, "source_id"])
    start = pc.min(times.column(0)).as_py()
    stop = pc.max(times.column(len(time_columns) - 1)).as_py()
    return _FileRecord(
        path=path.relative_to(root).as_posix(), rows=handle.metadata.num_rows, bytes=path.stat().st_size,
        sha256=sha256_file(path), bbox=tuple(geo["bbox"]), start=start, end=stop,
        geometry_types=geo["geometry_types"], footer=footer,
        sources=[str(s) for s in pc.unique(times.column("source_id")).to_pylist()],
    )


class _RowBuffer:
    """Rows waiting to become a data file. The vector codes, the bulk of a row, go straight into
    one numpy array that is kept and refilled for the next file, so memory is taken (and first
    touched) once per writer instead of once per batch, and a file's codes need no concatenation.
    The other columns are kept as one small Arrow table per batch."""

    def __init__(self) -> None:
        self.codes: np.ndarray | None = None
        self.tables: list[pa.Table] = []
        self.rows = 0

    def slot(self, n: int, *, dtype: np.dtype, width: int, capacity: int = 0) -> np.ndarray:
        """The (n, width) codes array for the next n rows (filled by the caller, counted by append);
        ``capacity``: the rows the array should hold when it has to be made."""
        codes = self.codes
        if codes is None or codes.dtype != dtype or codes.shape[1] != width or len(codes) < self.rows + n:
            # Grow by doubling, so a long unit costs a few copies; np.empty touches no memory yet.
            size = max(self.rows + n, capacity, 2 * len(codes) if codes is not None else 0)
            grown = np.empty((size, width), dtype=dtype)
            populate_in_background(grown)
            if codes is not None and self.rows:
                grown[: self.rows] = codes[: self.rows]
            self.codes = codes = grown
        return codes[self.rows : self.rows + n]

    def append(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows

    def table(self, start: int, rows: int, *, where: Path) -> pa.Table:
        """Rows ``start .. start + rows`` as one Arrow table; the embedding column is a view of the
        codes array (valid until the buffer is refilled)."""
        assert self.codes is not None
        try:
            rest = pa.concat_tables(self.tables)
        except pa.ArrowInvalid as error:
            raise SpecError(f"batches for {where} do not share one column layout: {error}") from error
        rest = rest.slice(start, rows).combine_chunks()
        codes = self.codes[start : start + rows]
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(codes.reshape(-1), _STORED_TYPES[codes.dtype.name]), codes.shape[1]
        )
        return rest.add_column(rest.column_names.index("grid_cell") + 1, "embedding", embedding)

    def drop(self, rows: int) -> None:
        """Forget the first ``rows`` rows; the rest move to the front of the codes array."""
        rest = self.rows - rows
        if rest and self.codes is not None:
            self.codes[:rest] = self.codes[rows : self.rows]
            self.tables = [pa.concat_tables(self.tables).slice(rows)]
        else:
            self.tables = []
        self.rows = rest


class _GroupCodes:
    """The array the vector codes of a data file's row groups are gathered into, one group after
    the other, kept and reused by the next file it serves: fresh memory costs the kernel about as
    much as the gather itself, so it is made once, its pages made on another thread while the
    gather fills it (:func:`populate_in_background`). A file whose rows are refilled once taken
    has all its groups gathered at once, so the row buffer can take the next batches while the
    file is encoded; the writer gives an array to a new file only once the file that last used it
    is encoded (:data:`ENCODING_FILES` arrays)."""

    def __init__(self) -> None:
        self._array: np.ndarray | None = None
        self._used = 0

    def begin(self, rows: int, like: np.ndarray) -> None:
        """Gather from the start again, ``rows`` rows of the shape and type of ``like``'s rows."""
        held, self._used = self._array, 0
        if held is None or held.dtype != like.dtype or held.shape[1:] != like.shape[1:] or len(held) < rows:
            self._array = np.empty((rows, *like.shape[1:]), dtype=like.dtype)
            populate_in_background(self._array)

    def gather(self, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``codes[rows]``, in the array's next ``len(rows)`` rows."""
        assert self._array is not None and self._used + len(rows) <= len(self._array)
        out, self._used = self._array[self._used : self._used + len(rows)], self._used + len(rows)
        return np.take(codes, rows, axis=0, out=out, mode="clip")  # clip: no checks, rows are valid


def _ordered_groups(table: pa.Table, order: np.ndarray, *, rows: int, into: _GroupCodes, one_array: bool = False):
    """The rows of ``table`` in ``order``, as tables of ``rows`` rows each, one made at a time.

    The vector codes, the bulk of a row, are gathered by numpy a whole row at a time into
    ``into``: Arrow's take of a fixed-size list goes through one index per element, several times
    slower. The other columns are gathered by Arrow. ``one_array``: every group is gathered into
    the same rows of ``into``, for a consumer done with each group before it takes the next."""
    embedding = table.column("embedding")
    embedding = embedding.chunk(0) if embedding.num_chunks == 1 else embedding.combine_chunks()  # one: no copy
    codes = embedding.flatten().to_numpy().reshape(len(embedding), -1)  # no nulls: the writer made them, or write_stored checked
    position, field = table.schema.get_field_index("embedding"), table.schema.field("embedding")
    others = table.drop_columns(["embedding"])
    if not one_array:
        into.begin(len(codes), codes)
    for start in range(0, table.num_rows, rows):
        taken = order[start : start + rows]
        if one_array:
            into.begin(len(taken), codes)
        gathered = into.gather(codes, taken)
        flat = pa.Array.from_buffers(field.type.value_type, gathered.size, [None, pa.py_buffer(gathered)])
        group = _box_footprints(others.take(pa.array(taken)))
        yield group.add_column(position, field, pa.FixedSizeListArray.from_arrays(flat, type=field.type))


def _box_footprints(group: pa.Table) -> pa.Table:
    """``group`` with the footprints the writer holds as null (those given as ``bounds``) made
    from the rows' bbox: counter-clockwise boxes."""
    geometry = group.column("geometry")
    if not geometry.null_count:
        return group
    boxes = _geometry.box_wkb(_geometry.bbox_bounds(group.column("bbox")))
    if geometry.null_count < len(geometry):
        import pyarrow.compute as pc

        boxes = pc.if_else(pc.is_null(geometry), boxes, geometry)
    return group.set_column(group.schema.get_field_index("geometry"), "geometry", boxes)


class ProductWriter:
    """Stream batches of chips into a new product; publish it atomically on :meth:`close`.

    Use as a context manager: leaving the block normally commits, an exception aborts and removes
    the staging folder. See :meth:`write` for the batch layout.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: Mapping[str, Any],
        grid: str | Mapping[str, Any] = "scene",
        quantization: QuantizationName | _quantize.Quantization = "none",
        metric: Literal["cosine", "euclidean", "dot", "hamming"] = "cosine",
        normalize: bool = False,
        normalized: bool | None = None,
        nodata_zero_vector: bool = False,
        license: str = "CC-BY-4.0",
        collection_id: str | None = None,
        title: str | None = None,
        description: str | None = None,
        source_data_href: str | None = None,
        provenance: Mapping[str, Any] | None = None,
        row_group_size: int = 65536,
        max_rows_per_file: int | None = None,
        compression: str = "zstd",
        content_hash: bool = False,
        overwrite: bool = False,
        staging: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        if (self.path / "collection.json").exists() and not overwrite:
            raise ProductExistsError(
                f"{self.path} already holds a product; pass overwrite=True to replace it "
                "(the old product is removed only after the new one is complete)"
            )
        if self.path.exists() and not (self.path / "collection.json").exists() and any(self.path.iterdir()):
            raise ProductExistsError(f"{self.path} exists and is not an empty folder or a product; choose a new path")
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        self._model_given = json.loads(json.dumps(dict(model)))  # batches' contracts are compared to it
        self.model, self.weights_file = publishable_weights(self._model_given)
        self.grid = self._grid_section(grid)
        self.metric = metric
        self.normalize = normalize
        self.normalized = bool(normalize or normalized)
        self.nodata_zero_vector = nodata_zero_vector
        self.license = license
        self.collection_id = collection_id or self.path.name
        self.title = title
        self.description = description
        self.source_data_href = source_data_href
        self.row_group_size = row_group_size
        self.max_rows_per_file = max_rows_per_file
        self.compression = compression
        self.content_hash = content_hash
        self.overwrite = overwrite
        self.started = _utcnow()
        self.provenance_extra = dict(provenance or {})
        self._quantization_request = quantization
        self.quantization: _quantize.Quantization | None = (
            quantization if isinstance(quantization, _quantize.Quantization) else None
        )
        if isinstance(quantization, str) and quantization not in _QUANTIZATION_SHORTHANDS:
            raise SpecError(
                f"unknown quantization {quantization!r}; use one of {sorted(_QUANTIZATION_SHORTHANDS)} "
                "or an eoembed.Quantization"
            )
        self.dim: int | None = self.quantization.dim if self.quantization else None
        self._check_static_metadata()
        # A given staging folder is shared by cooperating writers (ranks) and survives restarts.
        self._owns_staging = staging is None
        self.staging = Path(staging) if staging is not None else self.path.parent / f".{self.path.name}{STAGING_MARK}{uuid.uuid4().hex[:12]}"
        (self.staging / DATA_DIR).mkdir(parents=True, exist_ok=staging is not None)
        self._pending = _RowBuffer()  # rows of write() not yet in a file
        self._writing: list[tuple[_FileJob, _FileRecord]] = []  # data files begun, not yet recorded; oldest first
        self._unit_rows = _RowBuffer()  # the rows of one write_unit(), its array reused by the next
        self._group_codes = [_GroupCodes() for _ in range(ENCODING_FILES)]  # the codes of the files being encoded
        self._rows_seen = 0
        self._files: list[_FileRecord] = []
        self._before_publish: Callable[[], None] | None = None
        self._closed = False

    # -- metadata ---------------------------------------------------------------------------------

    @staticmethod
    def _grid_section(grid: str | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(grid, Mapping):
            section = json.loads(json.dumps(dict(grid)))
            if "id" not in section or "definition" not in section:
                raise SpecError(f"grid must be a grid id or {{'id', 'definition'}}, got keys {sorted(section)}")
            return section
        if grid == "scene":
            return {"id": "scene", "definition": {"kind": "scene", "description": "chips aligned to each source scene's pixel grid"}}
        from ._grid import get_grid

        resolved = get_grid(grid)
        return {"id": resolved.id, "definition": resolved.definition()}

    def _embedding_section(self) -> dict[str, Any]:
        assert self.quantization is not None
        return {
            "dim": self.quantization.dim,
            "dtype": self.quantization.dtype,
            "normalized": self.normalized or self.quantization.method == "binary",
            "metric": self.metric,
            "nodata_zero_vector": self.nodata_zero_vector,
            "quantization": self.quantization.to_dict(),
        }

    def _provenance(self, end: datetime) -> dict[str, Any]:
        from . import __version__

        section = {
            "software": "eoembed",
            "software_version": __version__,
            "start": _iso(self.started),
            "end": _iso(end),
            "ranks": 1,
            "host": socket.gethostname(),
            "python": platform.python_version(),
        }
        section.update(self.provenance_extra)
        return section

    def footer(self, *, end: datetime | None = None) -> dict[str, Any]:
        """The ``eoembed`` footer object for a data file finished at ``end``."""
        return {
            "spec_version": SPEC_VERSION,
            "model": self.model,
            "embedding": self._embedding_section(),
            "grid": self.grid,
            "provenance": self._provenance(end or _utcnow()),
            "license": self.license,
        }

    def _check_static_metadata(self) -> None:
        # Validate what is known before any row arrives, so a bad contract fails fast.
        probe_q = self.quantization or _quantize.Quantization(method="none", dtype="float32", dim=int(self.model.get("output", {}).get("dim", 1) or 1))
        saved, self.quantization = self.quantization, probe_q
        try:
            check_footer(self.footer(end=self.started), where="model/grid/provenance given to the writer")
        finally:
            self.quantization = saved

    # -- rows -------------------------------------------------------------------------------------

    def write(self, chips: Mapping[str, Any], *, model: Mapping[str, Any] | None = None) -> None:
        """Add a batch of chips.

        ``chips`` maps column names to arrays of equal length n: ``embedding`` (n, D) float vectors;
        ``geometry`` (shapely geometries or WKB in OGC:CRS84) or ``bounds`` (n, 4 lon/lat boxes);
        ``datetime`` or ``start_datetime`` + ``end_datetime``; ``source_id``; ``grid_cell``;
        optionally ``chip_id`` (else derived from grid, cell, ``pixel_bbox`` offset, time and
        source), ``native_crs``, ``native_footprint`` (shapely geometries or WKB in ``native_crs``) or
        ``native_bounds`` (n, 4 boxes in ``native_crs``), ``pixel_bbox``, ``valid_fraction``. Scalars
        are broadcast. ``model``, when given, must equal the writer's contract.
        """
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        if model is not None:
            diff = contract_difference(self._model_given, json.loads(json.dumps(dict(model))))
            if diff:
                raise ModelContractMismatchError(
                    f"batch for {self.path} has a different model contract ({diff}); "
                    "one product holds the vectors of exactly one model: write another product"
                )
        n = self._convert(chips, self._pending)
        self._rows_seen += n
        if self._pending.rows >= self._file_rows():
            self._flush()

    def _file_rows(self) -> int:
        if self.max_rows_per_file:
            return self.max_rows_per_file
        # About 256 MiB of vectors a file: large enough for fast scans, small enough to buffer.
        rows = (256 << 20) // max(self._row_bytes(), 1)
        return max(self.row_group_size, rows // self.row_group_size * self.row_group_size)

    def _row_bytes(self) -> int:
        """Bytes of one row's stored vector codes."""
        assert self.quantization is not None
        return self.quantization.stored_width() * np.dtype(self.quantization.dtype).itemsize

    def _column(self, chips: Mapping[str, Any], name: str, n: int) -> Any:
        value = chips[name]
        # A scalar is broadcast. np.ndim is not asked of sequences: it would convert a list first.
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or (isinstance(value, np.ndarray) and value.ndim == 0):
            return [value] * n
        if len(value) != n:
            raise DimensionMismatchError(f"column {name!r} has {len(value)} values, but the batch has {n} vectors")
        return value

    def _strings(self, chips: Mapping[str, Any], name: str, n: int) -> pa.Array:
        """A string column: values that already are strings go to Arrow in one call; anything else
        (numbers, bytes, None) is written as its ``str()``."""
        values = self._column(chips, name, n)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        try:
            array = values if isinstance(values, pa.Array) else pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types
            array = None
        if array is not None and pa.types.is_large_string(array.type):
            array = array.cast(pa.string())
        if array is None or not pa.types.is_string(array.type) or array.null_count:
            array = pa.array([str(v) for v in (values.to_pylist() if isinstance(values, pa.Array) else values)], pa.string())
        return array

    def _vectors(self, chips: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """The batch's vectors, checked, and the norms to divide them by when the writer normalises
        (None otherwise): the division is left to the caller, who writes its result in place."""
        if "embedding" not in chips:
            raise SpecError("batch has no 'embedding'; give an (n, D) array of vectors")
        vectors = np.asarray(chips["embedding"], dtype=np.float32)
        if vectors.ndim != 2:
            raise DimensionMismatchError(f"embedding must be 2-D (n, D), got shape {vectors.shape}")
        first = self._rows_seen
        declared = self.model.get("output", {}).get("dim")
        if self.dim is None:
            self.dim = vectors.shape[1]
        for expected, what in ((self.dim, "the product's dimension"), (declared, "model.output.dim")):
            if expected is not None and vectors.shape[1] != expected:
                raise DimensionMismatchError(
                    f"vectors from row {first} have dimension {vectors.shape[1]}, but {what} is {expected}"
                )
        # One pass of squared norms screens every row: NaN and infinity propagate into it and only an
        # all-zero vector gives 0. Overflow and underflow can only raise false alarms, which the exact
        # check of the flagged rows clears. The sums are those np.linalg.norm takes (same order), so
        # normalised vectors are bit-identical to those of the per-row checks this pass replaced.
        squared = _squared_norms(vectors)
        flagged = np.flatnonzero(~(squared > 0) | ~np.isfinite(squared))
        zero_rows = flagged[:0]
        if flagged.size:
            suspects = vectors[flagged]
            non_finite = ~np.isfinite(suspects).all(axis=1)
            if non_finite.any():
                row = int(flagged[np.flatnonzero(non_finite)[0]])
                col = int(np.flatnonzero(~np.isfinite(vectors[row]))[0])
                raise NonFiniteEmbeddingError(
                    f"vector of row {first + row} holds {vectors[row, col]} at index {col}; "
                    "drop or fill such chips before writing (NaN and infinity are not valid embeddings)"
                )
            zero_rows = flagged[~suspects.any(axis=1)]
        if zero_rows.size and not self.nodata_zero_vector:
            raise NonFiniteEmbeddingError(
                f"vector of row {first + int(zero_rows[0])} is all zeros; drop chips without data (e.g. set the scene's nodata), "
                "or pass nodata_zero_vector=True if zero vectors mark them"
            )
        if self.normalize or self.normalized:
            norms = np.sqrt(squared)
            if flagged.size:  # float32 squares under- or overflowed there: take those norms in float64
                norms[flagged] = np.linalg.norm(suspects.astype(np.float64), axis=1)
        if self.normalize:
            norms[zero_rows] = 1.0  # a zero vector stays zero
            return vectors, norms
        if self.normalized:
            bad = np.abs(norms - 1) > 1e-3
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DimensionMismatchError(
                    f"vector of row {first + row} has norm {norms[row]:.6f} but normalized=True was declared; "
                    "pass normalize=True to have the writer normalise"
                )
        return vectors, None

    def _ensure_quantization(self, vectors: np.ndarray) -> _quantize.Quantization:
        if self.quantization is None:
            request = dict(_QUANTIZATION_SHORTHANDS[self._quantization_request])  # type: ignore[index]
            method = request.pop("method")
            # Linear parameters are fitted on the first batch and then frozen for the whole product.
            self.quantization = _quantize.fit(vectors, method=method, **request)
            check_footer(self.footer(end=self.started), where=f"quantization for {self.path}")
        elif self.quantization.dim != vectors.shape[1]:
            raise DimensionMismatchError(
                f"vectors have dimension {vectors.shape[1]} but the quantization was fitted for {self.quantization.dim}"
            )
        return self.quantization

    def _convert(self, chips: Mapping[str, Any], rows: "_RowBuffer") -> int:
        """Check a batch and add it to ``rows``: its vector codes straight into the buffer's array,
        its other columns as one Arrow table. Returns the number of rows added."""
        unknown = sorted(set(chips) - BATCH_KEYS)
        if unknown:
            raise UnknownFieldError(
                f"unknown column(s) {unknown} for {self.path}; eoembed spec {SPEC_VERSION} columns are "
                f"{sorted(BATCH_KEYS)}"
            )
        if "scale" in chips or "content_hash" in chips:
            raise SpecError("'scale' and 'content_hash' are computed by the writer; do not pass them")
        vectors, norms = self._vectors(chips)
        n = len(vectors)
        if self.quantization is None and norms is not None:
            vectors, norms = vectors / norms[:, None], None  # fitted parameters see normalised vectors
        quant = self._ensure_quantization(vectors)
        # write() fills files of _file_rows(); a batch may overshoot the file it completes.
        capacity = self._file_rows() + n if rows is self._pending else 0
        slot = rows.slot(n, dtype=np.dtype(quant.dtype), width=quant.stored_width(), capacity=capacity)
        if norms is not None:
            # Stored float32 codes are the vectors themselves: normalise straight into the buffer.
            direct = quant.method == "none" and quant.dtype == "float32"
            vectors = np.divide(vectors, norms[:, None], out=slot if direct else None)
        # Checked above; the normalised vectors, when not already the codes, are a copy of the writer's own.
        codes, row_scale = _quantize.quantize(vectors, quant, finite=True, out=slot,
                                              overwrite_input=norms is not None and not direct)
        first = self._rows_seen

        if "geometry" in chips:
            wkb, bounds, _ = _geometry.to_wkb(self._column(chips, "geometry", n))
        elif "bounds" in chips:
            bounds = np.asarray(chips["bounds"], dtype=float).reshape(-1, 4)
            if len(bounds) != n:
                raise DimensionMismatchError(f"'bounds' has {len(bounds)} rows, but the batch has {n} vectors")
            wkb = None
        else:
            raise SpecError("batch needs 'geometry' (OGC:CRS84 footprints) or 'bounds' (n, 4 lon/lat boxes)")
        _geometry.check_lonlat(bounds, first_row=first)
        if wkb is None:
            # A box footprint is made from the bbox once the row's group is made (_ordered_groups):
            # held here, its WKB would be most of a row's bytes besides the vector.
            wkb = pa.nulls(n, pa.binary())

        columns: dict[str, pa.Array] = {}
        times = self._times(chips, n)
        if "source_id" not in chips or "grid_cell" not in chips:
            raise SpecError("batch needs 'source_id' and 'grid_cell' for every chip")
        source_ids = self._strings(chips, "source_id", n)
        grid_cells = self._strings(chips, "grid_cell", n)
        pixel_bbox = None
        if "pixel_bbox" in chips:
            pixel_bbox = np.asarray(chips["pixel_bbox"], dtype=np.int32).reshape(-1, 4)
        if "chip_id" in chips:
            ids = self._strings(chips, "chip_id", n)
        elif pixel_bbox is not None:
            size = int(self.model["input"]["chip_size_px"])
            ids = _chip_ids(
                grid_id=self.grid["id"], grid_cells=grid_cells.to_pylist(), col_offs=pixel_bbox[:, 0],
                row_offs=pixel_bbox[:, 1], chip_size=size, source_ids=source_ids.to_pylist(),
                times=times["datetime"].to_pylist() if "datetime" in times
                else list(zip(times["start_datetime"].to_pylist(), times["end_datetime"].to_pylist())),
            )
        else:
            raise SpecError("batch needs 'chip_id', or 'pixel_bbox' so the writer can derive chip ids")

        columns["chip_id"] = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        columns["geometry"] = wkb if isinstance(wkb, pa.Array) else pa.array(wkb, pa.binary())
        columns["bbox"] = pa.StructArray.from_arrays(
            [pa.array(bounds[:, i], pa.float64()) for i in range(4)], fields=list(bbox_type())
        )
        columns.update(times)
        columns["source_id"] = source_ids
        columns["grid_cell"] = grid_cells  # the embedding column follows: the buffer adds it
        if row_scale is not None:
            columns[quant.scale_column or "scale"] = pa.array(np.asarray(row_scale, np.float32), pa.float32())
        if "native_crs" in chips:
            columns["native_crs"] = pa.array([str(c) for c in self._column(chips, "native_crs", n)], pa.string())
        if "native_footprint" in chips and "native_bounds" in chips:
            raise SpecError("batch has both 'native_footprint' and 'native_bounds'; give one of them")
        if "native_footprint" in chips:
            native_wkb, _, _ = _geometry.to_wkb(self._column(chips, "native_footprint", n))
            columns["native_footprint"] = pa.array(native_wkb, pa.binary())
        elif "native_bounds" in chips:
            # Boxes straight from their corners, as for 'bounds': no geometry object per chip.
            native = np.asarray(chips["native_bounds"], dtype=float).reshape(-1, 4)
            if len(native) != n:
                raise DimensionMismatchError(f"'native_bounds' has {len(native)} rows, but the batch has {n} vectors")
            columns["native_footprint"] = _geometry.box_wkb(native)
        if pixel_bbox is not None:
            columns["pixel_bbox"] = pa.FixedSizeListArray.from_arrays(pa.array(pixel_bbox.reshape(-1), pa.int32()), 4)
        if "valid_fraction" in chips:
            fraction = np.asarray(self._column(chips, "valid_fraction", n), dtype=np.float32)
            if ((fraction < 0) | (fraction > 1) | ~np.isfinite(fraction)).any():
                row = int(np.flatnonzero((fraction < 0) | (fraction > 1) | ~np.isfinite(fraction))[0])
                raise SpecError(f"valid_fraction of row {first + row} is {fraction[row]}; it must lie in [0, 1]")
            columns["valid_fraction"] = pa.array(fraction, pa.float32())
        if self.content_hash:
            # SHA-256 of the stored codes (little-endian) followed by the row's scale when there is one.
            raw = np.ascontiguousarray(codes).astype(codes.dtype.newbyteorder("<"), copy=False)
            scales = np.asarray(row_scale, dtype="<f4") if row_scale is not None else None
            columns["content_hash"] = pa.array([
                hashlib.sha256(r.tobytes() + (scales[i].tobytes() if scales is not None else b"")).hexdigest()
                for i, r in enumerate(raw)
            ], pa.string())
        rows.append(pa.table(columns))
        return n

    def _times(self, chips: Mapping[str, Any], n: int) -> dict[str, pa.Array]:
        utc = pa.timestamp("us", tz="UTC")

        def convert(name: str) -> pa.Array:
            values = self._column(chips, name, n)
            if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
                return pa.array(values.astype("datetime64[us]"), pa.timestamp("us")).cast(utc)
            try:
                # Datetimes in one call: Arrow converts aware ones to UTC and reads naive ones as UTC.
                array = pa.array(values, utc)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # ISO strings among them
                out = []
                for v in values:
                    if isinstance(v, str):
                        v = datetime.fromisoformat(v.replace("Z", "+00:00"))
                    if isinstance(v, datetime) and v.tzinfo is None:
                        v = v.replace(tzinfo=timezone.utc)
                    out.append(v)
                array = pa.array(out, utc)
            if array.null_count:
                row = int(np.flatnonzero(np.asarray(array.is_null()))[0])
                raise SpecError(f"{name} of row {self._rows_seen + row} is missing; every chip needs a time")
            return array

        if "datetime" in chips:
            return {"datetime": convert("datetime")}
        if "start_datetime" in chips and "end_datetime" in chips:
            start, end = convert("start_datetime"), convert("end_datetime")
            import pyarrow.compute as pc

            if pc.any(pc.greater(start, end)).as_py():
                raise SpecError("start_datetime is after end_datetime in some rows; swap them or fix the dates")
            return {"start_datetime": start, "end_datetime": end}
        raise SpecError("batch needs 'datetime', or 'start_datetime' and 'end_datetime'")

    # -- files ------------------------------------------------------------------------------------

    def _flush(self, *, final: bool = False) -> None:
        """Write full data files from the buffer; the remainder stays buffered unless ``final``."""
        pending = self._pending
        if not pending.rows:
            return
        limit = self._file_rows()
        full = pending.rows if final else pending.rows // limit * limit
        sizes = [min(limit, full - start) for start in range(0, full, limit)]
        # The last rows, with nothing left to convert beside their encoding: see SPLIT_FINAL_BYTES.
        if final and sizes[-1] * self._row_bytes() >= SPLIT_FINAL_BYTES and sizes[-1] >= ENCODING_FILES * self.row_group_size:
            groups = -(-sizes[-1] // self.row_group_size)  # whole row groups a file
            part = -(-groups // ENCODING_FILES) * self.row_group_size
            last = sizes.pop()
            sizes += [min(part, last - start) for start in range(0, last, part)]
        start = 0
        for size in sizes:
            # Nothing refills the buffer after the final files: their rows may stay where they are.
            self._write_file(pending.table(start, size, where=self.path), wait=False, rows_kept=final)
            start += size
        pending.drop(full)

    def write_unit(self, name: str, batches: Sequence[Mapping[str, Any]], *,
                   energy: Mapping[str, Any] | None = None) -> "_FileRecord | None":
        """Write the chips of one work unit as one data file ``data/NAME.parquet`` right away.

        The file appears atomically (written under a temporary name, then renamed), so a unit either
        exists complete or not at all; a restarted job skips units whose file exists. ``energy``
        (what encoding the unit cost) goes into the file's footer provenance.
        """
        rows = self._unit_rows
        rows.drop(rows.rows)
        for batch in batches:
            self._rows_seen += self._convert(batch, rows)
        if not rows.rows:
            return None
        try:
            return self._write_file(rows.table(0, rows.rows, where=self.path), name=f"{name}.parquet", energy=energy)
        finally:
            rows.drop(rows.rows)

    def write_stored(self, table: pa.Table, *, name: str) -> "_FileRecord":
        """Write rows as a product already stores them (stored vector codes, ``bbox``, times...) as
        one data file ``data/NAME.parquet`` right away: nothing is re-quantised, so each vector stays
        bit-identical. The codes must be of this writer's quantization (see eoembed._exchange)."""
        assert self.quantization is not None, "write_stored needs the writer's quantization up front"
        field = table.schema.field("embedding").type
        if not pa.types.is_fixed_size_list(field) or field.list_size != self.quantization.stored_width() \
                or field.value_type != _STORED_TYPES[self.quantization.dtype]:
            raise DimensionMismatchError(
                f"stored vectors of type {field} do not fit the quantization of {self.path} "
                f"(fixed_size_list<{self.quantization.dtype}>[{self.quantization.stored_width()}])"
            )
        embedding = table.column("embedding")
        if embedding.null_count or any(chunk.flatten().null_count for chunk in embedding.chunks):
            raise SpecError(
                f"stored vectors for {self.path / DATA_DIR / name}.parquet hold nulls; every row of a product "
                "has a vector: drop those rows first"
            )
        self._rows_seen += table.num_rows
        return self._write_file(table.replace_schema_metadata(None).combine_chunks(), name=f"{name}.parquet")

    def _write_file(self, table: pa.Table, *, name: str | None = None, energy: Mapping[str, Any] | None = None,
                    wait: bool = True, rows_kept: bool | None = None) -> "_FileRecord | None":
        """Write ``table`` as one data file in Hilbert order. ``wait=False`` returns once its rows
        are taken from ``table`` (the file is recorded when the next one begins, or at close).
        ``rows_kept`` (the default when waiting): ``table`` stays as it is until the file is
        complete, so the file's thread gathers each row group from it just before encoding it,
        into one array, and the writer's thread does not wait for the gathering."""
        import pyarrow.compute as pc

        rows_kept = wait if rows_kept is None else rows_kept
        bounds = _geometry.bbox_bounds(table.column("bbox"))
        order = _geometry.hilbert_order(bounds)
        geometry = table.column("geometry")
        types = sorted(set(_geometry.geometry_types(geometry)) | ({"Polygon"} if geometry.null_count else set()))
        file_bbox = (float(bounds[:, 0].min()), float(bounds[:, 1].min()), float(bounds[:, 2].max()), float(bounds[:, 3].max()))
        geo = {
            "version": "1.1.0",
            "primary_column": "geometry",
            "columns": {
                "geometry": {
                    "encoding": "WKB",
                    "geometry_types": types,
                    "crs": crs84_projjson(),
                    "edges": "planar",
                    "bbox": list(file_bbox),
                    "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
                }
            },
        }
        if set(types) <= {"Polygon", "MultiPolygon"}:
            # Boxes are written counter-clockwise and user polygons are oriented so on input.
            geo["columns"]["geometry"]["orientation"] = "counterclockwise"
        end = _utcnow()
        footer = self.footer(end=end)
        if energy:
            footer["provenance"]["energy"] = dict(energy)
            check_footer(footer, where=f"the energy given for {name}")
        metadata = dict(table.schema.metadata or {})
        metadata[b"geo"] = json.dumps(geo).encode()
        metadata[FOOTER_KEY] = json.dumps(footer).encode()
        schema = table.schema.with_metadata(metadata)

        # Up to ENCODING_FILES files are encoded at once, each in arrays of its own that the file
        # begun ENCODING_FILES before used: that file is complete first. Records keep the order
        # files were begun in.
        self._finish_file(keep=ENCODING_FILES - 1)
        if any(job.error is not None for job, _ in self._writing):
            self._finish_file()  # raises it
        used = [job.codes for job, _ in self._writing if not job.encoded.is_set()]
        codes = next(c for c in self._group_codes if all(c is not u for u in used))
        name = name or f"part-{len(self._files) + len(self._writing):05d}.parquet"
        target = self.staging / DATA_DIR / name
        partial = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        job = _FileJob(partial, target, schema, {
            "compression": self.compression, "write_statistics": True, "store_schema": True,
            "use_dictionary": [c for c in ("source_id", "grid_cell", "native_crs") if c in table.column_names],
        }, codes)
        # Distinct source ids in stored order.
        sources = pc.unique(table.column("source_id").take(pa.array(order))).to_pylist()
        groups = (group.replace_schema_metadata(metadata)
                  for group in _ordered_groups(table, order, rows=self.row_group_size, into=codes, one_array=rows_kept))
        try:
            if rows_kept:
                job.put_all(groups)
            else:
                # Rows go out in Hilbert order one row group at a time; once all are taken, ``table``
                # (a view of the row buffer) is no longer needed and the buffer can be refilled.
                for group in groups:
                    if job.error is not None:
                        break
                    job.put(group)
            job.end()
        except BaseException:
            job.cancel()
            raise
        # The manifest facts come from what is being written, not from reading the file back.
        time_columns = ["datetime"] if "datetime" in table.column_names else ["start_datetime", "end_datetime"]
        record = _FileRecord(
            path=target.relative_to(self.staging).as_posix(), rows=table.num_rows, bytes=0, sha256="",
            bbox=file_bbox, start=pc.min(table.column(time_columns[0])).as_py(),
            end=pc.max(table.column(time_columns[-1])).as_py(), geometry_types=types,
            footer=json.loads(metadata[FOOTER_KEY]), sources=[str(s) for s in sources],
        )
        self._writing.append((job, record))
        self._finish_file(keep=0 if wait else ENCODING_FILES)
        return record if wait else None

    def _finish_file(self, *, keep: int = 0) -> "_FileRecord | None":
        """Wait for the files being written, oldest first, until ``keep`` are left, and record each
        (its size and checksum are known now). Returns the last one recorded."""
        record = None
        while len(self._writing) > keep:
            job, record = self._writing.pop(0)
            job.finish()
            record.bytes, record.sha256 = job.size, job.sha256
            self._files.append(record)
        return record

    # -- publication ------------------------------------------------------------------------------

    def commit(self, files: Sequence["_FileRecord"], *, before_publish: Callable[[], None] | None = None) -> "Path":
        """Publish the staging folder with exactly these data files (e.g. every rank's units).
        ``before_publish`` runs once the metadata is written, just before the rename (e.g. to remove
        a job's own files from the staging folder as late as possible)."""
        self._before_publish = before_publish
        self._finish_file()
        self._pending = _RowBuffer()
        self._files = sorted(files, key=lambda f: f.path)
        for record in self._files:
            diff = contract_difference(self.model, record.footer["model"])
            if diff:
                raise ModelContractMismatchError(f"{record.path} was made by another model ({diff}); one product holds one model")
        return self.close()

    def close(self) -> "Path":
        """Write the remaining rows, the manifest and the STAC metadata, then publish atomically."""
        if self._closed:
            return self.path
        try:
            self._flush(final=True)
            self._finish_file()
            if not self._files:
                raise SpecError(f"no rows were written to {self.path}; a product needs at least one chip")
            from ._stac import write_metadata

            # From the files, not from what this process wrote: other ranks and earlier runs wrote some of them.
            sources = list(dict.fromkeys(source for record in self._files for source in record.sources))
            write_metadata(self.staging, writer=self, files=self._files, sources=sources)
            if self._before_publish is not None:
                self._before_publish()
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def _publish(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if self.path.exists():
            if (self.path / "collection.json").exists() and self.overwrite and exchange_folders(self.staging, self.path):
                # One atomic step: the path holds the old product or the new one, never neither.
                shutil.rmtree(self.staging, ignore_errors=True)
                return
            if (self.path / "collection.json").exists() and self.overwrite:
                old = self.path.parent / f".{self.path.name}.eoembed-old-{uuid.uuid4().hex[:12]}"
                os.rename(self.path, old)
            elif not any(self.path.iterdir()):
                self.path.rmdir()
        try:
            os.rename(self.staging, self.path)
        except OSError as error:
            if old is not None:
                os.rename(old, self.path)
            raise ProductExistsError(
                f"could not publish {self.path}: {error}; another writer may have published there first"
            ) from error
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far; the target path is left as it was. A staging folder that
        was handed in (shared by ranks, resumable) is kept: it holds other writers' finished units."""
        self._closed = True
        self._pending = self._unit_rows = _RowBuffer()
        while self._writing:
            self._writing.pop(0)[0].cancel()
        if self._owns_staging:
            shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "ProductWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic rename (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False
    where the system cannot, and the caller falls back to two renames."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # an old C library
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_product(path: str | os.PathLike, chips: Mapping[str, Any] | Sequence[Mapping[str, Any]], **options: Any) -> Path:
    """Write one product from a batch of chips (or a list of batches) and publish it atomically.

    Options are those of :class:`ProductWriter`; ``model`` is required. Returns the product path.
    """
    batches = [chips] if isinstance(chips, Mapping) else list(chips)
    with ProductWriter(path, **options) as writer:
        for batch in batches:
            writer.write(batch)
    return writer.path

