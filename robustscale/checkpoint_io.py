"""Reading and writing ``.pt`` files safely: below ``train/``, so that the run directory and
evaluation load checkpoints without importing the training engine.

Loading always uses ``torch.load(..., weights_only=True)``: a checkpoint file can never run
code. Writing goes through :func:`robustscale.files.atomic_save`; torch's own writer reports a
full disk as ``RuntimeError: ... unexpected pos``, so the file object it writes to records the
operating-system error and that one is raised instead (one line naming the path and ENOSPC).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError, first_line
from robustscale.files import atomic_save

FORMAT_VERSION = 1


class _RecordingWriter(io.RawIOBase):
    """The file torch writes to: passes bytes on and keeps the first OSError a write raised."""

    def __init__(self, f: Any):
        super().__init__()
        self._f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` into ``path`` atomically; a full or read-only disk is one line."""
    import torch

    def write(f: Any) -> None:
        sink = _RecordingWriter(f)
        try:
            torch.save(obj, sink)
            sink.flush()
        except RuntimeError:
            if sink.error is not None:  # torch's "unexpected pos" hides the real cause
                raise sink.error from None
            raise

    atomic_save(path, write)


def safe_load(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load`` that never runs code from the file; a missing, truncated, corrupt or unsafe
    file is one clear line naming it. ``mmap`` maps tensors instead of reading them (a cheap look
    at a large checkpoint's small entries)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RobustscaleError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
    ) as exc:
        reason = first_line(exc)[:160]
        raise RobustscaleError(
            f"checkpoint {str(path)!r} is truncated, corrupt or unsafe to load "
            f"({reason}); delete it to fall back to an older one, "
            "or retrain"
        ) from None


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A robustscale checkpoint (a dict with a ``model`` state dict), loaded safely."""
    state = safe_load(path, mmap=mmap)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise RobustscaleError(
            f"checkpoint {str(path)!r} is not a robustscale checkpoint "
            "(no 'model' entry); delete it or restore it from a backup"
        )
    return state


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not an intact checkpoint (missing, or its zip directory unreadable), or
    None; reads only the end of the file, so a zoo of large checkpoints is checked quickly."""
    path = Path(path)
    if not path.is_file():
        return f"missing {path.name}"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"unreadable {path.name}: truncated or not a checkpoint ({first_line(exc)})"
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return f"unreadable {path.name}: not a torch checkpoint"
    return None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp`` files (and ``.last.pt.next``) left in ``folder`` by a write that was
    killed (the atomic writers name their temporary files so); returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in [*folder.glob(".*.tmp"), *folder.glob(".*.next")]:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed
