"""Major TOM embedding shards (ESA Phi-lab, e.g. ``Core-S2L1C-SSL4EO``, ``Core-S2RGB-DINOv2``):
Parquet written by Major TOM's ``MajorTOM_Embedder``, one row per fragment of a grid cell's image.

Columns: ``unique_id`` (SHA-256 of geometry, time, product *and vector*), ``embedding``,
``timestamp``, ``product_id`` (the Sentinel product), ``grid_cell`` (Major TOM 10 km cell of the
image, e.g. ``123U_456R``), ``grid_row_u``, ``grid_col_r``, ``geometry`` (fragment footprint in
WGS84), ``utm_footprint`` (WKT in ``utm_crs``), ``utm_crs`` and ``pixel_bbox`` (``[x, y, x + h,
y + w]`` in the image's pixels). Fragments overlap (Major TOM targets 10 % overlap and shifts the
border fragments), so the stride is not stated. The shards do not name their model: the data set's
name does, and is given as ``model_name`` (and ``model_version``) by the user.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import SourceFormatError
from eoembed._when import parse_instant

from ._common import GEO_REPAIRS, imported_contract, read_geo_source
from ._registry import Importer, ImportPlan, ImportSession, register_importer

COLUMNS = ("unique_id", "timestamp", "product_id", "grid_cell", "grid_row_u", "grid_col_r", "utm_footprint", "utm_crs",
           "pixel_bbox")
SOURCE_URL = "https://huggingface.co/Major-TOM"
GRID = "majortom-10km"


@register_importer
class MajorTomImporter(Importer):
    kind = "majortom"
    description = "Major TOM embedding shards (Parquet: unique_id, embedding, timestamp, product_id, grid_cell, ...)"
    repairs = GEO_REPAIRS

    def read(self, sources: list[Path], *, session: ImportSession, model_name: str | None = None,
             model_version: str | None = None, **options: Any) -> ImportPlan:
        import shapely
        from shapely import wkt

        from eoembed._grid import get_grid

        self.refuse_options(options, takes=("model_name", "model_version"))
        grid = get_grid(GRID)
        batches, sizes, gsds = [], set(), []
        for path in sources:
            rows = read_geo_source(path, session=session, vector_column="embedding", required=COLUMNS)
            table = rows.table
            cells = [str(c) for c in table.column("grid_cell").to_pylist()]
            for row, (cell, row_u, col_r) in enumerate(zip(cells, table.column("grid_row_u").to_pylist(),
                                                           table.column("grid_col_r").to_pylist())):
                if grid.parse(cell) != (int(row_u), int(col_r)):
                    session.defect(path, f"row {row}: grid_cell {cell!r} disagrees with grid_row_u {row_u}, grid_col_r {col_r}")
                    break
            pixel = np.asarray(table.column("pixel_bbox").to_pylist(), dtype=np.int64).reshape(-1, 4)
            sizes.update(set((pixel[:, 2] - pixel[:, 0]).tolist()) | set((pixel[:, 3] - pixel[:, 1]).tolist()))
            utm = [wkt.loads(t) if isinstance(t, str) else shapely.from_wkb(t) for t in table.column("utm_footprint").to_pylist()]
            utm_bounds = shapely.bounds(np.asarray(utm, dtype=object))
            gsds.append((utm_bounds[:, 2] - utm_bounds[:, 0]) / np.maximum(pixel[:, 2] - pixel[:, 0], 1))
            centre_cells = grid.cell_of(*(shapely.get_coordinates(shapely.centroid(rows.geometry)).T))
            outside = int((np.asarray(centre_cells, dtype=object) != np.asarray(cells, dtype=object)).sum())
            if outside:
                session.note(f"{path.name}: {outside} fragments have their centre outside their image's grid_cell "
                             "(Major TOM images overlap their neighbours); grid_cell is the cell of the centre, as the spec says")
            batches.append({
                "embedding": rows.vectors,
                "geometry": list(rows.geometry),
                "datetime": [_timestamp(path, i, t) for i, t in enumerate(table.column("timestamp").to_pylist())],
                # A fragment is cut from the image of one cell of one Sentinel product.
                "source_id": [f"{c}/{p}" for c, p in zip(cells, table.column("product_id").to_pylist())],
                "grid_cell": [str(c) for c in centre_cells],
                "pixel_bbox": pixel,
                "native_crs": [str(c) for c in table.column("utm_crs").to_pylist()],
                "native_footprint": utm,
            })
        if len(sizes) != 1:
            raise SourceFormatError(f"fragments of {sorted(sizes)} pixels; one product holds one chip size (and square chips): "
                                    "import each fragment size separately")
        gsd = np.concatenate(gsds)
        model = imported_contract(
            dim=batches[0]["embedding"].shape[1], name=model_name, version=model_version, chip_size_px=int(sizes.pop()),
            gsd_m=float(np.median(gsd)), band_source="Major TOM image of the row's product_id (bands set by the data set)",
            source={"format": "Major TOM embedding shard", "url": SOURCE_URL,
                    "stated": {"in the files": "fragment size (pixel_bbox), UTM footprint, grid cell, product, time",
                               "by the user": {k: v for k, v in (("model_name", model_name), ("model_version", model_version)) if v}}},
        )
        return ImportPlan(model=model, batches=batches, license="other", grid=GRID,
                          description=f"Major TOM {model_name or ''} embeddings".replace("  ", " "))


def _timestamp(path: Path, row: int, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value)
    try:
        return parse_instant(text)
    except ValueError:
        pass
    try:  # Major TOM's compact form
        return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise SourceFormatError(f"{path} row {row}: timestamp {text!r} is not a time (expected ISO 8601 or YYYYMMDDTHHMMSS)") from None
