"""Checkpoints: everything for an exact continuation, written atomically, loaded without pickle
code.

``last.pt`` holds model, EMA, optimizer, scheduler position, grad scaler, epoch and step, the
partial-epoch accumulators, the cost totals and every RNG state. Before a new ``last.pt``
replaces the old one, the old one becomes ``last-prev.pt``, so a truncated or corrupt
``last.pt`` still leaves an intact checkpoint to resume from. ``best.pt`` holds the selected
weights (the EMA weights when EMA is on) and the score that selected them.

Loading (``robustscale/checkpoint_io.py``) always uses ``torch.load(..., weights_only=True)``:
a checkpoint file can never run code. Python and NumPy RNG states are stored as tensors and
lists for that reason.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustscale.checkpoint_io import FORMAT_VERSION, load_checkpoint, safe_load, torch_save
from robustscale.errors import RobustscaleError
from robustscale.files import replace_files

log = logging.getLogger(__name__)
__all__ = [
    "FORMAT_VERSION",
    "load_checkpoint",
    "safe_load",
    "save_checkpoint",
    "load_resume_checkpoint",
    "rng_state",
    "set_rng_state",
]


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` atomically; with ``keep_previous`` the old file survives as
    ``<stem>-prev.pt``."""
    path = Path(path)
    state = {"format_version": FORMAT_VERSION, **state}
    if keep_previous and path.exists():
        tmp = path.with_name(f".{path.name}.next")
        torch_save(tmp, state)
        prev = path.with_name(f"{path.stem}-prev{path.suffix}")
        # the old file gets its second name through a hard link, so ``path`` exists at every
        # moment (renaming it away first left a gap in which a reader, e.g. `status` or a
        # tracker test, found no checkpoint at all); without hard links, rename as before
        link = path.with_name(f".{prev.name}.tmp")
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)
        except OSError:
            replace_files((path, prev), (tmp, path))
        else:
            replace_files((link, prev), (tmp, path))
    else:
        torch_save(path, state)


def load_resume_checkpoint(ckpt_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest intact resume checkpoint (``last.pt``, else ``last-prev.pt``), with a warning when
    falling back. Returns (None, None) when there is none at all."""
    candidates = [ckpt_dir / "last.pt", ckpt_dir / "last-prev.pt"]
    for i, path in enumerate(candidates):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except RobustscaleError as exc:
            log.warning("warning: %s; falling back to an older checkpoint", exc)
            continue
        if i > 0:
            log.warning("warning: resuming from the intact older checkpoint %s", path)
        return state, path
    if any(p.exists() for p in candidates):
        raise RobustscaleError(
            f"no intact checkpoint in {str(ckpt_dir)!r}; delete the run folder to start over"
        )
    return None, None


def rng_state() -> dict[str, Any]:
    """Every RNG the engine may touch (dropout uses torch's global generator)."""
    np_state = np.random.get_state()
    state = {
        "python": _py_state_to_list(random.getstate()),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_py_state_from_list(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_list(s: tuple) -> list:
    version, internal, gauss = s
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _py_state_from_list(s: list) -> tuple:
    version, internal, gauss = s
    return (int(version), tuple(int(v) for v in internal.tolist()), gauss)
