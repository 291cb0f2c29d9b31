"""TensorBoard through ``torch.utils.tensorboard.SummaryWriter``: event files in RUN/tensorboard/.

Scalars are written in the new tensor format in double precision, so a value read back with
tensorboard's ``EventAccumulator`` is the metrics.csv number bit for bit (the classic
``simple_value`` is float32 and would round FLOPs and losses). A resumed run appends to the
same folder; on opening, the (tag, step) pairs already in its event files are read, and those
are not written again, so a process killed after writing an epoch but before recording it in
trackers.json leaves no duplicated step (``purge_step`` would hide them from TensorBoard's UI,
but tensorboard's EventAccumulator does not purge tensor events).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robustscale.trackers.base import Tracker, hparam_value

log = logging.getLogger(__name__)


def logged_steps(folder: Path) -> set[tuple[str, int]]:
    """(tag, step) of every summary value in the event files of ``folder``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen: set[tuple[str, int]] = set()
    for path in sorted(folder.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                seen.update((v.tag, int(event.step)) for v in event.summary.value)
        except Exception as exc:  # noqa: BLE001 - a torn last record from a kill ends that file
            log.info("stopped reading %s at a damaged record (%s)", path, exc)
    return seen


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.ctx.run_dir / "tensorboard"
        self.seen = logged_steps(folder) if folder.is_dir() else set()
        self.writer: Any = SummaryWriter(log_dir=str(folder))
        if not self.state.get("hparams"):
            from torch.utils.tensorboard.summary import hparams

            params = {k: hparam_value(v) for k, v in self.ctx.recipe.items()}
            for summary in hparams(params, metric_dict={}):
                self.writer.file_writer.add_summary(summary)
            if self.ctx.group:
                self.writer.add_text("sweep", self.ctx.group, 0)
            self.writer.flush()
            self.state["hparams"] = True

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            if (key, step) not in self.seen:
                self.writer.add_scalar(key, value, step, new_style=True, double_precision=True)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()
