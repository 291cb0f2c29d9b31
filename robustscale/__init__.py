"""robustscale: compute-aware adversarial robustness.

Train robust classifiers with the field's recipes, evaluate them with PGD and AutoAttack,
record what every run cost, sweep recipe grids, and turn the model zoo into scaling laws.

    from robustscale import Recipe, train, load, evaluate, load_split

``train`` and ``evaluate`` share their names with the subpackage/module that defines them, so
they are imported eagerly (a lazy attribute would be shadowed by the submodule on first import);
everything else is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from robustscale.errors import RobustscaleError  # noqa: E402
from robustscale.recipe import Recipe  # noqa: E402
from robustscale.train import train  # noqa: E402

from robustscale.evaluate import evaluate, evaluate_run, load_split  # noqa: E402,F401

_EXPORTS = {
    "load": "robustscale.runs",
    "read_recipe": "robustscale.runs",
    "build_model": "robustscale.models",
    "count_params": "robustscale.models",
}

__all__ = ["Recipe", "RobustscaleError", "train", "evaluate", "evaluate_run", "load_split", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robustscale' has no attribute {name!r}")
