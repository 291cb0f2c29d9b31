"""Forecast a recipe not yet trained: its AutoAttack accuracy (predictor) and its bill (laws).

The FLOPs come from ``robustscale.cost.forecast_recipe`` when that function exists; kWh, USD and
CO2 then come from the zoo's fitted energy, electricity and CO2 laws at those FLOPs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from robustscale.analysis.predictor import FEATURES, Predictor
from robustscale.analysis.scaling import PowerLaw
from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

# (num_classes, in_chans) per dataset, for counting a model's parameters
DATASET_SHAPES = {"cifar10": (10, 3), "cifar100": (100, 3), "digits": (10, 1)}


def recipe_params(recipe: dict[str, Any], zoo: Any) -> tuple[float, str]:
    """Parameters of the recipe's model and where the number came from."""
    name = str(recipe.get("model", ""))
    try:
        from robustscale.models import count_params
    except ImportError:
        count_params = None
    if count_params is not None:
        classes, chans = DATASET_SHAPES.get(str(recipe.get("dataset", "cifar10")), (10, 3))
        try:
            return float(count_params(name, classes, chans)), "robustscale.models.count_params"
        except (RobustscaleError, KeyError, RuntimeError, ValueError) as exc:
            log.debug("count_params(%r) failed: %s", name, exc)
    rows = zoo[(zoo["model"].astype("string") == name) & zoo["params"].notna()]
    if len(rows):
        return float(rows["params"].median()), "zoo rows with the same model"
    raise RobustscaleError(f"model={name!r}: cannot count its parameters and no zoo row has it; "
                           f"models in the zoo: {', '.join(sorted(zoo['model'].dropna().astype(str).unique()))}")


def recipe_features(recipe: dict[str, Any], zoo: Any) -> tuple[dict[str, Any], str]:
    """The predictor's feature row for a recipe dict (keys as in recipe.yaml)."""
    params, source = recipe_params(recipe, zoo)
    loss = str(recipe.get("loss", "pgd"))
    row = {"params": params, "synthetic_data": float(recipe.get("synthetic_data") is not None),
           "activation": str(recipe.get("activation", "relu")), "loss": loss,
           "attack_steps": float(recipe.get("attack_steps", 10)),
           "ema": float(recipe.get("ema_decay") is not None)}
    return row, source


def forecast_flops(recipe: dict[str, Any]) -> tuple[float | None, str]:
    """Total training FLOPs from ``robustscale.cost.forecast_recipe``, or None and why not."""
    try:
        from robustscale.cost import forecast_recipe  # built by the cost module's owner
    except ImportError:
        return None, "FLOPs forecast unavailable (robustscale.cost.forecast_recipe is not present)"
    arg: Any = recipe
    try:
        from robustscale.recipe import Recipe
    except ImportError:
        Recipe = None  # noqa: N806
    try:
        if Recipe is not None:
            arg = Recipe.from_dict(dict(recipe))
        result = forecast_recipe(arg)
    except RobustscaleError as exc:
        return None, f"FLOPs forecast unavailable: {exc}"
    flops = result.get("train_flops_total") if isinstance(result, dict) else None
    if flops is None:
        return None, "FLOPs forecast unavailable (forecast_recipe gave no train_flops_total)"
    return float(flops), "robustscale.cost.forecast_recipe"


def _law_at(law: PowerLaw | str | None, flops: float) -> dict[str, Any]:
    if not isinstance(law, PowerLaw):
        return {"value": None, "ci": [None, None], "note": str(law)}
    lx = math.log(flops)
    if len(law.boot):
        draws = np.exp(law.boot[:, 1] + law.boot[:, 0] * lx)
        ci = [float(v) for v in np.percentile(draws, [2.5, 97.5])]
    else:
        ci = [None, None]
    return {"value": float(law.C * flops**law.alpha), "ci": ci}


def forecast_recipe_outcome(recipe: dict[str, Any], zoo: Any, predictor: Predictor,
                            laws: dict[str, PowerLaw | str]) -> dict[str, Any]:
    """Predicted AutoAttack accuracy (with interval) and forecast FLOPs, kWh, USD, kg CO2."""
    import pandas as pd

    row, params_source = recipe_features(recipe, zoo)
    pred = predictor.predict(pd.DataFrame([row], columns=FEATURES))
    out: dict[str, Any] = {
        "features": row, "params_source": params_source,
        "autoattack_acc": float(pred["mean"][0]),
        "autoattack_acc_ci": [float(pred["low"][0]), float(pred["high"][0])],
    }
    flops, source = forecast_flops(recipe)
    out["flops"], out["flops_source"] = flops, source
    if flops is not None:
        out["flops_in_zoo_range"] = bool(zoo["train_flops"].min() <= flops <= zoo["train_flops"].max())
        for key, name in (("kwh", "energy"), ("usd", "electricity"), ("kg_co2", "co2")):
            out[key] = _law_at(laws.get(name), flops)
    return out
