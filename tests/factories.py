"""Products made by code for tests: small, seeded, realistic enough to exercise every column."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

QUANTIZATIONS = ["none", "float16", "int8", "int8-per-dimension", "int8-per-row", "sqrt", "binary"]
# Largest element error of each stored form against float32 for unit vectors of dim 32..128.
TOLERANCE = {"none": 0.0, "float16": 1e-3, "int8": 2e-2, "int8-per-dimension": 2e-2, "int8-per-row": 2e-2, "sqrt": 3e-2}


def model_contract(dim: int = 32, *, name: str = "test-encoder", bands: int = 3) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "framework": "numpy",
        "weights_sha256": None,
        "architecture": "random projection",
        "pooling": "mean",
        "input": {
            "bands": [{"name": f"B{i + 1}", "source": "synthetic"} for i in range(bands)],
            "chip_size_px": 16,
            "stride_px": 16,
            "gsd_m": 10.0,
            "normalization": {"method": "none"},
        },
        "output": {"dim": dim},
    }


def chips(n: int = 500, dim: int = 32, *, seed: int = 0, first: int = 0, unit: bool = True) -> dict[str, Any]:
    """A batch of n chips near Raleigh, NC, with every optional column."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    if unit:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lon = rng.uniform(-78.8, -78.6, n)
    lat = rng.uniform(35.6, 35.8, n)
    size = 0.0015
    base = datetime(2020, 5, 18, tzinfo=timezone.utc)
    cols = rng.integers(0, 100, n) * 16
    rows = rng.integers(0, 100, n) * 16
    return {
        "embedding": vectors,
        "bounds": np.stack([lon, lat, lon + size, lat + size], axis=1),
        "datetime": [base + timedelta(days=int(d)) for d in rng.integers(0, 30, n)],
        "source_id": [f"scene-{i % 3}" for i in range(n)],
        "grid_cell": [f"397U_{712 + i % 2}L" for i in range(n)],
        "chip_id": [f"chip-{first + i:07d}" for i in range(n)],
        "pixel_bbox": np.stack([cols, rows, cols + 16, rows + 16], axis=1),
        "valid_fraction": rng.uniform(0.5, 1.0, n).astype(np.float32),
        "native_crs": "EPSG:32617",
    }


def write(path: Path, *, quantization: str = "none", n: int = 500, dim: int = 32, seed: int = 0, **options: Any) -> Path:
    import eoembed

    options.setdefault("normalize", True)
    return eoembed.write_product(path, chips(n, dim, seed=seed), model=model_contract(dim), quantization=quantization, **options)


# -- changing written products (damage and variants a writer would not make) -------------------


def sha256_of(path: Path) -> str:
    """Lowercase hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_manifest(root: Path, index: int, **values: Any) -> None:
    """Overwrite columns of one manifest row."""
    table = pq.read_table(root / "manifest.parquet")
    for name, value in values.items():
        column = table.column(name).to_pylist()
        column[index] = value
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(column, table.schema.field(name).type))
    pq.write_table(table, root / "manifest.parquet")


def replace_data_file(root: Path, rel: str, transform: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite one data file through ``transform`` (which keeps the footer metadata unless it means to
    change it) and update the manifest and item to the new file, so only what the transform changed is wrong."""
    from eoembed._stac import _table_columns as table_columns

    path = root / rel
    out = transform(pq.read_table(path))
    pq.write_table(out, path, row_group_size=64)
    index = pq.read_table(root / "manifest.parquet").column("path").to_pylist().index(rel)
    set_manifest(root, index, bytes=path.stat().st_size, sha256=sha256_of(path), rows=out.num_rows)
    item_path = root / "items" / f"{Path(rel).stem}.json"
    item = json.loads(item_path.read_text())
    item["assets"]["embeddings"].update({"file:size": path.stat().st_size, "file:checksum": "1220" + sha256_of(path)})
    item["properties"]["table:row_count"] = out.num_rows
    item["properties"]["table:columns"] = table_columns(out.schema)  # the item states the file's columns
    item_path.write_text(json.dumps(item))


def write_strips(path: Path, *, n: int, dim: int, files: int, row_group_size: int) -> Path:
    """A product of ``n`` chips in ``files`` data files, each a west-to-east strip (rows sorted by
    longitude before the writer splits them), as a producer's per-scene files are spatially compact."""
    import eoembed

    batch = chips(n, dim)
    order = np.argsort(batch["bounds"][:, 0], kind="stable")
    batch = {k: v[order] if isinstance(v, np.ndarray) else [v[i] for i in order] if isinstance(v, list) else v
             for k, v in batch.items()}
    return eoembed.write_product(path, batch, model=model_contract(dim), normalize=True,
                                 max_rows_per_file=-(-n // files), row_group_size=row_group_size)


def assert_cli_hits_match(out: Path, expected: pa.Table) -> None:
    """Hits that ``eoembed search --format json --out OUT`` wrote are the ``expected`` search table's."""
    got = json.loads(out.read_text())
    assert [(r["query"], r["chip_id"]) for r in got] == list(zip(expected.column("query").to_pylist(),
                                                                 expected.column("chip_id").to_pylist()))
    np.testing.assert_allclose([r["distance"] for r in got], expected.column("distance").to_numpy(), atol=1e-6)


def nc_band_values_contract() -> dict:
    """The contract of a pixel product whose vectors are the NC Landsat-7 scene's five band values."""
    return {"name": "band-values", "version": "1", "framework": "numpy", "weights_sha256": None, "architecture": "identity",
            "pooling": "none", "output": {"dim": 5},
            "input": {"bands": [{"name": f"B{i + 1}", "source": "landsat_multiband.tif"} for i in range(5)], "chip_size_px": 1,
                      "stride_px": 1, "gsd_m": 28.5, "normalization": {"method": "none"}}}
