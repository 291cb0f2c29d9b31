"""What a run costs: FLOPs (measured and the paper's convention), device energy, and the bill.

* :func:`measure_step_flops` -> :class:`StepFlops`: per-example FLOPs of one training step and
  one validation step, counted by ``torch.utils.flop_counter`` on a meta copy of the model.
* :func:`open_meter` -> :class:`EnergyMeter`: device energy from NVML, RAPL, an explicitly
  configured estimate, or honestly unknown (``None``).
* :func:`bill`: joules -> kWh (x PUE), USD, kg CO2.
* :func:`forecast_recipe`: FLOPs (and, given throughput and power, hours / kWh / USD / CO2) of a
  recipe before training it.
* :func:`robustscale.site_config.cost_defaults`: site defaults for ``pue``, ``usd_per_kwh``,
  ``gco2_per_kwh`` and ``power_watts`` from ``robustscale.toml``'s ``[cost]`` table (recipes
  that do not set a key take it from there).

Conventions and constants: docs/cost.md.
"""

from robustscale.cost.accounting import GCO2_PER_KWH, PUE, USD_PER_KWH, bill
from robustscale.cost.energy import EnergyMeter, open_meter
from robustscale.cost.flops import StepFlops, forward_flops, measure_step_flops

__all__ = [
    "StepFlops",
    "measure_step_flops",
    "forward_flops",
    "EnergyMeter",
    "open_meter",
    "bill",
    "PUE",
    "USD_PER_KWH",
    "GCO2_PER_KWH",
    "forecast_recipe",
]


def __getattr__(name: str):
    # forecast imports the recipe and data modules; load it only when asked for.
    if name == "forecast_recipe":
        from robustscale.cost.forecast import forecast_recipe

        return forecast_recipe
    raise AttributeError(name)
