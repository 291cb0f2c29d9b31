"""Progress for every long stage: one tqdm bar on a terminal, one log line per stage elsewhere.

Every long loop (training epochs, PGD and AutoAttack evaluation, sweeps, the analysis'
bootstrap and multi-start fits, data conversion) asks this module for its bar, so all bars
look alike and one switch silences them: ``robustscale --quiet`` (:func:`set_quiet`) turns
them off, and so does a stderr that is not a terminal (a log file, a pipe, a Slurm job), where
a stage instead logs one line when it ends (``<stage>: <n> <unit> in <s>s``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("robustscale.progress")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence (True) or allow (False) every progress bar and stage line of this process."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def bars_on(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: not quiet, ``enabled`` by the caller, and stderr a terminal."""
    return enabled and not _QUIET and _isatty(sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _StageLine:
    """The stand-in for a bar where none is drawn: counts, and logs one line when closed."""

    def __init__(self, desc: str, total: float | None, unit: str, enabled: bool):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.n: float = 0
        self.postfix: str = ""
        self.t0 = time.perf_counter()
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def reset(self, total: float | None = None) -> None:
        self.n, self.total = 0, total if total is not None else self.total

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and not _QUIET:
            extra = f" ({self.postfix})" if self.postfix else ""
            n = int(self.n) if float(self.n).is_integer() else self.n
            unit = self.unit if n == 1 or self.unit.endswith("s") else self.unit + "s"
            log.info(
                "%s: %s %s in %.1fs%s", self.desc, n, unit, time.perf_counter() - self.t0, extra
            )

    def __enter__(self) -> _StageLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(
    total: float | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    leave: bool = False,
    initial: float = 0,
    unit_scale: bool = False,
    stage_line: bool = True,
) -> Any:
    """A progress bar for one stage: tqdm on a terminal, else a silent counter that logs one
    line at ``close()`` (``stage_line=False`` for stages too small to be worth a line).

    ``enabled=False`` (the caller's own switch, e.g. ``--no-progress``) draws nothing and logs
    nothing. Both objects have tqdm's ``update``, ``set_postfix_str``, ``set_description``,
    ``reset`` and ``close`` and work as context managers.
    """
    if bars_on(enabled):
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            leave=leave,
            initial=initial,
            unit_scale=unit_scale,
            dynamic_ncols=True,
            file=sys.stderr,
        )
    line = _StageLine(desc, total, unit, enabled and stage_line)
    line.n = initial
    return line


__all__ = ["bar", "bars_on", "is_quiet", "set_quiet"]
