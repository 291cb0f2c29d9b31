"""The envelope law's cost of a target: what reaching X% AutoAttack accuracy would take.

The answer ``analyze`` and ``plan`` give is decided by
:func:`robustscale.analysis.joint.target.cost_of_target`, which uses this when the joint law
cannot answer.

Invert the accuracy law (FLOPs = (X / C)**(1 / alpha)), then read kWh, USD and kg CO2 off the
cost laws at those FLOPs. Each bootstrap draw of the accuracy law is paired with the draw of the
same index of each cost law, so the intervals carry the uncertainty of both fits. Everything is
computed in log10, because a small alpha (the paper's is 0.01) sends FLOPs beyond float range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robustscale.analysis.scaling import PowerLaw

COST_LAWS = {"kwh": "energy", "usd": "electricity", "kg_co2": "co2"}


def _log10_flops(law: PowerLaw, target: float) -> tuple[float, np.ndarray]:
    point = (
        (math.log(target) - math.log(law.C)) / law.alpha / math.log(10)
        if law.alpha > 0
        else math.inf
    )
    draws = law.boot[law.boot[:, 0] > 0] if len(law.boot) else law.boot
    boot = (
        (math.log(target) - draws[:, 1]) / draws[:, 0] / math.log(10) if len(draws) else np.empty(0)
    )
    return point, boot


def _interval(values: np.ndarray) -> list[float | None]:
    if len(values) == 0:
        return [None, None]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _value(log10: float | None) -> float | None:
    if log10 is None or not math.isfinite(log10) or log10 > 300:
        return None
    return float(10**log10)


def envelope_cost_of_target(target_acc: float, laws: dict[str, Any]) -> dict[str, Any]:
    """FLOPs, kWh, USD and kg CO2 to reach ``target_acc`` percent AutoAttack accuracy.

    ``laws`` maps "accuracy", "energy", "electricity", "co2" to :class:`PowerLaw` (or a reason
    string when that law could not be fitted). Every quantity is given as ``<name>_log10`` with a
    95% interval (also in log10) and as a plain number when it fits in a float. ``extrapolated``
    is true, with a ``warning``, when the target lies outside the envelope's accuracies.
    """
    acc = laws.get("accuracy")
    if not isinstance(acc, PowerLaw):
        return {"target_acc": target_acc, "error": f"accuracy law {acc or 'missing'}"}
    out: dict[str, Any] = {"target_acc": float(target_acc), "law": "envelope"}
    lo, hi = acc.y_range
    out["extrapolated"] = not (lo <= target_acc <= hi)
    if out["extrapolated"]:
        out["warning"] = (
            f"target {target_acc:g}% lies outside the data (envelope accuracies "
            f"{lo:.1f}-{hi:.1f}%): an extrapolation of the fitted law"
        )
    if acc.alpha <= 0:
        out["error"] = (
            "accuracy does not grow with FLOPs in this zoo "
            f"(alpha={acc.alpha:.3g}); no FLOPs reach it"
        )
        return out
    flops_point, flops_boot = _log10_flops(acc, target_acc)
    put_log10(out, "flops", flops_point, flops_boot)
    put_costs(out, laws, flops_point, flops_boot)
    return out


def put_costs(
    out: dict[str, Any], laws: dict[str, Any], flops_log10: float, flops_log10_boot: np.ndarray
) -> None:
    """kWh, USD and kg CO2 at ``10**flops_log10`` FLOPs from the cost laws into ``out``; draw i
    of the FLOPs goes through draw i of each cost law, so intervals carry both uncertainties."""
    for key, name in COST_LAWS.items():
        law = laws.get(name)
        if not isinstance(law, PowerLaw):
            out[key] = None
            out[f"{key}_note"] = f"{name} law {law or 'missing'}"
            continue
        point = math.log10(law.C) + law.alpha * flops_log10
        n = min(len(flops_log10_boot), len(law.boot))
        boot = (
            (law.boot[:n, 1] / math.log(10) + law.boot[:n, 0] * flops_log10_boot[:n])
            if n
            else np.empty(0)
        )
        put_log10(out, key, point, boot)


def put_log10(out: dict[str, Any], key: str, log10_point: float, log10_boot: np.ndarray) -> None:
    """``key``, ``key_ci``, ``key_log10`` and ``key_log10_ci`` (95%) into ``out``."""
    out[f"{key}_log10"] = float(log10_point)
    out[f"{key}_log10_ci"] = _interval(log10_boot)
    out[key] = _value(log10_point)
    out[f"{key}_ci"] = [_value(v) for v in out[f"{key}_log10_ci"]]


def describe_target(result: dict[str, Any]) -> str:
    """One human line for a target's cost."""
    if "error" in result:
        return f"target {result['target_acc']:g}% AutoAttack: {result['error']}"

    def fmt(key: str, unit: str) -> str:
        lg = result.get(f"{key}_log10")
        if lg is None:
            return f"{unit}: unavailable"
        ci = result.get(f"{key}_log10_ci") or [None, None]
        band = f" [1e{ci[0]:.2f}, 1e{ci[1]:.2f}]" if ci[0] is not None else ""
        return f"{unit} 1e{lg:.2f}{band}"

    parts = [fmt("flops", "FLOPs"), fmt("kwh", "kWh"), fmt("usd", "USD"), fmt("kg_co2", "kg CO2")]
    line = f"target {result['target_acc']:g}% AutoAttack: " + "; ".join(parts)
    if result.get("law") == "joint":
        line += (
            f" (joint law L(N, D) of {result['family_name']}; 95% interval "
            "over its bootstrap draws)"
        )
    elif result.get("law") == "envelope":
        line += (
            " (envelope law accuracy = C·FLOPs^α"
            + (f"; not the joint law: {result['joint_note']}" if result.get("joint_note") else "")
            + ")"
        )
    return line + (f" (WARNING: {result['warning']})" if result.get("extrapolated") else "")
