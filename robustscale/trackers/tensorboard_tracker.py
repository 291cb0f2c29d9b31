"""TensorBoard through ``torch.utils.tensorboard.SummaryWriter``: event files in RUN/tensorboard/.

Scalars are written in the new tensor format in double precision, so a value read back with
tensorboard's ``EventAccumulator`` is the metrics.csv number bit for bit (the classic
``simple_value`` is float32 and would round FLOPs and losses). A resumed run opens the same
folder with ``purge_step`` at the first epoch it has not recorded, so steps an interrupted
process wrote after its last record are hidden instead of duplicated.
"""

from __future__ import annotations

from typing import Any

from robustscale.trackers.base import Tracker, hparam_value


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        done = self.state.get("epoch")
        self.writer: Any = SummaryWriter(log_dir=str(self.ctx.run_dir / "tensorboard"),
                                         purge_step=int(done) + 1 if done is not None else None)
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
            self.writer.add_scalar(key, value, step, new_style=True, double_precision=True)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()
