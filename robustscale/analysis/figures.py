"""The paper's figures (1a-c, 2, 3a-c) as PNG, and SVG or PDF on request, drawn with matplotlib's
Agg backend.

Scatter layers are rasterised inside the vector files: a 10,000-run zoo otherwise writes a
10,000-path SVG that takes seconds to save and to open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from robustscale.analysis.scaling import PowerLaw

MARKERS = {"pgd": "o", "trades": "^", "standard": "s"}
# log axes wider than this many decades are drawn without minor ticks (_plain_log_labels)
MINOR_TICK_DECADES = 3


def _plain_log_labels(fig: Any) -> None:
    """Plain-text tick labels ("1e+17", "40") on log axes instead of mathtext ones.

    Matplotlib typesets each log tick label ("$10^{17}$", minor "$4\\times10^{1}$") with its
    TeX parser, once per size and per output format; for the log-log figures that was most of
    the drawing time (measured: 4.3 of 14 s of profiled figure time).

    An axis spanning more than :data:`MINOR_TICK_DECADES` decades gets no minor ticks: eight
    unlabelled ticks a decade told nothing there, and laying them out three times (layout, PNG,
    SVG) was half of a law figure's drawing time (measured: 0.80 -> 0.41 s for figure 3c of a
    10,000-run zoo).
    """
    from matplotlib.ticker import LogFormatter, NullLocator

    for ax in fig.axes:
        for axis, scale, (low, high) in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            if scale != "log":
                continue
            axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            if low > 0 and high / low > 10**MINOR_TICK_DECADES:
                axis.set_minor_locator(NullLocator())
            else:
                axis.set_minor_formatter(
                    LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
                )


def save(fig: Any, out_dir: Path, name: str, vector: tuple[str, ...] = ()) -> Path:
    """Write ``name.png``, and ``name.svg``/``name.pdf`` for the formats in ``vector``; return
    the PNG's path.

    Each format is a whole drawing pass of the figure: a vector copy costs about as much as the
    PNG (measured: 1.0 of 3.0 s CPU of the figures of a 10,000-run zoo), so only on request
    (``analyze --vector``). ``SOURCE_DATE_EPOCH`` fixes the date written into SVG and PDF.
    """
    from robustscale.files import atomic_open

    _plain_log_labels(fig)
    fig.tight_layout()
    png = out_dir / f"{name}.png"
    try:
        with atomic_open(png, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        for fmt in vector:
            with atomic_open(out_dir / f"{name}.{fmt}", "wb") as f:
                fig.savefig(f, format=fmt)
    finally:
        plt.close(fig)
    return png


def fig_1a_layers(
    kept: Any,
    collapsed: Any,
    standard: Any = None,
    no_autoattack: Any = None,
) -> tuple[list[dict[str, Any]], int]:
    """The point sets of figure 1a: every run that has training FLOPs, and how many have none.

    Kept adversarial runs by loss x synthetic data; collapsed runs as grey crosses;
    standard-training runs as black squares; runs without AutoAttack at their PGD-40 accuracy,
    hollow. Each layer: ``label``, ``x`` (FLOPs), ``y`` (percent), ``style`` (scatter keywords).
    """
    layers: list[dict[str, Any]] = []
    for (loss, synth), part in kept.groupby(["loss", "synthetic_data"], dropna=False):
        layers.append(
            {
                "label": f"{loss}, {'synthetic' if synth is True else 'no synthetic'}",
                "x": part["train_flops"],
                "y": part["autoattack_acc"],
                "style": {
                    "marker": MARKERS.get(str(loss), "D"),
                    "alpha": 0.7,
                    "color": "tab:orange" if synth is True else "tab:blue",
                },
            }
        )
    if len(collapsed):
        layers.append(
            {
                "label": "collapsed",
                "x": collapsed["train_flops"],
                "y": collapsed["autoattack_acc"],
                "style": {"marker": "x", "color": "grey"},
            }
        )
    missing = 0
    for group, label, color in (
        (standard, "standard training", "black"),
        (no_autoattack, "adversarial", "tab:purple"),
    ):
        if group is None or not len(group):
            continue
        flops = group["train_flops"].to_numpy(float, na_value=np.nan)
        aa = group["autoattack_acc"].to_numpy(float, na_value=np.nan)
        pgd = group["pgd40_acc"].to_numpy(float, na_value=np.nan)
        placed = np.isfinite(flops) & (flops > 0)
        with_aa = placed & np.isfinite(aa)
        with_pgd = placed & ~np.isfinite(aa) & np.isfinite(pgd)
        missing += int((~(with_aa | with_pgd)).sum())
        if with_aa.any():
            layers.append(
                {
                    "label": f"{label}, AutoAttack",
                    "x": flops[with_aa],
                    "y": aa[with_aa],
                    "style": {"marker": "s", "color": color, "alpha": 0.8},
                }
            )
        if with_pgd.any():
            layers.append(
                {
                    "label": f"{label}, PGD-40 (no AutoAttack)",
                    "x": flops[with_pgd],
                    "y": pgd[with_pgd],
                    "style": {
                        "marker": "s" if color == "black" else "o",
                        "facecolors": "none",
                        "edgecolors": color,
                        "alpha": 0.8,
                    },
                }
            )
    return layers, missing


def fig_1a(
    kept: Any,
    collapsed: Any,
    out_dir: Path,
    standard: Any = None,
    no_autoattack: Any = None,
    vector: tuple[str, ...] = (),
) -> Path:
    """AutoAttack accuracy vs training FLOPs for every run: adversarial runs marked by loss and
    synthetic data, collapsed runs, standard-training runs, and runs without AutoAttack (PGD-40)."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    layers, missing = fig_1a_layers(kept, collapsed, standard, no_autoattack)
    for layer in layers:
        ax.scatter(
            layer["x"], layer["y"], s=14, rasterized=True, label=layer["label"], **layer["style"]
        )
    title = "1a  AutoAttack accuracy vs training compute"
    ax.set(
        xscale="log",
        xlabel="training FLOPs",
        ylabel="AutoAttack accuracy (%)",
        title=title
        + (
            f"\n({missing} run{'s' if missing != 1 else ''} without FLOPs or accuracy not shown)"
            if missing
            else ""
        ),
    )
    # below the axes: loc="best" scores every placement against all 10,000 points, in each of
    # the three passes (layout, PNG, SVG): a quarter of the figure's drawing time
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    return save(fig, out_dir, "fig1a_accuracy_vs_flops", vector)


def fig_1b(
    true: np.ndarray, pred: np.ndarray, r2: float, out_dir: Path, vector: tuple[str, ...] = ()
) -> Path:
    """Predicted vs true AutoAttack accuracy on the held-out runs."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(true, pred, s=12, alpha=0.7, rasterized=True)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    pad = 0.03 * (hi - lo) or 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="prediction = truth")
    # the same range on both axes, so distance from the diagonal reads as error in points
    ax.set(
        xlim=(lo - pad, hi + pad),
        ylim=(lo - pad, hi + pad),
        aspect="equal",
        xlabel="true AutoAttack accuracy (%)",
        ylabel="predicted AutoAttack accuracy (%)",
        title=f"1b  held-out runs (R² = {r2:.3f})",
    )
    ax.legend(fontsize=7, loc="upper left")
    return save(fig, out_dir, "fig1b_predicted_vs_true", vector)


def fig_1c(
    importance: dict[str, float],
    permutation: dict[str, float],
    out_dir: Path,
    vector: tuple[str, ...] = (),
) -> Path:
    """Impurity and permutation feature importances side by side."""
    names = sorted(importance, key=importance.get)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.barh(y - 0.2, [importance[n] for n in names], height=0.4, label="impurity")
    ax.barh(y + 0.2, [permutation[n] for n in names], height=0.4, label="permutation (held-out)")
    ax.set_yticks(y, names)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(
        xlabel="importance (impurity: share of split gain; permutation: drop in held-out R²)",
        title="1c  feature importance",
    )
    ax.xaxis.label.set_size(8)
    # below the axes: inside, it covered the longest bar
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return save(fig, out_dir, "fig1c_feature_importance", vector)


def fig_2(runs: Any, out_dir: Path, vector: tuple[str, ...] = ()) -> Path:
    """Mean AutoAttack accuracy by synthetic data x loss x EMA x model size (error bar: std)."""
    losses = sorted(str(v) for v in runs["loss"].dropna().unique()) or ["-"]
    models = runs.groupby("model")["params"].median().sort_values().index.tolist()
    fig, axes = plt.subplots(
        2, len(losses), figsize=(3.6 * len(losses) + 1, 6), squeeze=False, sharey=True
    )
    x = np.arange(len(models))
    # the columns drawn from, once: each cell's row selection then copies 5 columns, not 30
    runs = runs[["loss", "ema", "synthetic_data", "model", "autoattack_acc"]].assign(
        loss=runs["loss"].astype(str),
        ema=runs["ema"].fillna(False),
        synthetic_data=runs["synthetic_data"].fillna(False),
    )
    for col, loss in enumerate(losses):
        for row, ema in enumerate([False, True]):
            ax = axes[row][col]
            part = runs[(runs["loss"] == loss) & (runs["ema"] == ema)]
            for k, synth in enumerate([False, True]):
                sel = part[part["synthetic_data"] == synth]
                stats = sel.groupby("model")["autoattack_acc"].agg(["mean", "std"]).reindex(models)
                pos = x + (k - 0.5) * 0.4
                ax.bar(
                    pos,
                    stats["mean"].fillna(0),
                    0.4,
                    yerr=stats["std"].fillna(0),
                    label="synthetic" if synth else "no synthetic",
                    color="tab:orange" if synth else "tab:blue",
                )
                for where in pos[
                    stats["mean"].isna().to_numpy()
                ]:  # a zero bar would read as 0% accuracy
                    ax.text(
                        where,
                        1,
                        "no runs",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        color="grey",
                    )
            ax.set_xticks(x, models, rotation=45, fontsize=7)
            ax.set_title(f"{loss}, {'EMA' if ema else 'no EMA'}", fontsize=9)
    axes[0][0].set_ylabel("AutoAttack accuracy (%)")
    axes[1][0].set_ylabel("AutoAttack accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "2  mean AutoAttack accuracy by synthetic data × loss × EMA × model size "
        "(error bars: ±1 std over runs)",
        fontsize=10,
    )
    return save(fig, out_dir, "fig2_accuracy_by_recipe", vector)


def fig_3(
    law: PowerLaw,
    x: np.ndarray,
    y: np.ndarray,
    name: str,
    ylabel: str,
    title: str,
    out_dir: Path,
    extra: tuple[PowerLaw, np.ndarray, np.ndarray, str] | None = None,
    vector: tuple[str, ...] = (),
) -> Path:
    """One power law in log-log: envelope points, fitted line and its bootstrap 95% band."""
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    if extra:  # two kinds of accuracy on one axis: say which is which
        ylabel = "accuracy (%)"
    for item, color, label in [
        (
            (law, x, y),
            "tab:blue",
            "adversarial training, AutoAttack envelope" if extra else "envelope",
        ),
        ((extra[0], extra[1], extra[2]) if extra else None, "tab:green", extra[3] if extra else ""),
    ]:
        if item is None:
            continue
        lw, px, py = item
        grid = np.logspace(np.log10(lw.x_range[0]), np.log10(lw.x_range[1]), 100)
        low, high = lw.band(grid)
        ax.scatter(px, py, s=18, color=color, label=f"{label} ({lw.n_bins} bins)", zorder=3)
        ax.plot(
            grid,
            lw.predict(grid),
            color=color,
            label=f"fit: α={lw.alpha:.3g}, C={lw.C:.3g}, R²={lw.r2:.2f}",
        )
        ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=ylabel, title=title)
    plain_log_ticks(ax)
    # below the axes: inside, the legend covered the envelope points of the largest runs
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return save(fig, out_dir, name, vector)


def plain_log_ticks(ax: Any) -> None:
    """Plain numbers (30, 40, 60) on a log axis spanning less than about two decades, where
    matplotlib by default labels only the odd tick as ``6 × 10^1``; wider axes keep powers of
    ten."""
    low, high = ax.get_ylim()  # (autoscales first)
    if not (low > 0 and high / low < 100):
        return
    axis = ax.yaxis
    axis.set_major_locator(
        LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), numticks=12)
    )
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
