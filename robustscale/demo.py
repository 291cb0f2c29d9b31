"""The quick-start: a standard and an adversarially trained model on digits, compared.

Runs offline on a CPU in well under two minutes: scikit-learn's bundled handwritten digits
(8x8, pixels in sixteenths), a WRN-10-1, eps = 0.2. Both runs are evaluated on the test split
with PGD-40; the table shows what adversarial training buys and what it costs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robustscale.recipe import Recipe
from robustscale.runs import RunDir

log = logging.getLogger(__name__)

DEMO_EPS = 0.2
_COMMON = dict(
    dataset="digits",
    model="wrn10_1",
    eps=DEMO_EPS,
    step_size=DEMO_EPS / 4,
    batch_size=64,
    lr=0.05,
    val_size=128,
    val_attack_steps=10,
    seed=0,
)
DEMO_RECIPES = {
    "standard": dict(_COMMON, loss="standard", attack_steps=0, epochs=6),
    "pgd-at": dict(_COMMON, loss="pgd", attack_steps=5, epochs=10),
}


def run_demo(out: str | Path = "runs/demo", progress: bool = True) -> list[dict[str, Any]]:
    """Train both demo recipes into ``out``, evaluate each with PGD-40, return one row per run."""
    from robustscale.evaluate import evaluate_run
    from robustscale.train import train

    rows = []
    for name, values in DEMO_RECIPES.items():
        recipe = Recipe.from_dict(values, site_defaults=True)
        log.info("demo: training %s (%s)", name, recipe.run_id)
        run_dir = train(recipe, out_root=out, progress=progress)
        result = evaluate_run(run_dir, attack="pgd", steps=40, eps=DEMO_EPS, checkpoint="best")
        cost = RunDir(Path(run_dir)).read_cost()
        rows.append(
            {
                "name": name,
                "clean_acc": result.clean_acc,
                "pgd40_acc": result.robust_acc,
                "train_seconds": (cost.device_seconds or 0.0) / max(cost.num_devices or 1, 1),
                "train_flops": cost.train_flops,
                "device_hours": cost.device_hours,
                "energy_kwh": cost.energy_kwh,
                "electricity_cost_usd": cost.electricity_cost_usd,
                "co2_kg": cost.co2_kg,
                "energy_source": cost.energy_source,
                "run_dir": str(run_dir),
            }
        )
    return rows


# (key, header, width, format); None values print as "unmeasured" (energy, dollars and CO2 are
# unknown, never 0, when no meter could read the device).
_COST_COLUMNS = [
    ("train_flops", "train FLOPs", 11, "{:.3g}"),
    ("device_hours", "device-h", 9, "{:.2g}"),
    ("energy_kwh", "energy kWh", 10, "{:.2e}"),
    ("electricity_cost_usd", "cost USD", 10, "{:.2e}"),
    ("co2_kg", "CO2 kg", 10, "{:.2e}"),
]


def _cell(value: Any, fmt: str) -> str:
    return "unmeasured" if value is None else fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    cost_head = " ".join(f"{h:>{w}}" for _, h, w, _ in _COST_COLUMNS)
    head = f"{'model':<10} {'clean %':>8} {'PGD-40 %':>9} {'train s':>8} {cost_head}  run directory"
    lines = [head, "-" * len(head)]
    for r in rows:
        cost = " ".join(f"{_cell(r[k], fmt):>{w}}" for k, _, w, fmt in _COST_COLUMNS)
        lines.append(
            f"{r['name']:<10} {r['clean_acc']:>8.1f} {r['pgd40_acc']:>9.1f} "
            f"{r['train_seconds']:>8.1f} "
            f"{cost}  {r['run_dir']}"
        )
    sources = sorted({r["energy_source"] for r in rows})
    lines.append(
        f"(digits test split, eps = {DEMO_EPS} in [0, 1] pixel units; energy "
        f"source: {', '.join(sources)}; "
        "energy, cost and CO2 are 'unmeasured' where no NVML/RAPL meter is readable)"
    )
    return "\n".join(lines)
