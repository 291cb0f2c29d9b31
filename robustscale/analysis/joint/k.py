"""k, the training FLOPs per parameter per example of C = k N D, and the model names behind it.

k comes from the cost module (``robustscale.cost``), which counts the FLOPs of a robustscale or
timm model on a meta device as the engine does. A zoo made elsewhere names its models its own
way: :data:`MODEL_ALIASES` and :func:`robustscale_model` map the common ones (timm-adv-training's
``wide_resnet28_10`` and ``*_dm``, RobustBench's "WideResNet-70-16") to robustscale names;
where the cost module still cannot count the model, k is the zoo's own
``train_flops / (params x examples_seen)``, with the reason in ``k_source`` and in ``notes``.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import numpy as np

from robustscale.errors import RobustscaleError, first_line

log = logging.getLogger(__name__)

# Names other frameworks give the paper's WideResNets (timm-adv-training, RobustBench).
MODEL_ALIASES: dict[str, str] = {
    "wide_resnet28_10": "wrn28_10",
    "wide_resnet34_10": "wrn34_10",
    "wide_resnet34_20": "wrn34_20",
    "wide_resnet70_16": "wrn70_16",
}
# timm-adv-training's DeepMind WideResNets ``wide_resnet70_16_dm``; RobustBench's architecture
# strings ``WideResNet-70-16`` (``-dm`` / ``_dm`` / " (DM)" for DeepMind's variant)
_WRN = re.compile(
    r"^(?:wide_?resnet|wrn)[-_ ]?(\d+)[-_x](\d+)(?:[-_ ]?\(?(dm)\)?)?$", re.IGNORECASE
)


def robustscale_model(name: str) -> tuple[str, str | None]:
    """The robustscale (timm-registered) name of a model another framework names ``name``, and
    a note saying so (None when the name is used as it is)."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name], f"model {name!r} counted as robustscale's {MODEL_ALIASES[name]}"
    m = _WRN.match(name.strip())
    if not m:
        return name, None
    depth, width, dm = m.groups()
    alias = f"{'dm_' if dm else ''}wrn{depth}_{width}"
    if alias == name:
        return name, None
    return alias, f"model {name!r} counted as robustscale's {alias}"


def flops_per_param_example(
    df: Any, loss: str | None = None, attack_steps: int | None = None
) -> tuple[float, str]:
    """The zoo's own k = median train_flops / (params * examples_seen): for the given loss and
    steps, else all runs. A cross-check of :func:`cost_flops_per_param_example`, and the fallback
    where the cost module cannot count the zoo's model (another lab's architecture)."""
    ratio = df["train_flops"].to_numpy(float, na_value=np.nan) / (
        df["params"].to_numpy(float, na_value=np.nan)
        * df["examples_seen"].to_numpy(float, na_value=np.nan)
    )
    valid = np.isfinite(ratio) & (ratio > 0)
    sel = valid.copy()
    if loss is not None:
        sel &= (df["loss"].astype("string") == loss).fillna(False).to_numpy(bool)
    if attack_steps is not None:
        sel &= (df["attack_steps"] == attack_steps).fillna(False).to_numpy(bool)
    if sel.any():
        return float(np.median(ratio[sel])), f"zoo median of {int(sel.sum())} runs" + (
            f" with loss={loss}" if loss else ""
        ) + (f", attack_steps={attack_steps}" if attack_steps else "")
    if not valid.any():
        raise RobustscaleError(
            "no zoo run has train_flops, params and examples_seen; cannot derive FLOPs per "
            "parameter per example"
        )
    return float(
        np.median(ratio[valid])
    ), f"zoo median of all {int(valid.sum())} runs (none matched the configuration)"


@functools.lru_cache(maxsize=512)
def cost_flops_per_example(
    dataset: str,
    model: str,
    loss: str,
    attack_steps: int,
    activation: str = "relu",
    val_attack_steps: int | None = None,
) -> tuple[float, int]:
    """(training FLOPs per example, trainable parameters) of ``model`` trained with ``loss`` and
    ``attack_steps`` on ``dataset``, measured by the cost module (``robustscale.cost``) on a meta
    model, as the engine counts them. Raises :class:`RobustscaleError` when it cannot be counted
    (a model timm does not know, one that does not run at the dataset's image size, ...).

    ``val_attack_steps`` changes no training FLOP, but the cost module measures training and
    validation together: give the recipe's own (default: the Recipe's) so that forecasting that
    recipe afterwards reuses this measurement instead of making a second one."""
    try:
        from robustscale.cost.forecast import recipe_params, recipe_step_flops
        from robustscale.recipe import Recipe
    except ImportError as exc:
        raise RobustscaleError(f"the cost module is not available ({exc})") from None
    model, _ = robustscale_model(model)
    what = f"{model} on {dataset} ({loss}, {attack_steps} attack steps)"
    try:
        recipe = Recipe(
            dataset=dataset,
            model=model,
            activation=activation,
            loss=loss,
            attack_steps=int(attack_steps) if loss != "standard" else 0,
            **({} if val_attack_steps is None else {"val_attack_steps": int(val_attack_steps)}),
        )
        per_example, params = float(recipe_step_flops(recipe).train), int(recipe_params(recipe))
    except RobustscaleError as exc:
        raise RobustscaleError(f"cannot count the FLOPs of {what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a timm model that does not run at this image size
        raise RobustscaleError(
            f"cannot count the FLOPs of {what}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not (per_example > 0 and params > 0):
        raise RobustscaleError(
            f"cannot count the FLOPs of {what}: {per_example:g} FLOPs, {params} parameters"
        )
    return per_example, params


def cost_flops_per_param_example(
    dataset: str, model: str, loss: str, attack_steps: int, activation: str = "relu"
) -> float:
    """k from the cost module: measured training FLOPs per example / trainable parameters."""
    per_example, params = cost_flops_per_example(dataset, model, loss, attack_steps, activation)
    return per_example / params


def _mode(series: Any) -> Any:
    values = series.dropna()
    return values.mode().iloc[0] if len(values) else None


def choose_k(
    df: Any, runs: Any, loss: str | None = None, attack_steps: int | None = None
) -> dict[str, Any]:
    """k (FLOPs per parameter per example) for C = k N D, from the cost module's measured FLOPs for
    the chosen loss and attack steps (the fitted runs' most common ones where not given) on the
    runs' most common dataset, model and activation; the zoo's own median beside it as a
    cross-check, and in its place where the cost module cannot count that model.

    Returns ``k``, ``k_source``, ``k_zoo``, ``k_zoo_source`` (None when the zoo has no FLOPs)
    and ``reference`` (the configuration k was measured for).
    """
    try:
        k_zoo, zoo_source = flops_per_param_example(df, loss, attack_steps)
    except RobustscaleError as exc:
        k_zoo, zoo_source = None, str(exc)
    ref = {
        "dataset": _mode(runs["dataset"]),
        "model": _mode(runs["model"]),
        "loss": loss if loss is not None else _mode(runs["loss"]),
        "attack_steps": attack_steps if attack_steps is not None else _mode(runs["attack_steps"]),
        "activation": _mode(runs["activation"]) or "relu",
    }
    out: dict[str, Any] = {
        "k_zoo": k_zoo,
        "k_zoo_source": zoo_source,
        "reference": ref,
        "notes": [],
    }
    if ref["model"] is not None:
        ref["model_counted"], alias_note = robustscale_model(str(ref["model"]))
        if alias_note:
            out["notes"].append(alias_note)
    try:
        if any(ref[key] is None for key in ("dataset", "model", "loss", "attack_steps")):
            raise RobustscaleError(
                "the runs do not name their dataset, model, loss and attack steps"
            )
        k = cost_flops_per_param_example(
            str(ref["dataset"]),
            str(ref["model_counted"]),
            str(ref["loss"]),
            int(ref["attack_steps"]),
            str(ref["activation"]),
        )
    except RobustscaleError as exc:
        if k_zoo is None:
            raise RobustscaleError(f"{exc}; and {zoo_source}") from None
        log.warning("k from the zoo's own FLOPs: %s", exc)
        note = (
            f"k is the zoo's own train_flops / (params x examples_seen) ({zoo_source}): "
            "the cost module "
            f"could not count the model: {exc}"
        )
        out["notes"].append(note)
        return {
            **out,
            "k": k_zoo,
            "k_source": f"{zoo_source}; the cost module could not count it: {exc}",
        }
    source = (
        "robustscale.cost: measured training FLOPs per example of "
        f"{ref['model_counted']} on {ref['dataset']}, "
        f"{ref['loss']}"
        + (f"-{int(ref['attack_steps'])}" if ref["loss"] != "standard" else "")
        + " / parameters"
    )
    return {**out, "k": k, "k_source": source}
