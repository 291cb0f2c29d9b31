"""What the engine writes besides checkpoints: the run directory's set-up, status.json, metrics
columns.

See docs/run-directory.md for the contract these files keep.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone
from typing import Any

from robustscale.checkpoint_io import remove_stale_temps, safe_load
from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_text
from robustscale.recipe import Recipe
from robustscale.runs import METRIC_COLUMNS, RunDir, Status

log = logging.getLogger(__name__)
__all__ = ["METRIC_COLUMNS", "check_run_dir", "create_run_dir", "remove_debris", "write_status"]


def check_run_dir(run: RunDir, recipe: Recipe) -> bool:
    """Read-only check of an existing run directory; True when the run is already done.

    A different recipe is refused when the folder holds a checkpoint (there is training to keep);
    a folder with none, left by a run that failed before its first checkpoint, starts afresh.
    The resume checkpoint's own recipe is compared too, whatever recipe.yaml says or whether it
    exists, so a deleted or edited recipe.yaml cannot resume a run under another recipe."""
    _check_checkpoint_recipe(run, recipe)
    if not run.recipe.exists():
        return False
    previous = run.read_recipe()
    diff = recipe.diff(previous)
    if diff:
        if not any(run.checkpoints.glob("*.pt")):
            log.info("%s holds no checkpoint; starting it afresh with the new recipe", run.path)
            return False
        key, (new, old) = next(iter(diff.items()))
        more = f" (and {len(diff) - 1} more keys)" if len(diff) > 1 else ""
        raise RobustscaleError(
            f"{str(run.path)!r} was trained with {key}={old!r}, not {new!r}{more}; "
            "resume with the same recipe or choose another --run-dir"
        )
    status = run.read_status()
    if status is not None and status.state == "done":
        log.info("run %s is already done; nothing to train", run.path)
        return True
    return False


def _check_checkpoint_recipe(run: RunDir, recipe: Recipe) -> None:
    """Refuse to resume a checkpoint trained with other result-changing recipe values."""
    for name in ("last.pt", "last-prev.pt"):
        path = run.checkpoints / name
        if not path.is_file():
            continue
        try:
            state = safe_load(path, mmap=True)  # tensors stay mapped: a cheap look at the recipe
        except RobustscaleError:
            continue  # the resume falls back past a damaged file, or stops with one line
        saved = state.get("recipe") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            return
        wanted = recipe.result_dict()
        diff = {k: (v, saved[k]) for k, v in wanted.items() if k in saved and saved[k] != v}
        if diff:
            key, (new, old) = next(iter(diff.items()))
            more = f" (and {len(diff) - 1} more keys)" if len(diff) > 1 else ""
            raise RobustscaleError(
                f"{str(path)!r} was trained with {key}={old!r}, not {new!r}{more}; resume with the "
                "same recipe or choose another --run-dir"
            )
        return


def create_run_dir(run: RunDir, recipe: Recipe) -> None:
    """Create the run directory and write its recipe.yaml; temporary files left beside the
    checkpoints by a killed write are removed."""
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustscaleError(
            f"cannot create run directory {str(run.path)!r}: {exc.strerror}"
        ) from None
    remove_debris(run)
    atomic_write_text(run.recipe, recipe.to_yaml())


def remove_debris(run: RunDir) -> None:
    """Delete temporary files a killed write left in the run directory and beside its
    checkpoints (``.<name>.<random>.tmp``, ``.last.pt.next``); not eval/, where an evaluation may
    be writing right now."""
    for stale in remove_stale_temps(run.checkpoints) + remove_stale_temps(run.path):
        log.info("removed %s, left by an interrupted write", stale)


def write_status(
    run: RunDir,
    recipe: Recipe,
    state: str,
    progress: Any = None,
    reason: str | None = None,
    threads: int | None = None,
) -> None:
    """Rewrite status.json; without ``progress`` (epoch, best_epoch, best_val_pgd) the previous
    values are kept, so a failure after a kill still says how far the run got. ``threads``: the
    CPU intra-op thread count the run trains with (None on a GPU, or to keep the previous)."""
    previous = None
    if progress is None or threads is None:
        try:
            previous = run.read_status()
        except RobustscaleError:  # a damaged status is replaced, not a reason to lose this one
            previous = None
    p = progress
    run.write_status(
        Status(
            run_id=recipe.run_id,
            state=state,
            reason=reason,
            epoch=p.epoch if p else (previous.epoch if previous else 0),
            epochs=recipe.epochs,
            best_epoch=p.best_epoch if p else (previous.best_epoch if previous else None),
            best_val_pgd_acc=p.best_val_pgd
            if p
            else (previous.best_val_pgd_acc if previous else None),
            val_attack_steps=recipe.val_attack_steps,
            updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            pid=os.getpid(),
            threads=threads if threads is not None else (previous.threads if previous else None),
        )
    )
