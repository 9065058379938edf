"""Cut and combine products: :func:`subset`, :func:`merge` and :func:`append`.

Every output is written by :class:`~eoembed._write.ProductWriter` from the rows as the inputs store
them (:meth:`~eoembed._write.ProductWriter.write_stored`): vector codes and per-row scales are
copied, never re-quantised, so a chip's vector is bit-identical in the input and the output. Each
input data file gives at most one output data file (its selected rows), so files that differ in
optional columns never need to share a layout. Index assets are dropped: they were built over other
files' rows (search checks an index against its data file's SHA-256); ``eoembed index build``
rebuilds them, and exact search needs none.

Rows are read only from the row groups that may hold selected rows: the ``bbox`` covering and time
statistics in each file's footer prune the others before any data is read.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import DuplicateChipError, ModelContractMismatchError, ProductExistsError, SpecError

if TYPE_CHECKING:
    from ._read import Product
    from ._write import ProductWriter

OnDuplicate = Literal["error", "first", "last"]
ON_DUPLICATE = ("error", "first", "last")

# Footer sections two products must share to be combined (provenance may differ).
_CONTRACT_SECTIONS = ("spec_version", "model", "embedding", "grid", "license")
_BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def _open(product: "Product | str | os.PathLike") -> "Product":
    from ._read import Product, open_product

    return product if isinstance(product, Product) else open_product(product)


def _float32(product: "Product") -> bool:
    quant = product.quantization
    return quant.method == "none" and quant.dtype == "float32"


def contract_conflict(products: Sequence["Product"]) -> None:
    """Refuse products that do not share one model contract, quantisation, grid and licence,
    naming the first differing key.

    Mixed quantisations are refused rather than re-quantised: a second quantisation of stored codes
    loses precision that neither input lost. The one exception is an input stored as float32: its
    vectors are quantised with the first product's frozen parameters, exactly as the writer would
    have stored them (this is how ``append`` adds newly produced scenes to an int8 product)."""
    from ._write import contract_difference

    first = products[0]
    for other in products[1:]:
        for section in _CONTRACT_SECTIONS:
            a, b = first.metadata.get(section), other.metadata.get(section)
            if section == "embedding" and _float32(other) and not _float32(first):
                a, b = ({k: v for k, v in e.items() if k not in ("dtype", "quantization")} for e in (a, b))
            diff = contract_difference(a, b, section) if isinstance(a, dict) and isinstance(b, dict) else \
                (None if a == b else f"{section}: {a!r} != {b!r}")
            if diff:
                raise ModelContractMismatchError(
                    f"{first.path} and {other.path} differ in {diff}; only products of one model contract, "
                    "quantisation, grid and licence combine (re-produce or re-import one of them to match)"
                )


def _writer(template: "Product", out: str | os.PathLike, *, overwrite: bool, same_product: bool = False) -> "ProductWriter":
    """A writer with ``template``'s contract, quantisation, grid and licence (and, for a new version of
    the same product, its id, title and description)."""
    from ._paths import is_url
    from ._write import ProductWriter

    model = json.loads(json.dumps(template.metadata["model"]))
    href = model.get("weights_href")
    if isinstance(href, str) and not is_url(href):
        # Weights the product holds are copied into the output, which names them at the same path.
        model["weights_href"] = str(template.model_weights())
    embedding = template.metadata["embedding"]
    source = next((link["href"] for link in template.collection.get("links", []) if link.get("rel") == "emb:source-data"), None)
    collection = template.collection
    # The producer's job settings travel on, so that new scenes can still be appended to the output.
    job = {"config": template.metadata["provenance"]["config"]} if "config" in template.metadata["provenance"] else {}
    first = _parquet(template.files[0]).metadata
    return ProductWriter(
        out, model=model, grid=template.metadata["grid"], quantization=template.quantization,
        metric=embedding["metric"], normalized=embedding["normalized"], nodata_zero_vector=embedding["nodata_zero_vector"],
        license=template.metadata["license"], overwrite=overwrite,
        source_data_href=None if source in (None, "./sources.json") else source,
        row_group_size=max(1, first.row_group(0).num_rows) if first.num_row_groups else 65536, provenance=job,
        **({"collection_id": collection["id"], "title": collection.get("title"),
            "description": collection.get("description")} if same_product else {}),
    )


# -- selecting rows ---------------------------------------------------------------------------------


def _parquet(path: Any) -> pq.ParquetFile:
    """One data file, opened for reading its footer and chosen row groups (range reads at a URL)."""
    from ._store import open_input

    return pq.ParquetFile(open_input(path), pre_buffer=False)


def _statistics(metadata: pq.FileMetaData, group: int, column: int | None) -> tuple[Any, Any] | None:
    """(min, max) of one leaf column in one row group (raw physical values), None when unknown."""
    if column is None:
        return None
    stats = metadata.row_group(group).column(column).statistics
    return (stats.min_raw, stats.max_raw) if stats is not None and stats.has_min_max else None


def _time_columns(schema: pa.Schema) -> tuple[str, str]:
    return ("datetime", "datetime") if "datetime" in schema.names else ("start_datetime", "end_datetime")


def _groups_that_may_pass(metadata: pq.FileMetaData, schema: pa.Schema, bbox, interval) -> list[int]:
    """Row groups whose footer statistics do not rule out the bbox / time filter."""
    first_time, last_time = _time_columns(schema)
    micros = all(str(schema.field(c).type).startswith("timestamp[us") for c in (first_time, last_time))
    leaf = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
    kept = []
    for group in range(metadata.num_row_groups):
        ok = True
        if bbox is not None:
            stats = {name: _statistics(metadata, group, leaf.get(f"bbox.{name}")) for name in _BBOX_FIELDS}
            if stats["xmax"] and stats["xmax"][1] < bbox[0] or stats["xmin"] and stats["xmin"][0] > bbox[2] \
                    or stats["ymax"] and stats["ymax"][1] < bbox[1] or stats["ymin"] and stats["ymin"][0] > bbox[3]:
                ok = False
        if ok and interval is not None and micros:
            start, stop = (_statistics(metadata, group, leaf.get(name)) for name in (first_time, last_time))
            if interval[0] is not None and stop and stop[1] < interval[0] or interval[1] is not None and start and start[0] > interval[1]:
                ok = False
        if ok:
            kept.append(group)
    return kept


def _row_mask(table: pa.Table, bbox, interval) -> np.ndarray:
    """Rows intersecting ``bbox`` and overlapping ``interval`` (microseconds), as search selects them."""
    keep = np.ones(table.num_rows, dtype=bool)
    if bbox is not None:
        box = table.column("bbox").combine_chunks()
        x0, y0, x1, y1 = (box.field(name).to_numpy(zero_copy_only=False) for name in _BBOX_FIELDS)
        keep &= (x1 >= bbox[0]) & (x0 <= bbox[2]) & (y1 >= bbox[1]) & (y0 <= bbox[3])
    if interval is not None:
        first_time, last_time = _time_columns(table.schema)
        def us(name: str) -> np.ndarray:
            return np.asarray(table.column(name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), dtype=np.int64)
        if interval[0] is not None:
            keep &= us(last_time) >= interval[0]
        if interval[1] is not None:
            keep &= us(first_time) <= interval[1]
    return keep


def read_selected(product: "Product", index: int, *, bbox=None, interval=None, rows: np.ndarray | None = None) -> pa.Table | None:
    """The stored rows of data file ``index`` passing the filters (``rows``: file row numbers that a
    ``where`` kept), reading only row groups that may hold them; None when no row passes."""
    from ._damage import reading

    path = product.files[index]
    with reading(path):
        handle = _parquet(path)
        metadata, schema = handle.metadata, handle.schema_arrow
        offsets = np.concatenate([[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])])
        groups = _groups_that_may_pass(metadata, schema, bbox, interval)
        if rows is not None:
            wanted = set(np.searchsorted(offsets, rows, side="right") - 1)
            groups = [g for g in groups if g in wanted]
        if not groups:
            return None
        table = handle.read_row_groups(groups)
    # Codes are copied, not decoded: decode them once anyway, so damaged vectors are refused here,
    # named by file and row, instead of being published in a product its validator would reject.
    position = 0
    for group in groups:
        size = int(offsets[group + 1] - offsets[group])
        product.decode(table.slice(position, size), source=path, first_row=int(offsets[group]))
        position += size
    keep = _row_mask(table, bbox, interval)
    if rows is not None:
        numbers = np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in groups])
        keep &= np.isin(numbers, rows)
    return table.filter(pa.array(keep)) if not keep.all() else table


def _as_stored(table: pa.Table, source: "Product", target: "Product") -> pa.Table:
    """``table`` of ``source`` with its vectors in ``target``'s stored form: as they are when the
    quantisations agree, else (a float32 source, see :func:`contract_conflict`) quantised with
    ``target``'s parameters."""
    from ._quantize import quantize
    from ._write import _STORED_TYPES

    quant = target.quantization
    if source.metadata["embedding"]["quantization"] == target.metadata["embedding"]["quantization"]:
        return table
    codes, row_scale = quantize(source.decode(table), quant)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(codes).reshape(-1), _STORED_TYPES[quant.dtype]),
                                                quant.stored_width())
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", vectors)
    if row_scale is not None:
        table = table.append_column(quant.scale_column or "scale", pa.array(np.asarray(row_scale, np.float32), pa.float32()))
    return table


def _combined_rows(product: "Product", index: int, keep: np.ndarray, target: "Product") -> pa.Table:
    """The kept rows of one data file, in ``target``'s stored form."""
    table = read_selected(product, index)
    return _as_stored(table if keep.all() else table.filter(pa.array(keep)), product, target)


def _stem(product: "Product", index: int) -> str:
    return product.files[index].stem  # a Path, or a UPath at a URL


def subset(product: "Product | str | os.PathLike", *, out: str | os.PathLike, bbox: Any = None, datetime: Any = None,
           where: str | None = None, params: Sequence[Any] | dict[str, Any] | None = None,
           overwrite: bool = False) -> Path:
    """A new product holding just the chips of ``product`` that intersect ``bbox``, overlap
    ``datetime`` and match ``where`` (one boolean SQL expression over the ``embeddings`` view, values
    bound from ``params``): the same chips as ``search`` / ``query`` with those filters select.

    The model contract, quantisation and stored vectors are kept as they are; each data file with
    selected chips gives one data file of the same name. Index assets are dropped (see the module).
    Raises SpecError when no chip is selected.
    """
    from ._search import parse_bbox, parse_datetime, where_rows

    source = _open(product)
    box, interval = parse_bbox(bbox), parse_datetime(datetime)
    kept = where_rows(source, where, params) if where else None
    # Files whose manifest extent misses the bbox are not opened (at a URL, not even their footer).
    candidates = set(source.files_overlapping(box)) if box is not None else set(range(len(source.files)))
    writer = _writer(source, out, overwrite=overwrite)
    with writer:
        for index in range(len(source.files)):
            if index not in candidates or kept is not None and index not in kept:
                continue
            table = read_selected(source, index, bbox=box, interval=interval, rows=None if kept is None else kept[index])
            if table is not None and table.num_rows:
                writer.write_stored(table, name=_stem(source, index))
        if not writer._files:
            writer.abort()
            raise SpecError(f"no chip of {source.path} matches bbox={bbox!r} datetime={datetime!r} where={where!r}; "
                            "widen the selection (a product needs at least one chip)")
    return writer.path


# -- combining products -------------------------------------------------------------------------------


def _chip_ids(product: "Product") -> list[np.ndarray]:
    """The chip ids of each data file (only that column is read)."""
    from ._damage import reading

    out = []
    for path in product.files:
        with reading(path, column="chip_id"):
            out.append(np.asarray(_parquet(path).read(columns=["chip_id"]).column(0).to_pylist(), dtype=object))
    return out


def _keep_masks(products: Sequence["Product"], ids: Sequence[list[np.ndarray]], rule: str, *,
                advice: str = "pass on_duplicate='first' or 'last' (--on-duplicate) to keep the chip of the first "
                              "or the last product given",
                names: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    """Per product and data file, the rows to keep under the duplicate rule (see :func:`merge`)."""
    if rule not in ON_DUPLICATE:
        raise SpecError(f"on_duplicate {rule!r} is not one of {list(ON_DUPLICATE)}")
    flat = [np.concatenate(parts) if parts else np.zeros(0, object) for parts in ids]
    order = range(len(products)) if rule != "last" else range(len(products) - 1, -1, -1)
    seen: dict[str, int] = {}
    masks: list[list[np.ndarray]] = [[] for _ in products]
    for p in order:
        for part in ids[p]:
            dup = np.fromiter((chip in seen for chip in part), dtype=bool, count=len(part))
            if rule == "error" and dup.any():
                chip = part[int(np.flatnonzero(dup)[0])]
                names = names or [str(product.path) for product in products]
                count = int(np.isin(flat[p], list(seen)).sum())
                raise DuplicateChipError(
                    f"chip id {chip!r} is in both {names[seen[chip]]} and {names[p]} "
                    f"({count} shared chip id(s) in all); {advice}"
                )
            masks[p].append(~dup)
        for chip in flat[p]:
            seen.setdefault(chip, p)
    return masks


def merge(products: Sequence["Product | str | os.PathLike"], *, out: str | os.PathLike,
          on_duplicate: OnDuplicate = "error", overwrite: bool = False) -> Path:
    """One product holding the chips of ``products`` (one model contract, quantisation, grid and
    licence: otherwise ModelContractMismatchError names the differing key).

    A chip id held by more than one input is refused by default (``on_duplicate="error"``): two
    products holding one chip usually mean one scene was produced twice, and silently keeping one
    vector would hide that. ``"first"`` keeps the chip of the earliest product given, ``"last"`` that
    of the latest. Vectors are copied as stored; index assets are dropped.
    """
    opened = [_open(p) for p in products]
    if len(opened) < 2:
        raise SpecError(f"merge needs at least two products, got {len(opened)}")
    contract_conflict(opened)
    masks = _keep_masks(opened, [_chip_ids(p) for p in opened], on_duplicate)
    writer = _writer(opened[0], out, overwrite=overwrite)
    with writer:
        for number, product in enumerate(opened):
            for index, keep in enumerate(masks[number]):
                if keep.any():
                    writer.write_stored(_combined_rows(product, index, keep, opened[0]),
                                        name=f"{number:03d}-{_stem(product, index)}")
    return writer.path


def append(product: "Product | str | os.PathLike", additions: Sequence["Product | str | os.PathLike"], *,
           on_duplicate: Literal["error", "first"] = "error", described_as: Sequence[str] | None = None) -> Path:
    """Add the chips of the products ``additions`` to ``product`` as a new version of it, in place.

    The existing data files are kept as they are (linked into the new version, never rewritten nor
    deleted); the chips added go into new data files; the new manifest, items and collection are
    written beside the product and switched in with one atomic rename, so a reader sees the old
    version or the new one, and a reader that opened the old version keeps reading it (see the
    spec's "Versions"). A chip id already in the product is refused, or with ``on_duplicate="first"``
    skipped (the product's own chip is kept: its files are immutable). ``described_as`` names the
    additions in messages (e.g. the scenes a scratch product was produced from).
    """
    from ._write import file_record

    base = _open(product)
    opened = [_open(p) for p in additions]
    if not opened:
        raise SpecError(f"nothing to append to {base.path}; give at least one product or scene")
    if on_duplicate not in ("error", "first"):
        raise SpecError(f"append takes on_duplicate 'error' or 'first' (keep the product's chip), not {on_duplicate!r}: "
                        "the product's data files are never rewritten")
    contract_conflict([base, *opened])
    masks = _keep_masks([base, *opened], [_chip_ids(p) for p in [base, *opened]], on_duplicate,
                        advice=f"pass on_duplicate='first' (--on-duplicate first) to skip the chips {base.path} holds",
                        names=[str(base.path), *(described_as or [str(p.path) for p in opened])])
    manifest_before = (base.path / "manifest.parquet").read_bytes()
    writer = _writer(base, base.path, overwrite=True, same_product=True)
    tag = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    try:
        records = []
        for rel in base.manifest.column("path").to_pylist():
            target = writer.staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(base.path / rel, target)  # the same immutable file: no copy, no rewrite
            except OSError:
                import shutil

                shutil.copy2(base.path / rel, target)
            records.append(file_record(target, root=writer.staging))
        for number, addition in enumerate(opened, start=1):
            for index, keep in enumerate(masks[number]):
                if keep.any():
                    name = f"{tag}-{number:03d}-{_stem(addition, index)}"
                    records.append(writer.write_stored(_combined_rows(addition, index, keep, base), name=name))
        if len(records) == len(base.files):  # every chip offered is there already: no new version
            writer.abort()
            return base.path

        def unchanged() -> None:
            if (base.path / "manifest.parquet").read_bytes() != manifest_before:
                raise ProductExistsError(f"{base.path} gained another version while appending; run the append again")

        writer.commit(records, before_publish=unchanged)
    except BaseException:
        writer.abort()
        raise
    return writer.path


def recorded_job(product: "Product") -> dict[str, Any]:
    """The producer settings ``product`` was made with (its provenance ``config``), as JobConfig keys."""
    config = product.metadata["provenance"].get("config")
    if not isinstance(config, dict) or "encoder" not in config:
        raise SpecError(
            f"{product.path} records no producer job (it was written or imported, not produced by `eoembed produce`): "
            "produce the new scenes into a product with the same contract and append that product"
        )
    if config.get("stacks"):
        raise SpecError(f"{product.path} was produced from temporal stacks; produce the new stacks into a product "
                        "with the same contract and append that product")
    return config


def append_scenes(product: "Product | str | os.PathLike", inputs: Sequence[str], *, time: Any = None,
                  nodata: float | None = None, on_duplicate: Literal["error", "first"] = "error",
                  progress: bool = False) -> Path:
    """Encode the scenes ``inputs`` with the settings ``product`` was produced with (encoder, bands,
    chip size, stride, grid, alignment, filters) and :func:`append` their chips.

    The scenes are encoded to float32 in a hidden product beside ``product`` (removed afterwards);
    their vectors are then quantised with the product's frozen parameters, as the first run's writer
    stored its own. ``time`` and ``nodata`` are those of ``eoembed produce`` for the new scenes.
    """
    import shutil
    import uuid
    from dataclasses import fields

    from eoembed.producers.distribute import RUN_ONLY_SETTINGS, JobConfig, run_job

    base = _open(product)
    recorded = recorded_job(base)
    settings = {f.name: recorded[f.name] for f in fields(JobConfig)
                if f.name in recorded and f.name not in RUN_ONLY_SETTINGS | {"inputs", "out", "time", "stacks", "nodata"}}
    scratch = base.path.parent / f".{base.path.name}.eoembed-append-{uuid.uuid4().hex[:12]}"
    settings.update(inputs=[str(p) for p in inputs], out=str(scratch), quantization="none", time=time, nodata=nodata,
                    progress=progress, collection_id=base.collection["id"])
    try:
        run_job(JobConfig(**settings))
        return append(base, [scratch], on_duplicate=on_duplicate, described_as=[f"the scenes {', '.join(map(str, inputs))}"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
