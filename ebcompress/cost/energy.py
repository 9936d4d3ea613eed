"""Measured training energy, read from hardware counters; never estimated.

You et al. (ICLR 2020, Sec. 4.3, Table 2) report energy *measured* on the device, because data
movement makes FLOPs a poor proxy for energy. This module reads the two cumulative counters that
real machines expose and reports "not measured" (``None``) where neither exists:

* NVIDIA GPUs (Volta and newer): NVML's total energy since the driver loaded,
  ``nvmlDeviceGetTotalEnergyConsumption`` in millijoules, through the ``pynvml`` module of the
  optional ``nvidia-ml-py`` package (not a dependency; without it GPUs are not measured).
* CPUs: Linux powercap RAPL, ``/sys/class/powercap/intel-rapl:*/energy_uj`` in microjoules: every
  ``package-N`` zone plus its ``dram`` sub-zone (DRAM is not part of the package; ``core``,
  ``uncore`` are, and ``psys`` covers the package, so those are skipped to avoid double counting).
  The counter wraps at ``max_energy_range_uj``; each read adds the wrap-corrected difference to
  the previous read. Since Linux 5.10 ``energy_uj`` is root-only, and many VMs have no powercap
  at all; unreadable zones are skipped.

A wrap is only detected between two reads, so a RAPL counter must be read at least once per wrap
period (minutes at full load). :class:`EnergyMeter` therefore polls its counters from a daemon
thread every ``poll_interval_s`` seconds while it runs. RAPL zones measure a whole socket: under
DDP, count them on one process per machine.

Why not ``zeus`` (zeus 0.16.0, tried): its ``ZeusMonitor`` reads the same NVML and RAPL counters,
but installing it pulls ~400 MB of hard dependencies (pandas, scikit-learn, amdsmi, httpx, tyro,
nvidia-ml-py), it tracks RAPL wrap-around with one spawned polling *process* per zone (which must
not be created at import time and sits badly with DDP and data-loader workers), and on a machine
with no counter it returns an empty measurement whose ``total_energy`` is 0.0 rather than "not
measured". Two small readers (this file) cover what the paper needs with no new dependency.

Seen here: the development VM (no GPU) has no ``/sys/class/powercap`` and no ``pynvml``, so
nothing is measured there. A cloud H100 VM (driver 580) had NVML but no powercap either: the
meter read 71 W idle and 700 W under a bf16 matrix-product load (nvidia-smi: 691 W).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
DEFAULT_POLL_INTERVAL_S = 10.0
_RAPL_PREFIX = "intel-rapl:"


class EnergyCounter(Protocol):
    """A cumulative energy counter; differences of :meth:`read_joules` are energy used."""

    name: str

    def read_joules(self) -> float:
        """Joules since an arbitrary origin; never decreases."""
        ...


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class RaplCounter:
    """One RAPL powercap zone, in joules since construction, corrected for wrap-around."""

    def __init__(self, zone: Path, name: str) -> None:
        self.name = name
        self._energy_path = zone / "energy_uj"
        self._range_uj = _read_int(zone / "max_energy_range_uj")
        self._last_uj = _read_int(self._energy_path)
        self._total_uj = 0
        # The meter's poller thread and the caller both read; the wrap bookkeeping must not race.
        self._lock = threading.Lock()

    def read_joules(self) -> float:
        with self._lock:
            raw_uj = _read_int(self._energy_path)
            delta_uj = raw_uj - self._last_uj
            if delta_uj < 0:  # wrapped past max_energy_range_uj since the previous read
                delta_uj += self._range_uj
            self._total_uj += delta_uj
            self._last_uj = raw_uj
            return self._total_uj / 1e6


class NvmlCounter:
    """One NVIDIA GPU's NVML total energy, in joules since construction."""

    def __init__(self, nvml: Any, handle: Any, name: str) -> None:
        self.name = name
        self._nvml = nvml
        self._handle = handle
        self._origin_mj = self._read_mj()  # raises NVMLError where the GPU lacks the counter

    def _read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def read_joules(self) -> float:
        return (self._read_mj() - self._origin_mj) / 1e3


def _zone_numbers(zone: Path) -> tuple[int, ...] | None:
    parts = zone.name[len(_RAPL_PREFIX) :].split(":")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def rapl_counters(powercap_root: Path = POWERCAP_ROOT) -> list[RaplCounter]:
    """Readable RAPL package and DRAM zones under ``powercap_root`` (empty where there are none)."""
    zones = {}
    for zone in powercap_root.glob(f"{_RAPL_PREFIX}*"):
        numbers = _zone_numbers(zone)
        if numbers is not None and len(numbers) <= 2:
            zones[numbers] = zone
    names: dict[tuple[int, ...], str] = {}
    for numbers, zone in zones.items():
        with contextlib.suppress(OSError):
            names[numbers] = (zone / "name").read_text().strip()
    counters = []
    for numbers in sorted(zones):
        name = names.get(numbers, "")
        if len(numbers) == 1 and name.startswith("package"):
            label = f"rapl:{name}"
        elif len(numbers) == 2 and name == "dram":
            label = f"rapl:{names.get(numbers[:1], f'zone-{numbers[0]}')}/dram"
        else:
            continue
        try:
            counters.append(RaplCounter(zones[numbers], label))
        except (OSError, ValueError) as err:
            logger.info("energy: RAPL zone %s not readable (%s); not measured", zones[numbers], err)
    return counters


def _cuda_indices(device: str | torch.device | None) -> list[int]:
    if not torch.cuda.is_available():
        return []
    if device is None:
        return list(range(torch.cuda.device_count()))
    target = torch.device(device)
    if target.type != "cuda":
        return []
    return [target.index if target.index is not None else torch.cuda.current_device()]


def nvml_counters(device: str | torch.device | None = None) -> list[NvmlCounter]:
    """NVML counters for ``device`` (a CUDA device, or every visible GPU when None).

    Counters are named ``nvml:<i>`` with ``i`` the CUDA index as PyTorch numbers devices (after
    ``CUDA_VISIBLE_DEVICES``); NVML devices are matched to it by PCI address.
    """
    indices = _cuda_indices(device)
    if not indices:
        return []
    try:
        import pynvml
    except ImportError:
        logger.info("energy: pynvml (nvidia-ml-py) not installed; GPU energy not measured")
        return []
    try:
        pynvml.nvmlInit()
        by_pci = {}
        for nvml_index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            pci = pynvml.nvmlDeviceGetPciInfo(handle)
            by_pci[(pci.domain, pci.bus, pci.device)] = handle
    except pynvml.NVMLError as err:
        logger.info("energy: NVML unavailable (%s); GPU energy not measured", err)
        return []
    counters = []
    for index in indices:
        props = torch.cuda.get_device_properties(index)
        handle = by_pci.get((props.pci_domain_id, props.pci_bus_id, props.pci_device_id))
        if handle is None:
            logger.info("energy: cuda:%d not found by NVML; not measured", index)
            continue
        try:
            counters.append(NvmlCounter(pynvml, handle, f"nvml:{index}"))
        except pynvml.NVMLError as err:  # e.g. pre-Volta GPUs lack the total-energy counter
            logger.info("energy: cuda:%d has no NVML energy counter (%s)", index, err)
    return counters


def available_counters(
    device: str | torch.device | None = None, *, powercap_root: Path = POWERCAP_ROOT
) -> list[EnergyCounter]:
    """Every counter this machine exposes for ``device``: its GPU(s) via NVML, plus RAPL.

    ``None`` means all visible GPUs; a CPU device gets RAPL only. The host's RAPL zones are
    included for GPU devices too, since the CPU and DRAM spend energy feeding the GPU.
    """
    return [*nvml_counters(device), *rapl_counters(powercap_root)]


@dataclass
class EnergyMeasurement:
    """One measured window: ``joules`` summed over counters, None when nothing was measured."""

    joules: float | None = None
    seconds: float = 0.0
    by_counter: dict[str, float] = field(default_factory=dict)


class EnergyMeter:
    """Energy and wall time between :meth:`start` and :meth:`stop`, summed over counters.

    With no counter (``measured`` is False) the joules are None, so reports say "not measured".
    While running, a daemon thread reads every counter each ``poll_interval_s`` seconds so that
    RAPL wrap-arounds are not missed; ``poll_interval_s=None`` turns it off.
    """

    def __init__(
        self,
        counters: Sequence[EnergyCounter] | None = None,
        *,
        poll_interval_s: float | None = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self._counters = tuple(available_counters() if counters is None else counters)
        if poll_interval_s is not None and poll_interval_s <= 0:
            raise ValueError(f"EnergyMeter: poll_interval_s must be > 0, got {poll_interval_s}")
        self._poll_interval_s = poll_interval_s
        self._start_joules: list[float] | None = None
        self._start_time = 0.0
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self.last: EnergyMeasurement | None = None

    @property
    def counters(self) -> tuple[EnergyCounter, ...]:
        return self._counters

    @property
    def measured(self) -> bool:
        """Whether any counter is read; False means every measurement's joules are None."""
        return bool(self._counters)

    @property
    def running(self) -> bool:
        return self._start_joules is not None

    def start(self) -> None:
        if self.running:
            raise RuntimeError("EnergyMeter.start: already running; call stop() first")
        self._start_joules = [counter.read_joules() for counter in self._counters]
        self._start_time = time.perf_counter()
        if self._poll_interval_s is not None and self._counters:
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll, name="energy-poll", daemon=True)
            self._poller.start()

    def stop(self) -> float | None:
        """End the window; returns its joules (None if not measured) and sets :attr:`last`."""
        if self._start_joules is None:
            raise RuntimeError("EnergyMeter.stop: not running; call start() first")
        if self._poller is not None:
            self._stop_polling.set()
            self._poller.join()
            self._poller = None
        seconds = time.perf_counter() - self._start_time
        begins = zip(self._counters, self._start_joules, strict=True)
        used = [counter.read_joules() - begin for counter, begin in begins]
        self._start_joules = None
        joules = sum(used) if used else None
        by_counter = {counter.name: j for counter, j in zip(self._counters, used, strict=True)}
        self.last = EnergyMeasurement(joules=joules, seconds=seconds, by_counter=by_counter)
        return joules

    @contextlib.contextmanager
    def measure(self) -> Iterator[EnergyMeasurement]:
        """``with meter.measure() as m: ...`` fills ``m`` (joules, seconds, by_counter) on exit."""
        measurement = EnergyMeasurement()
        self.start()
        try:
            yield measurement
        finally:
            self.stop()
            assert self.last is not None
            measurement.joules = self.last.joules
            measurement.seconds = self.last.seconds
            measurement.by_counter = self.last.by_counter

    def _poll(self) -> None:
        assert self._poll_interval_s is not None
        while not self._stop_polling.wait(self._poll_interval_s):
            for counter in self._counters:
                try:
                    counter.read_joules()
                except OSError as err:
                    logger.warning("energy: polling %s failed: %s", counter.name, err)
