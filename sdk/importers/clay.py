"""Clay v0 embeddings: GeoParquet 1.0 ``.gpq`` files of the Clay Model v0.1 (source.coop
``clay/clay-model-v0-embeddings``), one file per MGRS tile and date.

Columns: ``index`` (sub-window of the MGRS tile), ``source_url`` (the Clay tile GeoTIFF),
``date``, ``embeddings`` (list<float>, 768 values, not unit length) and ``geometry`` (tile
footprint, OGC:CRS84). The files say nothing of the model beyond the vectors; the model name and
version come from the data set's description, everything else is recorded as unknown.
"""

from __future__ import annotations

from datetime import datetime, time, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._common import GEO_REPAIRS, imported_contract, median_edge_m, read_geo_source
from ._registry import Importer, ImportPlan, ImportSession, register_importer

SOURCE_URL = "https://beta.source.coop/clay/clay-model-v0-embeddings/"


@register_importer
class ClayImporter(Importer):
    kind = "clay"
    description = "Clay v0 chip embeddings (.gpq GeoParquet: embeddings, date, source_url, geometry)"
    repairs = GEO_REPAIRS

    def read(self, sources: list[Path], *, session: ImportSession, model_version: str = "0.1", **options: Any) -> ImportPlan:
        self.refuse_options(options, takes=("model_version",))
        batches, footprints = [], []
        for path in sources:
            rows = read_geo_source(path, session=session, vector_column="embeddings", required=("date", "source_url"))
            dates = rows.table.column("date").to_pylist()
            batches.append({
                "embedding": rows.vectors,
                "geometry": list(rows.geometry),
                "datetime": [datetime.combine(d, time(0), tzinfo=timezone.utc) for d in dates],
                "source_id": rows.table.column("source_url").to_pylist(),
            })
            footprints.append(rows.geometry)
        model = imported_contract(
            dim=batches[0]["embedding"].shape[1], name="clay", version=model_version,
            band_source="Clay v0 tiles (the GeoTIFF of each row's source_url)",
            chip_edge_m=median_edge_m(np.concatenate(footprints)),
            source={"format": "clay-v0 GeoParquet", "url": SOURCE_URL,
                    "stated": "model name and version by the data set's description; nothing in the files"},
        )
        return ImportPlan(model=model, batches=batches, license="ODC-By-1.0", description="Clay v0.1 embeddings")
