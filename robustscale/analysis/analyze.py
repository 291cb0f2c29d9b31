"""`analyze_zoo`: the whole analysis of a zoo table, from fits to figures, report and fits.json.

The orchestrator: it calls ``zoo_fit`` (every fit), ``joint.target`` (the cost of a target),
``report`` (figures and HTML) and writes the files. Nothing in the package imports it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.analysis.drawing import FigureDrawer
from robustscale.analysis.groups import COLLAPSE_THRESHOLD
from robustscale.analysis.joint.target import cost_of_target
from robustscale.analysis.predictor import Predictor
from robustscale.analysis.report import (
    check_vector_formats,
    joint_figure_jobs,
    predictor_figure_jobs,
    write_report,
    zoo_figure_jobs,
)
from robustscale.analysis.scaling import PowerLaw
from robustscale.analysis.zoo_fit import Analysis, fit_zoo, with_fitted_predictor, with_joint
from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_json, fs_error

log = logging.getLogger(__name__)


def _law_dict(law: PowerLaw | str | None) -> dict[str, Any] | None:
    if law is None:
        return None
    if isinstance(law, str):
        return {
            "alpha": None,
            "C": None,
            "r2": None,
            "alpha_ci": None,
            "C_ci": None,
            "n_bins": 0,
            "error": law,
        }
    return law.to_dict()


def fits_dict(a: Analysis, target_acc: float | None = None) -> dict[str, Any]:
    """The machine-readable summary written to fits.json (FLOPs in FLOPs, accuracies in percent)."""
    scaling = {name: _law_dict(law) for name, law in a.laws.items()}
    if a.standard_law is not None:
        scaling["standard_accuracy"] = _law_dict(a.standard_law)
        scaling["standard_accuracy"]["y"] = "clean_acc of standard-training runs"
    scaling["accuracy"]["y"] = "autoattack_acc"
    fits: dict[str, Any] = {
        "n_runs": len(a.zoo),
        "n_fitted": len(a.kept),
        "n_standard": len(a.standard),
        "n_without_autoattack": len(a.no_autoattack),
        "collapse_threshold": a.collapse_threshold,
        "collapsed_runs": [str(v) for v in a.collapsed["run_id"]],
        "envelope_runs": [str(v) for v in a.envelope["run_id"]],
        "scaling": scaling,
        "predictor": a.predictor.to_dict()
        if isinstance(a.predictor, Predictor)
        else {"error": a.predictor},
    }
    if a.joint is not None:
        fits["joint"] = a.joint
    if target_acc is not None:
        fits["target"] = cost_of_target(target_acc, a.laws, a.families)
    return fits


def clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN and inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def analyze_zoo(
    df: Any,
    out_dir: str | Path,
    target_acc: float | None = None,
    seed: int = 0,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
    n_boot: int = 1000,
    n_splits: int = 10,
    joint: bool = True,
    parallel: bool | None = None,
    vector: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fit everything, draw the figures, write ``report.html`` and ``fits.json`` into ``out_dir``.

    Returns the fits.json content. ``joint`` adds the joint law L(N, D) per recipe family, with
    whether the zoo identifies it; ``target_acc`` the cost of that robust accuracy, answered by
    :func:`~robustscale.analysis.joint.target.cost_of_target` exactly as ``plan`` answers it.

    The figures are drawn by a forked second process while this one fits the predictor and the
    joint law (:class:`~robustscale.analysis.drawing.FigureDrawer`; ``parallel=False``, or a
    machine where forking is not available, draws them here afterwards: the same files).
    ``timings`` in the result (wall seconds): ``fits`` (run groups, envelope laws, predictor),
    ``joint``, ``figures`` (from the start of drawing to the last figure written, side by side
    with the fits) and ``figures_after_fits`` (the part of it after the joint law).
    """
    t0 = time.perf_counter()
    if target_acc is not None and not 0 < target_acc < 100:
        raise RobustscaleError(
            f"--target-acc {target_acc:g} is not a percentage; allowed: 0 < X < 100"
        )
    vector = check_vector_formats(vector)
    out_dir = Path(out_dir)
    a = fit_zoo(
        df,
        seed=seed,
        collapse_threshold=collapse_threshold,
        n_boot=n_boot,
        n_splits=n_splits,
        with_predictor=False,
    )
    figures = out_dir / "figures"
    try:
        figures.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(out_dir, exc) from None
    t_draw = time.perf_counter()
    with FigureDrawer(zoo_figure_jobs(a, figures, vector), parallel) as drawer:
        a = with_fitted_predictor(a, seed, n_splits)
        drawer.submit(predictor_figure_jobs(a, figures, vector))
        timings = {"fits": time.perf_counter() - t0}
        if joint:
            a = with_joint(a, seed)
            drawer.submit(joint_figure_jobs(a, figures, vector))
            timings["joint"] = time.perf_counter() - t0 - timings["fits"]
        fits = fits_dict(a, target_acc)
        t_fitted = time.perf_counter()
        fits["figures"] = {name: path.name for name, path in drawer.finish().items()}
    fits["vector_formats"] = list(vector)
    timings["figures"] = time.perf_counter() - t_draw
    timings["figures_after_fits"] = time.perf_counter() - t_fitted
    fits["timings"] = timings
    fits = clean_json(fits)
    atomic_write_json(out_dir / "fits.json", fits)
    write_report(a, fits, out_dir)
    fits["seconds"] = time.perf_counter() - t0
    log.info("analysis of %d runs in %.1f s -> %s", len(a.zoo), fits["seconds"], out_dir)
    return fits
