"""`robustscale plan`: compute-optimal allocation, k from the cost module, whole epochs as the
engine counts them, the bill of the written recipe, budgets in other units, targets, --models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from zoo_factory import JOINT_THETA, joint_zoo

from robustscale.analysis.joint.k import cost_flops_per_example
from robustscale.analysis.joint.law import optimum
from robustscale.analysis.joint.planner import (
    MODEL_TABLE,
    candidate_models,
    nearest_model,
    plan,
)
from robustscale.cli import main
from robustscale.cost.forecast import forecast_recipe
from robustscale.errors import RobustscaleError
from robustscale.models import count_params
from robustscale.recipe import Recipe
from robustscale.zoo import write_zoo

# Examples per epoch of the planner's cifar10 recipes (batch 128, val_size 256 held out of 50,000):
# 49,744 real examples; without synthetic data 388 batches of 128; with 70% synthetic data each
# batch holds round(0.7 * 128) = 90 synthetic and 38 real examples, 49,744 // 38 = 1,309 batches.
PER_EPOCH_REAL = 388 * 128
PER_EPOCH_SYNTHETIC = 1309 * 128


def cost(model: str) -> tuple[float, int]:
    """(training FLOPs per example, parameters) of a cifar10 PGD-10 model, straight from the cost
    module."""
    r = Recipe(dataset="cifar10", model=model, loss="pgd", attack_steps=10)
    fl = forecast_recipe(r)
    return fl["train_flops_per_example"], fl["params"]


@pytest.fixture(scope="module")
def k_ref() -> float:
    per_example, params = cost("wrn28_10")
    return per_example / params


@pytest.fixture(scope="module")
def zoo(k_ref):
    # a zoo whose FLOPs are counted the way the cost module counts them, all on wrn28_10's k
    return joint_zoo(n=300, noise=0.01, seed=0, k=k_ref).assign(model="wrn28_10", activation="relu")


@pytest.fixture()
def zoo_file(tmp_path, zoo):
    return write_zoo(zoo, tmp_path / "zoo.csv")


@pytest.fixture()
def npz(tmp_path):
    path = tmp_path / "gen.npz"
    np.savez(path, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    return path


def spent(recipe: dict) -> float:
    return forecast_recipe(Recipe.from_dict(recipe))["train_flops_total"]


@pytest.mark.parametrize("budget", [1e18, 1e20])
def test_planner_optimum_is_within_10_percent_of_the_analytic_one(zoo, budget):
    out = plan(zoo, budget=budget, n_boot=10)
    per_example, params = cost(out["model"])
    k = per_example / params
    assert out["k_flops_per_param_example"] == pytest.approx(k) and out["params"] == params
    assert "robustscale.cost" in out["k_source"] and out["k_zoo"] == pytest.approx(
        out["k_reference"], rel=1e-6
    )
    n_true, d_true = optimum(np.array(JOINT_THETA), budget, k)
    assert out["optimal"]["N"] == pytest.approx(n_true, rel=0.10)
    assert out["optimal"]["D"] == pytest.approx(d_true, rel=0.10)
    # the chosen model is the table's nearest to N*, and whole epochs of the engine spend the budget
    # on it
    assert out["model"] == nearest_model(out["optimal"]["N"])
    assert out["examples_per_epoch"] == PER_EPOCH_REAL and not out["synthetic"]["in_recipe"]
    assert out["epochs"] == round(budget / per_example / PER_EPOCH_REAL)
    assert out["examples"] == out["epochs"] * PER_EPOCH_REAL
    assert spent(out["recipe"]) == pytest.approx(budget, rel=0.01)
    assert out["bill"]["flops"] == spent(out["recipe"])
    lo, hi = out["predicted_acc_ci"]
    assert lo <= out["predicted_acc"] <= hi


def test_synthetic_plan_spends_the_budget_with_epochs_over_the_real_data(zoo, npz):
    syn = zoo.assign(synthetic_data=True, synthetic_fraction=0.7, synthetic_size=1_000_000)
    budget = 1e19
    out = plan(syn, budget=budget, n_boot=0, synthetic_data=str(npz))
    recipe = Recipe.from_dict(out["recipe"])
    assert recipe.synthetic_data == str(npz) and recipe.synthetic_fraction == pytest.approx(0.7)
    # an epoch is 1,309 batches over the real data, 167,552 examples: not 50,000
    assert out["examples_per_epoch"] == PER_EPOCH_SYNTHETIC
    per_example, _ = cost(out["model"])
    assert out["epochs"] == round(budget / per_example / PER_EPOCH_SYNTHETIC)
    assert spent(out["recipe"]) == pytest.approx(budget, rel=0.10)
    assert out["bill"]["flops"] == pytest.approx(budget, rel=0.10)
    assert out["synthetic"]["examples"] == 90 * 1309 * out["epochs"]
    assert not any("off the budget" in w for w in out["warnings"])


def test_budget_in_dollars_is_converted_with_the_cost_law(zoo, k_ref):
    zoo = zoo.assign(electricity_cost_usd=0.12e-16 * zoo["train_flops"])
    out = plan(zoo, budget=5.0, unit="usd", n_boot=0)  # electricity = 0.12 * 1e-16 * FLOPs
    assert out["budget_flops"] == pytest.approx(5.0 / 0.12e-16, rel=0.01)
    # the bill is the written recipe's: whole epochs, within a percent of the budget here
    assert out["bill"]["flops"] == spent(out["recipe"])
    assert out["bill"]["usd"] == pytest.approx(5.0, rel=0.02)
    assert out["bill"]["kwh"] == pytest.approx(5.0 / 0.12, rel=0.02)


def test_target_gives_the_cheapest_table_model_reaching_it(zoo):
    out = plan(zoo, target_acc=55.0, n_boot=0)
    E, A, alpha, B, beta = (out["law"][k] for k in ("E", "A", "alpha", "B", "beta"))
    assert out["predicted_acc"] >= 55.0 - 1e-9 and out["predicted_acc"] == pytest.approx(
        55.0, abs=0.05
    )
    for model in MODEL_TABLE:  # no other model reaches 55% for fewer training FLOPs
        per_example, n = cost(model)
        room = 45.0 - E - A / n**alpha
        if room > 0:
            assert per_example * (B / room) ** (1 / beta) >= out["flops_needed"] * (1 - 1e-9), model
    per_epoch_flops = cost(out["model"])[0] * PER_EPOCH_REAL
    assert (
        out["flops_needed"] <= out["bill"]["flops"] < out["flops_needed"] + per_epoch_flops * 1.001
    )
    assert out["epochs"] == math.ceil(out["examples_needed"] / PER_EPOCH_REAL)


def test_models_option_chooses_among_the_given_timm_models(zoo):
    # a pattern takes every registered name it matches, counted like the table's (32x32, 10
    # classes); wrn16_2 is registered but not a default candidate
    assert candidate_models("wrn1*") == {
        **{m: MODEL_TABLE[m] for m in ("wrn10_1", "wrn16_1", "wrn16_4")},
        "wrn16_2": count_params("wrn16_2", 10, 3),
    }
    out = plan(zoo, budget=1e18, n_boot=0, models="resnet18")
    per_example, params = cost_flops_per_example("cifar10", "resnet18", "pgd", 10)
    assert out["model"] == "resnet18" and out["params"] == params
    assert out["k_flops_per_param_example"] == pytest.approx(per_example / params)
    assert spent(out["recipe"]) == pytest.approx(1e18, rel=0.01)
    # a ResNet costs far fewer FLOPs per parameter at 32x32 than the zoo's WideResNets: said so
    assert any("differ from the cost module" in w for w in out["warnings"])
    both = plan(zoo, budget=1e18, n_boot=0, models=["wrn16_4", "wrn28_10"])
    assert both["model"] in ("wrn16_4", "wrn28_10") and both["candidates"] == 2


@pytest.mark.parametrize(
    "models, words",
    [
        ("nosuch", "not a registered timm model"),
        ("nosuch*", "matches no timm model"),
        ("*", "narrow the pattern"),
    ],
)
def test_bad_models_are_one_line(zoo_file, capsys, models, words):
    assert main(["plan", "--zoo", str(zoo_file), "--budget", "1e18", "--models", models]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_budget_below_the_smallest_run_is_a_message(zoo_file, capsys):
    assert main(["plan", "--zoo", str(zoo_file), "--budget", "1e9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "below the smallest run" in err


def test_target_above_the_asymptote_is_a_message(zoo_file, capsys):
    assert main(["plan", "--zoo", str(zoo_file), "--target-acc", "80"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "beyond the asymptote" in err and "64." in err


def test_unknown_configuration_is_a_message(zoo):
    with pytest.raises(RobustscaleError, match="loss=trades"):
        plan(zoo, budget=1e17, loss="trades", attack_steps=10)


def test_written_recipe_loads_and_validates(zoo_file, npz, tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    assert (
        main(
            [
                "plan",
                "--zoo",
                str(zoo_file),
                "--budget",
                "1e18",
                "--loss",
                "pgd",
                "--attack-steps",
                "10",
                "--synthetic-data",
                str(npz),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "plan: wrn" in printed and "predicted AutoAttack accuracy" in printed and "kWh" in printed
    )
    assert (
        "robustscale.cost" in printed
        and "zoo median" in printed
        and "bill of the recipe" in printed
    )
    recipe = Recipe.from_yaml(out)
    assert recipe.model in MODEL_TABLE and recipe.loss == "pgd" and recipe.attack_steps == 10
    assert recipe.epochs >= 1 and recipe.eps == pytest.approx(8 / 255)
    if "synthetic data: 70%" in printed:
        assert recipe.synthetic_data == str(npz) and recipe.synthetic_fraction == pytest.approx(0.7)
    else:
        assert recipe.synthetic_data is None and recipe.synthetic_fraction == 0
    assert forecast_recipe(recipe)["train_flops_total"] == pytest.approx(1e18, rel=0.10)


# ---- plan refuses a law the zoo does not pin down; families; one answer for a target ---------


def test_plan_refuses_a_law_that_is_not_identifiable(zoo, zoo_file, tmp_path, capsys):
    two = zoo.copy()
    two["params"] = np.where(np.arange(len(two)) % 2 == 0, 1_000_000, 30_000_000)  # two model sizes
    path = write_zoo(two, tmp_path / "two.csv")
    out = tmp_path / "r.yaml"
    assert main(["plan", "--zoo", str(path), "--budget", "1e19", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "not identifiable" in err
        and "only 2 distinct model sizes" in err
    )
    assert not out.exists()
    with pytest.raises(RobustscaleError, match="not identifiable"):
        plan(two, target_acc=50, n_boot=10)


def _two_sizes(zoo):
    two = zoo.copy()
    two["params"] = np.where(np.arange(len(two)) % 2 == 0, 1_000_000, 30_000_000)
    return two


def test_the_frontier_plan_trains_the_best_runs_recipe_on_the_data_a_budget_buys(
    zoo, tmp_path, capsys
):
    from robustscale.analysis.groups import zoo_envelope_laws
    from robustscale.analysis.joint.frontier import config_frontier
    from robustscale.analysis.joint.inputs import joint_runs

    two = _two_sizes(zoo)  # the joint law cannot plan from it (the test above)
    path = write_zoo(two, tmp_path / "two.csv")
    out = tmp_path / "r.yaml"
    assert main(["plan", "--zoo", str(path), "--budget", "1e19", "--method", "frontier",
                 "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "law: envelope" in printed and "only 2 distinct model sizes" in printed
    recipe = Recipe.from_yaml(out)
    planned = plan(two, budget=1e19, n_boot=10, method="frontier")
    best = config_frontier(joint_runs(two)).nearest(1e19)
    assert planned["frontier_run"] == best["run_id"] and recipe.model == best["model"]
    assert (recipe.loss, recipe.attack_steps) == (best["loss"], best["attack_steps"])
    assert spent(planned["recipe"]) == pytest.approx(1e19, rel=0.10)  # the data a budget buys
    law = zoo_envelope_laws(two)["accuracy"]
    assert planned["predicted_acc"] == pytest.approx(float(law.predict(spent(planned["recipe"]))))
    lo, hi = planned["predicted_acc_ci"]
    assert lo < planned["predicted_acc"] < hi
    # beside it, what `robustscale predict` says of the written recipe
    pred = planned["predictor"]
    assert pred["ci"][0] <= pred["acc"] <= pred["ci"][1] and "r2_mean" in pred
    # a target: the compute is the one answer analyze gives (here the envelope law's)
    from robustscale.analysis.joint.target import cost_of_target

    target = plan(two, target_acc=55.0, n_boot=10, method="frontier")
    assert target["target"]["law"] == "envelope"
    assert target["ideal_flops"] == pytest.approx(
        cost_of_target(55.0, zoo_envelope_laws(two), None)["flops"]
    )
    assert spent(target["recipe"]) >= target["ideal_flops"] * 0.999  # whole epochs reach it
    with pytest.raises(RobustscaleError, match="--method 'chinchilla' is not known"):
        plan(two, budget=1e19, method="chinchilla")


def test_plan_uses_the_family_whose_law_predicts_more(k_ref):
    import pandas as pd

    good = joint_zoo(n=150, seed=1, k=k_ref).assign(
        model="wrn28_10", loss="trades", activation="relu"
    )
    worse = joint_zoo(n=150, seed=2, k=k_ref, theta=(55.0, 1000.0, 0.35, 2000.0, 0.30)).assign(
        model="wrn28_10", activation="relu"
    )
    df = pd.concat([worse, good], ignore_index=True).assign(
        run_id=lambda d: [f"r{i}" for i in range(len(d))]
    )
    out = plan(df, budget=1e19, n_boot=10)
    assert out["family"]["loss"] == "trades" and out["recipe"]["loss"] == "trades"
    assert out["recipe"]["attack_steps"] == 10 and len(out["families"]) == 2
    only_pgd = plan(df, budget=1e19, n_boot=10, loss="pgd")  # --loss narrows the families
    assert only_pgd["family"]["loss"] == "pgd" and only_pgd["predicted_acc"] < out["predicted_acc"]


def test_analyze_and_plan_give_one_answer_for_a_target(zoo, tmp_path, capsys):
    from robustscale.analysis import analyze_zoo

    target = 55.0
    fits = analyze_zoo(zoo, tmp_path / "rep", target_acc=target, n_splits=2)
    planned = plan(zoo, target_acc=target)
    a, p = fits["target"], planned["target"]
    assert a["law"] == p["law"] == "joint" and a["family_name"] == p["family_name"]
    for key in ("flops", "kwh", "usd", "kg_co2", "N_star", "D_star"):
        assert a[key] == pytest.approx(p[key], rel=1e-9), key
    for key in ("flops_ci", "kwh_ci"):
        assert a[key] == pytest.approx(p[key], rel=1e-9), key
    assert a["flops_ci"][0] < a["flops"] < a["flops_ci"][1]
    assert planned["ideal_flops"] == pytest.approx(a["flops"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "joint law L(N, D) of loss=pgd" in html and "95% interval over its bootstrap draws" in html
    )
