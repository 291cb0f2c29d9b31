"""The best configuration at each compute level, and the joint-law summary for the report.

For each of 19 log-spaced FLOP bins the run with the highest robust accuracy is the frontier's
configuration there (model, data, loss, steps, synthetic data, EMA). Fitting its parameters and
its examples against FLOPs gives the empirical allocation laws N*(C) ∝ C^a and D*(C) ∝ C^b
(Chinchilla's approach 1), to set beside the exponents the joint law implies,
a = beta / (alpha + beta) and b = alpha / (alpha + beta).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustscale.analysis.joint import (
    JointLaw,
    choose_k,
    fit_joint,
    joint_runs,
    robust_error,
)
from robustscale.analysis.scaling import N_BINS, PowerLaw, envelope_index, fit_power_law
from robustscale.errors import RobustscaleError

FRONTIER_COLUMNS = ["run_id", "train_flops", "model", "params", "examples_seen", "loss", "attack_steps",
                    "synthetic_data", "synthetic_fraction", "synthetic_size", "ema", "activation", "robust_acc"]


@dataclass
class Frontier:
    """Best run per FLOP bin and the power laws of its N and D against FLOPs."""

    rows: Any  # DataFrame with FRONTIER_COLUMNS, in increasing FLOPs
    n_law: PowerLaw | str
    d_law: PowerLaw | str

    def nearest(self, flops: float) -> dict[str, Any]:
        """The frontier configuration whose FLOPs are closest (in log) to ``flops``."""
        lf = np.log(self.rows["train_flops"].to_numpy(float))
        return self.rows.iloc[int(np.argmin(np.abs(lf - np.log(flops))))].to_dict()


@dataclass
class JointFit:
    """The joint law with what the planner and the figures need around it."""

    law: JointLaw
    frontier: Frontier
    k: float  # FLOPs per parameter per example: the cost module's, else the zoo's median
    k_source: str
    runs: Any  # the runs the law was fitted on
    k_zoo: float | None = None  # the zoo's median train_flops / (params * examples_seen), a cross-check
    k_zoo_source: str = ""
    reference: dict[str, Any] = field(default_factory=dict)  # the configuration k was measured for


def config_frontier(runs: Any, n_bins: int = N_BINS, seed: int = 0) -> Frontier:
    """The best configuration per log FLOP bin, with N*(C) and D*(C) fitted on it."""
    runs = runs[runs["train_flops"].fillna(0) > 0].reset_index(drop=True)
    if len(runs) == 0:
        raise RobustscaleError("no run has positive train_flops; there is no compute frontier")
    acc = 100.0 - robust_error(runs)
    flops = runs["train_flops"].to_numpy(float)
    idx = envelope_index(flops, acc, n_bins)
    rows = runs.iloc[idx].assign(robust_acc=acc[idx])[FRONTIER_COLUMNS].reset_index(drop=True)
    laws: list[PowerLaw | str] = []
    for col in ("params", "examples_seen"):
        try:
            laws.append(fit_power_law(flops[idx], rows[col].to_numpy(float, na_value=np.nan), n_boot=500, seed=seed))
        except ValueError as exc:
            laws.append(f"not fitted: {exc}")
    return Frontier(rows=rows, n_law=laws[0], d_law=laws[1])


def fit_joint_zoo(df: Any, threshold: float = 10.0, loss: str | None = None, attack_steps: int | None = None,
                  seed: int = 0, n_boot: int = 100) -> JointFit:
    """Joint law, frontier and FLOPs-per-parameter-per-example for one configuration (or all runs)."""
    runs = joint_runs(df, threshold, loss, attack_steps)
    if len(runs) == 0:
        what = ", ".join(f"{k}={v}" for k, v in (("loss", loss), ("attack_steps", attack_steps)) if v is not None)
        raise RobustscaleError(f"the zoo has no usable adversarial run{' with ' + what if what else ''}; "
                               f"losses in the zoo: {', '.join(sorted(df['loss'].dropna().astype(str).unique()))}")
    law = fit_joint(runs["params"].to_numpy(float), runs["examples_seen"].to_numpy(float), robust_error(runs),
                    seed=seed, n_boot=n_boot)
    k = choose_k(df, runs, loss, attack_steps)
    return JointFit(law=law, frontier=config_frontier(runs, seed=seed), k=k["k"], k_source=k["k_source"], runs=runs,
                    k_zoo=k["k_zoo"], k_zoo_source=k["k_zoo_source"], reference=k["reference"])


def _law(law: PowerLaw | str) -> dict[str, Any]:
    return law.to_dict() if isinstance(law, PowerLaw) else {"error": law}


def joint_summary(a: Any, seed: int = 0) -> dict[str, Any]:
    """Fit the joint law on an :class:`~robustscale.analysis.analyze.Analysis`'s zoo (all
    configurations together) and return its fits.json section; the fit is kept on ``a.joint``."""
    try:
        jf = fit_joint_zoo(a.zoo, a.collapse_threshold, seed=seed, n_boot=50)
    except RobustscaleError as exc:
        return {"error": str(exc)}
    a.joint = jf
    law = jf.law.to_dict()
    rows = jf.frontier.rows
    return {
        "law": law, "irreducible_robust_error": law["E"], "asymptote_acc": law["asymptote_acc"],
        "k_flops_per_param_example": jf.k, "k_source": jf.k_source,
        "k_zoo_median": jf.k_zoo, "k_zoo_source": jf.k_zoo_source,
        "runs": "all adversarial, non-collapsed runs (AutoAttack, else PGD-40)",
        "frontier": {"N_vs_C": _law(jf.frontier.n_law), "D_vs_C": _law(jf.frontier.d_law),
                     "configurations": rows.astype(object).where(rows.notna(), None).to_dict(orient="records")},
    }
