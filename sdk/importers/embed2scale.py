"""Embed2Scale challenge submissions: the CSV ``id,0,...,1023`` read by
:func:`eoembed.read_embed2scale`, one 1024-wide row per sample, narrower embeddings zero-padded.

The CSV says nothing of where a sample is, nor of the model; the sample footprints come from
``footprints=`` (a GeoParquet, GeoPackage or GeoJSON file with an ``id`` column matching the CSV,
a geometry with a CRS and optionally a ``datetime`` column), the time from that column or
``datetime=``. Trailing columns that are zero in every row are reported as padding and dropped
only with ``dim=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import imported_contract, median_edge_m, time_columns, time_option
from ._registry import Importer, ImportPlan, ImportSession, register_importer

SOURCE_URL = "https://eval.ai/web/challenges/challenge-page/2465/overview"


@register_importer
class Embed2ScaleImporter(Importer):
    kind = "embed2scale"
    description = "Embed2Scale submission CSV (id,0..1023) with sample footprints from a vector file"

    def read(self, sources: list[Path], *, session: ImportSession, footprints: str | None = None, datetime: Any = None,
             dim: int | None = None, **options: Any) -> ImportPlan:
        from eoembed._embed2scale import read_embed2scale
        from eoembed._labels import _geopandas

        self.refuse_options(options, takes=("footprints", "datetime", "dim"))
        if footprints is None:
            raise SourceFormatError("an Embed2Scale CSV holds no locations; pass footprints=FILE (GeoParquet, GeoPackage or "
                                    "GeoJSON with an 'id' column and the sample footprints)")
        places = _geopandas().read_file(footprints) if not str(footprints).endswith(".parquet") else \
            _geopandas().read_parquet(footprints)
        if "id" not in places.columns:
            raise SourceFormatError(f"{footprints} has no 'id' column (it has {list(places.columns)}); it must name the CSV's samples")
        if places.crs is None:
            raise SourceFormatError(f"{footprints} declares no CRS; set one (e.g. EPSG:4326) so the footprints can be placed")
        places = places.to_crs("OGC:CRS84").set_index(places["id"].astype(str))
        batches = []
        for path in sources:
            ids, vectors = read_embed2scale(path)
            if not ids:
                raise SourceFormatError(f"{path} holds no samples; there is nothing to import")
            zero = ~vectors.any(axis=0)
            padding = len(zero) - int(np.flatnonzero(~zero)[-1]) - 1 if (~zero).any() else 0
            if padding and dim is None:
                session.note(f"{path.name}: the last {padding} columns are zero in every row (padding of a "
                             f"{len(zero) - padding}-d embedding?); pass dim={len(zero) - padding} to drop them")
            if dim is not None:
                if not 1 <= dim <= vectors.shape[1] or vectors[:, dim:].any():
                    raise SourceFormatError(f"dim={dim} would drop non-zero values of {path}; the padding starts at column "
                                            f"{len(zero) - padding}")
                vectors = vectors[:, :dim]
            missing = [i for i in ids if i not in places.index]
            if missing:
                raise SourceFormatError(f"{len(missing)} samples of {path} have no footprint in {footprints} (first: {missing[:5]})")
            rows = places.loc[ids]
            if "datetime" in rows.columns and datetime is None:
                times: dict[str, Any] = {"datetime": [time_option(t, path=path, what="samples") for t in rows["datetime"]]}
            else:
                times = time_columns(time_option(datetime, path=path, what="samples"))
            batches.append({"embedding": vectors, "geometry": list(rows.geometry.values), "source_id": path.stem, **times})
        model = imported_contract(
            dim=batches[0]["embedding"].shape[1], band_source="Embed2Scale SSL4EO-S12 cubes (not named by the CSV)",
            chip_edge_m=median_edge_m(np.concatenate([np.asarray(b["geometry"], dtype=object) for b in batches])),
            source={"format": "Embed2Scale submission CSV", "url": SOURCE_URL,
                    "stated": "sample ids and vectors only; footprints from the given file"},
        )
        return ImportPlan(model=model, batches=batches, license="other", description="Embed2Scale submission")
