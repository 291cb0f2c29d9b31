"""Weights & Biases through ``wandb``: offline (files under RUN/wandb, or WANDB_DIR) unless the
user configured W&B (WANDB_MODE or WANDB_API_KEY set); group = the sweep's name; the W&B run
id is kept in RUN/trackers.json and a resumed run continues it with ``resume="allow"``."""

from __future__ import annotations

import os
import uuid
from typing import Any

from robustscale.trackers.base import Tracker, hparam_value

PROJECT = "robustscale"


class WandbTracker(Tracker):
    name = "wandb"

    def open(self) -> None:
        import wandb

        configured = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
        run_id = self.state.get("run_id") or uuid.uuid4().hex[:8]
        folder = os.environ.get("WANDB_DIR") or str(self.ctx.run_dir)
        self.run: Any = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            group=self.ctx.group,
            name=self.ctx.run_id,
            id=run_id,
            resume="allow",
            dir=folder,
            mode=None if configured else "offline",
            config={k: hparam_value(v) for k, v in self.ctx.recipe.items()},
            reinit="create_new",
        )
        if self.state.get("run_id") != run_id:
            self.state.pop("epoch", None)
        self.state["run_id"] = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)
