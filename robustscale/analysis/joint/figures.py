"""Figures of the joint law: iso-FLOP curves (4a), the compute-optimal frontier N*(C), D*(C)
(4b) and the robust-accuracy asymptote (4c), drawn only for an identifiable law; otherwise the
data coverage (4d: which (N, D) the zoo has), which shows why the law is not pinned down
(``report.joint_figure_jobs`` chooses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustscale.analysis.figures import plt, save
from robustscale.analysis.joint.frontier import JointFit
from robustscale.analysis.joint.inputs import family_name, robust_error
from robustscale.analysis.scaling import PowerLaw


def _compute_grid(jf: JointFit, n: int = 60) -> np.ndarray:
    flops = jf.runs["train_flops"].to_numpy(float)
    return np.logspace(np.log10(flops.min()), np.log10(flops.max()) + 1, n)


def fig_iso_flop(jf: JointFit, out_dir: Path, vector: tuple[str, ...] = ()) -> Path:
    """Predicted robust accuracy along N * D = C / k for a few compute levels, optimum marked."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    params = jf.runs["params"].to_numpy(float)
    n_grid = np.logspace(np.log10(params.min()) - 1, np.log10(params.max()) + 1, 200)
    levels = np.logspace(
        *np.log10(jf.runs["train_flops"].quantile([0.05, 0.95]).to_numpy(float)), 5
    )
    for c in levels:
        acc = jf.accuracy(n_grid, c / (jf.k * n_grid))
        (line,) = ax.plot(n_grid, acc, label=f"C = {c:.2g} FLOPs")
        n_opt, d_opt = jf.law.optimum(c, jf.k)
        ax.plot([n_opt], [jf.accuracy(n_opt, d_opt)], "o", color=line.get_color())
    ax.axhline(
        jf.asymptote_acc,
        color="k",
        ls="--",
        lw=1,
        label=f"asymptote (L = E) {jf.asymptote_acc:.1f}%",
    )
    ax.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="predicted robust accuracy (%)",
        title="4a  iso-FLOP curves of L(N, D)",
    )
    ax.set_ylim(max(0, ax.get_ylim()[0]), None)
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig4a_iso_flop", vector)


def fig_frontier(jf: JointFit, out_dir: Path, vector: tuple[str, ...] = ()) -> Path:
    """N*(C) and D*(C) from the law, with the frontier runs and their empirical power laws."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    grid = _compute_grid(jf)
    n_opt, d_opt = jf.law.optimum(grid, jf.k)
    rows = jf.frontier.rows
    for y, emp, col, color, name in [
        (n_opt, jf.frontier.n_law, "params", "tab:blue", "N*"),
        (d_opt, jf.frontier.d_law, "examples_seen", "tab:orange", "D*"),
    ]:
        ax.plot(grid, y, color=color, label=f"{name}(C) from L(N, D)")
        ax.scatter(
            rows["train_flops"],
            rows[col],
            color=color,
            s=16,
            label=f"best run per FLOP bin ({col})",
        )
        if isinstance(emp, PowerLaw):
            label = f"fit: ∝ C^{emp.alpha:.2f}"
            ax.plot(grid, emp.predict(grid), color=color, ls=":", label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training FLOPs C",
        ylabel="parameters / examples",
        title="4b  compute-optimal frontier",
    )
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig4b_frontier", vector)


def fig_asymptote(jf: JointFit, out_dir: Path, vector: tuple[str, ...] = ()) -> Path:
    """Best predicted robust accuracy per compute, the runs, and the asymptote 100 - E."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    grid = _compute_grid(jf)
    n_opt, d_opt = jf.law.optimum(grid, jf.k)
    ax.scatter(
        jf.runs["train_flops"],
        100 - robust_error(jf.runs),
        s=8,
        alpha=0.4,
        color="grey",
        rasterized=True,
        label="runs",
    )
    ax.plot(grid, jf.accuracy(n_opt, d_opt), label="compute-optimal prediction")
    ax.axhline(
        jf.asymptote_acc, color="k", ls="--", lw=1, label=f"asymptote {jf.asymptote_acc:.1f}%"
    )
    ax.set(
        xscale="log",
        xlabel="training FLOPs C",
        ylabel="robust accuracy (%)",
        title="4c  compute-optimal robust accuracy and its asymptote",
    )
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig4c_asymptote", vector)


def fig_coverage(jf: JointFit, out_dir: Path, vector: tuple[str, ...] = ()) -> Path:
    """The (N, D) points the runs cover, sized by run count: the data the law would need."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pts, counts = np.unique(np.column_stack([jf.N, jf.D]), axis=0, return_counts=True)
    ax.scatter(pts[:, 0], pts[:, 1], s=12 + 6 * np.sqrt(counts), alpha=0.7, rasterized=True)
    d_label = "unique examples D" if jf.d_kind == "unique" else "examples processed D"
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters N",
        ylabel=d_label,
        title=f"4d  data coverage ({len(np.unique(jf.N))} N x {len(np.unique(jf.D))} D values)\n"
        f"{family_name(jf.family)}",
    )
    ax.title.set_fontsize(9)
    return save(fig, out_dir, "fig4d_data_coverage", vector)
