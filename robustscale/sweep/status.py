"""The state of a sweep folder: the ledger's rows joined with each run's ``status.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.runs import read_status
from robustscale.sweep.ledger import Ledger


def sweep_status(folder: str | Path) -> list[dict[str, Any]]:
    """One dict per run, in sweep order: the ledger row plus ``epoch``/``epochs`` from the run's
    status.json, ``shown_state`` (``running (stale)`` for a lease past its timeout) and ``where``."""
    root = Path(folder)
    path = root / "ledger.sqlite"
    if not path.is_file():
        raise RobustscaleError(f"{str(root)!r} is not a sweep folder (no ledger.sqlite); "
                               "give the --out folder of robustscale sweep")
    ledger = Ledger(path, wal=False)
    timeout = float(ledger.meta().get("lease_timeout") or 300.0)
    now = time.time()
    out = []
    for row in ledger.rows():
        try:
            status = read_status(root / "runs" / row["run_id"]) or {}
        except Exception:  # noqa: BLE001 - a half-written status must not hide the table
            status = {}
        shown, where = row["state"], ""
        if row["state"] == "running":
            age = now - (row["heartbeat"] or 0)
            where = f"{row['host']}:{row['pid']}" + (f" job {row['job_id']}" if row["job_id"] else "")
            where += f", heartbeat {age:.0f}s ago"
            if age > timeout:
                shown = "running (stale)"
        elif row["job_id"] and row["state"] == "pending":
            where = f"submitted as job {row['job_id']}"
        elif row["state"] in ("done", "failed") and row["host"]:  # where it ran last
            where = f"{row['host']}" + (f" job {row['job_id']}" if row["job_id"] else "")
        out.append({**row, "shown_state": shown, "where": where, "epoch": status.get("epoch", 0),
                    "epochs": status.get("epochs"), "run_state": status.get("state"),
                    "best_val_pgd_acc": status.get("best_val_pgd_acc")})
    return out
