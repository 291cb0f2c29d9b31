"""The report's section on the joint law L(N, D) and the compute-optimal frontier."""

from __future__ import annotations

import html
from typing import Any


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else html.escape("" if v is None else str(v))


def joint_section(joint: dict[str, Any]) -> str:
    """HTML for fits.json's ``joint`` entry."""
    head = "<h2>Compute-optimal robustness: L(N, D) = E + A/N^α + B/D^β</h2>"
    if "error" in joint:
        return head + f"<p>Not fitted: {html.escape(joint['error'])}</p>"
    law = joint["law"]
    rows = "".join(
        f"<tr><td>{name}</td><td>{_fmt(law[name])}</td><td>"
        + (f"[{_fmt(law['ci'][name][0])}, {_fmt(law['ci'][name][1])}]" if law["ci"].get(name) else "n/a")
        + "</td></tr>" for name in ("E", "A", "alpha", "B", "beta"))
    table = f"<table><tr><th>coefficient</th><th>value</th><th>bootstrap 95% CI</th></tr>{rows}</table>"
    expo = law["frontier_exponents"]
    emp = joint["frontier"]
    emp_a, emp_b = emp["N_vs_C"].get("alpha"), emp["D_vs_C"].get("alpha")
    text = (f"<p>Robust error L in percent ({html.escape(joint['runs'])}; {law['n_runs']} runs). "
            f"R² on held-out runs: {_fmt(law['r2_heldout'])}. Irreducible robust error E = {_fmt(law['E'])}%: "
            f"robust accuracy asymptote 100 - E = {_fmt(law['asymptote_acc'])}%.</p>"
            f"<p>Compute C = k·N·D with k = {_fmt(joint['k_flops_per_param_example'])} FLOPs per parameter per "
            f"example ({html.escape(joint['k_source'])}"
            + (f"; the zoo's own median: {_fmt(joint['k_zoo_median'])}" if joint.get("k_zoo_median") else "")
            + f"). The law's optimum grows as N* ∝ C^{_fmt(expo['a'])}, "
            f"D* ∝ C^{_fmt(expo['b'])}; the best run per FLOP bin gives N* ∝ C^{_fmt(emp_a)}, "
            f"D* ∝ C^{_fmt(emp_b)}.</p>")
    return head + table + text
