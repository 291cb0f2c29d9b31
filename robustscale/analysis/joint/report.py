"""The report's section on the joint law L(N, D), per recipe family, and its identifiability."""

from __future__ import annotations

import html
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, (int, float)) else html.escape("" if v is None else str(v))


def _coefficients(law: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{name}</td><td>{_fmt(law[name])}</td><td>"
        + (
            f"[{_fmt(law['ci'][name][0])}, {_fmt(law['ci'][name][1])}]"
            if law["ci"].get(name)
            else "n/a"
        )
        + "</td></tr>"
        for name in ("E", "A", "alpha", "B", "beta")
    )
    return (
        f"<table><tr><th>coefficient</th><th>value</th><th>bootstrap 95% CI</th></tr>{rows}</table>"
    )


def _families(joint: dict[str, Any]) -> str:
    rows = [
        [
            f["family_name"],
            f["n_runs"],
            f["identifiable"],
            f["heldout_r2"],
            f["law"]["alpha"],
            f["law"]["beta"],
            f["asymptote_acc"],
            "; ".join(f["reasons"]),
        ]
        for f in joint.get("families", [])
    ]
    rows += [
        [f["family_name"], f["n_runs"], False, None, None, None, None, f["error"]]
        for f in joint.get("families_failed", [])
    ]
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "family",
            "runs",
            "identifiable",
            "held-out R²",
            "α",
            "β",
            "asymptote (%)",
            "why not",
        )
    )
    text = f"<h3>Per recipe family</h3><table><tr>{head}</tr>{body}</table>"
    small = joint.get("families_too_small", [])
    if small:
        text += (
            "<p>Too small for a law of their own (fewer than 8 runs): "
            + html.escape("; ".join(f"{f['family_name']} ({f['n_runs']} runs)" for f in small))
            + ".</p>"
        )
    return text


def _not_identifiable(joint: dict[str, Any]) -> str:
    reasons = " ".join(f"{r[0].upper()}{r[1:]}." for r in joint["reasons"])
    return (
        f"<p><b>Not identifiable: this zoo does not determine L(N, D)</b> "
        f"({html.escape(joint.get('family_name', ''))}, {joint['law']['n_runs']} runs). "
        f"{html.escape(reasons)} The coefficients below are where the optimiser stopped, "
        "not a finding; "
        "no iso-FLOP or frontier figure is drawn, and <code>plan</code> refuses to plan from it "
        "(<code>plan --method frontier</code> plans from the zoo's best measured runs instead). "
        "Figure 4d shows which (N, D) the zoo covers.</p>"
    )


def joint_section(joint: dict[str, Any]) -> str:
    """HTML for fits.json's ``joint`` entry."""
    head = "<h2>Compute-optimal robustness: L(N, D) = E + A/N^α + B/D^β</h2>"
    if "error" in joint:
        return head + f"<p>Not fitted: {html.escape(joint['error'])}</p>" + _families(joint)
    law = joint["law"]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in joint.get("notes", []))
    what = (
        f"<p>Fitted as Bartoldson et al. (2024): Huber loss (δ = 1e-3) on log residuals, L-BFGS-B "
        f"from the best starts of a grid. Headline family: {html.escape(joint['family_name'])} "
        f"({law['n_runs']} runs).</p><ul>{notes}</ul>"
    )
    if not joint["identifiable"]:
        return head + _not_identifiable(joint) + what + _coefficients(law) + _families(joint)
    expo = law["frontier_exponents"]
    emp = joint["frontier"]
    emp_a, emp_b = emp["N_vs_C"].get("alpha"), emp["D_vs_C"].get("alpha")
    opt = joint["optimum"]
    text = (
        f"<p>Held-out R² (mean over repeated splits): {_fmt(joint['heldout_r2'])}. "
        f"Robust accuracy asymptote (at L = E): {_fmt(joint['asymptote_acc'])}%.</p>"
        f"<p>Compute C = k·N·D with k = {_fmt(joint['k_flops_per_param_example'])} FLOPs "
        "per parameter per "
        f"example ({html.escape(joint['k_source'])}"
        + (
            f"; the zoo's own median: {_fmt(joint['k_zoo_median'])}"
            if joint.get("k_zoo_median")
            else ""
        )
        + f"). The law's optimum grows as N* ∝ C^{_fmt(expo['a'])}, "
        f"D* ∝ C^{_fmt(expo['b'])}; over the zoo's FLOP range N* goes from "
        f"{_fmt(opt['N_star'][0])} to "
        f"{_fmt(opt['N_star'][-1])} parameters"
        + (" (outside the N or D the zoo has: an extrapolation)" if opt["extrapolated"] else "")
        + f". The best run per FLOP bin gives N* ∝ C^{_fmt(emp_a)}, D* ∝ C^{_fmt(emp_b)}.</p>"
    )
    return head + what + _coefficients(law) + text + _families(joint)
