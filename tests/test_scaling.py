"""Envelope scaling laws: bins, the fit and its intervals, collapsed runs, the cost of a target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from zoo_factory import power_law_zoo

from robustscale.analysis import cost_of_target, envelope_index, fit_power_law, fit_zoo
from robustscale.analysis.scaling import log_bins


def test_fit_recovers_known_alpha_and_C_and_intervals_cover_them():
    rng = np.random.default_rng(1)
    x = 10 ** np.linspace(15, 20, 19)
    y = 5.0 * x**0.05 * np.exp(0.01 * rng.standard_normal(19))
    law = fit_power_law(x, y, n_boot=1000, seed=0)
    assert law.alpha == pytest.approx(0.05, abs=0.002)
    assert law.C == pytest.approx(5.0, rel=0.1)
    assert law.alpha_ci[0] <= 0.05 <= law.alpha_ci[1]
    assert law.C_ci[0] <= 5.0 <= law.C_ci[1]
    assert law.alpha_ci[1] - law.alpha_ci[0] < 0.01  # tight, not vacuous
    assert law.r2 > 0.95 and law.n_bins == 19


def test_fit_on_a_generated_zoo_recovers_alpha():
    a = fit_zoo(power_law_zoo(n=600, alpha=0.05, C=5.0, seed=3), n_boot=500, with_predictor=False)
    law = a.laws["accuracy"]
    assert law.alpha == pytest.approx(0.05, abs=0.005)
    assert law.alpha_ci[0] <= 0.05 <= law.alpha_ci[1]
    assert law.n_bins == 19
    # costs follow kWh = 1e-16 FLOPs^0.95; electricity = 0.12 x kWh
    assert a.laws["energy"].alpha == pytest.approx(0.95, abs=0.01)
    assert a.laws["electricity"].C == pytest.approx(0.12e-16, rel=0.1)


def test_fit_refuses_a_single_point():
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([1e18, 1e18], [50, 51])


def _brute_envelope(x, score, n_bins):
    lx = np.log10(x)
    edges = np.linspace(lx.min(), lx.max(), n_bins + 1)
    best = {}
    for i, (v, s) in enumerate(zip(lx, score)):
        b = min(int(np.searchsorted(edges, v, side="right")) - 1, n_bins - 1)
        if b not in best or s > score[best[b]]:
            best[b] = i
    return [best[b] for b in sorted(best)]


def test_envelope_keeps_exactly_the_best_run_per_log_bin():
    x = np.array([1e10, 2e10, 1.5e10, 1e15, 1e20, 5e19, 3e12])
    s = np.array([10.0, 30.0, 20.0, 40.0, 45.0, 50.0, 5.0])
    # 19 log bins over 1e10..1e20 are 10/19 decades wide: {1e10, 1.5e10, 2e10} share bin 0,
    # 3e12 is alone in bin 4, 1e15 alone in bin 9, 5e19 and 1e20 share the last bin.
    assert list(envelope_index(x, s, 19)) == [1, 6, 3, 5]
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(12, 20, 500)
    s = rng.uniform(0, 100, 500)
    assert list(envelope_index(x, s, 19)) == _brute_envelope(x, s, 19)
    assert log_bins(x, 19).max() == 18 and log_bins(x, 19).min() == 0


def test_collapsed_runs_are_left_out_of_the_fits():
    df = power_law_zoo(n=300, seed=2)
    clean = fit_zoo(df, n_boot=200, with_predictor=False).laws["accuracy"]
    # collapsed runs at the extremes of compute would stretch the bins and pull the fit down
    df.loc[0, ["train_flops", "autoattack_acc"]] = [1e22, 3.0]
    df.loc[1, ["train_flops", "autoattack_acc"]] = [1e13, 10.0]
    a = fit_zoo(df, n_boot=200, with_predictor=False)
    assert sorted(a.collapsed["run_id"]) == ["run00000", "run00001"]
    assert not set(a.envelope["run_id"]) & {"run00000", "run00001"}
    assert a.laws["accuracy"].x_range[1] < 1e21
    assert a.laws["accuracy"].alpha == pytest.approx(clean.alpha, abs=0.01)
    stricter = fit_zoo(df, n_boot=200, with_predictor=False, collapse_threshold=25.0)
    assert len(stricter.collapsed) > 2 and (stricter.kept["autoattack_acc"] > 25).all()


def test_cost_of_a_target_inverts_the_laws():
    a = fit_zoo(power_law_zoo(n=600, seed=4), n_boot=300, with_predictor=False)
    acc, energy = a.laws["accuracy"], a.laws["energy"]
    inside = float(np.mean(acc.y_range))
    out = cost_of_target(inside, a.laws, None)
    expected = (math.log10(inside) - math.log10(acc.C)) / acc.alpha
    assert out["flops_log10"] == pytest.approx(expected)
    assert out["flops_log10_ci"][0] < expected < out["flops_log10_ci"][1]
    assert out["kwh"] == pytest.approx(energy.C * out["flops"] ** energy.alpha, rel=1e-6)
    assert not out["extrapolated"] and "warning" not in out
    far = cost_of_target(acc.y_range[1] + 20, a.laws, None)
    assert far["extrapolated"] and "outside the data" in far["warning"]
