"""Experiment trackers: TensorBoard, MLflow and W&B, each through its own library.

See docs/trackers.md.

A recipe's ``trackers`` list (a non-result key) names the trackers a run logs to. The run
directory stays the record: what a tracker receives is read back from ``metrics.csv`` (every
column, under its own name, the epoch as the step) and ``cost.json`` (the cumulative cost),
and at the end each ``eval/*.json`` result, so a tracker's numbers equal the files exactly.

``RUN/trackers.json`` remembers the last epoch each tracker received and the tracker's own run
id, so a resumed run continues the same tracker run without repeating a step. A tracker that
fails is reported once as a warning and dropped; training goes on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError, first_line
from robustscale.files import atomic_write_json, read_csv_rows, read_json
from robustscale.trackers.base import Tracker, TrackerContext

log = logging.getLogger(__name__)

# tracker name -> (module that must be importable, the pip extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
STATE_FILE = "trackers.json"
# the cumulative cost logged with each epoch: tracker name -> cost.json key
COST_KEYS = {
    "train_flops": "train_flops",
    "energy_kwh": "energy_kwh",
    "usd": "electricity_cost_usd",
    "co2_kg": "co2_kg",
}


def _folders(name: str, run_dir: Path) -> list[Path]:
    """The folders a tracker writes into for this run."""
    if name == "tensorboard":
        return [run_dir / "tensorboard"]
    if name == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return [run_dir / "mlruns"]
        return (
            [Path(uri.removeprefix("file://").removeprefix("file:"))]
            if uri.startswith("file:")
            else []
        )
    return [Path(os.environ.get("WANDB_DIR") or run_dir) / "wandb"]


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def check_trackers(names: list[str], run_dir: str | Path) -> None:
    """Before anything is written: each tracker's library is installed and its folder writable."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise RobustscaleError(
                f"tracker {name!r} needs the {module} library, which is not installed; "
                f'install it with: pip install "robustscale[{extra}]"'
            )
        for folder in _folders(name, Path(run_dir)):
            if not _writable(folder):
                raise RobustscaleError(
                    f"tracker {name!r} cannot write its folder {str(folder)!r} "
                    "(not a writable folder); make it writable or drop the tracker"
                )


def sweep_name(run_dir: Path) -> str | None:
    """The sweep a run belongs to (``<sweep>/runs/<run_id>``, ``<sweep>/ledger.sqlite``), else None.

    Read-only: the ledger is opened with SQLite's ``mode=ro``, never created or changed."""
    ledger = run_dir.parent.parent / "ledger.sqlite"
    if run_dir.parent.name != "runs" or not ledger.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()
        finally:
            con.close()
        return str(json.loads(row[0])) if row else None
    except (sqlite3.Error, ValueError) as exc:
        log.warning(
            "warning: cannot read the sweep name from %s (%s); trackers get no group", ledger, exc
        )
        return None


def _number(text: str) -> float | None:
    if text is None or text == "":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


class TrackerSet:
    """The trackers of one run, opened together; every call is guarded (a failure drops one)."""

    def __init__(self, names: list[str], run_dir: str | Path, recipe: dict[str, Any], run_id: str):
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        self.state: dict[str, Any] = read_json(self.state_path) if self.state_path.is_file() else {}
        ctx = TrackerContext(
            run_dir=self.run_dir, run_id=run_id, recipe=recipe, group=sweep_name(self.run_dir)
        )
        self.trackers: list[Tracker] = []
        for name in names:
            try:
                tracker = _make(name, ctx, self.state.setdefault(name, {}))
            except ImportError as exc:
                log.warning(
                    "warning: tracker %s not started (%s); install robustscale[%s]",
                    name,
                    first_line(exc),
                    TRACKERS[name][1],
                )
                continue
            if self._guard(tracker, tracker.open):
                self.trackers.append(tracker)
        self._save_state()

    def _guard(self, tracker: Tracker, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - a tracker never stops training
            log.warning(
                "warning: tracker %s failed (%s: %s); the run goes on without it",
                tracker.name,
                type(exc).__name__,
                first_line(exc),
            )
            if tracker in self.trackers:
                self.trackers.remove(tracker)
            return False

    def _save_state(self) -> None:
        for t in self.trackers:
            self.state[t.name] = t.state
        atomic_write_json(self.state_path, self.state)

    def sync_epochs(self) -> None:
        """Send every metrics.csv row a tracker has not received yet (the newest with the cost)."""
        if not self.trackers:
            return
        rows = [r for r in read_csv_rows(self.run_dir / "metrics.csv") if r.get("epoch")]
        cost_path = self.run_dir / "cost.json"
        cost = read_json(cost_path) if cost_path.is_file() else {}
        last = max((int(r["epoch"]) for r in rows), default=0)
        for tracker in list(self.trackers):
            done = int(tracker.state.get("epoch", 0))
            for row in rows:
                epoch = int(row["epoch"])
                if epoch <= done:
                    continue
                values = {k: _number(v) for k, v in row.items() if k != "epoch"}
                if epoch == last:  # cost.json holds the totals as of the newest row only
                    values.update({k: cost.get(c) for k, c in COST_KEYS.items()})
                values = {k: float(v) for k, v in values.items() if v is not None}
                if not self._guard(tracker, tracker.log, epoch, values):
                    break
                tracker.state["epoch"] = epoch
        self._save_state()

    def log_results(self, values: dict[str, float]) -> None:
        """Final numbers (``autoattack_acc``, ``pgd40_acc``), at the last epoch's step."""
        step = max([int(t.state.get("epoch", 0)) for t in self.trackers] or [0])
        for tracker in list(self.trackers):
            self._guard(tracker, tracker.log, step, values)
            self._guard(tracker, tracker.summary, values)
        self._save_state()

    def close(self, finished: bool) -> None:
        for tracker in list(self.trackers):
            self._guard(tracker, tracker.close, finished)
        self._save_state()
        self.trackers = []


def _make(name: str, ctx: TrackerContext, state: dict[str, Any]) -> Tracker:
    if name == "tensorboard":
        from robustscale.trackers.tensorboard_tracker import TensorBoardTracker as cls
    elif name == "mlflow":
        from robustscale.trackers.mlflow_tracker import MlflowTracker as cls
    else:
        from robustscale.trackers.wandb_tracker import WandbTracker as cls
    return cls(ctx, state)


def open_trackers(
    names: list[str], run_dir: str | Path, recipe: dict[str, Any], run_id: str
) -> TrackerSet | None:
    """Open the named trackers for a run (None when there are none); failures become warnings."""
    if not names:
        return None
    try:
        return TrackerSet(names, run_dir, recipe, run_id)
    except (OSError, RobustscaleError) as exc:
        log.warning(
            "warning: trackers not started (%s); the run goes on without them", first_line(exc)
        )
        return None


def eval_metric_name(result: dict[str, Any]) -> str:
    """The zoo's name for an eval result: ``autoattack_acc``, ``pgd40_acc``, ..."""
    attack = str(result.get("attack"))
    return f"pgd{result.get('steps')}_acc" if attack == "pgd" else f"{attack}_acc"


def log_eval(
    run_dir: str | Path,
    names: list[str],
    run_id: str,
    recipe: dict[str, Any],
    result: dict[str, Any],
) -> None:
    """Send one evaluation result (as written to ``eval/``) to the run's trackers."""
    trackers = open_trackers(names, run_dir, recipe, run_id)
    if trackers is None:
        return
    values = {eval_metric_name(result): float(result["robust_acc"])}
    if result.get("clean_acc") is not None:
        values[f"{eval_metric_name(result)[:-4]}_clean_acc"] = float(result["clean_acc"])
    trackers.log_results(values)
    trackers.close(finished=True)


__all__ = [
    "TRACKERS",
    "TrackerSet",
    "check_trackers",
    "eval_metric_name",
    "log_eval",
    "open_trackers",
    "sweep_name",
]
