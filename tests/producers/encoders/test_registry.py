"""eoembed.producers.encoders.registry: encoders found by name, built-in and from other packages'
entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eoembed._errors import EncoderError, UnknownEncoderError
from eoembed.producers.encoders import ENTRY_POINT_GROUP, Encoder, get_encoder, list_encoders, register_encoder
from eoembed.producers.encoders import registry

BIN = Path(sys.executable).parent

PLUGIN = textwrap.dedent("""
    import numpy as np

    from eoembed.producers.encoders import Encoder


    class BandMaxEncoder(Encoder):
        name, version, description, dim_rule = "band-max", "1", "per band: the largest valid pixel", "n_bands"

        def dim(self, n_bands):
            return n_bands

        def encode(self, pixels, valid=None):
            pixels, valid = self._check_input(pixels, valid)
            return self._check_output(pixels.max(axis=(2, 3)).astype(np.float32), pixels.shape[1])

        def contract(self, **kw):
            return {}
""")


def install_plugin(folder: Path, *, name: str = "band-max", value: str = "band_max_plugin:BandMaxEncoder",
                   module: str = PLUGIN) -> Path:
    """A package installed the way pip leaves one: its module and a dist-info folder with entry points."""
    (folder / "band_max_plugin.py").write_text(module)
    info = folder / "band_max_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: band-max-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {value}\n")
    return folder


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as the built-in encoders leave it, plugins not yet read, restored afterwards."""
    builtin = {name: cls for name, cls in registry._REGISTRY.items() if cls.__module__.startswith("eoembed.")}
    monkeypatch.setattr(registry, "_REGISTRY", builtin)
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    for module in [m for m in sys.modules if m.startswith("band_max_plugin")]:
        monkeypatch.delitem(sys.modules, module)


def test_unknown_encoder_lists_known_names(fresh_registry):
    with pytest.raises(UnknownEncoderError) as info:
        get_encoder("prestoo")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "no encoder named 'prestoo'; registered encoders: galileo, presto, rcf, stats"
    with pytest.raises(EncoderError, match="does not take options"):
        get_encoder("stats", weights="x.pt")


def test_register_encoder(monkeypatch, fresh_registry):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_encoder
    class MeanEncoder(Encoder):
        name, version, description, dim_rule = "mean", "0", "band means", "n_bands"

        def dim(self, n_bands):
            return n_bands

        def encode(self, pixels, valid=None):
            return pixels.mean(axis=(2, 3))

        def contract(self, **kw):
            return {}

    assert isinstance(get_encoder("mean"), MeanEncoder)
    assert [e["name"] for e in list_encoders()] == ["galileo", "mean", "presto", "rcf", "stats"]

    class Clash(MeanEncoder):
        name = "stats"

    with pytest.raises(EncoderError, match=r"'stats' of .*Clash is already taken by eoembed.producers.encoders.stats.StatsEncoder"):
        register_encoder(Clash)
    with pytest.raises(EncoderError, match="not an Encoder subclass"):
        register_encoder(dict)




def test_an_installed_package_registers_an_encoder_through_its_entry_point(tmp_path, monkeypatch, fresh_registry):
    import numpy as np

    monkeypatch.syspath_prepend(str(install_plugin(tmp_path)))
    encoder = get_encoder("band-max")
    assert type(encoder).__module__ == "band_max_plugin"
    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(encoder.encode(pixels), pixels.max(axis=(2, 3)))
    assert "band-max" in [e["name"] for e in list_encoders()]


def test_a_plugin_cannot_take_a_built_in_name(tmp_path, monkeypatch, fresh_registry):
    clash = PLUGIN.replace('"band-max", "1"', '"stats", "1"')
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path, name="stats", module=clash)))
    with pytest.raises(EncoderError, match="'stats' of band_max_plugin.BandMaxEncoder is already taken by eoembed.producers.encoders.stats.StatsEncoder"):
        list_encoders()


@pytest.mark.parametrize("value, message", [
    ("band_max_plugin:Missing", r"entry point 'band-max' = 'band_max_plugin:Missing' of package 'band-max-plugin' "
                                r"\(eoembed.encoders\) cannot be imported: .*fix or uninstall that package"),
    ("band_max_plugin:np", r"not an Encoder subclass"),
])
def test_a_broken_plugin_names_itself_and_built_ins_still_work(tmp_path, monkeypatch, fresh_registry, value, message):
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path, value=value)))
    with pytest.raises(EncoderError, match=message):
        get_encoder("band-max")
    assert get_encoder("stats").name == "stats"  # found without reading the plugins


def test_a_plugin_whose_encoder_has_another_name_is_refused(tmp_path, monkeypatch, fresh_registry):
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path, name="bandmax")))
    with pytest.raises(EncoderError, match="gives an encoder named 'band-max'; the entry point's name must be"):
        get_encoder("bandmax")


def test_the_cli_lists_a_plugin_encoder(tmp_path):
    import os

    folder = install_plugin(tmp_path)
    run = subprocess.run([str(BIN / "eoembed"), "encoders"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(folder)})
    assert run.returncode == 0, run.stderr
    assert "band-max" in run.stdout and "stats" in run.stdout
