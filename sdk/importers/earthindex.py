"""Earth Index embeddings (Earth Genome): GeoParquet 1.0 files per MGRS tile with ``id``,
``embedding`` (fixed_size_list<float>[384]) and ``geometry``, and the embedding metadata as JSON
under the footer key ``emb`` (version 0.0.1: model id, version, family, name, config, source;
licence; datetime with a start/end range; source data sets; dim and quantisation).

The real sample ``21MNT.parquet`` holds the schema and metadata but no row: importing it is refused
with :class:`EmptySourceError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import SourceFormatError

from ._common import GEO_REPAIRS, imported_contract, median_edge_m, read_geo_source
from ._registry import Importer, ImportPlan, ImportSession, register_importer

FOOTER_KEY = b"emb"
SOURCE_URL = "https://github.com/cloudnativegeo/geo-embeddings-survey/tree/main/data/earth_index"


@register_importer
class EarthIndexImporter(Importer):
    kind = "earthindex"
    description = "Earth Index tile embeddings (GeoParquet: id, embedding, geometry; footer key 'emb')"
    repairs = GEO_REPAIRS

    def read(self, sources: list[Path], *, session: ImportSession, **options: Any) -> ImportPlan:
        self.refuse_options(options)
        batches, footprints, metadata = [], [], None
        for path in sources:
            rows = read_geo_source(path, session=session, vector_column="embedding", required=("id",))
            emb = _emb_metadata(path, rows.metadata)
            if metadata is not None and emb.get("model") != metadata.get("model"):
                raise SourceFormatError(f"{path} was made by model {emb.get('model')}, earlier files by {metadata.get('model')}; "
                                        "one product holds one model: import them separately")
            metadata = emb
            declared = (emb.get("embedding") or {}).get("dim")
            if declared is not None and int(declared) != rows.vectors.shape[1]:
                session.defect(path, f"'emb' declares dim {declared} but the vectors have {rows.vectors.shape[1]} values")
            time = ({"start_datetime": emb["start_datetime"], "end_datetime": emb["end_datetime"]}
                    if emb.get("start_datetime") and emb.get("end_datetime") else {"datetime": emb.get("datetime")})
            if None in time.values():
                raise SourceFormatError(f"{path}: the 'emb' metadata gives no datetime nor start/end_datetime; every chip needs a time")
            # The file is one MGRS tile's mosaic: the tile (file stem) is the source of its chips.
            batches.append({"embedding": rows.vectors, "geometry": list(rows.geometry), "source_id": path.stem, **time})
            footprints.append(rows.geometry)
        model_meta = metadata.get("model") or {}
        config = str(model_meta.get("config", ""))
        datasets = metadata.get("datasets") or []
        model = imported_contract(
            dim=batches[0]["embedding"].shape[1], name=model_meta.get("id"), version=model_meta.get("version"),
            architecture=model_meta.get("family"),
            pooling="cls" if "class token" in config.lower() else None,
            band_source="; ".join(d.get("name") or d.get("source", "") for d in datasets) or "unknown",
            chip_edge_m=median_edge_m(np.concatenate(footprints)),
            output_description=config or None,
            source={"format": "earth-index GeoParquet ('emb' footer 0.0.1)", "url": model_meta.get("source", SOURCE_URL),
                    "stated": metadata},
        )
        quantization = str((metadata.get("embedding") or {}).get("quantization", "None"))
        if quantization.lower() not in ("none", ""):
            session.note(f"the source declares quantization {quantization!r}; vectors are imported as the float values stored")
        return ImportPlan(model=model, batches=batches, license=metadata.get("license") or "other",
                          description=f"Earth Index {model_meta.get('name', '')} embeddings".strip())


def _emb_metadata(path: Path, metadata: dict[bytes, bytes]) -> dict[str, Any]:
    if FOOTER_KEY not in metadata:
        raise SourceFormatError(f"{path} has no '{FOOTER_KEY.decode()}' footer key; Earth Index files keep their model metadata there")
    try:
        return json.loads(metadata[FOOTER_KEY])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceFormatError(f"{path}: the '{FOOTER_KEY.decode()}' footer is not JSON ({error})") from error
