"""Exports of robustscale runs for RobustBench (``robustscale export RUN --format robustbench``).

:func:`export_robustbench` writes a run's best checkpoint (EMA weights when the run had EMA) as
``<name>.pt`` in RobustBench's key names and ``<name>.json`` with RobustBench's model-info
fields, and returns the model-zoo constructor line. Loading checkpoint files trained elsewhere
is robustscale/foreign_checkpoints.py.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "export_robustbench", "model_info"]

EXPORT_FORMATS = ("robustbench",)
RB_DATASETS = ("cifar10", "cifar100")  # RobustBench's leaderboards robustscale can train for
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _eval_result(run_dir: Path, eps: float, attack: str) -> Any:
    """The run's evaluation of the best checkpoint on the whole test split with ``attack``
    (standard AutoAttack for ``autoattack``), as the zoo counts it; None when there is none."""
    from robustscale.runs import RunDir, eval_filename

    run = RunDir(run_dir)
    path = run.eval / eval_filename(attack, eps)
    if not path.is_file():
        return None
    result = run.read_eval(path)
    whole = result.n is not None and result.split_size in (None, result.n)
    standard = attack != "autoattack" or (result.version or "standard") == "standard"
    return result if whole and standard and result.checkpoint in (None, "best") else None


def _pct(value: Any) -> str:
    return f"{float(value):.2f}" if value is not None else ""


def _footnote(recipe: Any) -> str:
    steps = f"-{recipe.attack_steps}" if recipe.loss != "standard" else ""
    loss = {"pgd": "PGD-AT", "trades": f"TRADES (beta {recipe.trades_beta:g})"}.get(
        recipe.loss, recipe.loss
    )
    epochs = f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}"
    parts = [f"Trained with robustscale: {loss}{steps}, {epochs}"]
    if recipe.ema_decay is not None:
        parts.append(f"weight EMA {recipe.ema_decay:g}")
    if recipe.synthetic_data:
        parts.append(
            f"generated images ({Path(recipe.synthetic_data).name}) as "
            f"{recipe.synthetic_fraction:.0%} of every batch"
        )
    return ", ".join(parts) + "."


def model_info(
    run_dir: str | Path,
    *,
    name: str,
    authors: str = "",
    venue: str = "",
    footnote: str | None = None,
) -> dict[str, Any]:
    """RobustBench's model-info fields for a run, from its recipe and eval files.

    ``clean_acc`` and ``autoattack_acc`` (strings, two decimals) come from the standard
    AutoAttack evaluation of the best checkpoint on the whole test split
    (``eval/autoattack-<eps>.json``); ``reported`` is that same number (the authors' own
    evaluation). Unknown values are empty strings. Generated images count as no additional
    data, as RobustBench counts them (a generator trained on the training set)."""
    from robustscale.models.robustbench import architecture_name
    from robustscale.recipe import format_eps
    from robustscale.runs import read_recipe

    recipe = read_recipe(run_dir)
    aa = _eval_result(Path(run_dir), recipe.eps, "autoattack")
    clean_src = aa or _eval_result(Path(run_dir), recipe.eps, "pgd")
    robust = _pct(aa["robust_acc"]) if aa else ""
    return {
        "link": "",
        "name": name,
        "authors": authors,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": recipe.dataset,
        "venue": venue,
        "architecture": architecture_name(recipe.model),
        "eps": format_eps(recipe.eps),
        "clean_acc": _pct(clean_src["clean_acc"]) if clean_src else "",
        "reported": robust,
        "autoattack_acc": robust,
        "footnote": _footnote(recipe) if footnote is None else footnote,
    }


def export_robustbench(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    authors: str = "",
    venue: str = "",
    footnote: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/<name>.pt`` (a plain state dict in RobustBench's key names of the run's
    architecture: the best checkpoint, EMA weights when the run had EMA; for a classic WRN that
    normalises, the keys of ``normalize_model(WideResNet(...))``: ``normalize.mean``,
    ``normalize.std`` and ``model.*``) and ``<name>.json`` (:func:`model_info`). ``name``
    defaults to the run id. Everything is checked before anything is written. Returns the
    paths, the model info and the model-zoo ``constructor`` line."""
    from robustscale.checkpoint_io import torch_save
    from robustscale.data import dataset_info
    from robustscale.files import atomic_write_json
    from robustscale.models import DM_WRN_VARIANTS, WRN_VARIANTS
    from robustscale.models.robustbench import constructor_line, to_robustbench
    from robustscale.runs import load, read_recipe

    run_dir = Path(run_dir)
    recipe = read_recipe(run_dir)
    name = run_dir.name if name is None else name
    if not _NAME.match(name):
        raise RobustscaleError(
            f"name={name!r} is not allowed; allowed: letters, digits, '_', '.', '-' "
            "(RobustBench names look like Gowal2021Improving_70_16_ddpm_100m)"
        )
    if recipe.dataset not in RB_DATASETS:
        raise RobustscaleError(
            f"dataset={recipe.dataset!r} has no RobustBench leaderboard; export needs a run "
            f"on {' or '.join(RB_DATASETS)}"
        )
    if recipe.model not in WRN_VARIANTS and recipe.model not in DM_WRN_VARIANTS:
        raise RobustscaleError(
            f"model={recipe.model!r} has no RobustBench architecture; export covers "
            f"{', '.join([*WRN_VARIANTS, *DM_WRN_VARIANTS])}"
        )
    if recipe.model in WRN_VARIANTS and recipe.activation != "relu":
        raise RobustscaleError(
            f"activation={recipe.activation!r}: RobustBench's classic WideResNet is ReLU only; "
            f"a {recipe.activation} model exports as the DeepMind WideResNet (dm_wrn*)"
        )
    info = model_info(run_dir, name=name, authors=authors, venue=venue, footnote=footnote)
    model = load(run_dir, "best")
    weights = {
        k: v.detach().cpu().clone()
        for k, v in to_robustbench(recipe.model, model.net.state_dict()).items()
    }
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    if recipe.model in WRN_VARIANTS and (any(mean) or any(s != 1 for s in std)):
        # RobustBench's WideResNet does not normalise: its entry is normalize_model(WideResNet(..)),
        # an nn.Sequential of `normalize` (mean/std buffers) and `model`; these keys load into it.
        c = len(mean)
        weights = {
            "normalize.mean": model.mean.detach().cpu().reshape(1, c, 1, 1).clone(),
            "normalize.std": model.std.detach().cpu().reshape(1, c, 1, 1).clone(),
            **{f"model.{k}": v for k, v in weights.items()},
        }
    line = constructor_line(
        recipe.model, recipe.activation, dataset_info(recipe.dataset).num_classes, mean, std
    )
    out = Path(out_dir)
    pt, js = out / f"{name}.pt", out / f"{name}.json"
    torch_save(pt, weights)
    atomic_write_json(js, info)
    return {"weights": str(pt), "info": str(js), "model_info": info, "constructor": line}
