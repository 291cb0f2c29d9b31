"""The state of a sweep folder: the ledger's rows joined with each run's ``status.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.runs import RunFileError, SweepFolder
from robustscale.sweep.ledger import Ledger


def sweep_status(folder: str | Path) -> list[dict[str, Any]]:
    """One dict per run, in sweep order: the ledger row plus ``epoch``/``epochs`` from the run's
    status.json, ``shown_state`` (``running (stale)`` for a lease past its timeout, ``damaged``
    for a run whose status.json or best checkpoint is unreadable, with the reason in ``where``
    and ``damage``) and ``where``."""
    sweep = SweepFolder(Path(folder))
    if not sweep.ledger.is_file():
        raise RobustscaleError(
            f"{str(sweep.root)!r} is not a sweep folder (no ledger.sqlite); "
            "give the --out folder of robustscale sweep"
        )
    ledger = Ledger(sweep.ledger, wal=False, create=False)  # a reader: never recreates a table
    timeout = float(ledger.meta().get("lease_timeout") or 300.0)
    now = time.time()
    rows = ledger.rows()
    scheduler = _scheduler_states(rows) if ledger.meta().get("backend") == "slurm" else {}
    out = []
    for row in rows:
        run = sweep.run(row["run_id"])
        damage = None
        try:
            status = run.read_status()
        except RunFileError as exc:  # a damaged status must not hide the table: shown as damaged
            status, damage = None, exc.reason
        if status is not None and status.state == "done" and damage is None:
            damage = run.damage(deep=False)
        shown, where = row["state"], ""
        if row["state"] == "running":
            age = now - (row["heartbeat"] or 0)
            where = f"{row['host']}:{row['pid']}" + (
                f" job {row['job_id']}" if row["job_id"] else ""
            )
            where += f", heartbeat {age:.0f}s ago"
            if age > timeout:
                shown = "running (stale)"
        elif row["job_id"] and row["state"] == "pending":
            where = f"submitted as job {row['job_id']}"
        elif row["state"] in ("done", "failed") and row["host"]:  # where it ran last
            where = f"{row['host']}" + (f" job {row['job_id']}" if row["job_id"] else "")
        if damage:
            shown, where = "damaged", damage
        out.append(
            {
                **row,
                "shown_state": shown,
                "where": where,
                "damage": damage,
                "epoch": status.epoch if status else 0,
                "epochs": status.epochs if status else None,
                "run_state": status.state if status else None,
                "best_val_pgd_acc": status.best_val_pgd_acc if status else None,
                "scheduler_state": scheduler.get(row["job_id"] or "", ""),
            }
        )
    return out


def _scheduler_states(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Slurm's state of the job of every run not settled yet (``PENDING``, ``RUNNING``,
    ``PENDING (requeued 1x)``; ``gone`` for a job Slurm no longer lists)."""
    from robustscale.sweep.slurm_queue import queue_view

    ids = [r["job_id"] for r in rows if r["job_id"] and r["state"] in ("pending", "running")]
    view = queue_view(ids) if ids else None
    if view is None:
        return {}
    return {
        j: (view.jobs[j].shown if j in view.jobs else "gone" if view.over(j) else "unknown")
        for j in ids
    }
