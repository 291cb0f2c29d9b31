"""MLflow through ``mlflow.tracking.MlflowClient``: a file store in RUN/mlruns unless
``MLFLOW_TRACKING_URI`` is set; experiment = the sweep's name (else ``robustscale``), run
name = the run id. The MLflow run id is kept in RUN/trackers.json, so a resumed run logs into
the same MLflow run. The client API is used, not the fluent one, so no global active run leaks
into the caller's process."""

from __future__ import annotations

import os
import time
from typing import Any

from robustscale.trackers.base import Tracker, hparam_value

DEFAULT_EXPERIMENT = "robustscale"


class MlflowTracker(Tracker):
    name = "mlflow"

    def open(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local default: a file store beside the run, which MLflow 3 asks to allow
            uri = (self.ctx.run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client: Any = MlflowClient(tracking_uri=uri)
        run_id = self.state.get("run_id")
        if run_id and self.state.get("tracking_uri") == uri:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        name = self.ctx.group or DEFAULT_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        tags = {"robustscale.run_id": self.ctx.run_id, "robustscale.run_dir": str(self.ctx.run_dir)}
        if self.ctx.group:
            tags["robustscale.sweep"] = self.ctx.group
        run = self.client.create_run(exp_id, run_name=self.ctx.run_id, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(hparam_value(v))) for k, v in self.ctx.recipe.items()]
        self.client.log_batch(self.run_id, params=params)
        self.state.update(run_id=self.run_id, tracking_uri=uri, experiment_id=exp_id)
        self.state.pop("epoch", None)  # a new MLflow run has received nothing yet

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()]
        )

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")
