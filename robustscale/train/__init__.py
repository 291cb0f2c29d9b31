"""The training engine: loop, AMP, EMA, schedules, model selection, checkpoint + exact resume."""

from robustscale.train.engine import METRIC_COLUMNS, TrainingDiverged, train

__all__ = ["train", "METRIC_COLUMNS", "TrainingDiverged"]
