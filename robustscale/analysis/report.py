"""Figures and the self-contained HTML report (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.analysis.analyze import Analysis
from robustscale.analysis.predictor import Predictor
from robustscale.analysis.scaling import PowerLaw
from robustscale.analysis.target import describe_target

LAW_FIGURES = [("accuracy", "autoattack_acc", "AutoAttack accuracy (%)", "3a  accuracy = C·FLOPs^α"),
               ("electricity", "electricity_cost_usd", "electricity cost (USD)", "3b  electricity cost = C·FLOPs^α"),
               ("co2", "co2_kg", "CO2 (kg)", "3c  CO2 = C·FLOPs^α")]


def draw_figures(a: Analysis, out_dir: Path) -> dict[str, Path]:
    """Draw every figure the analysis supports; return figure name -> PNG path."""
    from robustscale.analysis import figures as F

    out: dict[str, Path] = {"1a": F.fig_1a(a.kept, a.collapsed, out_dir, a.standard, a.no_autoattack)}
    if isinstance(a.predictor, Predictor):
        p = a.predictor
        out["1b"] = F.fig_1b(p.test_true, p.test_pred, p.r2, out_dir)
        out["1c"] = F.fig_1c(p.importance, p.permutation_importance, out_dir)
    out["2"] = F.fig_2(a.kept, out_dir)
    env = a.envelope
    for letter, (name, col, ylabel, title) in zip("abc", LAW_FIGURES):
        law = a.laws.get(name)
        if not isinstance(law, PowerLaw):
            continue
        extra = None
        if name == "accuracy" and isinstance(a.standard_law, PowerLaw):
            se = a.standard_envelope
            extra = (a.standard_law, se["train_flops"].to_numpy(float), se["clean_acc"].to_numpy(float),
                     "standard training, clean accuracy")
        out[f"3{letter}"] = F.fig_3(law, env["train_flops"].to_numpy(float, na_value=np.nan),
                                    env[col].to_numpy(float, na_value=np.nan), f"fig3{letter}_{name}_law",
                                    ylabel, title, out_dir, extra)
    if a.joint is not None:
        from robustscale.analysis.joint_figures import draw_joint_figures

        out.update(draw_joint_figures(a.joint, out_dir))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and ci[0] is not None else "n/a"


def _scaling_section(fits: dict[str, Any]) -> str:
    rows = []
    for name, law in fits["scaling"].items():
        if law.get("alpha") is None:
            rows.append([name, None, None, None, None, None, law.get("n_bins"), law.get("error")])
            continue
        rows.append([name, law["alpha"], _ci(law["alpha_ci"]), law["C"], _ci(law["C_ci"]), law["r2"],
                     law["n_bins"], ""])
    text = _table(["law (y vs FLOPs)", "α", "α 95% CI", "C", "C 95% CI", "R² (log-log)", "bins", "note"], rows)
    std = fits["scaling"].get("standard_accuracy")
    if std and std.get("alpha") is not None and fits["scaling"]["accuracy"].get("alpha") is not None:
        text += (f"<p>Growth rates side by side: adversarial training (AutoAttack) α = "
                 f"{fits['scaling']['accuracy']['alpha']:.4g}; standard training (clean accuracy) α = "
                 f"{std['alpha']:.4g}.</p>")
    return "<h2>Scaling laws on the best-performance envelope</h2>" + text


def _predictor_section(fits: dict[str, Any]) -> str:
    p = fits["predictor"]
    if "error" in p:
        return f"<h2>Predictor</h2><p>{html.escape(str(p['error']))}</p>"
    scores = _table(["", "R²", "MAE (points)"],
                    [[f"held-out 30% (seed split, {p['n_test']} runs)", p["r2"], p["mae"]],
                     [f"{p['n_splits']} repeated splits, mean ± std",
                      f"{p['r2_mean']:.3f} ± {p['r2_std']:.3f}", f"{p['mae_mean']:.3f} ± {p['mae_std']:.3f}"]])
    imp = _table(["feature", "impurity importance", "permutation importance (held-out)"],
                 [[f, p["importance"][f], p["permutation_importance"][f]]
                  for f in sorted(p["importance"], key=p["importance"].get, reverse=True)])
    return ("<h2>Predictor (gradient boosting, 50 estimators, depth 5)</h2>" + scores + imp)


def _runs_section(a: Analysis, fits: dict[str, Any]) -> str:
    cols = ["run_id", "model", "loss", "attack_steps", "epochs", "train_flops", "autoattack_acc"]
    rows = a.collapsed[cols].astype(object).where(a.collapsed[cols].notna(), None).values.tolist()
    text = (f"<h2>Collapsed runs ({len(rows)})</h2><p>AutoAttack accuracy at or below "
            f"{fits['collapse_threshold']:g}%: catastrophic overfitting or failed training; left out of the "
            f"fits and the predictor.</p>")
    return text + (_table(cols, rows) if rows else "<p>None.</p>")


def write_report(a: Analysis, fits: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.html``: one file, figures embedded, tables of fits, scores and collapsed runs."""
    parts = [(f"<h1>robustscale zoo analysis</h1><p>{fits['n_runs']} runs: {fits['n_fitted']} fitted, "
              f"{len(fits['collapsed_runs'])} collapsed, {fits['n_standard']} standard training, "
              f"{fits['n_without_autoattack']} without AutoAttack or FLOPs. FLOPs in FLOPs, accuracies in "
              f"percent.</p>"), _scaling_section(fits)]
    if "target" in fits:
        parts.append(f"<h2>Cost of the target</h2><p>{html.escape(describe_target(fits['target']))}</p>")
    parts.append(_predictor_section(fits))
    if "joint" in fits:
        from robustscale.analysis.joint_report import joint_section

        parts.append(joint_section(fits["joint"]))
    parts.append(_runs_section(a, fits))
    parts.append("<h2>Figures</h2>")
    for name, filename in fits["figures"].items():
        data = base64.b64encode((out_dir / "figures" / filename).read_bytes()).decode()
        parts.append(f'<figure><img alt="figure {name}" src="data:image/png;base64,{data}">'
                     f"<figcaption>figure {name}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>robustscale analysis</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    from robustscale.files import atomic_write_text

    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
