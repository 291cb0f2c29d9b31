"""The paper's figures (1a-c, 2, 3a-c) as PNG and SVG, drawn with matplotlib's Agg backend.

Scatter layers are rasterised inside the SVGs: a 10,000-run zoo otherwise writes a 10,000-path
SVG that takes seconds to save and to open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustscale.analysis.scaling import PowerLaw  # noqa: E402

MARKERS = {"pgd": "o", "trades": "^", "standard": "s"}


def save(fig: Any, out_dir: Path, name: str) -> Path:
    """Write ``name.png`` and ``name.svg``; return the PNG's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=110)
    fig.savefig(out_dir / f"{name}.svg")
    plt.close(fig)
    return png


def fig_1a(runs: Any, collapsed: Any, out_dir: Path) -> Path:
    """AutoAttack accuracy vs training FLOPs for every run, marked by loss and synthetic data."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (loss, synth), part in runs.groupby(["loss", "synthetic_data"], dropna=False):
        ax.scatter(part["train_flops"], part["autoattack_acc"], s=14, alpha=0.7, rasterized=True,
                   marker=MARKERS.get(str(loss), "D"), color="tab:orange" if synth is True else "tab:blue",
                   label=f"{loss}, {'synthetic' if synth is True else 'no synthetic'}")
    if len(collapsed):
        ax.scatter(collapsed["train_flops"], collapsed["autoattack_acc"], s=14, marker="x", color="grey",
                   rasterized=True, label="collapsed")
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="AutoAttack accuracy (%)",
           title="1a  AutoAttack accuracy vs training compute")
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig1a_accuracy_vs_flops")


def fig_1b(true: np.ndarray, pred: np.ndarray, r2: float, out_dir: Path) -> Path:
    """Predicted vs true AutoAttack accuracy on the held-out runs."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(true, pred, s=12, alpha=0.7, rasterized=True)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="true AutoAttack accuracy (%)", ylabel="predicted (%)",
           title=f"1b  held-out runs (R² = {r2:.3f})")
    return save(fig, out_dir, "fig1b_predicted_vs_true")


def fig_1c(importance: dict[str, float], permutation: dict[str, float], out_dir: Path) -> Path:
    """Impurity and permutation feature importances side by side."""
    names = sorted(importance, key=importance.get)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.barh(y - 0.2, [importance[n] for n in names], height=0.4, label="impurity")
    ax.barh(y + 0.2, [permutation[n] for n in names], height=0.4, label="permutation (held-out)")
    ax.set_yticks(y, names)
    ax.set(xlabel="importance", title="1c  feature importance")
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig1c_feature_importance")


def fig_2(runs: Any, out_dir: Path) -> Path:
    """Mean AutoAttack accuracy by synthetic data x loss x EMA x model size (error bar: std)."""
    losses = sorted(str(v) for v in runs["loss"].dropna().unique()) or ["-"]
    models = runs.groupby("model")["params"].median().sort_values().index.tolist()
    fig, axes = plt.subplots(2, len(losses), figsize=(3.6 * len(losses) + 1, 6), squeeze=False, sharey=True)
    x = np.arange(len(models))
    for col, loss in enumerate(losses):
        for row, ema in enumerate([False, True]):
            ax = axes[row][col]
            part = runs[(runs["loss"].astype(str) == loss) & (runs["ema"].fillna(False) == ema)]
            for k, synth in enumerate([False, True]):
                sel = part[part["synthetic_data"].fillna(False) == synth]
                stats = sel.groupby("model")["autoattack_acc"].agg(["mean", "std"]).reindex(models)
                ax.bar(x + (k - 0.5) * 0.4, stats["mean"].fillna(0), 0.4, yerr=stats["std"].fillna(0),
                       label="synthetic" if synth else "no synthetic", color="tab:orange" if synth else "tab:blue")
            ax.set_xticks(x, models, rotation=45, fontsize=7)
            ax.set_title(f"{loss}, {'EMA' if ema else 'no EMA'}", fontsize=9)
    axes[0][0].set_ylabel("AutoAttack accuracy (%)")
    axes[1][0].set_ylabel("AutoAttack accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("2  accuracy by synthetic data x loss x EMA x model size", fontsize=10)
    return save(fig, out_dir, "fig2_accuracy_by_recipe")


def fig_3(law: PowerLaw, x: np.ndarray, y: np.ndarray, name: str, ylabel: str, title: str, out_dir: Path,
          extra: tuple[PowerLaw, np.ndarray, np.ndarray, str] | None = None) -> Path:
    """One power law in log-log: envelope points, fitted line and its bootstrap 95% band."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for item, color, label in [((law, x, y), "tab:blue", "envelope"),
                               ((extra[0], extra[1], extra[2]) if extra else None, "tab:green",
                                extra[3] if extra else "")]:
        if item is None:
            continue
        lw, px, py = item
        grid = np.logspace(np.log10(lw.x_range[0]), np.log10(lw.x_range[1]), 100)
        low, high = lw.band(grid)
        ax.scatter(px, py, s=18, color=color, label=f"{label} ({lw.n_bins} bins)", zorder=3)
        ax.plot(grid, lw.predict(grid), color=color, label=f"fit: α={lw.alpha:.3g}, C={lw.C:.3g}, R²={lw.r2:.2f}")
        ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return save(fig, out_dir, name)
