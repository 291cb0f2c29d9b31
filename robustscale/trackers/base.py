"""The one interface every tracker implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker needs to know about the run it logs."""

    run_dir: Path
    run_id: str
    recipe: dict[str, Any]  # the resolved recipe: hyper-parameters
    group: str | None  # the sweep's name when the run belongs to one


class Tracker:
    """One tracker of one run. ``state`` (JSON-safe, kept in RUN/trackers.json) carries what a
    resumed run needs to continue the same tracker run: the last epoch sent, the tracker's id."""

    name = "tracker"

    def __init__(self, ctx: TrackerContext, state: dict[str, Any]):
        self.ctx, self.state = ctx, state

    def open(self) -> None:
        """Start or resume the tracker run; record hyper-parameters on a first start."""

    def log(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (name -> number) at ``step`` (the epoch) and make them durable."""
        raise NotImplementedError

    def summary(self, values: dict[str, float]) -> None:
        """Record final results where the tracker keeps them apart from the curves."""

    def close(self, finished: bool) -> None:
        """Flush and end the tracker run (``finished``: the training is over)."""


def hparam_value(value: Any) -> Any:
    """A recipe value as trackers accept it for a hyper-parameter: numbers, bools, strings."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
