"""Seconds for `analyze_zoo` on a generated 10,000-run zoo (target: under 2 s on 2 CPU cores).

Run: ``python benchmarks/analysis.py [N_RUNS]``. Prints the wall and CPU seconds of the whole
analysis, from importing ``robustscale.analysis.analyze`` (so the imports of scikit-learn and
matplotlib are included) to the last file written, with the CPU of the process that draws the
figures beside the fits counted in; then each stage's wall time (the figures are drawn side by
side with the fits: see ``analyze_zoo``); then the same analysis once more in the same process
with every import done (warm); then warm again with SVG copies of the figures
(``analyze --vector svg``), and the ratio to the warm run; then the CPU seconds of one
joint-law fit (grid of starts, L-BFGS-B, 5 held-out splits, 50 bootstrap refits) on N_RUNS
runs that follow a joint law, the work each identifiable recipe family costs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustscale.zoo import COLUMN_NAMES  # noqa: E402

MODELS = {
    "wrn16_1": 175_994,
    "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474,
    "wrn34_20": 184_537_114,
    "wrn70_16": 266_796_314,
}


def generated_zoo(n: int, seed: int = 0) -> pd.DataFrame:
    """A zoo shaped like the paper's grid, with accuracy rising slowly with FLOPs and 3%
    collapsed."""
    rng = np.random.default_rng(seed)
    models = rng.choice(list(MODELS), n)
    params = np.array([MODELS[m] for m in models], dtype=float)
    epochs = rng.choice([100, 400], n)
    steps = rng.choice([1, 2, 5, 7, 10], n)
    loss = rng.choice(["pgd", "trades"], n)
    synthetic = rng.random(n) < 0.5
    examples = epochs * 50_000
    flops = 6 * params * examples * (steps + 1) * rng.uniform(0.9, 1.1, n)
    acc = 50.86 * flops**0.01 - 25 + 5 * synthetic + rng.normal(0, 2, n)
    acc[rng.random(n) < 0.03] = rng.uniform(0, 8)
    kwh = 2e-16 * flops**0.95
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "dataset": "cifar10",
            "model": models,
            "params": params,
            "activation": rng.choice(["relu", "gelu"], n),
            "loss": loss,
            "attack_steps": steps,
            "epochs": epochs,
            "ema": epochs == 400,
            "synthetic_data": synthetic,
            "synthetic_fraction": np.where(synthetic, 0.7, 0.0),
            "examples_seen": examples,
            "synthetic_size": np.where(synthetic, 1_000_000, 0),
            "eps": 8 / 255,
            "seed": 0,
            "train_flops": flops,
            "device_hours": kwh / 0.6,
            "energy_kwh": kwh,
            "electricity_cost_usd": kwh * 0.12,
            "co2_kg": kwh * 0.5663,
            "clean_acc": np.clip(acc + 30, 0, 100),
            "pgd40_acc": np.clip(acc + 3, 0, 100),
            "autoattack_acc": np.clip(acc, 0, 100),
        }
    ).reindex(columns=COLUMN_NAMES)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process, and of its children that have ended (the figure process)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def timed_analysis(
    df: pd.DataFrame, vector: tuple[str, ...] = ()
) -> tuple[dict, float, float, float]:
    """fits.json of one ``analyze_zoo`` run, its wall seconds and the CPU seconds of this
    process and of the figure process (the import of ``robustscale.analysis.analyze``
    included, where not done yet)."""
    t0, (c0, k0) = time.perf_counter(), cpu_seconds()
    from robustscale.analysis import analyze_zoo

    with tempfile.TemporaryDirectory() as tmp:
        fits = analyze_zoo(df, Path(tmp) / "report", target_acc=60.0, vector=vector)
        wall, (c1, k1) = time.perf_counter() - t0, cpu_seconds()
    return fits, wall, c1 - c0, k1 - k0


def report(title: str, fits: dict, wall: float, cpu: float, child: float) -> None:
    # CPU seconds count the work whatever else shares the cores; on an idle machine the wall
    # time is about the longer of the two processes' CPU seconds
    print(
        f"{title}: {wall:.2f} s wall; CPU {cpu + child:.2f} s = {cpu:.2f} this process + "
        f"{child:.2f} figure process (load average {os.getloadavg()[0]:.1f})"
    )
    for stage, seconds in fits.get("timings", {}).items():
        print(f"  {stage}: {seconds:.2f} s")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    df = generated_zoo(n)
    print(f"runs: {n}")
    report("analysis (imports of scikit-learn and matplotlib included)", *timed_analysis(df))
    import robustscale.analysis.figures  # noqa: F401  (matplotlib, for the warm run)

    warm = timed_analysis(df)
    report("warm (same process, imports done)", *warm)
    svg = timed_analysis(df, vector=("svg",))
    report("warm, with SVG copies (--vector svg)", *svg)
    print(
        f"SVG copies: {svg[1] / warm[1]:.2f}x the warm wall time, "
        f"{(svg[2] + svg[3]) / (warm[2] + warm[3]):.2f}x its CPU"
    )
    joint_fit_seconds(n)


def joint_fit_seconds(n: int, seed: int = 0) -> None:
    """CPU seconds of one joint-law fit on ``n`` runs of L = E + A/N^alpha + B/D^beta (+2%
    noise)."""
    from robustscale.analysis import fit_joint

    rng = np.random.default_rng(seed)
    N, D = 10 ** rng.uniform(5, 8.5, n), 10 ** rng.uniform(6.5, 8.5, n)
    L = (35 + 1000 / N**0.35 + 2000 / D**0.3) * np.exp(0.02 * rng.standard_normal(n))
    c0 = time.process_time()
    law = fit_joint(N, D, L, seed=seed, n_boot=50)
    print(
        f"joint-law fit of {n} runs: {time.process_time() - c0:.2f} s CPU "
        f"(alpha {law.alpha:.3f}, beta {law.beta:.3f}, {len(law.boot)} bootstrap refits)"
    )


if __name__ == "__main__":
    main()
