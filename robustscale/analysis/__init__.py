"""Analysis of a zoo table: predictor, envelope scaling laws, the joint law, figures, report.

Layers, each importing only those before it: ``scaling`` (envelope power laws), ``predictor``,
``target`` (the envelope law's cost of a target), ``outcome`` (a recipe's forecast);
``joint/`` (the joint law L(N, D), its families, k, frontier, the one cost-of-target function
and the planner); ``zoo_fit`` (all fits of one zoo, no files); ``report`` (figures and HTML;
matplotlib is imported only where a figure is drawn); ``drawing`` (the figures drawn in a
forked process beside the fits); ``analyze`` (the orchestrator, ``analyze_zoo``), which nothing
in the package imports.

Names are loaded on first use, so ``import robustscale.analysis`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "analyze_zoo": "robustscale.analysis.analyze",
    "Analysis": "robustscale.analysis.zoo_fit",
    "fit_zoo": "robustscale.analysis.zoo_fit",
    "split_runs": "robustscale.analysis.zoo_fit",
    "forecast_recipe_outcome": "robustscale.analysis.outcome",
    "JointFit": "robustscale.analysis.joint.frontier",
    "config_frontier": "robustscale.analysis.joint.frontier",
    "fit_joint_zoo": "robustscale.analysis.joint.frontier",
    "fit_families": "robustscale.analysis.joint.frontier",
    "JointLaw": "robustscale.analysis.joint.law",
    "fit_joint": "robustscale.analysis.joint.law",
    "cost_of_target": "robustscale.analysis.joint.target",
    "plan": "robustscale.analysis.joint.planner",
    "FEATURES": "robustscale.analysis.predictor",
    "Predictor": "robustscale.analysis.predictor",
    "fit_predictor": "robustscale.analysis.predictor",
    "N_BINS": "robustscale.analysis.scaling",
    "PowerLaw": "robustscale.analysis.scaling",
    "envelope_index": "robustscale.analysis.scaling",
    "fit_power_law": "robustscale.analysis.scaling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robustscale.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
