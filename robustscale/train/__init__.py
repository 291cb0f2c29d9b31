"""The training engine: loop, AMP, EMA, schedules, model selection, checkpoint + exact resume.

The package is callable: ``robustscale.train(recipe)`` is :func:`robustscale.train.engine.train`
(see robustscale/_callable.py for why).
"""

from robustscale._callable import make_callable
from robustscale.train.engine import METRIC_COLUMNS, TrainingDiverged, train

__all__ = ["train", "METRIC_COLUMNS", "TrainingDiverged"]

make_callable(__name__, "train")
