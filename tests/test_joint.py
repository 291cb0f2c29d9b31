"""The joint law L(N, D) = E + A/N^alpha + B/D^beta, its optimum and the compute frontier."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_factory import JOINT_K, JOINT_THETA, joint_zoo

from robustscale.analysis.joint.frontier import fit_joint_zoo
from robustscale.analysis.joint.inputs import robust_error
from robustscale.analysis.joint.k import flops_per_param_example
from robustscale.analysis.joint.law import fit_joint, law_error, optimum
from robustscale.errors import RobustscaleError


@pytest.fixture(scope="module")
def fitted():
    df = joint_zoo(n=300, noise=0.01, seed=0)
    return fit_joint_zoo(df, seed=0, n_boot=40)


def test_fit_recovers_alpha_beta_and_E(fitted):
    law = fitted.law
    E, _, alpha, _, beta = JOINT_THETA
    assert law.alpha == pytest.approx(alpha, abs=0.015)
    assert law.beta == pytest.approx(beta, abs=0.015)
    assert law.E == pytest.approx(E, abs=1.0)
    ci = law.ci()
    for name, width in (("E", 4.0), ("alpha", 0.06), ("beta", 0.06)):  # bootstrap intervals: real and narrow
        lo, hi = ci[name]
        assert lo < getattr(law, name) < hi and hi - lo < width, name
    assert law.r2_heldout > 0.95
    assert fitted.metric == "robust_error" and fitted.asymptote_acc == pytest.approx(100 - law.E)
    assert fitted.identifiable and fitted.reasons == [] and law.at_bounds == []


def test_fit_ignores_outliers_huber():
    df = joint_zoo(n=300, noise=0.01, seed=1)
    err = robust_error(df)
    err[:10] = 99.0  # ten wild runs; a squared loss would be dragged, Huber is not
    law = fit_joint(df["params"], df["examples_seen"], err, n_boot=0)
    assert law.alpha == pytest.approx(JOINT_THETA[2], abs=0.02)
    assert law.E == pytest.approx(JOINT_THETA[0], abs=1.5)


def test_analytic_optimum_is_the_minimum_on_the_iso_flop_line():
    theta = np.array(JOINT_THETA)
    for c in (1e15, 1e17, 1e19):
        n_opt, d_opt = optimum(theta, c, JOINT_K)
        assert n_opt * d_opt * JOINT_K == pytest.approx(c)
        n_grid = np.logspace(3, 11, 20001)
        loss = law_error(theta, n_grid, c / (JOINT_K * n_grid))
        assert n_opt == pytest.approx(n_grid[np.argmin(loss)], rel=0.01)


def test_frontier_keeps_best_run_per_bin_and_fits_allocation(fitted):
    rows = fitted.frontier.rows
    assert 10 <= len(rows) <= 19 and rows["train_flops"].is_monotonic_increasing
    runs = fitted.runs
    acc = 100 - robust_error(runs)
    # 19 equal bins of log10(FLOPs) over the runs' range, computed here independently
    lf = np.log10(runs["train_flops"].to_numpy(float))
    edges = np.linspace(lf.min(), lf.max(), 20)

    def bin_of(x):
        return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 18)

    run_bins, row_bins = bin_of(lf), bin_of(np.log10(rows["train_flops"].to_numpy(float)))
    assert sorted(row_bins) == sorted(set(run_bins)), "one frontier row per non-empty bin"
    for b, (_, row) in zip(row_bins, rows.iterrows()):  # no run anywhere in its bin beats the frontier's
        assert acc[run_bins == b].max() == pytest.approx(row["robust_acc"])
    assert 0 < fitted.frontier.n_law.alpha < 1.5 and 0 < fitted.frontier.d_law.alpha < 1.5


def _measured_k(model: str, loss: str = "pgd", steps: int = 10) -> float:
    from robustscale.cost.forecast import recipe_params, recipe_step_flops
    from robustscale.recipe import Recipe

    r = Recipe(dataset="cifar10", model=model, loss=loss, attack_steps=steps)
    return recipe_step_flops(r).train / recipe_params(r)


def test_k_is_the_cost_modules_for_the_chosen_loss_and_steps_with_the_zoo_median_beside_it():
    df = joint_zoo(n=60).assign(model="wrn16_4", activation="relu")
    df.loc[:29, "attack_steps"] = 5
    df.loc[:29, "train_flops"] = 36.0 * df.loc[:29, "params"] * df.loc[:29, "examples_seen"]
    jf = fit_joint_zoo(df, loss="pgd", attack_steps=5, n_boot=0)
    assert jf.k == pytest.approx(_measured_k("wrn16_4", "pgd", 5)) and "robustscale.cost" in jf.k_source
    assert jf.k_zoo == pytest.approx(36.0) and jf.reference["attack_steps"] == 5
    jf10 = fit_joint_zoo(df, loss="pgd", attack_steps=10, n_boot=0)
    assert jf10.k == pytest.approx(_measured_k("wrn16_4", "pgd", 10)) and jf10.k_zoo == pytest.approx(JOINT_K)
    assert jf10.k > 1.5 * jf.k  # 11 forward-backward passes per example against 6
    # a model the cost module cannot build: the zoo's median, and the reason
    other = fit_joint_zoo(df.assign(model="their_net"), loss="pgd", attack_steps=10, n_boot=0)
    assert other.k == pytest.approx(JOINT_K) and "zoo median" in other.k_source and "their_net" in other.k_source


def test_zoo_median_k_for_the_configuration():
    df = joint_zoo(n=60)
    df.loc[:29, "attack_steps"] = 5
    df.loc[:29, "train_flops"] = 36.0 * df.loc[:29, "params"] * df.loc[:29, "examples_seen"]
    assert flops_per_param_example(df, "pgd", 5)[0] == pytest.approx(36.0)
    assert flops_per_param_example(df, "pgd", 10)[0] == pytest.approx(JOINT_K)
    k, source = flops_per_param_example(df, "trades", 10)
    assert source.startswith("zoo median of all") and 36.0 <= k <= JOINT_K


def test_robust_error_falls_back_to_pgd40():
    df = joint_zoo(n=5)
    df.loc[0, "autoattack_acc"] = np.nan
    err = robust_error(df)
    assert err[0] == pytest.approx(100 - df.loc[0, "pgd40_acc"])
    assert err[1] == pytest.approx(100 - df.loc[1, "autoattack_acc"])


def test_too_few_runs_or_sizes_is_a_clear_error():
    df = joint_zoo(n=5)
    with pytest.raises(RobustscaleError, match="at least 8 runs"):
        fit_joint_zoo(df, n_boot=0)
    df = joint_zoo(n=40).assign(params=1000)
    with pytest.raises(RobustscaleError, match="2 model sizes"):
        fit_joint_zoo(df, n_boot=0)
    with pytest.raises(RobustscaleError, match="no usable adversarial run with loss=trades"):
        fit_joint_zoo(joint_zoo(n=40), loss="trades", n_boot=0)
