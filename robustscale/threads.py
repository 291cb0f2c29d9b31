"""Intra-op threads of a CPU run: a sensible default, and the count a run directory records.

torch's own default is every logical CPU of the machine, whatever else runs on it. On a busy
or shared CPU that oversubscribes the cores: OpenMP's threads spin waiting for each other
(measured on a 2-core machine with other load: a digits PGD-AT run took 4 min 05 s with the
default threads, 12.6 s with one). So a CPU run uses the physical cores this process may run
on (``os.sched_getaffinity``, hyper-threads counted once), and the local sweep launcher gives
each of several runs side by side one thread (so does each process of a CPU run under
torchrun). ``OMP_NUM_THREADS`` always wins.

The thread count changes floating-point reduction order, so CPU results are bitwise
reproducible only at the same count. It is not a recipe key (it does not change what a run
*means*), but every run directory records it (``status.json``: ``threads``) and a run resumed
or re-run under another count says so in a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_ENV = "OMP_NUM_THREADS"


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None) -> int:
    """Physical cores among ``cpus`` (default: the usable ones): hyper-thread siblings count
    once."""
    cpus = usable_cpus() if cpus is None else cpus
    cores: set[str] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
            cores.add(f"{package}:{core}")
        except OSError:
            cores.add(f"cpu{cpu}")  # no topology (not Linux, a container without /sys): count it
    return max(1, len(cores))


def default_threads(processes: int = 1) -> int:
    """Threads for each of ``processes`` CPU runs side by side: 1 when several share the
    machine, else the usable physical cores."""
    return 1 if processes > 1 else physical_cores()


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads for a CPU run unless ``OMP_NUM_THREADS`` says otherwise;
    returns the count in effect."""
    import torch

    if os.environ.get(_ENV, "").strip():
        return torch.get_num_threads()  # torch read OMP_NUM_THREADS itself
    n = default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun's processes
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def warn_if_changed(run_path: Path, recorded: object, current: int, what: str = "resumed") -> bool:
    """Warn when a run trained with ``recorded`` threads is ``what`` with ``current``; True if
    so."""
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded == current:
        return False
    log.warning(
        "%s was trained with %d CPU thread(s) and is %s with %d: CPU results are bitwise "
        "identical only at the same count (set OMP_NUM_THREADS=%d to match)",
        run_path,
        recorded,
        what,
        current,
        recorded,
    )
    return True


__all__ = [
    "configure_cpu_threads",
    "default_threads",
    "physical_cores",
    "usable_cpus",
    "warn_if_changed",
]
