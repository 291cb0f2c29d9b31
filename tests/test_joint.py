"""The joint law L(N, D) = E + A/N^alpha + B/D^beta, its optimum and the compute frontier."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    for name, width in (
        ("E", 4.0),
        ("alpha", 0.06),
        ("beta", 0.06),
    ):  # bootstrap intervals: real and narrow
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


def test_fits_run_blas_on_one_thread_set_once_for_nested_blocks_and_restored_after(monkeypatch):
    import scipy.optimize  # noqa: F401  (its BLAS loaded, as fit_joint loads it)
    import threadpoolctl

    from robustscale.analysis.joint.law import one_blas_thread

    def blas_threads() -> list[int]:
        info = threadpoolctl.threadpool_info()
        return [i["num_threads"] for i in info if i["user_api"] == "blas"]

    before = blas_threads()
    assert before, "no BLAS library loaded: nothing to limit"
    calls = []
    real = threadpoolctl.threadpool_limits

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", counted)
    with one_blas_thread():
        with one_blas_thread():  # a fit inside a loop over families: the outer limit holds
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert len(calls) == 1 and blas_threads() == before


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
    for b, (_, row) in zip(
        row_bins, rows.iterrows()
    ):  # no run anywhere in its bin beats the frontier's
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
    assert (
        jf.k == pytest.approx(_measured_k("wrn16_4", "pgd", 5))
        and "robustscale.cost" in jf.k_source
    )
    assert jf.k_zoo == pytest.approx(36.0) and jf.reference["attack_steps"] == 5
    jf10 = fit_joint_zoo(df, loss="pgd", attack_steps=10, n_boot=0)
    assert jf10.k == pytest.approx(
        _measured_k("wrn16_4", "pgd", 10)
    ) and jf10.k_zoo == pytest.approx(JOINT_K)
    assert jf10.k > 1.5 * jf.k  # 11 forward-backward passes per example against 6
    # a model the cost module cannot build: the zoo's median, and the reason
    other = fit_joint_zoo(df.assign(model="their_net"), loss="pgd", attack_steps=10, n_boot=0)
    assert (
        other.k == pytest.approx(JOINT_K)
        and "zoo median" in other.k_source
        and "their_net" in other.k_source
    )


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


# ---- identifiability: a law is only a finding when the zoo pins it down ----------------------


def _law_zoo(theta, n=300, noise=0.01, seed=0, sizes=None):
    """joint_zoo with robust error from ``theta``; ``sizes`` fixes the model sizes it may use."""
    df = joint_zoo(n=n, noise=noise, seed=seed, theta=theta)
    if sizes is not None:
        rng = np.random.default_rng(seed + 100)
        df["params"] = rng.choice(sizes, len(df))
        E, A, alpha, B, beta = theta
        N, D = df["params"].to_numpy(float), df["examples_seen"].to_numpy(float)
        err = (E + A / N**alpha + B / D**beta) * np.exp(noise * rng.standard_normal(len(df)))
        df["autoattack_acc"], df["pgd40_acc"] = 100 - err, 102 - err
    return df


def test_two_model_sizes_are_not_identifiable():
    jf = fit_joint_zoo(_law_zoo(JOINT_THETA, sizes=[1_000_000, 30_000_000]), n_boot=20)
    assert not jf.identifiable
    assert any("only 2 distinct model sizes" in r for r in jf.reasons), jf.reasons


@pytest.mark.parametrize("seed", [1, 3])
def test_accuracy_independent_of_N_is_not_identifiable(seed):
    E, _, alpha, B, beta = JOINT_THETA
    jf = fit_joint_zoo(_law_zoo((E, 0.0, alpha, B, beta), seed=seed), n_boot=20)
    assert not jf.identifiable
    assert any("no effect of N" in r for r in jf.reasons), jf.reasons
    assert not any("effect of D" in r for r in jf.reasons)  # D does matter in this zoo


def test_noise_larger_than_the_N_effect_is_not_identifiable():
    E, _, alpha, B, beta = JOINT_THETA
    jf = fit_joint_zoo(_law_zoo((E, 50.0, alpha, B, beta), noise=0.15, seed=2), n_boot=20)
    assert not jf.identifiable
    assert any("no effect of N" in r for r in jf.reasons) and any(
        "held-out R²" in r for r in jf.reasons
    )


def test_coefficient_at_a_bound_is_named():
    from robustscale.analysis.joint.law import BOUNDS, JointLaw, _at_bounds, assess

    p = np.array([5.0, 3.0, 3.0, BOUNDS[3][1] - 1e-4, 0.3])  # alpha pinned at its upper bound
    assert _at_bounds(p) == ["alpha"]
    law = JointLaw(
        E=20.0,
        A=np.exp(5.0),
        alpha=3.0,
        B=np.exp(3.0),
        beta=0.3,
        n_runs=50,
        r2_heldout=0.9,
        at_bounds=["alpha"],
        n_sizes=5,
        n_data=5,
        N_range=(1e5, 1e8),
        D_range=(1e6, 1e8),
        scatter=0.0,
    )
    assert any("alpha ended at a bound" in r for r in assess(law))


# ---- what L and D are -----------------------------------------------------------------------


def test_pgd40_loss_is_the_law_when_present_and_partly_empty_uses_the_runs_that_have_it():
    theta = (0.9, 30.0, 0.35, 60.0, 0.30)  # a robust cross-entropy in nats
    df = joint_zoo(n=300, noise=0.01, seed=4, theta=theta)
    loss = 100 - df["autoattack_acc"].to_numpy(float)  # the factory's "error" is the loss here
    df["pgd40_loss"] = loss
    df["autoattack_acc"] = 95 - 40 * loss  # accuracy falls linearly with the loss
    df.loc[:49, "pgd40_loss"] = np.nan
    jf = fit_joint_zoo(df, n_boot=20)
    assert jf.metric == "pgd40_loss" and jf.law.n_runs == 250
    assert any("known for 250 of 300 runs" in n for n in jf.notes)
    assert jf.law.alpha == pytest.approx(0.35, abs=0.03) and jf.law.E == pytest.approx(0.9, abs=0.1)
    assert jf.acc_map.slope == pytest.approx(
        -40, rel=1e-3
    ) and jf.acc_map.intercept == pytest.approx(95, rel=1e-3)
    assert jf.asymptote_acc == pytest.approx(95 - 40 * jf.law.E)


def test_D_is_unique_examples_where_the_zoo_records_them():
    from robustscale.analysis.joint.inputs import law_inputs

    df = joint_zoo(n=20, seed=0)
    assert law_inputs(df).d_kind == "processed"
    df["unique_synthetic_seen"] = np.where(df["synthetic_data"], 400_000, np.nan)
    inputs = law_inputs(df)
    assert inputs.d_kind == "unique" and any("unique examples" in n for n in inputs.notes)
    expected = np.where(
        df["synthetic_data"], 400_000 + 50_000, 50_000
    )  # + the CIFAR-10 train split
    assert inputs.D == pytest.approx(expected)
    df.loc[df.index[df["synthetic_data"]][0], "unique_synthetic_seen"] = (
        np.nan
    )  # one synthetic run unknown
    assert law_inputs(df).d_kind == "processed"


def test_D_counts_the_distinct_real_examples_where_runs_record_them():
    from robustscale.analysis.joint.inputs import law_inputs

    df = joint_zoo(n=20, seed=0)
    df["unique_synthetic_seen"] = np.where(df["synthetic_data"], 400_000, 0)
    df["unique_real_seen"] = 12_500  # a quarter of CIFAR-10's train split (train_fraction)
    df.loc[0, "unique_real_seen"] = np.nan  # one run made before it was recorded
    inputs = law_inputs(df)
    split = np.where(np.arange(20) == 0, 50_000, 12_500)
    assert inputs.D == pytest.approx(np.where(df["synthetic_data"], 400_000, 0) + split)
    assert any("unique_real_seen) for 19 of 20 runs" in n for n in inputs.notes)


# ---- recipe families --------------------------------------------------------------------------


def test_each_recipe_family_gets_its_own_law_and_small_families_are_named():
    from robustscale.analysis.joint.frontier import fit_families, joint_summary

    good = joint_zoo(n=200, seed=5).assign(loss="trades")
    worse = joint_zoo(n=200, seed=6, theta=(50.0, 1000.0, 0.2, 2000.0, 0.4)).assign(attack_steps=1)
    tiny = joint_zoo(n=5, seed=7).assign(activation="gelu")
    df = pd.concat([good, worse, tiny], ignore_index=True).assign(
        run_id=lambda d: [f"r{i}" for i in range(len(d))]
    )
    ff = fit_families(df, n_boot=20)
    by = {(f.family["loss"], f.family["attack_steps"]): f for f in ff.fits}
    assert set(by) == {("trades", 10), ("pgd", 1)}
    assert by[("trades", 10)].law.alpha == pytest.approx(JOINT_THETA[2], abs=0.03)
    assert by[("pgd", 1)].law.alpha == pytest.approx(0.2, abs=0.03) and by[
        ("pgd", 1)
    ].law.E == pytest.approx(50, abs=2)
    assert [(fam["activation"], n) for fam, n in ff.too_small] == [("gelu", 5)]
    summary = joint_summary(ff)
    assert len(summary["families"]) == 2 and summary["families_too_small"][0]["n_runs"] == 5


# ---- foreign zoos -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ours",
    [
        ("wide_resnet28_10", "wrn28_10"),
        ("WideResNet-70-16", "wrn70_16"),
        ("WideResNet-34-20", "wrn34_20"),
        ("wide_resnet70_16_dm", "dm_wrn70_16"),
        ("wide_resnet28_10_dm", "dm_wrn28_10"),
        ("wrn28_10", "wrn28_10"),
        ("resnet18", "resnet18"),
    ],
)
def test_foreign_model_names_map_to_robustscale_names(name, ours):
    from robustscale.analysis.joint.k import robustscale_model

    mapped, note = robustscale_model(name)
    assert mapped == ours and (note is None) == (name == ours)


def test_foreign_zoo_is_counted_through_the_alias_or_falls_back_visibly():
    import timm

    import robustscale.models  # noqa: F401  (registers robustscale's models)

    df = joint_zoo(n=60).assign(model="WideResNet-28-10")
    jf = fit_joint_zoo(df, n_boot=0)
    assert jf.k == pytest.approx(_measured_k("wrn28_10")) and "robustscale.cost" in jf.k_source
    assert any("'WideResNet-28-10' counted as robustscale's wrn28_10" in n for n in jf.notes)
    dm = fit_joint_zoo(df.assign(model="wide_resnet70_16_dm"), n_boot=0)
    assert any("dm_wrn70_16" in n for n in dm.notes)
    if "dm_wrn70_16" in timm.list_models():
        assert "robustscale.cost" in dm.k_source
    else:  # not registered in this tree: the zoo's own k, said so, never silently
        assert dm.k == pytest.approx(JOINT_K) and "zoo median" in dm.k_source
        assert any("could not count" in n for n in dm.notes)
