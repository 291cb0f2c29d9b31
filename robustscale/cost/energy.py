"""Energy meters: how many joules the devices of this process used, or an honest "unknown".

One meter per run, opened for the training device with :func:`open_meter`:

* ``nvml-energy``: NVIDIA GPUs with NVML's total-energy counter (Volta and newer,
  ``nvmlDeviceGetTotalEnergyConsumption``, mJ). Read at the window boundaries only.
* ``nvml-power``: GPUs without that counter; ``nvmlDeviceGetPowerUsage`` (mW) sampled by a
  background thread every ``interval`` seconds and integrated with the trapezoid rule. A
  fallback: on Ampere and newer the reading is a 1-second average.
* ``rapl``: CPUs whose RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``)
  are readable; counter wrap handled with ``max_energy_range_uj`` by polling in a thread.
* ``estimated``: nothing measurable and ``power_watts`` given: watts x seconds x devices,
  labelled as such.
* ``none``: nothing measurable and no estimate asked for: ``read_joules()`` is ``None``
  (never 0, never a silent guess).

GPU meters cover every GPU visible to the process (``CUDA_VISIBLE_DEVICES``) unless
``devices`` picks some: under DDP, pass ``devices=[local_rank]`` in each process (or meter in
one process only) so that no GPU is counted twice.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = [
    "EnergyMeter",
    "SamplingMeter",
    "NvmlEnergyMeter",
    "RaplMeter",
    "EstimatedMeter",
    "NoMeter",
    "open_meter",
    "SOURCES",
    "RAPL_ROOT",
]

SOURCES = ("nvml-energy", "nvml-power", "rapl", "estimated", "none")
RAPL_ROOT = "/sys/class/powercap"  # where open_meter looks for RAPL zones unless given rapl_root


class EnergyMeter:
    """Cumulative energy of the metered devices since the meter was opened.

    ``read_joules()`` is ``None`` when unmeasured. After :meth:`close` it keeps returning the
    value at close. Usable as a context manager.
    """

    source: str = "none"

    def __init__(self, device_names: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.device_names = list(device_names)
        self.num_devices = max(1, len(self.device_names))
        self._clock = clock
        self._t0 = clock()
        self._closed_value: float | None = None
        self._closed = False

    @property
    def measured(self) -> bool:
        return self.source not in ("estimated", "none")

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def read_joules(self) -> float | None:
        if self._closed:
            return self._closed_value
        return self._joules()

    def _joules(self) -> float | None:  # pragma: no cover - overridden
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed_value = self._joules()
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        pass

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, devices={self.device_names!r})"


class NoMeter(EnergyMeter):
    """Nothing can be measured: time only."""

    source = "none"


class EstimatedMeter(EnergyMeter):
    """Configured power draw x elapsed time x number of devices; asked for, and labelled, as a
    guess."""

    source = "estimated"

    def __init__(
        self,
        power_watts: float,
        device_names: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(device_names, clock)
        self.power_watts = float(power_watts)

    def _joules(self) -> float:
        return self.power_watts * self.elapsed() * self.num_devices


class SamplingMeter(EnergyMeter):
    """Integrates a power reading (watts, all devices together) over time with the trapezoid rule.

    ``power_fn`` is sampled at open, every ``interval`` seconds by a daemon thread (unless
    ``start=False``), at every :meth:`read_joules` and at close. A failed reading is skipped
    (the trapezoid then spans the gap) and logged once.
    """

    source = "nvml-power"

    def __init__(
        self,
        power_fn: Callable[[], float],
        interval: float,
        device_names: Sequence[str],
        *,
        source: str = "nvml-power",
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
        on_close: Callable[[], None] | None = None,
    ):
        super().__init__(device_names, clock)
        self.source = source
        self.interval = float(interval)
        self._power_fn = power_fn
        self._on_close = on_close
        self._lock = threading.Lock()
        self._joules_acc = 0.0
        self._last: tuple[float, float] | None = None
        self._warned = False
        self.samples = 0
        self.sample()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="robustscale-power", daemon=True)
            self._thread.start()

    def sample(self) -> None:
        """Take one reading and add the trapezoid since the previous one."""
        with self._lock:
            try:
                p = float(self._power_fn())
            except Exception as exc:  # a transient NVML error must not kill a run
                if not self._warned:
                    log.warning("power reading failed (%s); the gap is interpolated", exc)
                    self._warned = True
                return
            t = self._clock()
            if self._last is not None:
                t_prev, p_prev = self._last
                self._joules_acc += 0.5 * (p + p_prev) * (t - t_prev)
            self._last = (t, p)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _joules(self) -> float:
        self.sample()
        return self._joules_acc

    def _shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)
        if self._on_close:
            self._on_close()


class NvmlEnergyMeter(EnergyMeter):
    """NVML's cumulative energy counters (mJ), differenced against their values at open."""

    source = "nvml-energy"

    def __init__(
        self,
        nvml: Any,
        handles: Sequence[Any],
        device_names: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(device_names, clock)
        self._nvml = nvml
        self._handles = list(handles)
        self._start = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]

    def _joules(self) -> float:
        now = [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        return sum(n - s for n, s in zip(now, self._start)) / 1000.0

    def _shutdown(self) -> None:
        _nvml_shutdown(self._nvml)


class RaplMeter(EnergyMeter):
    """RAPL package counters (µJ); a thread polls them so that a wrap is never missed."""

    source = "rapl"

    def __init__(
        self,
        zones: Sequence[Path],
        interval: float,
        device_names: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ):
        super().__init__(device_names, clock)
        self._zones = [Path(z) for z in zones]
        self._max = [int((z / "max_energy_range_uj").read_text()) for z in self._zones]
        self._last = [self._read(z) for z in self._zones]
        self._acc_uj = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            # A 32-bit counter at 200 W wraps after ~20 s; polling each second keeps every delta.
            poll = min(float(interval), 1.0)
            self._thread = threading.Thread(
                target=self._run, args=(poll,), name="robustscale-rapl", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _read(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def poll(self) -> None:
        with self._lock:
            for i, z in enumerate(self._zones):
                cur = self._read(z)
                delta = cur - self._last[i]
                if delta < 0:  # the counter wrapped
                    delta += self._max[i]
                self._acc_uj += delta
                self._last[i] = cur

    def _run(self, poll: float) -> None:
        while not self._stop.wait(poll):
            try:
                self.poll()
            except OSError as exc:
                log.warning("RAPL read failed: %s", exc)

    def _joules(self) -> float:
        self.poll()
        return self._acc_uj / 1e6

    def _shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


# ---- opening a meter for a device ---------------------------------------------------------


def _nvml_shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def _visible_handles(nvml: Any) -> list[Any]:
    """NVML handles of the GPUs CUDA_VISIBLE_DEVICES lets this process see (indices or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in (s.strip() for s in env.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            if int(item) < 0:  # CUDA stops enumerating at the first invalid entry
                break
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
    return handles


def _name(nvml: Any, handle: Any) -> str:
    name = nvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)


def _open_nvml(nvml: Any, interval: float, devices: Sequence[int] | None) -> EnergyMeter | None:
    try:
        nvml.nvmlInit()
    except Exception as exc:
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        handles = _visible_handles(nvml)
        if devices is not None:
            handles = [handles[i] for i in devices]
        names = [_name(nvml, h) for h in handles]
    except Exception as exc:
        log.debug("NVML device query failed: %s", exc)
        _nvml_shutdown(nvml)
        return None
    if not handles:
        _nvml_shutdown(nvml)
        return None
    try:
        for h in handles:
            nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        return NvmlEnergyMeter(nvml, handles, names)
    except Exception as exc:
        log.debug("NVML energy counter unavailable (%s); sampling power", exc)
    try:
        for h in handles:
            nvml.nvmlDeviceGetPowerUsage(h)
    except Exception as exc:
        log.debug("NVML power reading unavailable: %s", exc)
        _nvml_shutdown(nvml)
        return None

    def power() -> float:
        return sum(nvml.nvmlDeviceGetPowerUsage(h) for h in handles) / 1000.0

    return SamplingMeter(
        power, interval, names, source="nvml-power", on_close=lambda: _nvml_shutdown(nvml)
    )


def _rapl_zones(root: Path) -> list[Path]:
    """Top-level package zones only (``intel-rapl:N`` named ``package-*``); sub-zones are inside
    them."""
    zones = []
    for d in sorted(glob.glob(str(root / "intel-rapl:*"))):
        z = Path(d)
        if z.name.count(":") != 1:
            continue
        try:
            name = (z / "name").read_text().strip()
            int((z / "energy_uj").read_text())
            int((z / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        if name.startswith("package"):
            zones.append(z)
    return zones


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _cuda_names(devices: Sequence[int] | None) -> list[str]:
    if torch.cuda.is_available():
        idx = range(torch.cuda.device_count()) if devices is None else devices
        return [torch.cuda.get_device_name(i) for i in idx]
    return ["cuda"] * (1 if devices is None else len(devices))


def _import_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def open_meter(
    device: torch.device | str,
    *,
    interval: float = 0.1,
    power_watts: float | None = None,
    devices: Sequence[int] | None = None,
    nvml: Any = "auto",
    rapl_root: str | Path | None = None,
) -> EnergyMeter:
    """The best meter for ``device``: NVML (GPU) or RAPL (CPU) when readable, else an estimate
    from ``power_watts`` when given, else ``none``. A measurement always wins over ``power_watts``.

    A GPU meter covers every GPU visible to the process, or only ``devices`` (CUDA indices as
    torch numbers them, e.g. ``[local_rank]`` under DDP so that no GPU is counted twice).
    ``nvml`` (a pynvml-like module, or None for "no NVML") and ``rapl_root`` (default
    :data:`RAPL_ROOT`) exist for tests.
    """
    device = torch.device(device)
    if device.type == "cuda":
        lib = _import_nvml() if nvml == "auto" else nvml
        meter = _open_nvml(lib, interval, devices) if lib is not None else None
        if meter is not None:
            return meter
        names = _cuda_names(devices)
    elif device.type == "cpu":
        zones = _rapl_zones(Path(RAPL_ROOT if rapl_root is None else rapl_root))
        names = (
            [f"{_cpu_name()} (package {i})" for i in range(len(zones))] if zones else [_cpu_name()]
        )
        if zones:
            return RaplMeter(zones, interval, names)
    else:
        names = [str(device)]
    if power_watts is not None:
        log.info("energy is estimated from power_watts=%s W per device (not measured)", power_watts)
        return EstimatedMeter(power_watts, names)
    return NoMeter(names)
