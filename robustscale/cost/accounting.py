"""Energy to kWh, dollars and CO2, with the paper's constants as defaults (all settable).

kWh = measured device energy (J) / 3.6e6 x PUE; USD = kWh x price; kg CO2 = kWh x grid
intensity (g/kWh) / 1000. Unmeasured energy (None) stays None all the way through: a missing
number is never turned into 0.
"""

from __future__ import annotations

__all__ = ["PUE", "USD_PER_KWH", "GCO2_PER_KWH", "JOULES_PER_KWH", "bill"]

PUE = 1.58  # data-centre power usage effectiveness used by the paper
USD_PER_KWH = 0.12
GCO2_PER_KWH = 566.3  # US grid average the paper used
JOULES_PER_KWH = 3.6e6


def bill(
    energy_joules: float | None,
    *,
    pue: float = PUE,
    usd_per_kwh: float = USD_PER_KWH,
    gco2_per_kwh: float = GCO2_PER_KWH,
) -> dict[str, float | None]:
    """``energy_kwh`` (PUE included), ``electricity_cost_usd`` and ``co2_kg`` of ``energy_joules``
    of device energy; all three None when the energy is None."""
    if energy_joules is None:
        return {"energy_kwh": None, "electricity_cost_usd": None, "co2_kg": None}
    kwh = energy_joules / JOULES_PER_KWH * pue
    return {
        "energy_kwh": kwh,
        "electricity_cost_usd": kwh * usd_per_kwh,
        "co2_kg": kwh * gco2_per_kwh / 1000.0,
    }
