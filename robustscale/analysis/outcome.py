"""The predicted outcome of a recipe not yet trained: its AutoAttack accuracy (predictor) and
its bill (laws).

The recipe is validated by :class:`~robustscale.recipe.Recipe` first, so a missing key means
what it means for ``robustscale train`` (the Recipe's default), never a default of our own.
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


def as_recipe(recipe: Any) -> Any:
    """A :class:`~robustscale.recipe.Recipe` from a Recipe or a plain dict (keys as in recipe.yaml);
    a mistake is one line (:class:`RobustscaleError`)."""
    from robustscale.recipe import Recipe

    return recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)


def recipe_model_params(recipe: Any, zoo: Any) -> tuple[float, str]:
    """Parameters of the recipe's model for its dataset, and where the number came from."""
    from robustscale.data import dataset_info
    from robustscale.models import count_params

    recipe = as_recipe(recipe)
    info = dataset_info(recipe.dataset, recipe.data_dir)
    try:
        return float(
            count_params(recipe.model, info.num_classes, info.shape[0], recipe.activation)
        ), "robustscale.models.count_params"
    except (RobustscaleError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        log.debug("count_params(%r) failed: %s", recipe.model, exc)
    rows = zoo[(zoo["model"].astype("string") == recipe.model) & zoo["params"].notna()]
    if len(rows):
        return float(rows["params"].median()), "zoo rows with the same model"
    raise RobustscaleError(
        f"model={recipe.model!r}: cannot count its parameters and no zoo row has it; "
        f"models in the zoo: {', '.join(sorted(zoo['model'].dropna().astype(str).unique()))}"
    )


def recipe_features(recipe: Any, zoo: Any) -> tuple[dict[str, Any], str]:
    """The predictor's feature row for a recipe (a Recipe, or a dict validated as one)."""
    recipe = as_recipe(recipe)
    params, source = recipe_model_params(recipe, zoo)
    row = {
        "params": params,
        "synthetic_data": float(recipe.synthetic_data is not None),
        "activation": recipe.activation,
        "loss": recipe.loss,
        "attack_steps": float(recipe.attack_steps if recipe.adversarial else 0),
        "ema": float(recipe.ema_decay is not None),
        "examples_seen": float(_examples_per_epoch(recipe) * recipe.epochs),
    }
    return row, source


def _examples_per_epoch(recipe: Any) -> int:
    """The examples an epoch of the recipe processes, as its run would record them."""
    from robustscale.cost.forecast import forecast_batch_plan

    return forecast_batch_plan(recipe).examples_per_epoch


def recipe_flops_forecast(recipe: Any) -> tuple[float | None, str]:
    """Total training FLOPs from ``robustscale.cost.forecast_recipe``, or None and why not."""
    try:
        from robustscale.cost import forecast_recipe
    except ImportError:
        return None, "FLOPs forecast unavailable (robustscale.cost.forecast_recipe is not present)"
    try:
        result = forecast_recipe(as_recipe(recipe))
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


def forecast_recipe_outcome(
    recipe: Any, zoo: Any, predictor: Predictor, laws: dict[str, PowerLaw | str]
) -> dict[str, Any]:
    """Predicted AutoAttack accuracy (with interval) and forecast FLOPs, kWh, USD, kg CO2 of a
    recipe (a Recipe, or a dict validated as one: keys it lacks take the Recipe's defaults)."""
    import pandas as pd

    recipe = as_recipe(recipe)
    row, params_source = recipe_features(recipe, zoo)
    pred = predictor.predict(pd.DataFrame([row], columns=FEATURES))
    out: dict[str, Any] = {
        "recipe": {"dataset": recipe.dataset, "model": recipe.model, "epochs": recipe.epochs},
        "features": row,
        "params_source": params_source,
        "autoattack_acc": float(pred["mean"][0]),
        "autoattack_acc_ci": [float(pred["low"][0]), float(pred["high"][0])],
        "warnings": [],
    }
    datasets = sorted(zoo["dataset"].dropna().astype(str).unique())
    if datasets and recipe.dataset not in datasets:
        out["warnings"].append(
            f"the recipe trains on {recipe.dataset} but the zoo's runs are on "
            f"{', '.join(datasets)}: the prediction transfers across datasets "
            "(a recipe without 'dataset' trains on digits, the Recipe's default)"
        )
    flops, source = recipe_flops_forecast(recipe)
    out["flops"], out["flops_source"] = flops, source
    if flops is not None:
        out["flops_in_zoo_range"] = bool(
            zoo["train_flops"].min() <= flops <= zoo["train_flops"].max()
        )
        for key, name in (("kwh", "energy"), ("usd", "electricity"), ("kg_co2", "co2")):
            out[key] = _law_at(laws.get(name), flops)
    return out
