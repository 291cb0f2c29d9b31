"""What the engine writes besides checkpoints: the run directory's set-up, status.json, metrics columns.

See docs/run-directory.md for the contract these files keep.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_json, atomic_write_text
from robustscale.recipe import Recipe
from robustscale.runs import RunDir, read_recipe, read_status

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_clean_acc", "train_robust_acc", "val_clean_acc", "val_pgd_acc",
    "epoch_flops", "val_flops", "epoch_energy_kwh", "seconds", "examples",
]


def check_run_dir(run: RunDir, recipe: Recipe) -> bool:
    """Read-only check of an existing run directory; True when the run is already done.

    A different recipe is refused when the folder holds a checkpoint (there is training to keep);
    a folder with none, left by a run that failed before its first checkpoint, starts afresh."""
    if not run.recipe.exists():
        return False
    previous = read_recipe(run.path)
    diff = recipe.diff(previous)
    if diff:
        if not any(run.checkpoints.glob("*.pt")):
            log.info("%s holds no checkpoint; starting it afresh with the new recipe", run.path)
            return False
        key, (new, old) = next(iter(diff.items()))
        more = f" (and {len(diff) - 1} more keys)" if len(diff) > 1 else ""
        raise RobustscaleError(
            f"{str(run.path)!r} was trained with {key}={old!r}, not {new!r}{more}; "
            "resume with the same recipe or choose another --run-dir")
    status = read_status(run.path) or {}
    if status.get("state") == "done":
        log.info("run %s is already done; nothing to train", run.path)
        return True
    return False


def create_run_dir(run: RunDir, recipe: Recipe) -> None:
    """Create the run directory and write its recipe.yaml."""
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustscaleError(f"cannot create run directory {str(run.path)!r}: {exc.strerror}") from None
    atomic_write_text(run.recipe, recipe.to_yaml())


def write_status(run: RunDir, recipe: Recipe, state: str, progress: Any = None,
                 reason: str | None = None, threads: int | None = None) -> None:
    """Rewrite status.json; without ``progress`` (epoch, best_epoch, best_val_pgd) the previous
    values are kept, so a failure after a kill still says how far the run got. ``best_val_pgd_acc``
    is PGD-``val_attack_steps`` accuracy on the held-out examples (recorded beside it). ``threads`` is
    the CPU intra-op thread count the run trains with (None on a GPU, or to keep the previous)."""
    previous = read_status(run.path) if run.status.exists() and (progress is None or threads is None) else None
    if threads is None:
        threads = (previous or {}).get("threads")
    p = progress
    atomic_write_json(run.status, {
        "run_id": recipe.run_id,
        "state": state,
        "reason": reason,
        "epoch": p.epoch if p else (previous or {}).get("epoch", 0),
        "epochs": recipe.epochs,
        "best_epoch": p.best_epoch if p else (previous or {}).get("best_epoch"),
        "best_val_pgd_acc": p.best_val_pgd40 if p else (previous or {}).get("best_val_pgd_acc"),
        "val_attack_steps": recipe.val_attack_steps,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "threads": threads,
    })
