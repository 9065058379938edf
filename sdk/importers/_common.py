"""What every importer shares: the imported model contract, reading a GeoParquet source with the
validator's diagnosis, pooling embedding rasters into chips, and the one import flow that places
chips on the grid, derives chip ids and writes through :class:`eoembed.ProductWriter`."""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Sequence

import numpy as np

from eoembed._errors import EmptySourceError, ImportOptionError, SourceFormatError, SourceNotFoundError

from ._registry import Importer, ImportPlan, ImportSession, get_importer

UNKNOWN = "unknown"
# Findings of the validator on a foreign file that the import's rewrite makes moot (format, not content).
# Times without a zone are read as UTC (as eoembed reads them on the command line, and noted); row-group
# statistics, grid cells and chip ids are written anew.
_REWRITTEN = frozenset({"GEO001", "GEO002", "GEO004", "GEO005", "GEO006", "GEO009", "GEO010", "JSN004", "IDT004",
                        "IDT007", "IDT008", "IDT009", "STR013", "EMB001", "EMB004", "EMB008"})
_EMPTY_ROW_CODES = frozenset({"EMB002", "GEO012"})
DROP_EMPTY = "drop-empty"
LONLAT = "lonlat"
GEO_REPAIRS = {
    DROP_EMPTY: "drop rows without a vector (null, NaN) or without a footprint",
    LONLAT: "read coordinates as OGC:CRS84 lon/lat when the CRS is null or a projected CRS contradicted by degree values",
}


# -- model contract ---------------------------------------------------------------------------------


def imported_contract(
    *,
    dim: int,
    source: dict[str, Any],
    name: str | None = None,
    version: str | None = None,
    framework: str | None = None,
    weights_sha256: str | None = None,
    weights_href: str | None = None,
    architecture: str | None = None,
    pooling: str | None = None,
    bands: list[dict[str, Any]] | None = None,
    band_source: str = UNKNOWN,
    chip_size_px: int | None = None,
    stride_px: int | None = None,
    gsd_m: float | None = None,
    chip_edge_m: float | None = None,
    normalization: dict[str, Any] | None = None,
    output_description: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The contract of imported vectors: what the source states, placeholders (spec section 4,
    "Imported contracts") for the rest, and ``unknown`` listing every placeholder.

    ``source`` (format, url, what the source says verbatim) goes to ``parameters.source``. A chip
    edge in metres measured from the footprints fills ``gsd_m`` or ``chip_size_px`` when one of
    them is stated, and both (1 px of the edge's size) when neither is, so that their product is
    still the chip's ground size.
    """
    unknown: list[str] = []
    derived: list[str] = []

    def stated(path: str, value: Any, placeholder: Any) -> Any:
        if value is None:
            unknown.append(path)
            return placeholder
        return value

    if chip_edge_m is not None and chip_edge_m > 0:
        if chip_size_px is not None and gsd_m is None:
            gsd_m, derived = float(chip_edge_m) / chip_size_px, derived + ["input.gsd_m"]
        elif gsd_m is not None and chip_size_px is None:
            chip_size_px, derived = max(1, int(round(chip_edge_m / gsd_m))), derived + ["input.chip_size_px"]
    document: dict[str, Any] = {
        "name": stated("name", name, UNKNOWN),
        "version": stated("version", version, UNKNOWN),
        "framework": stated("framework", framework, UNKNOWN),
        "weights_sha256": stated("weights_sha256", weights_sha256, None),
    }
    if weights_href is not None:
        document["weights_href"] = weights_href
    document["architecture"] = stated("architecture", architecture, UNKNOWN)
    document["pooling"] = stated("pooling", pooling, UNKNOWN)
    size = stated("input.chip_size_px", chip_size_px, 1)
    inputs = {
        "bands": stated("input.bands", bands, [{"name": UNKNOWN, "source": band_source}]),
        "chip_size_px": int(size),
        "stride_px": int(stated("input.stride_px", stride_px, size)),
        "gsd_m": float(stated("input.gsd_m", gsd_m, chip_edge_m if chip_size_px is None and chip_edge_m else 1.0)),
        "normalization": stated("input.normalization", normalization,
                                {"method": "custom", "description": "not stated by the source"}),
    }
    document["parameters"] = {"source": dict(source, **({"derived": derived} if derived else {})), **(parameters or {})}
    document["unknown"] = unknown
    document["input"] = inputs
    document["output"] = {"dim": int(dim), "description": output_description or f"vectors as published in {source.get('format')}"}
    return document


def median_edge_m(geometries: np.ndarray) -> float | None:
    """Median footprint edge in metres (the square root of the geodesic area)."""
    import pyproj
    import shapely

    if not len(geometries):
        return None
    geod = pyproj.Geod(ellps="WGS84")
    sample = geometries[:: max(1, len(geometries) // 256)]
    areas = [abs(geod.geometry_area_perimeter(g)[0]) for g in sample if not shapely.is_missing(g)]
    return float(np.sqrt(np.median(areas))) if areas else None


# -- GeoParquet sources -----------------------------------------------------------------------------


@dataclass
class GeoRows:
    """The rows of a GeoParquet source that go into the product, footprints already in OGC:CRS84."""

    path: Path
    table: Any  # pyarrow.Table of the kept rows
    geometry: np.ndarray  # shapely geometries
    vectors: np.ndarray  # float32 (n, D)
    metadata: dict[bytes, bytes] = field(default_factory=dict)


def read_geo_source(path: Path, *, session: ImportSession, vector_column: str, required: Sequence[str] = ()) -> GeoRows:
    """Read a GeoParquet file of vectors; its content defects come from the eoembed validator and
    are recorded on ``session`` (``drop-empty`` and ``lonlat`` repair them when asked)."""
    import pyarrow.parquet as pq
    import pyproj
    import shapely

    from eoembed._validate import validate

    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    missing = [c for c in (*required, vector_column) if c not in schema.names]
    if missing:
        raise SourceFormatError(f"{path} has no column(s) {missing} (it has {schema.names}); is it a {session.kind} file?")
    if handle.metadata.num_rows == 0:
        raise EmptySourceError(f"{path} holds no rows (only a schema): there is nothing to import, and a product "
                               "needs at least one chip; import a file with rows")
    metadata = dict(schema.metadata or {})
    table = handle.read()
    geo = json.loads(metadata.get(b"geo", b"{}") or b"{}")
    geometry_column = geo.get("primary_column", "geometry")
    if geometry_column not in table.column_names:
        raise SourceFormatError(f"{path} has no geometry column {geometry_column!r}; every chip needs a footprint")
    crs_json = (geo.get("columns", {}).get(geometry_column) or {}).get("crs", "OGC:CRS84")
    crs = None if crs_json is None else (
        pyproj.CRS.from_json_dict(crs_json) if isinstance(crs_json, dict) else pyproj.CRS(crs_json))

    geometry = shapely.from_wkb(table.column(geometry_column).to_numpy(zero_copy_only=False), on_invalid="ignore")
    vectors, empty = _vectors(path, table.column(vector_column))
    empty |= shapely.is_missing(geometry)

    as_lonlat = False
    for finding in validate(path).errors:
        if finding.code in _REWRITTEN:
            if finding.code == "IDT007":
                session.note(f"{path.name}: {finding.message.split(';')[0]}: read as UTC")
            continue
        where = f"row {finding.row}: " if finding.row is not None else ""
        if finding.code in _EMPTY_ROW_CODES:
            session.defect(path, f"{where}{finding.message}", repair=DROP_EMPTY)
        elif (finding.code == "GEO003" and crs is None or finding.code == "GEO007" and crs is not None
              and crs.is_projected) and _degree_like(geometry[~empty]):
            as_lonlat = session.defect(path, finding.message, repair=LONLAT)
        else:
            session.defect(path, f"{finding.code} {where}{finding.message}")
    if empty.any() and DROP_EMPTY in session.repair:
        session.note(f"{path.name}: dropped {int(empty.sum())} of {len(empty)} rows without a vector or footprint "
                     f"(rows {np.flatnonzero(empty)[:10].tolist()})")
        keep = ~empty
        table, geometry, vectors = table.filter(keep), geometry[keep], vectors[keep]
    # GeoParquet coordinates are lon, lat whatever the axis order of the CRS: EPSG:4326 needs no change.
    if crs is not None and not as_lonlat and not crs.equals(pyproj.CRS("OGC:CRS84"), ignore_axis_order=True):
        to_crs84 = pyproj.Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
        geometry = shapely.transform(geometry, lambda xy: np.column_stack(to_crs84.transform(xy[:, 0], xy[:, 1])))
        session.note(f"{path.name}: footprints reprojected from {crs.name} to OGC:CRS84")
    return GeoRows(path=path, table=table, geometry=geometry, vectors=vectors, metadata=metadata)


def _vectors(path: Path, column) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, D) vectors of a list column (NaN rows where null) and the mask of rows without a usable vector."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    nulls = np.asarray(column.is_null(), dtype=bool)
    lengths = np.full(len(column), column.type.list_size) if pa.types.is_fixed_size_list(column.type) else \
        pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    present = lengths[~nulls]
    if not len(present):
        raise EmptySourceError(f"{path}: every vector is null; there is nothing to import")
    dim = int(present[0])
    if (present != dim).any():
        row = int(np.flatnonzero(~nulls & (lengths != dim))[0])
        raise SourceFormatError(f"{path} row {row}: the vector has {lengths[row]} values, earlier rows {dim}; "
                                "one product holds vectors of one dimension")
    out = np.full((len(column), dim), np.nan, dtype=np.float32)
    values = column.filter(pa.array(~nulls)).flatten().to_numpy(zero_copy_only=False)
    out[~nulls] = np.asarray(values, dtype=np.float32).reshape(-1, dim)
    return out, nulls | ~np.isfinite(out).all(axis=1)


def _degree_like(geometry: np.ndarray) -> bool:
    import shapely

    bounds = shapely.bounds(geometry)
    return bool(len(bounds)) and bool((np.abs(bounds[:, [0, 2]]) <= 180).all() and (np.abs(bounds[:, [1, 3]]) <= 90).all())


# -- embedding rasters ------------------------------------------------------------------------------


def pooled_chips(*, path: Path, width: int, height: int, transform, crs: str, chip_size: int,
                 read_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]], time: Any,
                 source_id: str) -> dict[str, Any] | None:
    """Chips of ``chip_size`` x ``chip_size`` pixels of an embedding raster, each the mean of its
    valid pixels' vectors. ``read_rows(row0, row1)`` gives float32 (rows, width, D) vectors and a
    bool (rows, width) validity mask. Chips without a valid pixel are left out; None when no chip is."""
    from eoembed.producers.read import Scene
    from eoembed.producers.tile import ChipWindow, _native_bounds, _windows_array, footprint_polygons_lonlat

    scene = Scene(path=str(path), crs=crs, transform=transform, width=width, height=height, count=0, band_names=(),
                  dtype="float32", nodata=None, datetime=None, res=(abs(transform.a), abs(transform.e)))
    vectors, fractions, windows = [], [], []
    cols = width // chip_size
    for row0 in range(0, height - chip_size + 1, chip_size):
        pixels, valid = read_rows(row0, row0 + chip_size)
        dim = pixels.shape[-1]
        blocks = pixels[:, : cols * chip_size].reshape(chip_size, cols, chip_size, dim).transpose(1, 0, 2, 3).reshape(cols, -1, dim)
        mask = valid[:, : cols * chip_size].reshape(chip_size, cols, chip_size).transpose(1, 0, 2).reshape(cols, -1)
        counts = mask.sum(axis=1)
        sums = np.einsum("cpd,cp->cd", np.where(mask[..., None], blocks, 0.0).astype(np.float64), mask.astype(np.float64))
        for col in np.flatnonzero(counts):
            vectors.append((sums[col] / counts[col]).astype(np.float32))
            fractions.append(counts[col] / mask.shape[1])
            windows.append(ChipWindow(int(col) * chip_size, row0, chip_size))
    if not windows:
        return None
    import shapely

    native = _native_bounds(scene, _windows_array(windows))
    return {
        "embedding": np.stack(vectors),
        "geometry": footprint_polygons_lonlat(scene, windows),
        **time_columns(time),
        "source_id": source_id,
        "pixel_bbox": np.array([(w.col_off, w.row_off, w.col_off + w.size, w.row_off + w.size) for w in windows]),
        "native_crs": crs,
        "native_footprint": list(shapely.box(native[:, 0], native[:, 1], native[:, 2], native[:, 3])),
        "valid_fraction": np.asarray(fractions, dtype=np.float32),
    }


@dataclass
class EmbeddingTile:
    """One open embedding raster: its pixel grid, time and a reader of pixel vectors by rows
    (``read_rows(row0, row1)`` -> float32 (rows, width, D) vectors, bool (rows, width) validity),
    and for formats whose codes are a pixel storage form, a reader of the codes themselves."""

    width: int
    height: int
    transform: Any
    crs: str
    time: Any
    read_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    #: the stored codes by rows, for a pixel-level import that keeps them as they are:
    #: ``read_codes(row0, row1)`` -> codes (rows, width, W) with pixels without data all -128, and the
    #: float32 per-pixel scales (1.0 without data) or None; ``quantization`` says how they de-quantise
    read_codes: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]] | None = None
    quantization: Any = None


class PooledTileImporter(Importer):
    """Importers of pixel-embedding rasters, pooled into chips of ``chip_size`` pixels (mean of the
    valid pixels); subclasses say how to open a tile and what its model states."""

    dim: ClassVar[int]
    model_name: ClassVar[str | None] = None
    model_version: ClassVar[str | None] = None
    band_source: ClassVar[str] = UNKNOWN
    pixel_vectors: ClassVar[str] = "pixel vectors"
    source: ClassVar[dict[str, Any]] = {}
    license: ClassVar[str] = "other"
    #: options of :meth:`open_tile` besides ``datetime``
    tile_options: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def open_tile(self, path: Path, *, session: ImportSession, datetime: Any, **options: Any) -> ContextManager[EmbeddingTile]:
        """Open one tile for reading; refuse (SourceFormatError) what is not a tile of this format."""

    def read(self, sources: list[Path], *, session: ImportSession, chip_size: int = 16, datetime: Any = None,
             **options: Any) -> ImportPlan:
        tile_options = {k: options.pop(k) for k in self.tile_options if k in options}
        self.refuse_options(options, takes=("chip_size", "datetime", *self.tile_options))
        batches, gsds = [], set()
        for path in sources:
            with self.open_tile(path, session=session, datetime=datetime, **tile_options) as tile:
                gsds.add(round(abs(tile.transform.a), 6))
                batch = pooled_chips(path=path, width=tile.width, height=tile.height, transform=tile.transform, crs=tile.crs,
                                     chip_size=chip_size, read_rows=tile.read_rows, time=tile.time, source_id=path.stem)
            if batch is None:
                session.note(f"{path.name}: no {chip_size} x {chip_size} chip holds a valid pixel")
            else:
                batches.append(batch)
        if len(gsds) > 1:
            raise SourceFormatError(f"tiles have pixel sizes {sorted(gsds)} m; one product holds one chip geometry")
        model = imported_contract(
            dim=self.dim, name=self.model_name, version=self.model_version, chip_size_px=chip_size, stride_px=chip_size,
            gsd_m=float(gsds.pop()), pooling="mean", band_source=self.band_source, source=dict(self.source),
            output_description=f"mean of the valid pixels' {self.dim}-d {self.pixel_vectors} over each chip",
            parameters={"pooling": pooling_record(chip_size=chip_size, of=self.pixel_vectors)},
        )
        return ImportPlan(model=model, batches=batches, license=self.license, normalized=False,
                          description=f"{self.model_name or self.kind} embeddings pooled into chips")


def time_columns(time: Any) -> dict[str, Any]:
    """Writer time columns for a datetime or a (start, end) pair."""
    return {"start_datetime": time[0], "end_datetime": time[1]} if isinstance(time, tuple) else {"datetime": time}


def pooling_record(*, chip_size: int, of: str) -> dict[str, Any]:
    """How pixel vectors became chip vectors, for ``model.parameters.pooling``."""
    return {"method": "mean", "window_px": chip_size, "stride_px": chip_size, "of": of,
            "invalid_pixels": "left out of the mean; chips without a valid pixel are left out",
            "reason": "pixel-level products are not yet part of the spec; chips pool the pixels they cover"}


def time_option(value: Any, *, path: Path, what: str) -> Any:
    """A datetime or (start, end) from an option (datetime, ISO text, 'START/END' or a year)."""
    from datetime import timezone

    from .._when import parse_instant

    def one(text: Any) -> datetime:
        if isinstance(text, datetime):
            return text if text.tzinfo else text.replace(tzinfo=timezone.utc)
        return parse_instant(str(text))

    if value is None:
        raise SourceFormatError(f"{path} does not say when its {what} were observed; pass datetime=ISO or START/END "
                                "(--option datetime=2023-01-01/2023-12-31)")
    if isinstance(value, tuple):
        return one(value[0]), one(value[1])
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and len(value) == 4):
        year = int(value)
        return one(f"{year}-01-01T00:00:00"), one(f"{year}-12-31T23:59:59")
    if isinstance(value, str) and "/" in value:
        start, end = value.split("/", 1)
        return one(start), one(end)
    return one(value)


# -- the import flow ---------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import wrote and what it found in its sources."""

    path: Path
    kind: str
    rows: int
    sources: list[str]
    defects: list[dict[str, Any]]
    notes: list[str]
    unknown: list[str]

    def __str__(self) -> str:
        lines = [f"imported {self.rows} chips from {len(self.sources)} {self.kind} file(s) into {self.path}"]
        lines += [f"  repaired: {d['source']}: {d['defect']} ({d['repair']})" for d in self.defects if d["repaired"]]
        lines += [f"  note: {n}" for n in self.notes]
        if self.unknown:
            lines.append(f"  not stated by the source (model.unknown): {', '.join(self.unknown)}")
        return "\n".join(lines)


def import_product(
    kind: str,
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    grid: str | None = None,
    repair: Sequence[str] = (),
    quantization: str = "none",
    metric: str = "cosine",
    normalize: bool = False,
    license: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> ImportReport:
    """Import third-party embedding files of one ``kind`` (see :func:`list_importers`) into a new product.

    Defects of the sources are reported; each is repaired only when its repair name is in
    ``repair``, otherwise the import is refused with a :class:`SourceDefectError` listing them.
    ``options`` go to the importer (e.g. ``chip_size`` for pooled rasters, ``datetime``).
    """
    from eoembed._write import write_product

    importer = get_importer(kind)
    asked = frozenset(repair)
    unknown_repairs = sorted(asked - set(importer.repairs))
    if unknown_repairs:
        raise ImportOptionError(f"{kind} import has no repair {unknown_repairs}; its repairs are "
                        f"{', '.join(f'{k} ({v})' for k, v in importer.repairs.items()) or '(none)'}")
    paths = [Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not paths:
        raise SourceNotFoundError(f"{kind} import: no source files given")
    for path in paths:
        if not path.exists():
            raise SourceNotFoundError(f"{path} does not exist; check the path of the {kind} file")
    session = ImportSession(kind=kind, repair=asked)
    plan = importer.read(paths, session=session, **options)
    session.refuse_unrepaired()
    batches = [b for b in plan.batches if len(b["embedding"])]
    if not batches:
        raise EmptySourceError(f"{', '.join(map(str, paths))}: no rows are left to import; a product needs at least one chip")
    grid_id = plan.grid or grid or "majortom-10km"
    _place(batches, grid_id=grid_id, chip_size=plan.model["input"]["chip_size_px"])
    normalized = plan.normalized
    if normalized is None:
        norms = np.concatenate([np.linalg.norm(np.asarray(b["embedding"], np.float64), axis=1) for b in batches])
        normalized = bool(np.abs(norms - 1).max() <= 1e-3)
        if not normalized and not normalize:
            session.note(f"vectors are not unit length (L2 norm {norms.min():.4g} to {norms.max():.4g}); "
                         "written as published with normalized=false (pass normalize=True to normalise)")
    record = {"kind": kind, "sources": [p.name for p in paths], "repairs": sorted(asked),
              "defects": session.defects, "notes": session.notes, "options": _jsonable(options)}
    written = write_product(
        out, batches, model=plan.model, grid=grid_id, quantization=quantization, metric=metric, normalize=normalize,
        normalized=normalized and not normalize, license=license or plan.license, overwrite=overwrite,
        provenance={"config": {"import": record}},
        description=f"{plan.description or kind} imported with eoembed from {', '.join(p.name for p in paths)}; "
                    f"model fields the source does not state: {', '.join(plan.model['unknown']) or 'none'}.",
    )
    rows = sum(len(b["embedding"]) for b in batches)
    return ImportReport(path=written, kind=kind, rows=rows, sources=[str(p) for p in paths], defects=session.defects,
                        notes=session.notes, unknown=list(plan.model["unknown"]))


def _place(batches: list[dict[str, Any]], *, grid_id: str, chip_size: int) -> None:
    """Fill ``grid_cell`` (the cell of the bbox centre) and ``chip_id`` of every batch; refuse repeated chips."""
    from eoembed._chipid import chip_ids, footprint_chip_ids
    from eoembed._geometry import to_wkb
    from eoembed._grid import get_grid

    grid = get_grid(grid_id)
    seen: dict[str, int] = {}
    first = 0
    for batch in batches:
        wkb, bounds, _ = to_wkb(batch["geometry"]) if "geometry" in batch else (None, np.asarray(batch["bounds"]), None)
        if wkb is not None:
            batch["geometry"] = wkb
        n = len(bounds)
        if "grid_cell" not in batch:
            cx = (bounds[:, 0] + bounds[:, 2]) / 2
            cy = (bounds[:, 1] + bounds[:, 3]) / 2
            batch["grid_cell"] = [str(c) for c in grid.cell_of(cx, cy)]
        sources = _broadcast(batch["source_id"], n)
        times = (_broadcast(batch["datetime"], n) if "datetime" in batch else
                 list(zip(_broadcast(batch["start_datetime"], n), _broadcast(batch["end_datetime"], n))))
        if "pixel_bbox" in batch:
            pixel = np.asarray(batch["pixel_bbox"], dtype=np.int64).reshape(-1, 4)
            ids = chip_ids(grid_id=grid_id, grid_cells=batch["grid_cell"], col_offs=pixel[:, 0], row_offs=pixel[:, 1],
                           chip_size=chip_size, times=times, source_ids=sources)
        else:
            ids = footprint_chip_ids(grid_id=grid_id, grid_cells=batch["grid_cell"], bounds=bounds, times=times,
                                     source_ids=sources)
        for i, chip in enumerate(ids):
            if chip in seen:
                raise SourceFormatError(
                    f"chips {seen[chip]} and {first + i} are the same chip (same footprint, time and source "
                    f"{sources[i]!r}); a product holds each chip once: remove the repeated row from the source")
            seen[chip] = first + i
        batch["chip_id"] = ids
        first += n


def _broadcast(value: Any, n: int) -> list[Any]:
    if isinstance(value, (str, bytes, datetime)) or np.ndim(value) == 0:
        return [value] * n
    return list(value)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, default=str))
