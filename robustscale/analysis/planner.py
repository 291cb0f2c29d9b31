"""Compute-optimal planning: the model size and data that a budget should buy, or the cheapest
plan predicted to reach a target robust accuracy, with the bill and a recipe ready to train.

Compute is C = k * N * D with k the zoo's own median FLOPs per parameter per example for the
chosen loss and attack steps (an adversarial step costs a forward and a backward per attack
step, so k is far above the 6 of standard training). Under the joint law
L(N, D) = E + A/N^alpha + B/D^beta the optimum on N * D = C / k is analytic (see joint.optimum);
the plan then takes the nearest model that exists and the examples the budget leaves for it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from robustscale.analysis.frontier import JointFit, fit_joint_zoo
from robustscale.analysis.joint import law_error
from robustscale.analysis.scaling import PowerLaw
from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

# Trainable parameters at 32x32, 10 classes (robustscale.models.count_params).
MODEL_TABLE: dict[str, int] = {
    "wrn10_1": 77_850, "wrn16_1": 175_066, "wrn16_4": 2_748_890, "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474, "wrn34_20": 184_531_674, "wrn70_16": 266_796_506,
}
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000}
UNITS = {"flops": None, "usd": ("electricity", "electricity_cost_usd"), "kwh": ("energy", "energy_kwh"),
         "kgco2": ("co2", "co2_kg")}


def nearest_model(n_params: float, table: dict[str, int] = MODEL_TABLE) -> str:
    """The model in ``table`` whose parameter count is nearest to ``n_params`` on a log scale."""
    return min(table, key=lambda m: abs(math.log(table[m]) - math.log(n_params)))


def _cost_laws(df: Any, seed: int) -> dict[str, PowerLaw | str]:
    from robustscale.analysis.analyze import fit_zoo

    try:
        return fit_zoo(df, seed=seed, n_boot=200, with_predictor=False).laws
    except RobustscaleError as exc:
        return {name: f"not fitted: {exc}" for name in ("energy", "electricity", "co2")}


def _per_flop(df: Any, col: str) -> float | None:
    ratio = df[col].to_numpy(float, na_value=np.nan) / df["train_flops"].to_numpy(float, na_value=np.nan)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.median(ratio)) if len(ratio) else None


def to_flops(value: float, unit: str, laws: dict[str, Any], df: Any) -> float:
    """A budget in FLOPs, USD, kWh or kg CO2 as FLOPs (inverting the zoo's cost law)."""
    if unit not in UNITS:
        raise RobustscaleError(f"--unit {unit!r} is not known; allowed: {', '.join(UNITS)}")
    if unit == "flops":
        return float(value)
    name, col = UNITS[unit]
    law = laws.get(name)
    if isinstance(law, PowerLaw) and law.alpha > 0:
        return float((value / law.C) ** (1.0 / law.alpha))
    per = _per_flop(df, col)
    if per is None:
        raise RobustscaleError(f"the zoo has no {col} values; give the budget in flops")
    return float(value / per)


def bill(flops: float, laws: dict[str, Any], df: Any) -> dict[str, float | None]:
    """FLOPs, kWh, USD and kg CO2 of a run of ``flops`` (cost laws, else median cost per FLOP)."""
    out: dict[str, float | None] = {"flops": float(flops)}
    for key, unit in (("kwh", "kwh"), ("usd", "usd"), ("kg_co2", "kgco2")):
        name, col = UNITS[unit]
        law = laws.get(name)
        if isinstance(law, PowerLaw):
            out[key] = float(law.C * flops**law.alpha)
        else:
            per = _per_flop(df, col)
            out[key] = None if per is None else per * flops
    return out


def _acc_with_interval(jf: JointFit, n: float, d: float) -> tuple[float, list[float] | None]:
    acc = float(100.0 - jf.law.error(n, d))
    if len(jf.law.boot) == 0:
        return acc, None
    draws = 100.0 - np.array([law_error(t, n, d) for t in jf.law.boot])
    return acc, [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def _train_size(jf: JointFit, dataset: str) -> float:
    if dataset in TRAIN_SIZES:
        return float(TRAIN_SIZES[dataset])
    runs = jf.runs
    return float(np.median(runs["examples_seen"].to_numpy(float) / runs["epochs"].to_numpy(float)))


def _cheapest_for_target(jf: JointFit, target: float) -> tuple[str, float] | None:
    """The table model and examples reaching ``target`` accuracy at least compute, or None."""
    E, A, alpha, B, beta = jf.law.theta
    best: tuple[float, str, float] | None = None
    for model, n in MODEL_TABLE.items():
        room = (100.0 - target) - E - A / n**alpha
        if room <= 0:
            continue
        d = (B / room) ** (1.0 / beta)
        if best is None or n * d < best[0]:
            best = (n * d, model, d)
    return None if best is None else (best[1], best[2])


def _ideal_flops_for_target(jf: JointFit, target: float) -> float:
    """Least compute at which the law's optimum reaches ``target`` (bisection in log C)."""
    lo, hi = 0.0, 80.0 * math.log(10)
    for _ in range(200):
        mid = (lo + hi) / 2
        n, d = jf.law.optimum(math.exp(mid), jf.k)
        lo, hi = (mid, hi) if 100.0 - jf.law.error(n, d) < target else (lo, mid)
    return math.exp(hi)


def plan(df: Any, budget: float | None = None, unit: str = "flops", target_acc: float | None = None,
         loss: str | None = None, attack_steps: int | None = None, seed: int = 0, n_boot: int = 100,
         collapse_threshold: float = 10.0, synthetic_data: str | None = None) -> dict[str, Any]:
    """A compute-optimal plan for a budget (``budget`` in ``unit``) or for ``target_acc``.

    Returns a dict: the law's optimum (N*, D*), the chosen model and examples, epochs, synthetic
    data, predicted AutoAttack accuracy with a bootstrap 95% interval, the bill, warnings, and
    ``recipe`` (a dict ready for ``robustscale train``). Raises :class:`RobustscaleError` for a
    budget below the smallest run of the zoo or a target beyond the law's asymptote.
    """
    from robustscale.zoo import coerce_types, validate_zoo

    if (budget is None) == (target_acc is None):
        raise RobustscaleError("give exactly one of --budget or --target-acc")
    df = coerce_types(df)
    validate_zoo(df)
    jf = fit_joint_zoo(df, collapse_threshold, loss, attack_steps, seed=seed, n_boot=n_boot)
    laws = _cost_laws(df, seed)
    asymptote = 100.0 - jf.law.E
    out: dict[str, Any] = {"k_flops_per_param_example": jf.k, "k_source": jf.k_source,
                           "law": jf.law.to_dict(), "asymptote_acc": asymptote, "warnings": []}
    min_flops, max_flops = float(jf.runs["train_flops"].min()), float(jf.runs["train_flops"].max())
    if budget is not None:
        if budget <= 0:
            raise RobustscaleError(f"--budget {budget:g} must be > 0")
        flops = to_flops(budget, unit, laws, df)
        if flops < min_flops:
            raise RobustscaleError(f"budget {budget:g} {unit} (= {flops:.3g} FLOPs) is below the smallest run in "
                                   f"the zoo ({min_flops:.3g} FLOPs); the laws say nothing there")
        n_opt, d_opt = (float(v) for v in jf.law.optimum(flops, jf.k))
        model = nearest_model(n_opt)
        examples = flops / (jf.k * MODEL_TABLE[model])
        out.update(mode="budget", budget=budget, unit=unit, budget_flops=flops)
    else:
        if not 0 < target_acc < 100:
            raise RobustscaleError(f"--target-acc {target_acc:g} is not a percentage; allowed: 0 < X < 100")
        if target_acc >= asymptote:
            raise RobustscaleError(f"target {target_acc:g}% lies beyond the asymptote of the fitted law "
                                   f"(100 - E = {asymptote:.1f}% robust accuracy); no budget reaches it")
        flops = _ideal_flops_for_target(jf, target_acc)
        n_opt, d_opt = (float(v) for v in jf.law.optimum(flops, jf.k))
        cheapest = _cheapest_for_target(jf, target_acc)
        if cheapest is None:
            raise RobustscaleError(f"target {target_acc:g}% is beyond what any model in the table reaches under "
                                   f"the fitted law (largest: {max(MODEL_TABLE, key=MODEL_TABLE.get)})")
        model, examples = cheapest
        out.update(mode="target", target_acc=target_acc, ideal_flops=flops)
    _finish(out, jf, laws, df, n_opt, d_opt, model, examples, (min_flops, max_flops), synthetic_data,
            loss, attack_steps)
    return out


def _finish(out: dict[str, Any], jf: JointFit, laws: dict[str, Any], df: Any, n_opt: float, d_opt: float,
            model: str, examples: float, flops_range: tuple[float, float], synthetic_path: str | None,
            loss: str | None, attack_steps: int | None) -> None:
    """Fill in the chosen plan: prediction, bill, synthetic data, recipe and warnings."""
    n = MODEL_TABLE[model]
    run_flops = jf.k * n * examples
    acc, ci = _acc_with_interval(jf, n, examples)
    opt_acc, _ = _acc_with_interval(jf, n_opt, d_opt)
    config = jf.frontier.nearest(run_flops)
    dataset = str(jf.runs["dataset"].mode().iloc[0])
    epochs = max(1, int(round(examples / _train_size(jf, dataset))))
    synthetic = {"recommended": bool(config.get("synthetic_data") is True),
                 "fraction": float(config.get("synthetic_fraction") or 0.0),
                 "unique_images": config.get("synthetic_size"),
                 "examples": float(examples * float(config.get("synthetic_fraction") or 0.0))}
    out.update(optimal={"N": n_opt, "D": d_opt, "predicted_acc": opt_acc}, model=model, params=n,
               examples=float(examples), epochs=epochs, synthetic=synthetic, predicted_acc=acc,
               predicted_acc_ci=ci, bill=bill(run_flops, laws, df), frontier_config=config)
    if not flops_range[0] <= run_flops <= flops_range[1]:
        out["warnings"].append(f"{run_flops:.3g} FLOPs lies outside the zoo's runs ({flops_range[0]:.3g}-"
                               f"{flops_range[1]:.3g} FLOPs): an extrapolation of the fitted law")
    if synthetic["recommended"] and synthetic_path is None:
        out["warnings"].append(f"the best runs at this compute used {synthetic['fraction']:.0%} synthetic data; "
                               "pass --synthetic-data PATH.npz to put it in the recipe")
    out["recipe"] = make_recipe(jf, config, dataset, model, epochs, synthetic, synthetic_path, loss, attack_steps)


def make_recipe(jf: JointFit, config: dict[str, Any], dataset: str, model: str, epochs: int,
                synthetic: dict[str, Any], synthetic_path: str | None, loss: str | None,
                attack_steps: int | None) -> dict[str, Any]:
    """A recipe dict for ``robustscale train`` (validated by Recipe when that class exists)."""
    runs = jf.runs
    steps = int(attack_steps if attack_steps is not None else config.get("attack_steps") or 10)
    eps = float(runs["eps"].median()) if runs["eps"].notna().any() else 8 / 255
    use_synthetic = synthetic["recommended"] and synthetic_path is not None
    recipe = {
        "dataset": dataset, "model": model, "activation": str(config.get("activation") or "relu"),
        "loss": str(loss or config.get("loss") or "pgd"), "attack_steps": steps, "epochs": epochs,
        "eps": eps, "step_size": eps * 1.25 if steps == 1 else eps / 4,  # 2/255 at 8/255; FGSM-RS-like for 1 step
        "ema_decay": 0.995 if config.get("ema") is True else None,
        "synthetic_data": synthetic_path if use_synthetic else None,
        "synthetic_fraction": synthetic["fraction"] if use_synthetic else 0.0,
        "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "seed": 0,
    }
    try:
        from robustscale.recipe import Recipe
    except ImportError:
        return recipe
    return Recipe.from_dict(recipe).to_dict()


def recipe_yaml(recipe: dict[str, Any]) -> str:
    """The recipe as YAML (through Recipe.to_yaml when that class exists)."""
    import yaml

    try:
        from robustscale.recipe import Recipe
    except ImportError:
        return yaml.safe_dump(recipe, sort_keys=False)
    return Recipe.from_dict(recipe).to_yaml()
