"""`robustscale plan`: compute-optimal allocation, budgets in other units, targets, recipes."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_factory import JOINT_K, JOINT_THETA, joint_zoo

from robustscale.analysis.joint import optimum
from robustscale.analysis.planner import MODEL_TABLE, nearest_model, plan
from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.zoo import write_zoo


@pytest.fixture(scope="module")
def zoo():
    return joint_zoo(n=300, noise=0.01, seed=0)


@pytest.fixture()
def zoo_file(tmp_path, zoo):
    return write_zoo(zoo, tmp_path / "zoo.csv")


@pytest.mark.parametrize("budget", [1e16, 1e17, 1e18])
def test_planner_optimum_is_within_10_percent_of_the_analytic_one(zoo, budget):
    out = plan(zoo, budget=budget, n_boot=10)
    n_true, d_true = optimum(np.array(JOINT_THETA), budget, JOINT_K)
    assert out["k_flops_per_param_example"] == pytest.approx(JOINT_K)
    assert out["optimal"]["N"] == pytest.approx(n_true, rel=0.10)
    assert out["optimal"]["D"] == pytest.approx(d_true, rel=0.10)
    # the chosen model exists, and the examples spend the budget on it
    assert out["model"] == nearest_model(out["optimal"]["N"])
    assert JOINT_K * MODEL_TABLE[out["model"]] * out["examples"] == pytest.approx(budget)
    assert out["epochs"] == round(out["examples"] / 50_000)
    lo, hi = out["predicted_acc_ci"]
    assert lo <= out["predicted_acc"] <= hi


def test_budget_in_dollars_is_converted_with_the_cost_law(zoo):
    out = plan(zoo, budget=5.0, unit="usd", n_boot=0)  # electricity = 0.12 * 1e-16 * FLOPs
    assert out["budget_flops"] == pytest.approx(5.0 / 0.12e-16, rel=0.01)
    assert out["bill"]["usd"] == pytest.approx(5.0, rel=0.01)
    assert out["bill"]["kwh"] == pytest.approx(5.0 / 0.12, rel=0.01)


def test_target_gives_the_cheapest_table_model_reaching_it(zoo):
    out = plan(zoo, target_acc=55.0, n_boot=0)
    assert out["predicted_acc"] == pytest.approx(55.0, abs=1e-6)
    E, A, alpha, B, beta = (out["law"][k] for k in ("E", "A", "alpha", "B", "beta"))
    cost = out["bill"]["flops"]
    for n in MODEL_TABLE.values():  # no other model reaches 55% for less
        room = 45.0 - E - A / n**alpha
        if room > 0:
            assert JOINT_K * n * (B / room) ** (1 / beta) >= cost * (1 - 1e-9)
    assert out["ideal_flops"] <= cost * (1 + 1e-6)


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


def test_written_recipe_loads_and_validates(zoo_file, tmp_path, capsys):
    npz = tmp_path / "gen.npz"
    np.savez(npz, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--zoo", str(zoo_file), "--budget", "1e17", "--loss", "pgd", "--attack-steps", "10",
                 "--synthetic-data", str(npz), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plan: wrn" in printed and "predicted AutoAttack accuracy" in printed and "kWh" in printed
    from robustscale.recipe import Recipe

    recipe = Recipe.from_yaml(out)
    assert recipe.model in MODEL_TABLE and recipe.loss == "pgd" and recipe.attack_steps == 10
    assert recipe.epochs >= 1 and recipe.eps == pytest.approx(8 / 255)
    if "synthetic data: 70%" in printed:
        assert recipe.synthetic_data == str(npz) and recipe.synthetic_fraction == pytest.approx(0.7)
    else:
        assert recipe.synthetic_data is None and recipe.synthetic_fraction == 0
