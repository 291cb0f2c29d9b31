"""robustscale: compute-aware adversarial robustness.

Train robust classifiers with the field's recipes, evaluate them with PGD and AutoAttack,
record what every run cost, sweep recipe grids, and turn the model zoo into scaling laws.

    from robustscale import Recipe, train, load, evaluate, load_split

Everything is imported on first use, so ``import robustscale`` (and with it
``robustscale --help`` and ``robustscale status``) never imports torch. ``train`` and
``evaluate`` are modules that can be called as their function (robustscale/_callable.py).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from robustscale.errors import RobustscaleError  # noqa: E402

# public name -> the module that defines it
_EXPORTS = {
    "Recipe": "robustscale.recipe",
    "train": "robustscale.train",
    "evaluate": "robustscale.evaluate",
    "evaluate_run": "robustscale.evaluate",
    "load_split": "robustscale.evaluate",
    "load": "robustscale.runs",
    "read_recipe": "robustscale.runs",
    "build_model": "robustscale.models",
    "count_params": "robustscale.models",
}

__all__ = ["RobustscaleError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate"):
        # the (callable) submodule itself; importing it binds it as this package's attribute
        return importlib.import_module(_EXPORTS[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robustscale' has no attribute {name!r}")
