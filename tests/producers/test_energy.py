"""Encoder seconds and metered energy per work unit; RAPL read from a sysfs tree made by the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from eoembed._stac import summed_energy
from eoembed.producers.energy import EnergyMeter, RaplCounter


def _rapl(root: Path, packages: dict[str, int], *, max_range: int = 1_000_000) -> Path:
    for name, value in packages.items():
        domain = root / name
        domain.mkdir(parents=True, exist_ok=True)
        (domain / "energy_uj").write_text(f"{value}\n")
        (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def _set(root: Path, name: str, value: int) -> None:
    (root / name / "energy_uj").write_text(f"{value}\n")


def test_rapl_sums_packages_skips_subdomains_and_survives_wraparound(tmp_path):
    root = _rapl(tmp_path, {"intel-rapl:0": 100, "intel-rapl:1": 500, "intel-rapl:0:0": 7})
    counter = RaplCounter(root)
    _set(root, "intel-rapl:0", 2_100)  # +2000 uJ
    _set(root, "intel-rapl:1", 1_500)  # +1000 uJ
    _set(root, "intel-rapl:0:0", 900_000)  # a sub-domain of package 0: already inside its count
    assert counter.update() == pytest.approx(0.003)
    _set(root, "intel-rapl:0", 100)  # wrapped: 1_000_000 - 2_100 + 100 uJ
    assert counter.update() == pytest.approx(0.003 + 0.998)
    assert not RaplCounter.available(tmp_path / "absent")


def test_a_metered_cpu_rank_records_energy_of_the_work_it_measured(tmp_path):
    root = _rapl(tmp_path, {"intel-rapl:0": 0})
    meter = EnergyMeter("cpu", ranks_on_node=1, rapl_root=root)
    assert meter.metered

    def work(joules: int) -> str:
        _set(root, "intel-rapl:0", joules * 1_000_000)
        return "done"

    assert meter.measure(work, 36) == "done"
    first = meter.take()
    assert first["device_type"] == "cpu" and first["inference_duration_s"] > 0
    assert first["energy_kwh"] == pytest.approx(36 / 3.6e6) and first["max_power_w"] >= first["avg_power_w"] > 0
    assert meter.take()["energy_kwh"] == 0.0  # take() resets


def test_shared_nodes_and_missing_meters_record_seconds_only(tmp_path):
    root = _rapl(tmp_path, {"intel-rapl:0": 0})
    shared = EnergyMeter("cpu", ranks_on_node=2, rapl_root=root)  # RAPL cannot split a package between ranks
    unmetered = EnergyMeter("cpu", rapl_root=tmp_path / "none")
    for meter in (shared, unmetered):
        meter.measure(sum, [1, 2])
        record = meter.take()
        assert not meter.metered and set(record) == {"device_type", "name", "inference_duration_s"}


def test_a_product_sums_its_files():
    files = [{"device_type": "cpu", "name": "X", "inference_duration_s": 2.0, "energy_kwh": 1e-4, "avg_power_w": 180.0,
              "max_power_w": 200.0},
             {"device_type": "cpu", "name": "X", "inference_duration_s": 1.0, "energy_kwh": 5e-5, "avg_power_w": 180.0,
              "max_power_w": 190.0}]
    total = summed_energy(files)
    assert total["inference_duration_s"] == 3.0 and total["energy_kwh"] == pytest.approx(1.5e-4)
    assert total["avg_power_w"] == pytest.approx(180.0) and total["max_power_w"] == 200.0
    # one unmetered file: the sum of kWh would be a guess, so there is none
    assert "energy_kwh" not in summed_energy([files[0], {"device_type": "cpu", "name": "X", "inference_duration_s": 1.0}])
    assert summed_energy([None, None]) is None
