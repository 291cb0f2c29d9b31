"""Which runs of a zoo each fit uses, and the envelope laws every later layer shares.

Standard-training runs, runs without AutoAttack or without positive FLOPs, and collapsed runs
(AutoAttack accuracy at or below the threshold: catastrophic overfitting or a failed training)
are set aside; the envelope laws of accuracy, energy, electricity and CO2 against FLOPs are
fitted on the rest. ``analyze`` and ``plan`` both call :func:`envelope_laws`, so they read one
set of laws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robustscale.analysis.scaling import N_BINS, PowerLaw, fit_envelope_laws

COLLAPSE_THRESHOLD = 10.0
COST_COLUMNS = {"electricity": "electricity_cost_usd", "co2": "co2_kg", "energy": "energy_kwh"}
ENVELOPE_BOOT = 1000


def column(df: Any, name: str) -> np.ndarray:
    """A column as floats, missing values as NaN."""
    return df[name].to_numpy(dtype=float, na_value=np.nan)


def _is_standard(df: Any) -> np.ndarray:
    return (df["loss"].astype("string").fillna("") == "standard").to_numpy(dtype=bool)


def split_runs(df: Any, threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    """Group runs: ``kept``, ``collapsed`` (AutoAttack <= threshold), ``standard`` and
    ``no_autoattack``.

    Runs without positive training FLOPs cannot be placed on the compute axis and count as
    ``no_autoattack``'s sibling: they are reported under ``no_autoattack`` as well.
    """
    std = _is_standard(df)
    aa = column(df, "autoattack_acc")
    flops = column(df, "train_flops")
    usable = ~std & np.isfinite(aa) & np.isfinite(flops) & (flops > 0)
    collapsed = usable & (aa <= threshold)
    return {
        "kept": df[usable & ~collapsed],
        "collapsed": df[collapsed],
        "standard": df[std],
        "no_autoattack": df[~std & ~usable],
    }


def envelope_laws(
    kept: Any, n_boot: int = ENVELOPE_BOOT, seed: int = 0
) -> tuple[np.ndarray, dict[str, PowerLaw | str]]:
    """Envelope positions in ``kept`` and the accuracy, electricity, CO2 and energy laws."""
    costs = {name: column(kept, col) for name, col in COST_COLUMNS.items()}
    return fit_envelope_laws(
        column(kept, "train_flops"), column(kept, "autoattack_acc"), costs, N_BINS, n_boot, seed
    )


def zoo_envelope_laws(
    df: Any, threshold: float = COLLAPSE_THRESHOLD, n_boot: int = ENVELOPE_BOOT, seed: int = 0
) -> dict[str, PowerLaw | str]:
    """The envelope laws of a zoo's kept runs (a reason string for a law that cannot be fitted)."""
    kept = split_runs(df, threshold)["kept"].reset_index(drop=True)
    if len(kept) < 2:
        why = f"not fitted: the zoo has {len(kept)} usable runs with AutoAttack; at least 2 needed"
        return {name: why for name in ("accuracy", *COST_COLUMNS)}
    return envelope_laws(kept, n_boot, seed)[1]
