"""The joint law of a zoo (per recipe family), the best configuration at each compute level,
and the fits.json section that says what the law is and whether the zoo pins it down.

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

from robustscale.analysis.joint.inputs import (
    AccuracyMap,
    accuracy_map,
    families,
    family_name,
    joint_runs,
    law_inputs,
    robust_error,
)
from robustscale.analysis.joint.k import choose_k, flops_per_param_example
from robustscale.analysis.joint.law import MIN_RUNS, JointLaw, assess, fit_joint, one_blas_thread
from robustscale.analysis.scaling import N_BINS, PowerLaw, envelope_index, fit_power_law
from robustscale.errors import RobustscaleError

FRONTIER_COLUMNS = [
    "run_id",
    "train_flops",
    "model",
    "params",
    "examples_seen",
    "loss",
    "attack_steps",
    "synthetic_data",
    "synthetic_fraction",
    "synthetic_size",
    "ema",
    "activation",
    "robust_acc",
]
N_OPTIMUM = 10  # compute levels of fits.json's optimum over the zoo's FLOP range
N_BOOT = (
    50  # bootstrap refits of the joint law, in analyze and plan alike (so they give one answer)
)


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
    """The joint law of one set of runs with what the planner and the figures need around it."""

    law: JointLaw
    frontier: Frontier
    k: float  # FLOPs per parameter per example: the cost module's, else the zoo's median
    k_source: str
    runs: Any  # the runs the law was fitted on
    acc_map: AccuracyMap
    metric: str  # what L is: "pgd40_loss" or "robust_error"
    d_kind: str  # what D is: "unique" or "processed" examples
    N: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    D: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    family: dict[str, Any] = field(default_factory=dict)  # the recipe keys shared by the runs
    reasons: list[str] = field(default_factory=list)  # why not identifiable (empty: identifiable)
    notes: list[str] = field(default_factory=list)  # what L, D and k are, fallbacks included
    k_zoo: float | None = (
        None  # the zoo's median train_flops / (params * examples_seen), a cross-check
    )
    k_zoo_source: str = ""
    reference: dict[str, Any] = field(default_factory=dict)  # the configuration k was measured for

    @property
    def identifiable(self) -> bool:
        return not self.reasons

    def accuracy(self, N: Any, D: Any) -> np.ndarray:
        """Predicted robust accuracy (percent) at N parameters and D examples."""
        return self.acc_map.accuracy(self.law.error(N, D))

    def accuracy_draws(self, N: Any, D: Any) -> np.ndarray:
        """The same under each bootstrap draw of the law (rows: draws)."""
        from robustscale.analysis.joint.law import law_error

        return np.array([self.acc_map.accuracy(law_error(t, N, D)) for t in self.law.boot])

    @property
    def asymptote_acc(self) -> float:
        """Robust accuracy at L = E: what no model size or data amount exceeds under the law."""
        return float(self.acc_map.accuracy(self.law.E))


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
            laws.append(
                fit_power_law(
                    flops[idx], rows[col].to_numpy(float, na_value=np.nan), n_boot=500, seed=seed
                )
            )
        except ValueError as exc:
            laws.append(f"not fitted: {exc}")
    return Frontier(rows=rows, n_law=laws[0], d_law=laws[1])


def _zoo_k(runs: Any, family: dict[str, Any]) -> dict[str, Any]:
    """k from the runs' own FLOPs, for a law too loose to plan from (no cost-module count)."""
    try:
        k, source = flops_per_param_example(runs, family.get("loss"), family.get("attack_steps"))
    except RobustscaleError as exc:
        k, source = float("nan"), str(exc)
    source += "; not measured by the cost module: the law is not identifiable"
    return {
        "k": k,
        "k_source": source,
        "k_zoo": k,
        "k_zoo_source": source,
        "reference": {},
        "notes": [],
    }


def _fit_runs(df: Any, runs: Any, family: dict[str, Any], seed: int, n_boot: int) -> JointFit:
    inputs = law_inputs(runs)
    law = fit_joint(
        inputs.N, inputs.D, inputs.L, seed=seed, n_boot=n_boot, boot_only_if_identifiable=True
    )
    acc_map = accuracy_map(inputs)
    reasons = assess(law)
    if inputs.metric != "robust_error" and not acc_map.slope < 0:
        reasons.append(
            "robust accuracy does not fall as pgd40_loss rises in these runs (loss-to-accuracy "
            f"slope {acc_map.slope:.3g}): the loss law says nothing about accuracy"
        )
    # the cost module's meta-device count costs about a second per configuration: only for laws
    # that can be planned from
    k = (
        _zoo_k(inputs.runs, family)
        if reasons
        else choose_k(df, inputs.runs, family.get("loss"), family.get("attack_steps"))
    )
    return JointFit(
        law=law,
        frontier=config_frontier(inputs.runs, seed=seed),
        k=k["k"],
        k_source=k["k_source"],
        runs=inputs.runs,
        acc_map=acc_map,
        metric=inputs.metric,
        d_kind=inputs.d_kind,
        N=inputs.N,
        D=inputs.D,
        family=family,
        reasons=reasons,
        notes=inputs.notes + k["notes"],
        k_zoo=k["k_zoo"],
        k_zoo_source=k["k_zoo_source"],
        reference=k["reference"],
    )


def fit_joint_zoo(
    df: Any,
    threshold: float = 10.0,
    loss: str | None = None,
    attack_steps: int | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> JointFit:
    """Joint law, frontier and k of all usable runs with ``loss`` and ``attack_steps`` (when
    given), fitted as one set. :func:`fit_families` splits a zoo by recipe family first."""
    family = {
        key: v for key, v in (("loss", loss), ("attack_steps", attack_steps)) if v is not None
    }
    runs = joint_runs(df, threshold, family)
    if len(runs) == 0:
        what = ", ".join(f"{k}={v}" for k, v in family.items())
        raise RobustscaleError(
            f"the zoo has no usable adversarial run{' with ' + what if what else ''}; "
            f"losses in the zoo: {', '.join(sorted(df['loss'].dropna().astype(str).unique()))}"
        )
    return _fit_runs(df, runs, family, seed, n_boot)


@dataclass
class FamilyFits:
    """The joint law of each recipe family with enough runs, and the families too small for one."""

    fits: list[JointFit]
    failed: list[tuple[dict[str, Any], int, str]]  # (family, runs, why no law could be fitted)
    too_small: list[tuple[dict[str, Any], int]]  # (family, runs)

    @property
    def identifiable(self) -> list[JointFit]:
        return [f for f in self.fits if f.identifiable]

    def why_none(self) -> str:
        """One sentence on why no family's law is identifiable (the largest family's reasons)."""
        if self.fits:
            f = self.fits[0]
            return (
                f"the joint law is not identifiable from this zoo ({family_name(f.family)}, "
                f"{f.law.n_runs} runs): " + "; ".join(f.reasons)
            )
        if self.failed:
            fam, n, why = self.failed[0]
            return f"the joint law could not be fitted ({family_name(fam)}, {n} runs): {why}"
        sizes = ", ".join(f"{family_name(fam)}: {n}" for fam, n in self.too_small[:5])
        return f"no recipe family has the {MIN_RUNS} runs a joint law needs ({sizes})"


def fit_families(
    df: Any,
    threshold: float = 10.0,
    seed: int = 0,
    n_boot: int = N_BOOT,
    loss: str | None = None,
    attack_steps: int | None = None,
) -> FamilyFits:
    """One joint law per recipe family (:data:`~robustscale.analysis.joint.inputs.FAMILY_KEYS`)
    with at least ``MIN_RUNS`` runs, largest family first; ``loss``/``attack_steps`` keep only
    the families with those values."""
    wanted = {
        key: v for key, v in (("loss", loss), ("attack_steps", attack_steps)) if v is not None
    }
    runs = joint_runs(df, threshold, wanted)
    if len(runs) == 0:
        what = ", ".join(f"{k}={v}" for k, v in wanted.items())
        raise RobustscaleError(
            f"the zoo has no usable adversarial run{' with ' + what if what else ''}; "
            f"losses in the zoo: {', '.join(sorted(df['loss'].dropna().astype(str).unique()))}"
        )
    out = FamilyFits(fits=[], failed=[], too_small=[])
    with one_blas_thread():
        for family, part in families(runs):
            if len(part) < MIN_RUNS:
                out.too_small.append((family, len(part)))
                continue
            try:
                out.fits.append(_fit_runs(df, part, family, seed, n_boot))
            except RobustscaleError as exc:
                out.failed.append((family, len(part), str(exc)))
    return out


def _law(law: PowerLaw | str) -> dict[str, Any]:
    return law.to_dict() if isinstance(law, PowerLaw) else {"error": law}


def optimum_section(jf: JointFit) -> dict[str, Any]:
    """N*(C), D*(C) at :data:`N_OPTIMUM` compute levels over the runs' FLOP range, and whether
    they leave the runs' N or D range (``extrapolated``)."""
    flops = jf.runs["train_flops"].to_numpy(float, na_value=np.nan)
    flops = flops[np.isfinite(flops) & (flops > 0)]
    grid = (
        np.logspace(np.log10(flops.min()), np.log10(flops.max()), N_OPTIMUM)
        if len(flops)
        else np.empty(0)
    )
    n_opt, d_opt = jf.law.optimum(grid, jf.k)
    outside = bool(len(grid)) and bool(
        (n_opt < jf.N.min()).any()
        or (n_opt > jf.N.max()).any()
        or (d_opt < jf.D.min()).any()
        or (d_opt > jf.D.max()).any()
    )
    return {
        "C": grid.tolist(),
        "N_star": np.asarray(n_opt).tolist(),
        "D_star": np.asarray(d_opt).tolist(),
        "extrapolated": outside,
    }


def fit_section(jf: JointFit) -> dict[str, Any]:
    """fits.json's description of one family's law."""
    law = jf.law.to_dict()
    law["asymptote_acc"] = jf.asymptote_acc
    rows = jf.frontier.rows
    return {
        "family": jf.family,
        "family_name": family_name(jf.family),
        "n_runs": jf.law.n_runs,
        "identifiable": jf.identifiable,
        "reasons": list(jf.reasons),
        "heldout_r2": jf.law.r2_heldout,
        "at_bounds": list(jf.law.at_bounds),
        "optimum": optimum_section(jf),
        "law": law,
        "L": jf.metric,
        "D": jf.d_kind,
        "accuracy_map": jf.acc_map.to_dict(),
        "irreducible_robust_error": 100.0 - jf.asymptote_acc,
        "asymptote_acc": jf.asymptote_acc,
        "k_flops_per_param_example": jf.k,
        "k_source": jf.k_source,
        "k_zoo_median": jf.k_zoo,
        "k_zoo_source": jf.k_zoo_source,
        "notes": list(jf.notes),
        "coverage": {"N": sorted({float(v) for v in jf.N}), "D": sorted({float(v) for v in jf.D})},
        "frontier": {
            "N_vs_C": _law(jf.frontier.n_law),
            "D_vs_C": _law(jf.frontier.d_law),
            "configurations": rows.astype(object)
            .where(rows.notna(), None)
            .to_dict(orient="records"),
        },
    }


def headline(ff: FamilyFits) -> JointFit | None:
    """The family the report leads with: the largest identifiable one, else the largest."""
    return (ff.identifiable or ff.fits or [None])[0]


def joint_summary(ff: FamilyFits) -> dict[str, Any]:
    """fits.json's ``joint`` section: the headline family's law at the top level, every
    family's under ``families``, and the families too small for a law."""
    lead = headline(ff)
    small = [
        {"family": fam, "family_name": family_name(fam), "n_runs": n} for fam, n in ff.too_small
    ]
    failed = [
        {"family": fam, "family_name": family_name(fam), "n_runs": n, "error": why}
        for fam, n, why in ff.failed
    ]
    if lead is None:
        return {
            "error": ff.why_none(),
            "identifiable": False,
            "reasons": [ff.why_none()],
            "families": [],
            "families_failed": failed,
            "families_too_small": small,
        }
    out = fit_section(lead)
    out.update(
        runs="adversarial, non-collapsed runs of one recipe family ("
        + family_name(lead.family)
        + ")",
        families=[fit_section(f) for f in ff.fits],
        families_failed=failed,
        families_too_small=small,
    )
    return out
