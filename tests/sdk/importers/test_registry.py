"""The importer registry, the shared option/repair policy, Embed2Scale CSV imports and the
`eoembed import` verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eoembed
from eoembed._cli import main
from eoembed.importers import Importer, ImportPlan, get_importer, list_importers, register_importer
from tests.factories import write
from tests.sdk.importers.fixtures import SURVEY, assert_valid_everywhere

KINDS = ["alphaearth", "clay", "earthindex", "embed2scale", "majortom", "planet", "tessera"]


def test_every_format_registers_under_its_kind():
    assert [entry["kind"] for entry in list_importers()] == KINDS
    assert all(get_importer(kind).kind == kind for kind in KINDS)


def test_a_kind_is_registered_once():
    class Other(Importer):
        kind = "clay"

        def read(self, sources, *, session, **options) -> ImportPlan:
            raise AssertionError("never called")

    with pytest.raises(eoembed.SpecError, match="'clay' is already taken by eoembed.importers.clay.ClayImporter"):
        register_importer(Other)


def test_unknown_kinds_options_and_repairs_are_refused_by_name(tmp_path, shared_data):
    clay = shared_data / SURVEY / "clay" / "03WVN_20220610_20220610_v001.gpq"
    with pytest.raises(eoembed.UnknownImporterError, match="no importer for 'gpq'; registered kinds: alphaearth, clay"):
        eoembed.import_product("gpq", [clay], out=tmp_path / "p")
    with pytest.raises(eoembed.ImportOptionError, match=r"clay import has no option\(s\) \['chip_size'\]; it takes model_version"):
        eoembed.import_product("clay", [clay], out=tmp_path / "p", chip_size=8)
    with pytest.raises(eoembed.ImportOptionError, match=r"no repair \['reproject'\]; its repairs are drop-empty"):
        eoembed.import_product("clay", [clay], out=tmp_path / "p", repair=["reproject"])
    with pytest.raises(eoembed.SourceNotFoundError, match="missing.gpq does not exist"):
        eoembed.import_product("clay", [tmp_path / "missing.gpq"], out=tmp_path / "p")


@pytest.fixture()
def submission(tmp_path):
    """A product of 20 chips written as a submission CSV, and the chips' footprints as GeoJSON."""
    import geopandas
    import shapely

    product = write(tmp_path / "made", n=20, dim=32)
    csv = eoembed.write_embed2scale(product, tmp_path / "submission.csv")
    rows = eoembed.open(product).sql("SELECT chip_id, bbox FROM embeddings").to_pylist()
    boxes = [shapely.box(r["bbox"]["xmin"], r["bbox"]["ymin"], r["bbox"]["xmax"], r["bbox"]["ymax"]) for r in rows]
    places = geopandas.GeoDataFrame({"id": [r["chip_id"] for r in rows]}, geometry=boxes, crs="EPSG:4326")
    places.to_file(tmp_path / "footprints.geojson")
    return product, csv, tmp_path / "footprints.geojson"


def test_embed2scale_csv_imports_with_its_footprints_and_keeps_the_vectors(submission, tmp_path):
    made, csv, footprints = submission
    with pytest.raises(eoembed.SourceFormatError, match="holds no locations; pass footprints=FILE"):
        eoembed.import_product("embed2scale", [csv], out=tmp_path / "p", datetime="2020-06-01")
    report = eoembed.import_product("embed2scale", [csv], out=tmp_path / "p", footprints=str(footprints),
                                    datetime="2020-06-01", dim=32)
    assert report.rows == 20
    assert_valid_everywhere(report.path)
    original, imported = eoembed.open(made), eoembed.open(report.path)
    by_box = {tuple(r["bbox"].values()): v for r, v in zip(original.sql("SELECT bbox FROM embeddings").to_pylist(), original.to_numpy())}
    for row, vector in zip(imported.sql("SELECT bbox FROM embeddings").to_pylist(), imported.to_numpy()):
        np.testing.assert_array_equal(vector, by_box[tuple(row["bbox"].values())])
    assert imported.metadata["embedding"]["normalized"] is True  # unit vectors stay declared as such


def test_embed2scale_padding_is_reported_and_dropped_only_when_asked(submission, tmp_path):
    _, csv, footprints = submission
    report = eoembed.import_product("embed2scale", [csv], out=tmp_path / "p", footprints=str(footprints), datetime="2020-06-01")
    assert eoembed.open(report.path).dim == 1024
    assert any("last 992 columns are zero" in note and "dim=32" in note for note in report.notes)
    with pytest.raises(eoembed.SourceFormatError, match="dim=16 would drop non-zero values"):
        eoembed.import_product("embed2scale", [csv], out=tmp_path / "q", footprints=str(footprints), datetime="2020-06-01", dim=16)


def test_cli_import_reports_defects_and_repairs_without_a_traceback(shared_data, tmp_path, capsys):
    planet = str(shared_data / SURVEY / "planet" / "sample_embeddings.parquet")
    assert main(["import", "planet", planet, "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "look like degrees" in err and "--repair lonlat" in err and "Traceback" not in err
    assert main(["import", "planet", planet, "--out", str(tmp_path / "p"), "--repair", "lonlat", "--repair", "drop-empty"]) == 0
    out = capsys.readouterr().out
    assert "imported 3 chips" in out and "repaired:" in out
    assert main(["validate", str(tmp_path / "p")]) == 0


def test_cli_import_of_the_empty_earth_index_file_fails_clearly(shared_data, tmp_path):
    eoembed_cli = str(Path(sys.executable).parent / "eoembed")
    run = subprocess.run([eoembed_cli, "import", "earthindex", str(shared_data / SURVEY / "earth_index" / "21MNT.parquet"),
                          "--out", str(tmp_path / "p")], capture_output=True, text=True)
    assert run.returncode == 1
    assert "holds no rows" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "p").exists()


def test_cli_options_reach_the_importer(tmp_path):
    from tests.sdk.importers.fixtures import alphaearth_cog

    source = alphaearth_cog(tmp_path / "tile.tif")
    assert main(["import", "alphaearth", str(source), "--out", str(tmp_path / "p"), "--option", "chip_size=8",
                 "--option", "datetime=2023-01-01/2023-12-31"]) == 0
    assert eoembed.open(tmp_path / "p").metadata["model"]["input"]["chip_size_px"] == 8
