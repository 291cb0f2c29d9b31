"""Compute-optimal planning: the model size and data that a budget should buy, or the cheapest
plan predicted to reach a target robust accuracy, with the bill and a recipe ready to train.

Compute is C = k * N * D with k the training FLOPs per parameter per example that the cost
module (``robustscale.cost``) measures for the chosen loss and attack steps (an adversarial step
costs a forward and a backward per attack step, so k is far above the 6 of standard training);
the zoo's own median k is reported beside it. Under the joint law
L(N, D) = E + A/N^alpha + B/D^beta the optimum on N * D = C / k is analytic (see joint.optimum);
the law is fitted per recipe family (loss, attack steps, EMA, activation) and the plan uses the
identifiable family that predicts the most accuracy for the budget (for a target: the family
:func:`~robustscale.analysis.joint.target.cost_of_target` chose); it refuses, with the reason,
when no family's law is identifiable. It takes the candidate model nearest to N* (k
re-measured for that model), the whole
epochs its budget buys (an epoch is what the engine's ``BatchPlan`` makes of the written
recipe: real examples over the real data, plus the synthetic share of each batch), and bills
the recipe it writes with ``robustscale.cost.forecast_recipe``.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from robustscale.analysis.groups import COLLAPSE_THRESHOLD, zoo_envelope_laws
from robustscale.analysis.joint.frontier import (
    N_BOOT,
    FamilyFits,
    JointFit,
    config_frontier,
    fit_families,
)
from robustscale.analysis.joint.inputs import family_name, joint_runs
from robustscale.analysis.joint.k import cost_flops_per_example, flops_per_param_example
from robustscale.analysis.joint.target import cost_of_target
from robustscale.analysis.scaling import PowerLaw
from robustscale.errors import RobustscaleError, first_line

log = logging.getLogger(__name__)

# Trainable parameters at 32x32, 10 classes (robustscale.models.count_params).
MODEL_TABLE: dict[str, int] = {
    "wrn10_1": 77_850,
    "wrn16_1": 175_066,
    "wrn16_4": 2_748_890,
    "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474,
    "wrn34_20": 184_531_674,
    "wrn70_16": 266_796_506,
}
MAX_PATTERN_MODELS = (
    50  # models one --models pattern may expand to (each is built on the meta device)
)
UNITS = {
    "flops": None,
    "usd": ("electricity", "electricity_cost_usd"),
    "kwh": ("energy", "energy_kwh"),
    "kgco2": ("co2", "co2_kg"),
}
# Where the CIFAR set-up above does not fit: the 1,309 training digits make 10 batches of 128
# an epoch, too few steps for an EMA of 0.995, and PGD-40 validation of 256 held-out examples
# would cost more than the training; the digits study's own base (recipes/sweeps/
# digits-study.yaml) trains them.
SMALL_DATASET_TRAINING: dict[str, dict[str, Any]] = {
    "digits": {
        "batch_size": 32,
        "lr": 0.05,
        "val_size": 128,
        "val_attack_steps": 10,
        "ema_decay": 0.9,
    },
}
METHODS = ("joint", "frontier")  # what plan() plans from
BUDGET_TOLERANCE = 0.10  # warn when whole epochs make the recipe miss the budget by more than this


def nearest_model(n_params: float, table: dict[str, int] = MODEL_TABLE) -> str:
    """The model in ``table`` whose parameter count is nearest to ``n_params`` on a log scale."""
    return min(table, key=lambda m: abs(math.log(table[m]) - math.log(n_params)))


def candidate_models(
    models: str | Sequence[str] | None = None, dataset: str = "cifar10"
) -> dict[str, int]:
    """Candidate models and their trainable parameters for ``dataset``.

    ``None`` is :data:`MODEL_TABLE` (the paper's WideResNets). Otherwise timm model names (the
    WideResNets are registered there too), as a list or one comma-separated string; a name with
    ``*``, ``?`` or ``[`` is a pattern over ``timm.list_models`` (at most
    :data:`MAX_PATTERN_MODELS` matches each; models that cannot be built for the dataset are
    skipped). Parameters are counted on the meta device (no memory, no weights).
    """
    from robustscale.data import dataset_info

    info = dataset_info(dataset)
    if models is None:
        if (info.num_classes, info.shape[0]) == (10, 3):
            return dict(MODEL_TABLE)
        names, patterns = list(MODEL_TABLE), []
    else:
        items = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
        items = [m for m in items if m]
        if not items:
            raise RobustscaleError(
                "--models names no model; give timm model names, e.g. wrn28_10,resnet18"
            )
        names = [m for m in items if not any(c in m for c in "*?[")]
        patterns = [m for m in items if any(c in m for c in "*?[")]
    out: dict[str, int] = {}
    for name in names:
        out[name] = _count(name, info)
    if patterns:
        import timm

        import robustscale.models  # noqa: F401  (registers the WideResNets with timm)

        registry = timm.list_models()
        for pattern in patterns:
            found = [m for m in fnmatch.filter(registry, pattern) if m not in out]
            if len(found) > MAX_PATTERN_MODELS:
                raise RobustscaleError(
                    f"--models pattern {pattern!r} matches {len(found)} timm models; allowed: "
                    f"at most {MAX_PATTERN_MODELS} (narrow the pattern or list the names)"
                )
            for name in found:
                try:
                    out[name] = _count(name, info)
                except RobustscaleError as exc:
                    log.info("skipping %s: %s", name, exc)
            if not found:
                raise RobustscaleError(f"--models pattern {pattern!r} matches no timm model")
    if not out:
        raise RobustscaleError(f"no model given by --models {models!r} can be built for {dataset}")
    return out


def _count(name: str, info: Any) -> int:
    from robustscale.models import count_params

    try:
        return int(count_params(name, info.num_classes, info.shape[0]))
    except RobustscaleError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm models fail in their own ways
        raise RobustscaleError(
            f"model {name!r} cannot be built for {info.name}: {first_line(exc)}"
        ) from None


def _per_flop(df: Any, col: str) -> float | None:
    ratio = df[col].to_numpy(float, na_value=np.nan) / df["train_flops"].to_numpy(
        float, na_value=np.nan
    )
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


def bill_from_laws(flops: float, laws: dict[str, Any], df: Any) -> dict[str, float | None]:
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
    acc = float(jf.accuracy(n, d))
    if len(jf.law.boot) == 0:
        return acc, None
    draws = jf.accuracy_draws(n, d)
    return acc, [float(v) for v in np.percentile(draws, [2.5, 97.5])]


class _Spec:
    """What the recipe trains besides the model: data, loss, steps, activation, EMA, extra data."""

    def __init__(
        self,
        runs: Any,
        fam: dict[str, Any],
        config: dict[str, Any],
        loss: str | None,
        attack_steps: int | None,
        synthetic_path: str | None,
    ):
        self.config = config
        self.dataset = str(runs["dataset"].mode().iloc[0])
        self.loss = str(loss or fam.get("loss") or config.get("loss") or "pgd")
        steps = (
            attack_steps
            if attack_steps is not None
            else fam.get("attack_steps", config.get("attack_steps"))
        )
        self.attack_steps = int(steps if steps is not None else 10)
        self.activation = str(fam.get("activation") or config.get("activation") or "relu")
        self.ema = (fam["ema"] if fam.get("ema") is not None else config.get("ema")) is True
        self.eps = float(runs["eps"].median()) if runs["eps"].notna().any() else 8 / 255
        self.synthetic_recommended = config.get("synthetic_data") is True
        self.synthetic_fraction = float(config.get("synthetic_fraction") or 0.0)
        self.synthetic_size = config.get("synthetic_size")
        self.synthetic_path = synthetic_path if self.synthetic_recommended else None
        self.skipped: list[str] = []  # candidate models the cost module could not count

    def cost(self, model: str) -> tuple[float, int] | None:
        """(training FLOPs per example, parameters) of ``model`` in this spec, or None (noted)."""
        try:
            return cost_flops_per_example(
                self.dataset,
                model,
                self.loss,
                self.attack_steps,
                self.activation,
                # the written recipe's: its forecast in _finish then reuses this measurement
                val_attack_steps=SMALL_DATASET_TRAINING.get(self.dataset, {}).get(
                    "val_attack_steps"
                ),
            )
        except RobustscaleError as exc:
            self.skipped.append(str(exc))
            return None

    def recipe(self, model: str, epochs: int) -> dict[str, Any]:
        """The recipe dict for ``robustscale train``, validated by Recipe."""
        from robustscale.recipe import Recipe

        steps, eps = self.attack_steps, self.eps
        recipe = {
            "dataset": self.dataset,
            "model": model,
            "activation": self.activation,
            "loss": self.loss,
            "attack_steps": steps,
            "epochs": int(epochs),
            "eps": eps,
            "step_size": eps * 1.25
            if steps == 1
            else eps / 4,  # 2/255 at 8/255; FGSM-RS-like for 1 step
            "ema_decay": 0.995 if self.ema else None,
            "synthetic_data": self.synthetic_path,
            "synthetic_fraction": self.synthetic_fraction if self.synthetic_path else 0.0,
            "batch_size": 128,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "seed": 0,
        }
        recipe.update(SMALL_DATASET_TRAINING.get(self.dataset, {}))
        if not self.ema:
            recipe["ema_decay"] = None
        return Recipe.from_dict(recipe).to_dict()


def batch_plan(recipe: dict[str, Any]) -> Any:
    """The engine's :class:`~robustscale.data.batches.BatchPlan` of a recipe: an epoch is
    ``steps_per_epoch`` batches over the real data (the train split less the validation hold-out),
    each with its synthetic share, so ``examples_per_epoch`` is real / (1 - fraction), not
    50,000."""
    from robustscale.cost.forecast import forecast_batch_plan
    from robustscale.recipe import Recipe

    return forecast_batch_plan(Recipe.from_dict(recipe))


def _choose_for_budget(
    jf: JointFit,
    flops: float,
    candidates: dict[str, int],
    spec: _Spec,
) -> tuple[str, float, int, float]:
    """The candidate nearest N*(flops) with k measured for the candidate itself: (model, k,
    params, FLOPs per example). k depends on the architecture, so N* is recomputed with the chosen
    model's k until the choice repeats."""
    remaining = dict(candidates)
    k, seen = jf.k, {}
    model = None
    for _ in range(2 * len(candidates) + 2):
        if not remaining:
            break
        n_opt, _ = jf.law.optimum(flops, k)
        model = nearest_model(float(n_opt), remaining)
        if model in seen:
            break
        cost = spec.cost(model)
        if cost is None:
            del remaining[model]
            continue
        seen[model] = cost
        k = cost[0] / cost[1]
    if model is None or model not in seen:
        raise RobustscaleError(
            "the cost module could not count any candidate model: " + "; ".join(spec.skipped)
        )
    per_example, params = seen[model]
    return model, per_example / params, params, per_example


def _cheapest_for_target(
    jf: JointFit,
    target: float,
    candidates: dict[str, int],
    spec: _Spec,
) -> tuple[str, float, int, float, float] | None:
    """The candidate reaching ``target`` accuracy for the least training FLOPs (each model's own
    FLOPs per example): (model, examples needed, params, FLOPs per example, FLOPs), or None."""
    E, A, alpha, B, beta = jf.law.theta
    level = jf.acc_map.level(target)  # the law's L at the target accuracy
    best: tuple[str, float, int, float, float] | None = None
    for model, n in candidates.items():
        if level - E - A / n**alpha <= 0:  # not even infinite data gets this model there
            continue
        cost = spec.cost(model)
        if cost is None:
            continue
        per_example, params = cost
        room = level - E - A / params**alpha
        if room <= 0:
            continue
        d = (B / room) ** (1.0 / beta)
        if best is None or per_example * d < best[4]:
            best = (model, d, params, per_example, per_example * d)
    return best


def _budget_family(ff: FamilyFits, flops: float) -> JointFit:
    """The identifiable family whose law predicts the most robust accuracy at ``flops``."""

    def predicted(jf: JointFit) -> float:
        return float(jf.accuracy(*jf.law.optimum(flops, jf.k)))

    return max(ff.identifiable, key=predicted)


def plan(
    df: Any,
    budget: float | None = None,
    unit: str = "flops",
    target_acc: float | None = None,
    loss: str | None = None,
    attack_steps: int | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
    synthetic_data: str | None = None,
    models: str | Sequence[str] | None = None,
    method: str = "joint",
) -> dict[str, Any]:
    """A compute-optimal plan for a budget (``budget`` in ``unit``) or for ``target_acc``.

    ``method`` "joint" plans from the joint law (below); "frontier" from the zoo's measured
    compute frontier (:func:`_frontier_plan`), for a zoo whose joint law is not identifiable.

    ``models`` are the candidate architectures (see :func:`candidate_models`; default the
    WideResNets of :data:`MODEL_TABLE`). Returns a dict: the family whose law was used and the
    others, the law's optimum (N*, D*), the chosen model, its k, the examples and whole epochs
    the written recipe trains, synthetic data, the predicted AutoAttack accuracy with a
    bootstrap 95% interval, the bill of the written recipe (FLOPs from
    ``robustscale.cost.forecast_recipe``, kWh / USD / kg CO2 from the zoo's cost laws),
    warnings, and ``recipe`` (a dict ready for ``robustscale train``); for a target also
    ``target``, :func:`~robustscale.analysis.joint.target.cost_of_target`'s answer, exactly what
    ``analyze --target-acc`` reports. Raises :class:`RobustscaleError` when no family's law is
    identifiable (with the reasons), for a budget below the smallest run of the zoo, or a target
    beyond every law's asymptote.
    """
    from robustscale.zoo import coerce_types, validate_zoo

    if (budget is None) == (target_acc is None):
        raise RobustscaleError("give exactly one of --budget or --target-acc")
    if target_acc is not None and not 0 < target_acc < 100:
        raise RobustscaleError(
            f"--target-acc {target_acc:g} is not a percentage; allowed: 0 < X < 100"
        )
    if budget is not None and budget <= 0:
        raise RobustscaleError(f"--budget {budget:g} must be > 0")
    if method not in METHODS:
        raise RobustscaleError(f"--method {method!r} is not known; allowed: {', '.join(METHODS)}")
    df = coerce_types(df)
    validate_zoo(df)
    ff = fit_families(
        df, collapse_threshold, seed=seed, n_boot=n_boot, loss=loss, attack_steps=attack_steps
    )
    if method == "joint" and not ff.identifiable:
        raise RobustscaleError(
            f"no plan: {ff.why_none()}; --method frontier plans from the zoo's measured "
            "compute frontier instead"
        )
    laws = zoo_envelope_laws(df, collapse_threshold, seed=seed)
    out: dict[str, Any] = {
        "method": method,
        "warnings": [],
        "families": [
            {
                "family_name": family_name(f.family),
                "n_runs": f.law.n_runs,
                "identifiable": f.identifiable,
                "reasons": f.reasons,
            }
            for f in ff.fits
        ],
        "families_too_small": [
            {"family_name": family_name(fam), "n_runs": n} for fam, n in ff.too_small
        ],
    }
    if method == "frontier":
        args = (df, laws, ff, budget, unit, target_acc, loss, attack_steps, collapse_threshold)
        return _frontier_plan(out, *args, seed=seed, synthetic_data=synthetic_data, models=models)
    dataset = _plan_dataset(ff.identifiable[0].runs)
    candidates = candidate_models(models, dataset)
    out["candidates"] = len(candidates)
    if budget is not None:
        flops = to_flops(budget, unit, laws, df)
        jf = _budget_family(ff, flops)
        _check_budget(budget, unit, flops, jf.runs)
        spec = _Spec(
            jf.runs, jf.family, jf.frontier.nearest(flops), loss, attack_steps, synthetic_data
        )
        model, k, params, per_example = _choose_for_budget(jf, flops, candidates, spec)
        n_opt, d_opt = (float(v) for v in jf.law.optimum(flops, k))
        examples_wanted = flops / per_example
        out.update(mode="budget", budget=budget, unit=unit, budget_flops=flops)
    else:
        target = cost_of_target(target_acc, laws, ff)
        if target["law"] != "joint":
            raise RobustscaleError(f"no plan for {target_acc:g}%: {target['joint_note']}")
        jf = next(f for f in ff.identifiable if f.family == target["family"])
        flops = float(target["flops"]) if target.get("flops") is not None else math.inf
        n_opt, d_opt = float(target["N_star"]), float(target["D_star"])
        spec = _Spec(
            jf.runs, jf.family, jf.frontier.nearest(flops), loss, attack_steps, synthetic_data
        )
        cheapest = _cheapest_for_target(jf, target_acc, candidates, spec)
        if cheapest is None:
            largest = max(candidates, key=candidates.get)
            raise RobustscaleError(
                f"target {target_acc:g}% is beyond what any candidate model reaches under the "
                f"fitted law (largest: {largest}, {candidates[largest]:.3g} parameters)"
            )
        model, examples_wanted, params, per_example, needed = cheapest
        k = per_example / params
        out.update(
            mode="target",
            target_acc=target_acc,
            target=target,
            ideal_flops=flops,
            examples_needed=examples_wanted,
            flops_needed=needed,
        )
    out.update(
        family=jf.family,
        family_name=family_name(jf.family),
        k_reference=jf.k,
        k_reference_source=jf.k_source,
        k_zoo=jf.k_zoo,
        k_zoo_source=jf.k_zoo_source,
        law=jf.law.to_dict(),
        L=jf.metric,
        D=jf.d_kind,
        notes=list(jf.notes),
        asymptote_acc=jf.asymptote_acc,
    )
    for note in spec.skipped:
        out["warnings"].append(f"left out: {note}")
    flops_range = (float(jf.runs["train_flops"].min()), float(jf.runs["train_flops"].max()))
    _finish(
        out,
        lambda n, d, _flops: _acc_with_interval(jf, n, d),
        (jf.k_zoo, jf.k_zoo_source),
        laws,
        df,
        spec,
        (n_opt, d_opt),
        model,
        k,
        params,
        examples_wanted,
        flops_range,
    )
    return out


def _plan_dataset(runs: Any) -> str:
    from robustscale.data import DATASETS

    dataset = str(runs["dataset"].mode().iloc[0])
    if dataset not in DATASETS:
        raise RobustscaleError(
            f"the zoo's runs are on {dataset!r}; plan writes recipes for {', '.join(DATASETS)} only"
        )
    return dataset


def _check_budget(budget: float, unit: str, flops: float, runs: Any) -> None:
    min_flops = float(runs["train_flops"].min())
    if flops < min_flops:
        raise RobustscaleError(
            f"budget {budget:g} {unit} (= {flops:.3g} FLOPs) is below the smallest run in "
            f"the zoo ({min_flops:.3g} FLOPs); the laws say nothing there"
        )


def _frontier_plan(
    out: dict[str, Any],
    df: Any,
    laws: dict[str, Any],
    ff: FamilyFits,
    budget: float | None,
    unit: str,
    target_acc: float | None,
    loss: str | None,
    attack_steps: int | None,
    collapse_threshold: float,
    seed: int,
    synthetic_data: str | None,
    models: str | Sequence[str] | None,
) -> dict[str, Any]:
    """The plan the zoo's measurements give without a joint law (Chinchilla's approach 1): the
    compute is the budget, or what :func:`cost_of_target` says the target costs (the answer
    ``analyze --target-acc`` gives); the recipe is the configuration of the best run at the
    frontier bin nearest that compute (its model, loss, steps, EMA, synthetic data), trained
    on as many examples as the compute buys; its accuracy is the envelope law's at the recipe's
    FLOPs, with the envelope's bootstrap interval. With ``models`` the candidate nearest the
    frontier model's size is trained instead."""
    acc_law = laws.get("accuracy")
    if not isinstance(acc_law, PowerLaw):
        raise RobustscaleError(f"no plan: the envelope law is {acc_law}")
    if acc_law.alpha <= 0:
        raise RobustscaleError(
            f"no plan: robust accuracy does not grow with FLOPs in this zoo (envelope alpha "
            f"{acc_law.alpha:.3g}); no budget buys more of it"
        )
    wanted = {k: v for k, v in (("loss", loss), ("attack_steps", attack_steps)) if v is not None}
    runs = joint_runs(df, collapse_threshold, wanted)  # fit_families checked it is not empty
    frontier = config_frontier(runs, seed=seed)
    if budget is not None:
        flops = to_flops(budget, unit, laws, df)
        _check_budget(budget, unit, flops, runs)
        out.update(mode="budget", budget=budget, unit=unit, budget_flops=flops)
    else:
        target = cost_of_target(target_acc, laws, ff)
        if target.get("error") or target.get("flops") is None:
            log10 = target.get("flops_log10", math.inf)
            why = target.get("error") or f"it costs 1e{log10:.3g} FLOPs, beyond any budget"
            raise RobustscaleError(f"no plan for {target_acc:g}%: {why}")
        flops = float(target["flops"])
        out.update(mode="target", target_acc=target_acc, target=target, ideal_flops=flops)
    config = frontier.nearest(flops)
    dataset = _plan_dataset(runs)
    spec = _Spec(runs, wanted, config, loss, attack_steps, synthetic_data)
    if models is None:
        model = str(config["model"])
    else:
        candidates = candidate_models(models, dataset)
        model = nearest_model(float(config["params"]), candidates)
        out["candidates"] = len(candidates)
    cost = spec.cost(model)
    if cost is None:
        raise RobustscaleError(f"no plan: {'; '.join(spec.skipped)}")
    per_example, params = cost
    k_zoo = flops_per_param_example(runs, spec.loss, spec.attack_steps)
    joint_note = (
        ff.why_none() if not ff.identifiable else "the joint law was not asked (--method frontier)"
    )
    out.update(
        family={},
        family_name="the whole zoo's compute frontier",
        frontier_run=str(config["run_id"]),
        frontier_acc=float(config["robust_acc"]),
        frontier_flops=float(config["train_flops"]),
        joint_note=joint_note,
        k_zoo=k_zoo[0],
        k_zoo_source=k_zoo[1],
        law={"envelope": acc_law.to_dict()},
        L="autoattack_acc",
        notes=[
            joint_note,
            f"the recipe copies frontier run {config['run_id']} ({config['model']}, "
            f"{config['loss']}-{config['attack_steps']}, {config['train_flops']:.3g} FLOPs, "
            f"{config['robust_acc']:.1f}% AutoAttack) and scales its data to the compute",
        ],
        asymptote_acc=None,
    )
    for name, law in (("N", frontier.n_law), ("D", frontier.d_law)):
        if isinstance(law, PowerLaw):
            out["notes"].append(
                f"frontier {name}*(C) ~ C^{law.alpha:.3g} [{law.alpha_ci[0]:.3g}, "
                f"{law.alpha_ci[1]:.3g}] (R2 {law.r2:.2f}, {law.n_bins} bins)"
            )

    def predict(_n: float, _d: float, run_flops: float) -> tuple[float, list[float] | None]:
        lo, hi = acc_law.band([run_flops])
        ci = None if len(acc_law.boot) == 0 else [float(lo[0]), float(hi[0])]
        return float(acc_law.predict(run_flops)), ci

    flops_range = (float(runs["train_flops"].min()), float(runs["train_flops"].max()))
    examples_wanted = flops / per_example
    _finish(
        out,
        predict,
        k_zoo,
        laws,
        df,
        spec,
        (float(params), examples_wanted),
        model,
        per_example / params,
        params,
        examples_wanted,
        flops_range,
    )
    out["predictor"] = _predictor_outcome(out["recipe"], df, laws, collapse_threshold, seed)
    return out


def _predictor_outcome(
    recipe: dict[str, Any], df: Any, laws: dict[str, Any], threshold: float, seed: int
) -> dict[str, Any]:
    """What ``robustscale predict`` says of the written recipe: a second opinion beside the
    envelope law (which gives the best run's accuracy at that compute, not this recipe's)."""
    from robustscale.analysis.groups import split_runs
    from robustscale.analysis.outcome import forecast_recipe_outcome
    from robustscale.analysis.predictor import fit_predictor

    try:
        predictor = fit_predictor(split_runs(df, threshold)["kept"].reset_index(drop=True), seed)
    except RobustscaleError as exc:
        return {"error": f"not fitted: {exc}"}
    outcome = forecast_recipe_outcome(recipe, df, predictor, laws)
    return {
        "acc": outcome["autoattack_acc"],
        "ci": outcome["autoattack_acc_ci"],
        "r2_mean": predictor.r2_mean,
        "r2_std": predictor.r2_std,
    }


def _finish(
    out: dict[str, Any],
    predict: Callable[[float, float, float], tuple[float, list[float] | None]],
    k_zoo: tuple[float | None, str],
    laws: dict[str, Any],
    df: Any,
    spec: _Spec,
    optimal: tuple[float, float],
    model: str,
    k: float,
    params: int,
    examples_wanted: float,
    flops_range: tuple[float, float],
) -> None:
    """Whole epochs for the recipe to write, its bill from the cost module, prediction, warnings.

    ``predict(params, examples, flops)`` is the robust accuracy the plan's law gives a run, with
    its 95% interval (None: no bootstrap); ``k_zoo`` the zoo's own k and where it comes from."""
    from robustscale.cost.forecast import forecast_recipe
    from robustscale.recipe import Recipe

    bp = batch_plan(spec.recipe(model, 1))
    per_epoch = bp.examples_per_epoch
    if out["mode"] == "target":  # enough whole epochs to reach the target
        epochs = max(1, math.ceil(examples_wanted / per_epoch - 1e-9))
    else:  # the whole epochs nearest the budget
        epochs = max(1, int(examples_wanted / per_epoch + 0.5))
    recipe = spec.recipe(model, epochs)
    forecast = forecast_recipe(Recipe.from_dict(recipe))
    run_flops = float(forecast["train_flops_total"])
    examples = float(forecast["examples_per_epoch"] * epochs)
    acc, ci = predict(params, examples, run_flops)
    opt_acc, _ = predict(*optimal, run_flops)
    used = spec.synthetic_path is not None
    synthetic = {
        "recommended": spec.synthetic_recommended,
        "in_recipe": used,
        "fraction": spec.synthetic_fraction,
        "unique_images": spec.synthetic_size,
        "examples": float(bp.syn_per_batch * bp.steps_per_epoch * epochs) if used else 0.0,
    }
    out.update(
        optimal={"N": optimal[0], "D": optimal[1], "predicted_acc": opt_acc},
        model=model,
        params=params,
        k_flops_per_param_example=k,
        k_source=f"robustscale.cost: measured training FLOPs per example of {model}, {spec.loss}"
        + (f"-{spec.attack_steps}" if spec.loss != "standard" else "")
        + f" on {spec.dataset} / parameters",
        examples=examples,
        examples_per_epoch=int(per_epoch),
        epochs=epochs,
        synthetic=synthetic,
        predicted_acc=acc,
        predicted_acc_ci=ci,
        bill=bill_from_laws(run_flops, laws, df),
        recipe=recipe,
        frontier_config=spec.config,
    )
    if k_zoo[0] is not None and not 0.8 <= k_zoo[0] / k <= 1.25:
        out["warnings"].append(
            f"the zoo's own FLOPs per parameter per example ({k_zoo[0]:.3g}, {k_zoo[1]}) "
            f"differ from the cost module's {k:.3g} for {model}: the zoo counted FLOPs "
            "another way or trained other models, so its compute axis and this bill disagree"
        )
    if out["mode"] == "budget" and abs(run_flops / out["budget_flops"] - 1) > BUDGET_TOLERANCE:
        out["warnings"].append(
            f"{epochs} whole epoch{'s' if epochs != 1 else ''} of {per_epoch} examples cost "
            f"{run_flops:.3g} FLOPs, {run_flops / out['budget_flops'] - 1:+.0%} off the budget"
        )
    if not flops_range[0] <= run_flops <= flops_range[1]:
        out["warnings"].append(
            f"{run_flops:.3g} FLOPs lies outside the zoo's runs ({flops_range[0]:.3g}-"
            f"{flops_range[1]:.3g} FLOPs): an extrapolation of the fitted law"
        )
    if synthetic["recommended"] and not used:
        out["warnings"].append(
            f"the best runs at this compute used {synthetic['fraction']:.0%} synthetic data; "
            "pass --synthetic-data PATH.npz to put it in the recipe"
        )


def recipe_yaml(recipe: dict[str, Any]) -> str:
    """The recipe as YAML, through Recipe.to_yaml (validated again)."""
    from robustscale.recipe import Recipe

    return Recipe.from_dict(recipe).to_yaml()
