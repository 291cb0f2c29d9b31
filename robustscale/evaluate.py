"""Robust evaluation: PGD-k (ours, the one training uses) and AutoAttack (the reference code).

Three doors, one result record (:class:`robustscale.runs.EvalResult`, written as
docs/run-directory.md's "eval/<attack>-<eps>.json"; file names in :func:`eval_filename`):

* ``load_split(run_dir_or_dataset, split="test", n=None)`` gives the exact examples an
  evaluation uses, as float32 [0, 1] tensors in a fixed order, so any other attack library can
  be run on the same inputs;
* ``evaluate(model, x, y, attack=..., eps=...)`` attacks any classifier taking [0, 1] images;
* ``evaluate_run(run_dir, ...)`` loads a run's checkpoint, evaluates it on the first ``n`` test
  examples, adds the run-level sanity checks and writes ``eval/<attack>-<eps>[...].json``.

AutoAttack is imported lazily (robustscale.attacks.autoattack) so importing robustscale stays light.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustscale._callable import make_callable
from robustscale.device import resolve_device
from robustscale.errors import RobustscaleError
from robustscale.recipe import format_eps, parse_fraction
from robustscale.runs import EvalResult, RunDir, eval_filename, state_filename
from robustscale.runs import result_filename as result_filename  # re-exported: a public name here

log = logging.getLogger(__name__)

ATTACKS = ("pgd", "autoattack")
NORMS = ("linf", "l2")
VERSIONS = ("standard", "rand", "plus")
STANDARD_MASKING_PCT = 10.0  # a standard-trained model above this robust accuracy is suspicious


def load_split(
    run_dir_or_dataset: str | Path,
    split: str = "test",
    n: int | None = None,
    data_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of ``split`` (all when None) as ``(x float32 in [0, 1], y int64)``.

    ``run_dir_or_dataset`` is a run directory (its recipe names the dataset and data_dir) or a
    dataset name (``digits``, ``cifar10``, ``cifar100``). These are exactly, and in the same
    order, the examples ``robustscale eval --n N`` attacks.
    """
    x, y, _ = _load_examples(run_dir_or_dataset, split, n, data_dir)
    return x, y


def _load_examples(
    run_dir_or_dataset: str | Path, split: str, n: int | None, data_dir: str | Path | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`load_split` plus the size of the whole split (an evaluation records it as
    ``split_size``)."""
    from robustscale.data import DATASETS, read_split, to_float

    target = Path(run_dir_or_dataset)
    if RunDir(target).recipe.is_file():
        recipe = RunDir(target).read_recipe()
        name, folder = recipe.dataset, data_dir if data_dir is not None else recipe.data_dir
    elif str(run_dir_or_dataset) in DATASETS:
        name, folder = str(run_dir_or_dataset), data_dir if data_dir is not None else "data"
    else:
        raise RobustscaleError(
            f"{str(run_dir_or_dataset)!r} is neither a run directory (no recipe.yaml) "
            f"nor a dataset; allowed datasets: {', '.join(DATASETS)}"
        )
    x, y = read_split(name, split, folder)
    total = len(y)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise RobustscaleError(
                f"n={n!r} does not fit the {total} examples of the {name} {split} split; "
                f"allowed: 1 to {total}"
            )
        x, y = x[:n], y[:n]
    return to_float(x).contiguous(), y.long(), total


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str = "pgd",
    eps: float | str,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | str | None = None,
    restarts: int = 1,
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    state_path: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> EvalResult:
    """Clean and robust accuracy (percent) of ``model`` on (x, y) under ``attack``.

    ``pgd``: our PGD with a random start, CE loss, ``restarts`` restarts (an example counts as
    broken if any restart breaks it); step size eps/4 (L-inf) or 2.5·eps/steps (L2) unless given.
    ``autoattack``: pyautoattack ``version`` (L-inf); ``attacks`` runs a custom subset instead;
    ``state_path`` makes a killed run resume (see robustscale.attacks.autoattack). The model is
    evaluated in eval mode with frozen parameters and put back as it was. With
    ``device="auto"`` the model stays where it is. ``progress``: a bar on a terminal, a line per
    stage elsewhere, nothing under ``--quiet`` (robustscale.progress). Returns the
    :class:`EvalResult` (read like the dict written to eval JSONs). ``workers``: AutoAttack on a
    CPU runs each attack's batches in that many processes side by side (default: one per
    intra-op thread, at most 8; robustscale.attacks.autoattack.default_workers), the library's
    own batches and seeds, so the same verdicts; recorded as the result's ``workers``.
    """
    cfg = _check_settings(
        attack, eps, norm, steps, step_size, restarts, version, seed, batch_size, workers
    )
    if attacks is not None and cfg["attack"] != "autoattack":
        raise RobustscaleError(
            "attacks= selects AutoAttack's attacks; it needs attack='autoattack'"
        )
    if x.dim() != 4 or len(x) != len(y) or len(y) == 0:
        raise RobustscaleError(
            "x must be N x C x H x W and y N labels with N >= 1; got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.detach().float().cpu(), y.detach().long().cpu()
    if x.min() < 0 or x.max() > 1:
        raise RobustscaleError(
            "x must hold images in [0, 1]; got values in "
            f"[{x.min().item():.3g}, {x.max().item():.3g}]"
        )
    t0, seconds_before = time.perf_counter(), 0.0
    with _frozen(model, device) as dev:
        if attack == "pgd":
            result = _evaluate_pgd(model, x, y, cfg, dev, progress)
        else:
            try:
                result, seconds_before = _evaluate_autoattack(
                    model, x, y, cfg, dev, attacks, state_path, progress
                )
            except OSError as exc:  # AutoAttack's state file on a full or read-only disk
                from robustscale.files import fs_error

                raise fs_error(Path(exc.filename or state_path or "."), exc) from None
    return result.replace(
        seconds=round(seconds_before + time.perf_counter() - t0, 3), device=str(dev)
    )


def _check_settings(
    attack: str,
    eps: float | str,
    norm: str,
    steps: int,
    step_size: float | str | None,
    restarts: int,
    version: str,
    seed: int,
    batch_size: int,
    workers: int | None = None,
) -> dict[str, Any]:
    if attack not in ATTACKS:
        raise RobustscaleError(f"attack={attack!r} is not known; allowed: {', '.join(ATTACKS)}")
    if norm not in NORMS:
        raise RobustscaleError(f"norm={norm!r} is not known; allowed: {', '.join(NORMS)}")
    if attack == "autoattack" and norm != "linf":
        raise RobustscaleError(
            f"norm={norm!r} with attack='autoattack' is not offered; AutoAttack here runs the "
            "paper's L-inf threat model (use --attack pgd --norm l2 for L2)"
        )
    if version not in VERSIONS:
        raise RobustscaleError(f"version={version!r} is not known; allowed: {', '.join(VERSIONS)}")
    eps_f = parse_fraction(eps, "eps")
    if not 0 < eps_f <= 1:
        raise RobustscaleError(
            f"eps={eps!r} is outside the allowed range; allowed: a number in (0, 1] (input units)"
        )
    for key, value in (("steps", steps), ("restarts", restarts), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RobustscaleError(f"{key}={value!r} is not allowed; allowed: an integer >= 1")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise RobustscaleError(
            f"workers={workers!r} is not allowed; allowed: an integer >= 1 (or None: one per CPU "
            "thread)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RobustscaleError(f"seed={seed!r} is not allowed; allowed: an integer")
    if step_size is None:
        step_size_f, rule = (
            (eps_f / 4, "eps/4") if norm == "linf" else (2.5 * eps_f / steps, "2.5*eps/steps")
        )
    else:
        step_size_f, rule = parse_fraction(step_size, "step_size"), "given"
        if step_size_f <= 0:
            raise RobustscaleError(f"step_size={step_size!r} is not allowed; allowed: a number > 0")
    pgd = attack == "pgd"
    return {
        "attack": "pgd-l2" if pgd and norm == "l2" else attack,
        "eps": eps_f,
        "norm": norm,
        "steps": steps if pgd else None,
        "restarts": restarts if pgd else None,
        "step_size": step_size_f if pgd else None,
        "step_size_rule": rule if pgd else None,
        "version": None if pgd else version,
        "seed": seed,
        "batch_size": batch_size,
        "workers": workers,
    }


@contextlib.contextmanager
def _frozen(model: nn.Module, device: str | torch.device) -> Iterator[torch.device]:
    """Eval mode and parameters' requires_grad off (AutoAttack's FAB calls .backward(); PGD needs
    input gradients only), restored on exit."""
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    dev = home if str(device) == "auto" else resolve_device(device)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield dev
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training).to(home)


def _evaluate_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: dict[str, Any],
    dev: torch.device,
    progress: bool = True,
) -> EvalResult:
    from robustscale.attacks.pgd import pgd_counts
    from robustscale.progress import bar

    warnings = _library_checks(
        model, x[: cfg["batch_size"]].to(dev), y[: cfg["batch_size"]].to(dev)
    )
    with bar(
        len(y),
        f"PGD-{cfg['steps']}" + (f" x{cfg['restarts']}" if cfg["restarts"] > 1 else ""),
        unit="img",
        enabled=progress,
    ) as shown:
        counts = pgd_counts(
            model,
            x.to(dev),
            y.to(dev),
            cfg["eps"],
            cfg["steps"],
            cfg["step_size"],
            batch_size=cfg["batch_size"],
            restarts=cfg["restarts"],
            norm=cfg["norm"],
            seed=cfg["seed"],
            on_batch=shown.update,
        )
    n = len(y)
    result = _result(
        cfg, n, 100.0 * counts.clean.item() / n, 100.0 * counts.robust.item() / n, None, warnings
    )
    # mean robust losses at the PGD examples (nats; CW margin in logits): the zoo's pgd40_loss
    return result.replace(
        robust_ce_loss=float(counts.ce.item()) / n, robust_cw_loss=float(counts.cw.item()) / n
    )


def _library_checks(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> list[str]:
    """AutoAttack's own checks (randomness, softmax output, dynamic defence) for a PGD evaluation;
    an AutoAttack evaluation runs them itself."""
    from pyautoattack import checks

    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    checker = logging.getLogger("robustscale.evaluate.checks")
    checker.propagate, handler = False, _Collect()
    checker.addHandler(handler)
    try:
        checks.check_randomized(model, xb, yb, bs=len(yb), logger=checker)
        checks.check_range_output(model, xb, logger=checker)
        checks.check_dynamic(model, xb, False, logger=checker)
    finally:
        checker.removeHandler(handler)
    for msg in found:
        log.warning("warning (AutoAttack check): %s", msg)
    return found


def _evaluate_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: dict[str, Any],
    dev: torch.device,
    attacks: list[str] | None,
    state_path: str | Path | None,
    progress: bool = True,
) -> tuple[EvalResult, float]:
    """The result, and the seconds spent before a resume (added to this attempt's own)."""
    from robustscale.attacks.autoattack import default_workers, run_autoattack

    out = run_autoattack(
        model,
        x,
        y,
        eps=cfg["eps"],
        norm="Linf",
        version=cfg["version"],
        attacks=attacks,
        seed=cfg["seed"],
        batch_size=cfg["batch_size"],
        device=dev,
        state_path=state_path,
        progress=progress,
        workers=default_workers(dev) if cfg["workers"] is None else cfg["workers"],
    )
    result = _result(cfg, len(y), out.clean_acc, out.robust_acc, out.per_attack, out.warnings)
    version = f"custom:{'+'.join(attacks)}" if attacks is not None else result.version
    return result.replace(
        version=version, resumed_after=list(out.resumed_after), workers=out.workers
    ), out.seconds_before


def _result(
    cfg: dict[str, Any],
    n: int,
    clean: float,
    robust: float,
    per_attack: dict[str, float] | None,
    warnings: list[str],
) -> EvalResult:
    return EvalResult(
        attack=cfg["attack"],
        eps=cfg["eps"],
        norm=cfg["norm"],
        n=n,
        clean_acc=clean,
        robust_acc=robust,
        per_attack=per_attack,
        steps=cfg["steps"],
        restarts=cfg["restarts"],
        step_size=cfg["step_size"],
        step_size_rule=cfg["step_size_rule"],
        version=cfg["version"],
        seed=cfg["seed"],
        batch_size=cfg["batch_size"],
        warnings=list(warnings),
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    attack: str = "pgd",
    checkpoint: str = "best",
    eps: float | str | None = None,
    n: int | None = None,
    steps: int = 40,
    restarts: int = 1,
    norm: str = "linf",
    batch_size: int = 256,
    version: str = "standard",
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
) -> EvalResult:
    """Evaluate a run's ``checkpoint`` on the first ``n`` test examples (all when None) and write
    ``<run_dir>/eval/`` + :func:`eval_filename` (``-<version>``, ``-n<N>``, ``-last`` parts when
    they apply); eps defaults to the recipe's. Returns the result dict. An AutoAttack evaluation
    keeps its state in ``eval/`` + :func:`state_filename` and resumes from it when killed. (No
    custom attack subsets here: the zoo reads ``autoattack-<eps>.json`` as the final number;
    use :func:`evaluate` for those.)"""
    from robustscale.runs import load

    run = RunDir(Path(run_dir))
    recipe = run.read_recipe()
    settings = dict(
        attack=attack,
        eps=recipe.eps if eps is None else eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        version=version,
        attacks=None,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
    )
    _check_settings(**{k: v for k, v in settings.items() if k != "attacks"}, step_size=None)
    dev = resolve_device(device)
    x, y, total = _load_examples(run.path, "test", n, None)
    model = load(run.path, checkpoint, dev)
    result = _evaluate_into(
        model,
        x,
        y,
        total,
        run.eval,
        settings,
        dev,
        checkpoint=checkpoint,
        recipe=recipe,
        run_id=run.path.name,
    )
    if recipe.trackers:  # the final numbers, beside the run's curves
        from robustscale.trackers import log_eval

        log_eval(run.path, recipe.trackers, recipe.run_id, recipe.to_dict(), result)
    return result


def evaluate_checkpoint(
    path: str | Path,
    *,
    model: str,
    dataset: str = "cifar10",
    data_dir: str | Path = "data",
    out_dir: str | Path | None = None,
    attack: str = "pgd",
    eps: float | str = 8 / 255,
    n: int | None = None,
    steps: int = 40,
    restarts: int = 1,
    norm: str = "linf",
    batch_size: int = 256,
    version: str = "standard",
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    activation: str | None = None,
) -> EvalResult:
    """Evaluate weights trained elsewhere: ``path`` holds a state dict for ``model`` (a robustscale
    or timm model name, built as robustscale builds it: [0, 1] inputs, normalisation inside), as
    published checkpoints ship it (RobustBench's key names, wrapper prefixes, ``state_dict`` /
    ``model_state_dict`` / ``model`` containers: robustscale.foreign_checkpoints.load_weights_file).
    Results go to ``out_dir`` (default: ``eval/`` beside the checkpoint)."""
    from robustscale.foreign_checkpoints import load_weights_file

    settings = dict(
        attack=attack,
        eps=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        version=version,
        attacks=None,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
    )
    _check_settings(**{k: v for k, v in settings.items() if k != "attacks"}, step_size=None)
    if not Path(path).is_file():
        raise RobustscaleError(f"checkpoint {str(path)!r} does not exist")
    dev = resolve_device(device)
    net = load_weights_file(path, model=model, dataset=dataset, activation=activation, device=dev)
    x, y, total = _load_examples(dataset, "test", n, data_dir)
    out = Path(out_dir) if out_dir is not None else Path(path).parent / "eval"
    return _evaluate_into(
        net, x, y, total, out, settings, dev, checkpoint=str(path), recipe=None, run_id=None
    )


def _evaluate_into(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    split_size: int,
    eval_dir: Path,
    settings: dict[str, Any],
    dev: torch.device,
    *,
    checkpoint: str,
    recipe: Any,
    run_id: str | None,
) -> EvalResult:
    state = None
    if settings["attack"] == "autoattack":
        state = eval_dir / state_filename(
            parse_fraction(settings["eps"], "eps"),
            checkpoint,
            version=settings["version"],
            n=len(y),
            split_size=split_size,
        )
    result = evaluate(model, x, y, **settings, device=dev, state_path=state)
    result = result.replace(
        checkpoint=checkpoint, split="test", split_size=split_size, run_id=run_id
    )
    result = result.replace(warnings=result.warnings + run_warnings(result, recipe, eval_dir))
    RunDir(eval_dir.parent).write_eval(result, folder=eval_dir)
    return result


def run_warnings(result: Mapping[str, Any], recipe: Any, eval_dir: Path) -> list[str]:
    """Sanity checks that need the run: gradient masking on a standard model, PGD weaker than
    AutoAttack's result on the same examples, and model selection on the test examples."""
    found = []
    if (
        recipe is not None
        and recipe.loss == "standard"
        and result["robust_acc"] > STANDARD_MASKING_PCT
    ):
        found.append(
            f"a standard-trained model keeps {result['robust_acc']:.1f}% robust accuracy at eps "
            f"{format_eps(result['eps'])}: expected near 0; suspect gradient "
            "masking or a broken attack"
        )
    if result["robust_acc"] >= result["clean_acc"] > 0:
        found.append(
            f"{result['attack']} changed no prediction (robust = clean = "
            f"{result['clean_acc']:.1f}%): "
            "suspect zero or masked gradients"
        )
    other = _comparable(result, eval_dir)
    if other is not None:
        pgd, aa = (result, other) if result["attack"] == "pgd" else (other, result)
        if pgd["robust_acc"] < aa["robust_acc"]:
            found.append(
                f"PGD-{pgd['steps']} robust accuracy "
                f"{pgd['robust_acc']:.2f}% is below AutoAttack's "
                f"{aa['robust_acc']:.2f}% on the same {result['n']} examples: AutoAttack missed "
                "examples PGD breaks, so its number is not trustworthy"
            )
    if recipe is not None and recipe.val_size and recipe.val_source == "test":
        found.append(
            f"model selection used the first {recipe.val_size} test examples (val_source=test): "
            "accuracy on them is optimistically biased"
        )
    for msg in found:
        log.warning("warning: %s", msg)
    return found


def _comparable(result: Mapping[str, Any], eval_dir: Path) -> EvalResult | None:
    """The other L-inf attack's eval JSON for the same checkpoint, eps, n and split, if any."""
    if result["attack"] not in ("pgd", "autoattack"):
        return None
    other = "autoattack" if result["attack"] == "pgd" else "pgd"
    path = eval_dir / eval_filename(
        other,
        result["eps"],
        result.get("checkpoint", "best"),
        version="standard",
        n=result.get("n"),
        split_size=result.get("split_size"),
    )
    if not path.is_file():
        return None
    try:
        data = RunDir(eval_dir.parent).read_eval(path)
    except RobustscaleError as exc:
        log.warning("warning: ignoring %s", exc)
        return None
    same = (
        all(data.get(k) == result.get(k) for k in ("checkpoint", "n", "split"))
        and abs(data.eps - result["eps"]) < 1e-12
    )
    return data if same else None


# ``robustscale.evaluate(model, x, y, ...)`` calls evaluate() (robustscale/_callable.py says why).
make_callable(__name__, "evaluate")
