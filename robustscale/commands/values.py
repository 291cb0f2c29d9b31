"""argparse ``type=`` checks for numeric flags: a bad value is one RobustscaleError line naming
the flag and what is allowed (the CLI prints it and exits 2), before any work is done."""

from __future__ import annotations

import math
from collections.abc import Callable

from robustscale.errors import RobustscaleError

SEED_MAX = 2**32 - 1  # NumPy's seed range, the narrowest of the generators a run seeds


def seed(flag: str = "--seed") -> Callable[[str], int]:
    """An integer seed in [0, 2**32 - 1]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not 0 <= value <= SEED_MAX:
            raise RobustscaleError(
                f"{flag}={text!r} is not allowed; allowed: an integer from 0 to {SEED_MAX}"
            )
        return value

    return parse


def number(
    flag: str, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> Callable[[str], float]:
    """A finite float within [low, high] (``low_open``: strictly above low)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = (
            math.isfinite(value)
            and (low is None or (value > low if low_open else value >= low))
            and (high is None or value <= high)
        )
        if not ok:
            lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
            hi = "" if high is None else f"<= {high:g}"
            allowed = " and ".join(x for x in (lo, hi) if x)
            raise RobustscaleError(
                f"{flag}={text!r} is not allowed; allowed: a finite number"
                + (f" {allowed}" if allowed else "")
            )
        return value

    return parse
