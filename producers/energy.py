"""What encoding cost: seconds on which device and, where a meter exists, energy.

Each work unit records an ``energy`` object in its data file's footer provenance, in the form of the
STAC Embedding extension's ``emb:energy`` (items carry it; the collection sums it):

* ``device_type`` (``cpu`` / ``gpu``), ``name`` (the CPU or GPU model) and ``inference_duration_s``
  (seconds spent inside the encoder) are always measured;
* ``energy_kwh``, ``avg_power_w`` and ``max_power_w`` only come from a real meter, never from an
  estimate: NVIDIA's NVML energy counter for a GPU (``nvidia-ml-py``), or the Linux RAPL package
  counters (``/sys/class/powercap/intel-rapl:*``) for a CPU when the rank is alone on its node
  (RAPL measures the whole package, so concurrent ranks could not be told apart).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["EnergyMeter", "RaplCounter"]

RAPL_ROOT = Path("/sys/class/powercap")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class RaplCounter:
    """Cumulative package energy in joules from the RAPL sysfs counters (wrap-around handled)."""

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        # top-level package domains only (intel-rapl:0, intel-rapl:1): sub-domains are inside them
        self._domains = [d for d in sorted(Path(root).glob("intel-rapl:*")) if d.name.count(":") == 1
                         and (d / "energy_uj").is_file()]
        self._last = [self._read(d) for d in self._domains]
        self._ranges = [self._range(d) for d in self._domains]
        self.joules = 0.0

    @staticmethod
    def _read(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    @staticmethod
    def _range(domain: Path) -> int:
        try:
            return int((domain / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            return 2**32

    @classmethod
    def available(cls, root: Path = RAPL_ROOT) -> bool:
        try:
            return bool(cls(root)._domains)
        except (OSError, ValueError):  # counters present but not readable by this user
            return False

    def update(self) -> float:
        """Add the energy since the last call; returns the running total in joules."""
        for k, domain in enumerate(self._domains):
            now = self._read(domain)
            delta = now - self._last[k]
            if delta < 0:  # the counter wrapped
                delta += self._ranges[k]
            self.joules += delta / 1e6
            self._last[k] = now
        return self.joules


class _NvmlCounter:
    """Cumulative GPU energy in joules from NVML's total-energy counter (Volta and newer)."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._start = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # millijoules
        self.joules = 0.0

    def update(self) -> float:
        self.joules = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start) / 1e3
        return self.joules


class EnergyMeter:
    """Accumulates encoder seconds (and metered energy) of one rank; :meth:`take` returns and resets
    the figures of the work done since the last call."""

    def __init__(self, device: str, *, ranks_on_node: int = 1, rapl_root: Path = RAPL_ROOT) -> None:
        self.device_type = "gpu" if device.startswith("cuda") else "cpu"
        self._counter: Any = None
        if self.device_type == "gpu":
            import torch

            index = torch.device(device).index or 0
            self.name = torch.cuda.get_device_name(index)
            try:
                self._counter = _NvmlCounter(index)
            except Exception:  # noqa: BLE001 - no nvidia-ml-py, or a GPU without an energy counter
                self._counter = None
        else:
            self.name = _cpu_name()
            if ranks_on_node == 1 and RaplCounter.available(rapl_root):
                self._counter = RaplCounter(rapl_root)
        self._seconds = 0.0
        self._joules = 0.0
        self._max_power = 0.0

    @property
    def metered(self) -> bool:
        return self._counter is not None

    def measure(self, work, *args, **kwargs):
        """Run ``work(*args, **kwargs)`` and count its seconds and energy."""
        before = self._counter.update() if self._counter else 0.0
        start = time.perf_counter()
        try:
            return work(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            self._seconds += seconds
            if self._counter:
                joules = self._counter.update() - before
                self._joules += joules
                if seconds > 0:
                    self._max_power = max(self._max_power, joules / seconds)

    def take(self) -> dict[str, Any]:
        """The ``emb:energy`` object of the work since the last call."""
        out: dict[str, Any] = {"device_type": self.device_type, "name": self.name,
                               "inference_duration_s": round(self._seconds, 6)}
        if self._counter:
            out["energy_kwh"] = self._joules / 3.6e6
            out["avg_power_w"] = round(self._joules / self._seconds, 3) if self._seconds > 0 else 0.0
            out["max_power_w"] = round(self._max_power, 3)
        self._seconds = self._joules = self._max_power = 0.0
        return out

