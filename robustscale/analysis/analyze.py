"""`analyze_zoo`: the whole analysis of a zoo table, from fits to figures, report and fits.json.

Order of work: check the table; set aside standard-training runs, runs without AutoAttack and
collapsed runs (AutoAttack accuracy at or below the threshold: catastrophic overfitting or a
failed training); fit the predictor and the envelope laws on the rest; then draw and write.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.analysis.predictor import Predictor, fit_predictor
from robustscale.analysis.scaling import N_BINS, PowerLaw, fit_envelope_laws
from robustscale.analysis.target import cost_of_target
from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_text, fs_error
from robustscale.zoo import coerce_types, validate_zoo

log = logging.getLogger(__name__)

COLLAPSE_THRESHOLD = 10.0
COST_COLUMNS = {"electricity": "electricity_cost_usd", "co2": "co2_kg", "energy": "energy_kwh"}


@dataclass
class Analysis:
    """Everything fitted from one zoo: the run groups, the laws and the predictor."""

    zoo: Any
    kept: Any  # adversarial runs with AutoAttack above the collapse threshold
    collapsed: Any
    standard: Any
    no_autoattack: Any
    envelope: Any  # the envelope rows of ``kept``
    laws: dict[str, PowerLaw | str]
    standard_envelope: Any = None
    standard_law: PowerLaw | str | None = None
    predictor: Predictor | str | None = None
    collapse_threshold: float = COLLAPSE_THRESHOLD
    joint: Any = None  # frontier.JointFit when the joint law L(N, D) could be fitted
    extra: dict[str, Any] = field(default_factory=dict)


def _is_standard(df: Any) -> np.ndarray:
    return (df["loss"].astype("string").fillna("") == "standard").to_numpy(dtype=bool)


def split_runs(df: Any, threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    """Group runs: ``kept``, ``collapsed`` (AutoAttack <= threshold), ``standard``, ``no_autoattack``.

    Runs without positive training FLOPs cannot be placed on the compute axis and count as
    ``no_autoattack``'s sibling: they are reported under ``no_autoattack`` as well.
    """
    std = _is_standard(df)
    aa = df["autoattack_acc"].to_numpy(dtype=float, na_value=np.nan)
    flops = df["train_flops"].to_numpy(dtype=float, na_value=np.nan)
    usable = ~std & np.isfinite(aa) & np.isfinite(flops) & (flops > 0)
    collapsed = usable & (aa <= threshold)
    return {"kept": df[usable & ~collapsed], "collapsed": df[collapsed], "standard": df[std],
            "no_autoattack": df[~std & ~usable]}


def _column(df: Any, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=float, na_value=np.nan)


def fit_zoo(df: Any, seed: int = 0, collapse_threshold: float = COLLAPSE_THRESHOLD, n_boot: int = 1000,
            n_splits: int = 10, with_predictor: bool = True) -> Analysis:
    """Check a zoo table and fit its envelope laws and predictor (no files written)."""
    df = coerce_types(df, source="table")
    validate_zoo(df)
    groups = split_runs(df, collapse_threshold)
    kept = groups["kept"].reset_index(drop=True)
    if len(kept) < 2:
        raise RobustscaleError(f"the zoo has {len(kept)} usable runs (adversarial, with AutoAttack above "
                               f"{collapse_threshold:g}% and positive train_flops); the analysis needs at least 2")
    flops = _column(kept, "train_flops")
    costs = {name: _column(kept, col) for name, col in COST_COLUMNS.items()}
    idx, laws = fit_envelope_laws(flops, _column(kept, "autoattack_acc"), costs, N_BINS, n_boot, seed)
    out = Analysis(zoo=df, kept=kept, collapsed=groups["collapsed"], standard=groups["standard"],
                   no_autoattack=groups["no_autoattack"], envelope=kept.iloc[idx], laws=laws,
                   collapse_threshold=collapse_threshold)
    _fit_standard(out, n_boot, seed)
    if with_predictor:
        try:
            out.predictor = fit_predictor(kept, seed=seed, n_splits=n_splits)
        except RobustscaleError as exc:
            out.predictor = f"not fitted: {exc}"
    return out


def _fit_standard(out: Analysis, n_boot: int, seed: int) -> None:
    """Standard training's clean-accuracy law, to set its growth rate beside the robust one."""
    std = out.standard
    std = std[std["clean_acc"].notna() & (std["train_flops"].fillna(0) > 0)].reset_index(drop=True)
    if len(std) < 2:
        return
    idx, laws = fit_envelope_laws(_column(std, "train_flops"), _column(std, "clean_acc"), {}, N_BINS,
                                  n_boot, seed)
    out.standard_envelope, out.standard_law = std.iloc[idx], laws["accuracy"]


def _law_dict(law: PowerLaw | str | None) -> dict[str, Any] | None:
    if law is None:
        return None
    if isinstance(law, str):
        return {"alpha": None, "C": None, "r2": None, "alpha_ci": None, "C_ci": None, "n_bins": 0, "error": law}
    return law.to_dict()


def fits_dict(a: Analysis, target_acc: float | None = None) -> dict[str, Any]:
    """The machine-readable summary written to fits.json (FLOPs in FLOPs, accuracies in percent)."""
    scaling = {name: _law_dict(law) for name, law in a.laws.items()}
    if a.standard_law is not None:
        scaling["standard_accuracy"] = _law_dict(a.standard_law)
        scaling["standard_accuracy"]["y"] = "clean_acc of standard-training runs"
    scaling["accuracy"]["y"] = "autoattack_acc"
    fits: dict[str, Any] = {
        "n_runs": len(a.zoo), "n_fitted": len(a.kept), "n_standard": len(a.standard),
        "n_without_autoattack": len(a.no_autoattack), "collapse_threshold": a.collapse_threshold,
        "collapsed_runs": [str(v) for v in a.collapsed["run_id"]],
        "envelope_runs": [str(v) for v in a.envelope["run_id"]],
        "scaling": scaling,
        "predictor": a.predictor.to_dict() if isinstance(a.predictor, Predictor) else {"error": a.predictor},
    }
    if target_acc is not None:
        fits["target"] = cost_of_target(target_acc, a.laws)
    fits.update(a.extra)
    return fits


def _clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN and inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def analyze_zoo(df: Any, out_dir: str | Path, target_acc: float | None = None, seed: int = 0,
                collapse_threshold: float = COLLAPSE_THRESHOLD, n_boot: int = 1000,
                n_splits: int = 10, joint: bool = True) -> dict[str, Any]:
    """Fit everything, draw the figures, write ``report.html`` and ``fits.json`` into ``out_dir``.

    Returns the fits.json content. ``joint`` adds the compute-optimal joint law L(N, D) when the
    zoo has enough distinct model sizes and data amounts for it.
    """
    from robustscale.analysis.report import draw_figures, write_report

    t0 = time.perf_counter()
    if target_acc is not None and not 0 < target_acc < 100:
        raise RobustscaleError(f"--target-acc {target_acc:g} is not a percentage; allowed: 0 < X < 100")
    a = fit_zoo(df, seed=seed, collapse_threshold=collapse_threshold, n_boot=n_boot, n_splits=n_splits)
    timings = {"fits": time.perf_counter() - t0}
    if joint:
        _add_joint(a, seed)
        timings["joint"] = time.perf_counter() - t0 - sum(timings.values())
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(out_dir, exc) from None
    fits = fits_dict(a, target_acc)
    fits["figures"] = {name: path.name for name, path in draw_figures(a, out_dir / "figures").items()}
    timings["figures"] = time.perf_counter() - t0 - sum(timings.values())
    fits["timings"] = timings
    fits = _clean_json(fits)
    atomic_write_text(out_dir / "fits.json", json.dumps(fits, indent=2))
    write_report(a, fits, out_dir)
    fits["seconds"] = time.perf_counter() - t0
    log.info("analysis of %d runs in %.1f s -> %s", len(a.zoo), fits["seconds"], out_dir)
    return fits


def _add_joint(a: Analysis, seed: int) -> None:
    """Fit the joint law L(N, D) (its section says why not when the zoo does not allow it)."""
    from robustscale.analysis.frontier import joint_summary

    a.extra["joint"] = joint_summary(a, seed=seed)
