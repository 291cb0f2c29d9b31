"""Analysis of a zoo table: predictor, envelope scaling laws, target costs, figures, report.

``analyze_zoo(df, out_dir)`` runs all of it; the pieces (``fit_power_law``,
``envelope_index``, ``fit_predictor``, ``cost_of_target``, ``fit_joint``, ``plan``, ...) are
plain functions.
"""

from robustscale.analysis.analyze import Analysis, analyze_zoo, fit_zoo, split_runs
from robustscale.analysis.forecast import forecast_recipe_outcome
from robustscale.analysis.frontier import JointFit, config_frontier, fit_joint_zoo
from robustscale.analysis.joint import JointLaw, fit_joint
from robustscale.analysis.planner import plan
from robustscale.analysis.predictor import FEATURES, Predictor, fit_predictor
from robustscale.analysis.scaling import N_BINS, PowerLaw, envelope_index, fit_power_law
from robustscale.analysis.target import cost_of_target

__all__ = [
    "FEATURES",
    "N_BINS",
    "Analysis",
    "JointFit",
    "JointLaw",
    "PowerLaw",
    "Predictor",
    "analyze_zoo",
    "config_frontier",
    "cost_of_target",
    "envelope_index",
    "fit_joint",
    "fit_joint_zoo",
    "fit_power_law",
    "fit_predictor",
    "fit_zoo",
    "forecast_recipe_outcome",
    "plan",
    "split_runs",
]
