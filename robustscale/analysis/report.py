"""Figures and the self-contained HTML report (figures embedded as base64 PNG; SVGs beside it)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.analysis.joint.report import joint_section
from robustscale.analysis.predictor import Predictor
from robustscale.analysis.scaling import PowerLaw
from robustscale.analysis.target import describe_target
from robustscale.analysis.zoo_fit import Analysis
from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_text

# plain Unicode, not mathtext: matplotlib parses a "$...$" title with its TeX parser once per
# output format (measured: 0.3 s CPU of the figures of a 10,000-run zoo)
LAW_FIGURES = [
    ("accuracy", "autoattack_acc", "AutoAttack accuracy (%)", "3a  accuracy = C · FLOPsᵅ"),
    (
        "electricity",
        "electricity_cost_usd",
        "electricity cost (USD)",
        "3b  electricity cost = C · FLOPsᵅ",
    ),
    ("co2", "co2_kg", "CO₂ (kg)", "3c  CO₂ = C · FLOPsᵅ"),
]


# A figure to draw: (figure name, "module:function" drawing it, the function's arguments). The
# function is named, not imported, so that building a job imports no matplotlib: a forked
# process draws the figures (robustscale.analysis.drawing) while this one fits.
Job = tuple[str, str, tuple]
_F = "robustscale.analysis.figures:"
_J = "robustscale.analysis.joint.figures:"
# the order of fits.json's "figures" and of the report, whichever figure is drawn first
FIGURE_ORDER = ["1a", "1b", "1c", "2", "3a", "3b", "3c", "4a", "4b", "4c", "4d"]
# the vector copies ``analyze --vector`` may ask for beside each PNG
VECTOR_FORMATS = ("svg", "pdf")


def check_vector_formats(vector: Any) -> tuple[str, ...]:
    """``vector`` (a format or several) as a tuple of :data:`VECTOR_FORMATS`, each once, or a
    one-line error."""
    out: list[str] = []
    for fmt in (vector,) if isinstance(vector, str) else vector:
        if fmt not in VECTOR_FORMATS:
            raise RobustscaleError(
                f"vector format {fmt!r} is not known; allowed: {', '.join(VECTOR_FORMATS)}"
            )
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def zoo_figure_jobs(a: Analysis, out_dir: Path, vector: tuple[str, ...] = ()) -> list[Job]:
    """The figures of the run groups and the envelope laws (1a, 2, 3a-c): the ones that need
    neither the predictor nor the joint law. ``vector``: the vector copies to write beside
    each PNG (see :data:`VECTOR_FORMATS`)."""
    jobs: list[Job] = [
        (
            "1a",
            _F + "fig_1a",
            (a.kept, a.collapsed, out_dir, a.standard, a.no_autoattack, vector),
        ),
        ("2", _F + "fig_2", (a.kept, out_dir, vector)),
    ]
    env = a.envelope
    for letter, (name, col, ylabel, title) in zip("abc", LAW_FIGURES):
        law = a.laws.get(name)
        if not isinstance(law, PowerLaw):
            continue
        extra = None
        if name == "accuracy" and isinstance(a.standard_law, PowerLaw):
            se = a.standard_envelope
            extra = (
                a.standard_law,
                se["train_flops"].to_numpy(float),
                se["clean_acc"].to_numpy(float),
                "standard training, clean accuracy",
            )
        args = (
            law,
            env["train_flops"].to_numpy(float, na_value=np.nan),
            env[col].to_numpy(float, na_value=np.nan),
            f"fig3{letter}_{name}_law",
            ylabel,
            title,
            out_dir,
            extra,
            vector,
        )
        jobs.append((f"3{letter}", _F + "fig_3", args))
    return jobs


def predictor_figure_jobs(a: Analysis, out_dir: Path, vector: tuple[str, ...] = ()) -> list[Job]:
    """Figures 1b and 1c of a fitted predictor (none when it was not fitted)."""
    if not isinstance(a.predictor, Predictor):
        return []
    p = a.predictor
    return [
        ("1b", _F + "fig_1b", (p.test_true, p.test_pred, p.r2, out_dir, vector)),
        ("1c", _F + "fig_1c", (p.importance, p.permutation_importance, out_dir, vector)),
    ]


def joint_figure_jobs(a: Analysis, out_dir: Path, vector: tuple[str, ...] = ()) -> list[Job]:
    """The joint-law figures of the headline family (4a-c, or 4d when not identifiable)."""
    jf = a.joint_fit
    if jf is None:
        return []
    if not jf.identifiable:
        return [("4d", _J + "fig_coverage", (jf, out_dir, vector))]
    return [
        ("4a", _J + "fig_iso_flop", (jf, out_dir, vector)),
        ("4b", _J + "fig_frontier", (jf, out_dir, vector)),
        ("4c", _J + "fig_asymptote", (jf, out_dir, vector)),
    ]


def draw_job(job: Job) -> Path:
    """Draw one figure; return its PNG's path."""
    import importlib

    _, target, args = job
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(*args)


def in_figure_order(paths: dict[str, Path]) -> dict[str, Path]:
    """Figure name -> path in :data:`FIGURE_ORDER`."""
    return {name: paths[name] for name in FIGURE_ORDER if name in paths}


def _table(header: list[str], rows: list[list[Any]], ident: str | None = None) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    attr = f' id="{ident}"' if ident else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and ci[0] is not None else "n/a"


def _scaling_section(fits: dict[str, Any]) -> str:
    rows = []
    for name, law in fits["scaling"].items():
        if law.get("alpha") is None:
            rows.append([name, None, None, None, None, None, law.get("n_bins"), law.get("error")])
            continue
        rows.append(
            [
                name,
                law["alpha"],
                _ci(law["alpha_ci"]),
                law["C"],
                _ci(law["C_ci"]),
                law["r2"],
                law["n_bins"],
                "",
            ]
        )
    text = _table(
        ["law (y vs FLOPs)", "α", "α 95% CI", "C", "C 95% CI", "R² (log-log)", "bins", "note"],
        rows,
        ident="laws",
    )
    std = fits["scaling"].get("standard_accuracy")
    if (
        std
        and std.get("alpha") is not None
        and fits["scaling"]["accuracy"].get("alpha") is not None
    ):
        text += (
            f"<p>Growth rates side by side: adversarial training (AutoAttack) α = "
            f"{fits['scaling']['accuracy']['alpha']:.4g}; standard training (clean accuracy) α = "
            f"{std['alpha']:.4g}.</p>"
        )
    return "<h2>Scaling laws on the best-performance envelope</h2>" + text


def _predictor_section(fits: dict[str, Any]) -> str:
    p = fits["predictor"]
    if "error" in p:
        return f"<h2>Predictor</h2><p>{html.escape(str(p['error']))}</p>"
    scores = _table(
        ["", "R²", "MAE (points)"],
        [
            [f"held-out 30% (seed split, {p['n_test']} runs)", p["r2"], p["mae"]],
            [
                f"{p['n_splits']} repeated splits, mean ± std",
                f"{p['r2_mean']:.3f} ± {p['r2_std']:.3f}",
                f"{p['mae_mean']:.3f} ± {p['mae_std']:.3f}",
            ],
        ],
        ident="predictor-scores",
    )
    imp = _table(
        ["feature", "impurity importance", "permutation importance (held-out)"],
        [
            [f, p["importance"][f], p["permutation_importance"][f]]
            for f in sorted(p["importance"], key=p["importance"].get, reverse=True)
        ],
        ident="predictor-importance",
    )
    return "<h2>Predictor (gradient boosting, 50 estimators, depth 5)</h2>" + scores + imp


def _runs_section(a: Analysis, fits: dict[str, Any]) -> str:
    cols = ["run_id", "model", "loss", "attack_steps", "epochs", "train_flops", "autoattack_acc"]
    rows = a.collapsed[cols].astype(object).where(a.collapsed[cols].notna(), None).values.tolist()
    text = (
        f"<h2>Collapsed runs ({len(rows)})</h2><p>AutoAttack accuracy at or below "
        f"{fits['collapse_threshold']:g}%: catastrophic overfitting or failed training; left out "
        f"of the fits and the predictor.</p>"
    )
    return text + (_table(cols, rows, ident="collapsed") if rows else "<p>None.</p>")


# What each figure shows and how it was computed: the caption under it in report.html.
FIGURE_CAPTIONS = {
    "1a": "AutoAttack accuracy against training FLOPs, one point per run: adversarial runs by loss "
    "(marker) and synthetic data (colour), collapsed runs as grey crosses, standard training and "
    "runs without AutoAttack (at their PGD-40 accuracy, hollow). FLOPs: every forward and backward "
    "of the attack and the update over all epochs, validation excluded.",
    "1b": "Predicted against true AutoAttack accuracy on the held-out 30% of "
    "runs (seeded split); the "
    "gradient-boosting predictor (50 estimators, depth 5) was fitted on the other 70%. Points on "
    "the dashed diagonal are predicted exactly.",
    "1c": "Feature importance of the predictor: impurity importance (each feature's share of the "
    "trees' split gain, on the training runs) and permutation importance (how much held-out R² "
    "drops when that feature is shuffled; negative: shuffling it did not hurt).",
    "2": "Mean AutoAttack accuracy of the fitted runs for each synthetic data × loss × EMA × model "
    "combination, models ordered by parameter count; error bars are one standard deviation "
    "over the runs of a bar; 'no runs' marks a combination the zoo does not have.",
    "3a": "The accuracy law on the best-performance envelope: the FLOP range is split into equal "
    "log-scale bins, the best AutoAttack accuracy of each bin kept and a straight line fitted in "
    "log-log space (accuracy = C·FLOPs^α); the band is the bootstrap 95% interval. Standard "
    "training's clean-accuracy law, where the zoo has it, is drawn beside it for comparison.",
    "3b": "Electricity cost (USD) of the envelope runs against training "
    "FLOPs in log-log space, with "
    "its fitted power law and bootstrap 95% band. Cost = metered energy × PUE × price per kWh.",
    "3c": "CO2 (kg) of the envelope runs against training FLOPs in log-log space, with its fitted "
    "power law and bootstrap 95% band. CO2 = metered energy × PUE × grid carbon intensity.",
    "4a": "Iso-FLOP curves of the joint law L(N, D): predicted robust accuracy along N·D = C/k for "
    "a few compute levels, the optimum of each curve marked.",
    "4b": "The compute-optimal frontier: the law's N*(C) and D*(C), with the best run of each FLOP "
    "bin and their fitted power laws.",
    "4c": "Best predicted robust accuracy per compute, the runs, and the asymptote (L = E) of the "
    "joint law.",
    "4d": "Data coverage: the (model size N, data D) points the runs of the headline recipe family "
    "cover, sized by run count. Drawn instead of 4a-4c when the zoo does not identify the "
    "joint law.",
}
_H2 = re.compile(r"<h2>(.*?)</h2>", re.S)


def _with_anchors(parts: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Give every section heading an id; return the parts and (id, heading) for the contents."""
    toc: list[tuple[str, str]] = []

    def anchor(m: re.Match) -> str:
        ident = f"sec{len(toc) + 1}"
        toc.append((ident, m.group(1)))
        return f'<h2 id="{ident}">{m.group(1)}</h2>'

    return [_H2.sub(anchor, part) for part in parts], toc


def _figures_section(fits: dict[str, Any], out_dir: Path) -> str:
    out = ["<h2>Figures</h2>"]
    for name, filename in fits["figures"].items():
        data = base64.b64encode((out_dir / "figures" / filename).read_bytes()).decode()
        caption = FIGURE_CAPTIONS.get(name, "")
        links = "".join(
            f' <a href="figures/{html.escape(Path(filename).with_suffix("." + fmt).name)}">'
            f"{fmt.upper()}</a>"
            for fmt in fits.get("vector_formats", [])
        )
        out.append(
            f'<figure id="fig{html.escape(name)}"><img alt="figure {html.escape(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>Figure {html.escape(name)}.</b> '
            f"{html.escape(caption)}{links}</figcaption></figure>"
        )
    return "".join(out)


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:auto;padding:0 "
    "16px;line-height:1.45}"
    "table{border-collapse:collapse;margin:8px 0;display:block;overflow-x:auto;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}th{background:#f3f3f3}"
    "img{max-width:100%;height:auto}figure{margin:24px 0}"
    "figcaption{font-size:13px;color:#333;max-width:760px}nav ul{columns:4}"
)


def write_report(a: Analysis, fits: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.html``: one self-contained file (figures embedded as PNG, SVGs linked beside
    it), a table of contents, the laws and the predictor as tables, a caption on every figure."""
    intro = (
        f"<h1>robustscale zoo analysis</h1><p>{fits['n_runs']} runs: {fits['n_fitted']} fitted, "
        f"{len(fits['collapsed_runs'])} collapsed, {fits['n_standard']} standard training, "
        f"{fits['n_without_autoattack']} without AutoAttack or FLOPs. FLOPs in FLOPs, "
        "accuracies in percent.</p>"
    )
    parts = [_scaling_section(fits)]
    if "target" in fits:
        parts.append(
            f"<h2>Cost of the target</h2><p>{html.escape(describe_target(fits['target']))}</p>"
        )
    parts.append(_predictor_section(fits))
    if "joint" in fits:
        parts.append(joint_section(fits["joint"]))
    parts.append(_runs_section(a, fits))
    parts.append(_figures_section(fits, out_dir))
    parts, toc = _with_anchors(parts)
    figs = "".join(
        f'<li><a href="#fig{html.escape(n)}">Figure {html.escape(n)}</a></li>'
        for n in fits["figures"]
    )
    items = "".join(
        f'<li><a href="#{i}">{title}</a>'
        + (f"<ul>{figs}</ul>" if title == "Figures" else "")
        + "</li>"
        for i, title in toc
    )
    nav = f'<nav id="contents"><h2>Contents</h2><ol>{items}</ol></nav>'
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>robustscale analysis</title><style>{STYLE}</style></head>"
        f"<body>{intro}{nav}{''.join(parts)}</body></html>"
    )
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
