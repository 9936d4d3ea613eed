import threading
import time
from pathlib import Path

import pytest

from ebcompress.cost.energy import (
    EnergyMeter,
    RaplCounter,
    available_counters,
    nvml_counters,
    rapl_counters,
)


class ScriptedCounter:
    """Returns the scripted cumulative readings in order."""

    def __init__(self, name: str, readings: list[float]) -> None:
        self.name = name
        self._readings = iter(readings)

    def read_joules(self) -> float:
        return next(self._readings)


class CountingCounter:
    def __init__(self) -> None:
        self.name = "counting"
        self.reads = 0
        self._lock = threading.Lock()

    def read_joules(self) -> float:
        with self._lock:
            self.reads += 1
            return float(self.reads)


def make_zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = 1000) -> Path:
    path = root / zone
    path.mkdir()
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def test_meter_sums_counters_and_reports_each():
    gpu = ScriptedCounter("nvml:0", [100.0, 160.0])
    cpu = ScriptedCounter("rapl:package-0", [5.0, 9.5])
    meter = EnergyMeter([gpu, cpu], poll_interval_s=None)
    assert meter.measured
    with meter.measure() as window:
        assert window.joules is None  # filled only when the window closes
    assert window.joules == pytest.approx(64.5)
    assert window.by_counter == pytest.approx({"nvml:0": 60.0, "rapl:package-0": 4.5})
    assert window.seconds >= 0.0
    assert meter.last == window


def test_meter_start_stop_returns_joules():
    meter = EnergyMeter([ScriptedCounter("c", [1.0, 4.0, 10.0, 11.0])], poll_interval_s=None)
    meter.start()
    assert meter.running
    assert meter.stop() == pytest.approx(3.0)
    meter.start()
    assert meter.stop() == pytest.approx(1.0)
    assert not meter.running


def test_meter_without_counters_is_not_measured():
    meter = EnergyMeter([])
    assert not meter.measured
    with meter.measure() as window:
        pass
    assert window.joules is None
    assert window.by_counter == {}


def test_meter_misuse_raises():
    meter = EnergyMeter([], poll_interval_s=None)
    with pytest.raises(RuntimeError, match="not running"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="already running"):
        meter.start()
    with pytest.raises(ValueError):
        EnergyMeter([], poll_interval_s=0)


def test_meter_polls_while_running():
    counter = CountingCounter()
    meter = EnergyMeter([counter], poll_interval_s=0.01)
    meter.start()
    time.sleep(0.2)
    meter.stop()
    assert counter.reads > 4  # start + stop alone would be 2
    reads_after_stop = counter.reads
    time.sleep(0.05)
    assert counter.reads == reads_after_stop  # the poller has stopped


def test_rapl_counter_handles_wrap_around(tmp_path):
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=900, max_uj=1000)
    counter = RaplCounter(zone, "rapl:package-0")
    (zone / "energy_uj").write_text("950\n")
    assert counter.read_joules() == pytest.approx(50e-6)
    (zone / "energy_uj").write_text("100\n")  # wrapped: 950 -> 1000 -> 0 -> 100
    assert counter.read_joules() == pytest.approx(200e-6)
    (zone / "energy_uj").write_text("40\n")  # wrapped again
    assert counter.read_joules() == pytest.approx(1140e-6)


def test_rapl_discovery_picks_packages_and_dram(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    make_zone(tmp_path, "intel-rapl:0:0", "core", 10)  # inside the package: skipped
    make_zone(tmp_path, "intel-rapl:0:1", "dram", 10)
    make_zone(tmp_path, "intel-rapl:1", "psys", 10)  # covers the package: skipped
    make_zone(tmp_path, "intel-rapl:10", "package-1", 10)
    make_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 10)  # duplicate interface: skipped
    names = [counter.name for counter in rapl_counters(tmp_path)]
    assert names == ["rapl:package-0", "rapl:package-0/dram", "rapl:package-1"]


def test_rapl_discovery_skips_unreadable_zones(tmp_path):
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable even as root, like a root-only file for a user
    make_zone(tmp_path, "intel-rapl:1", "package-1", 10)
    assert [counter.name for counter in rapl_counters(tmp_path)] == ["rapl:package-1"]
    assert rapl_counters(tmp_path / "absent") == []


def test_available_counters_for_cpu_reads_only_rapl(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    counters = available_counters("cpu", powercap_root=tmp_path)
    assert [counter.name for counter in counters] == ["rapl:package-0"]
    assert nvml_counters("cpu") == []
