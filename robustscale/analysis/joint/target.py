"""The one answer to "what does X% robust accuracy cost?", for ``analyze`` and ``plan`` alike.

:func:`cost_of_target` decides which law answers. The joint law answers when some recipe
family's law is identifiable and its asymptote lies above the target: the least compute C at
which that law's optimum allocation (N*(C), D*(C)) reaches X, the cheapest family winning;
the 95% interval is the spread of that compute over the law's bootstrap draws. Otherwise the
envelope law accuracy = C·FLOPs^α answers (its inversion, with its own interval), and the
result says why the joint law did not. kWh, USD and kg CO2 come from the zoo's cost laws at
those FLOPs either way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robustscale.analysis.joint.frontier import FamilyFits, JointFit
from robustscale.analysis.joint.inputs import family_name
from robustscale.analysis.joint.law import optimum
from robustscale.analysis.target import envelope_cost_of_target, put_costs, put_log10
from robustscale.errors import RobustscaleError

_LOG_C_RANGE = (0.0, 80.0 * math.log(10))  # bisection bracket of ln C (1 to 1e80 FLOPs)


def _ideal_log_flops(jf: JointFit, target: float, thetas: np.ndarray) -> np.ndarray:
    """ln of the least compute at which each law (rows of ``thetas``) reaches ``target`` at its
    optimum allocation; inf where it never does (bisection, all laws at once)."""
    level = jf.acc_map.level(target)  # the L that maps to the target accuracy
    thetas = np.atleast_2d(thetas)
    lo, hi = np.full(len(thetas), _LOG_C_RANGE[0]), np.full(len(thetas), _LOG_C_RANGE[1])
    E, A, alpha, B, beta = thetas.T
    reach = E < level
    for _ in range(200):
        mid = (lo + hi) / 2
        n, d = optimum(thetas.T, np.exp(mid), jf.k)
        err = E + A / n**alpha + B / d**beta
        below = err > level  # not reached yet at this compute
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(reach, hi, np.inf)


def ideal_flops(jf: JointFit, target: float) -> float:
    """The least compute (FLOPs) at which ``jf``'s law reaches ``target`` percent (inf: never)."""
    return float(np.exp(_ideal_log_flops(jf, target, jf.law.theta)[0]))


def _joint_answer(jf: JointFit, target: float, laws: dict[str, Any]) -> dict[str, Any]:
    point = float(_ideal_log_flops(jf, target, jf.law.theta)[0]) / math.log(10)
    draws = (
        _ideal_log_flops(jf, target, jf.law.boot) / math.log(10)
        if len(jf.law.boot)
        else np.empty(0)
    )
    finite = draws[np.isfinite(draws)]
    flops = 10**point
    n_opt, d_opt = jf.law.optimum(flops, jf.k)
    lo, hi = jf.runs["train_flops"].min(), jf.runs["train_flops"].max()
    out: dict[str, Any] = {
        "target_acc": float(target),
        "law": "joint",
        "family": jf.family,
        "family_name": family_name(jf.family),
        "L": jf.metric,
        "k_flops_per_param_example": jf.k,
        "N_star": float(n_opt),
        "D_star": float(d_opt),
        "asymptote_acc": jf.asymptote_acc,
        "draws_not_reaching": int(len(draws) - len(finite)),
        "extrapolated": not lo <= flops <= hi,
    }
    if out["extrapolated"]:
        out["warning"] = (
            f"{flops:.3g} FLOPs lies outside the runs' {lo:.3g}-{hi:.3g} FLOPs: an extrapolation "
            "of the fitted law"
        )
    put_log10(out, "flops", point, finite)
    put_costs(out, laws, point, finite)
    return out


def cost_of_target(
    target_acc: float, laws: dict[str, Any], families: FamilyFits | None
) -> dict[str, Any]:
    """FLOPs, kWh, USD and kg CO2 to reach ``target_acc`` percent robust accuracy, each with a
    95% interval, and ``law`` ("joint" or "envelope") saying which law answered.

    ``laws`` are the zoo's envelope laws (``accuracy`` and the cost laws); ``families`` the
    joint laws per recipe family (None: not fitted). Raises :class:`RobustscaleError` for a
    target that is not a percentage.
    """
    if not 0 < target_acc < 100:
        raise RobustscaleError(
            f"--target-acc {target_acc:g} is not a percentage; allowed: 0 < X < 100"
        )
    note = "the joint law was not fitted"
    if families is not None:
        usable = [jf for jf in families.identifiable if target_acc < jf.asymptote_acc]
        if usable:
            best = min(usable, key=lambda jf: ideal_flops(jf, target_acc))
            return _joint_answer(best, target_acc, laws)
        if families.identifiable:
            top = max(families.identifiable, key=lambda jf: jf.asymptote_acc)
            note = (
                "the target lies beyond the asymptote of every identifiable family's law "
                f"(highest: {top.asymptote_acc:.1f}% robust accuracy, {family_name(top.family)}); "
                "no budget reaches it"
            )
        else:
            note = families.why_none()
    out = envelope_cost_of_target(target_acc, laws)
    out["joint_note"] = note
    return out
