"""Planet sample embeddings: GeoParquet 1.0 with ``datetime``, ``geometry`` (chip footprint),
``chip_size`` (pixels), ``embedding`` (list<float>) and per-chip usability percentages
(``nodata_percent``, ``cloud_percent``, ...), as in the geo-embeddings survey's Planet sample.

Known defects of the real sample, reported and repaired only when asked: its ``geo`` metadata
declares EPSG:3857 while the coordinates are lon/lat degrees (``lonlat``), and chips that are all
nodata carry a null vector (``drop-empty``). The model is not named anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import GEO_REPAIRS, imported_contract, median_edge_m, read_geo_source
from ._registry import Importer, ImportPlan, ImportSession, register_importer

SOURCE_URL = "https://github.com/cloudnativegeo/geo-embeddings-survey/tree/main/data/planet"


@register_importer
class PlanetImporter(Importer):
    kind = "planet"
    description = "Planet chip embeddings (GeoParquet: datetime, geometry, chip_size, embedding, *_percent)"
    repairs = GEO_REPAIRS

    def read(self, sources: list[Path], *, session: ImportSession, **options: Any) -> ImportPlan:
        self.refuse_options(options)
        batches, footprints, sizes = [], [], set()
        for path in sources:
            rows = read_geo_source(path, session=session, vector_column="embedding", required=("datetime", "chip_size"))
            table = rows.table
            sizes.update(table.column("chip_size").to_pylist())
            batch = {
                "embedding": rows.vectors,
                "geometry": list(rows.geometry),
                "datetime": table.column("datetime").to_pylist(),
                "source_id": path.stem,
            }
            if "nodata_percent" in table.column_names:
                nodata = np.asarray(table.column("nodata_percent").to_pylist(), dtype=np.float64)
                batch["valid_fraction"] = np.clip(1.0 - np.nan_to_num(nodata, nan=0.0) / 100.0, 0.0, 1.0)
            batches.append(batch)
            footprints.append(rows.geometry)
        sizes.discard(None)
        if len(sizes) > 1:
            raise SourceFormatError(f"chip_size differs between rows ({sorted(sizes)}); one product holds one chip size: "
                                    "import each chip size into its own product")
        model = imported_contract(
            dim=batches[0]["embedding"].shape[1], chip_size_px=int(sizes.pop()) if sizes else None,
            band_source="Planet imagery (not named by the source)", chip_edge_m=median_edge_m(np.concatenate(footprints)),
            source={"format": "planet sample GeoParquet", "url": SOURCE_URL,
                    "stated": "chip_size (pixels) per row; no model name, version or input bands"},
        )
        return ImportPlan(model=model, batches=batches, license="other", description="Planet sample embeddings")
