"""`robustscale eval RUN_DIR|CHECKPOINT`: PGD-k or AutoAttack on the first N test examples.

Prints a short table (or, with --json, the result JSON) and writes eval/<attack>-<eps>[...].json
(robustscale.evaluate.eval_filename: -<version>, -n<N> and -last parts when they apply).
Every mistake in the arguments is one line on stderr and exit status 2, as for library errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from robustscale.commands import values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="robust accuracy of a run or checkpoint under PGD-k or AutoAttack",
        description="Evaluate a run's checkpoint (or a checkpoint file with "
        "--model) on the first N test "
        "examples of its dataset, in a fixed order, and write "
        "RUN_DIR/eval/<attack>-<eps>.json (with -<version> "
        "for a non-standard AutoAttack, -n<N> for a subset, -last for the last "
        "checkpoint; only the standard "
        "AutoAttack of the best checkpoint on the whole test split is the zoo's autoattack_acc). "
        "AutoAttack is the reference implementation (pyautoattack); a killed AutoAttack run "
        "resumes from its state file at the attack it was in.",
    )
    p.add_argument(
        "target",
        metavar="RUN_DIR|CHECKPOINT",
        help="run directory, or a checkpoint file with --model",
    )
    p.add_argument(
        "--checkpoint", default="best", help="best (selected epoch) or last (default best)"
    )
    p.add_argument("--attack", default="pgd", help="pgd or autoattack (default pgd)")
    p.add_argument(
        "--eps",
        default=None,
        help="radius, e.g. 8/255 (default: the run's recipe eps; 8/255 for a checkpoint file)",
    )
    p.add_argument("--norm", default="linf", help="linf or l2 (l2: PGD only; default linf)")
    p.add_argument(
        "--steps",
        type=int,
        default=40,
        help="PGD steps (default 40); step size eps/4 (L-inf), 2.5*eps/steps (L2)",
    )
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default 1)")
    p.add_argument(
        "--version",
        default="standard",
        help="AutoAttack version: standard, rand or plus (default standard)",
    )
    p.add_argument(
        "--n", type=int, default=None, help="first N test examples (default: the whole test split)"
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="examples per attack batch (default 256)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="AutoAttack on a CPU: processes that run each attack's batches side by side (default: "
        "one per CPU thread, at most 8; same verdicts as one process)",
    )
    p.add_argument(
        "--seed",
        type=values.seed(),
        default=0,
        help="seed of PGD's random start and of AutoAttack (default 0)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--model", default=None, help="model name, when RUN_DIR|CHECKPOINT is a checkpoint file"
    )
    p.add_argument(
        "--activation",
        default=None,
        help="activation of a checkpoint file's model: relu, gelu or "
        "silu (default: the model's own; silu (Swish) for dm_wrn*, as RobustBench's entries)",
    )
    p.add_argument(
        "--dataset", default="cifar10", help="dataset of a checkpoint file (default cifar10)"
    )
    p.add_argument(
        "--data-dir", default="data", help="dataset folder for a checkpoint file (default ./data)"
    )
    p.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    p.error = _one_line_error  # type: ignore[method-assign]  # usage errors: one line, exit 2
    p.set_defaults(func=run_eval)


def _one_line_error(message: str) -> NoReturn:
    print(f"robustscale: error: eval: {message}", file=sys.stderr)
    sys.exit(2)


def run_eval(args: argparse.Namespace) -> int:
    from robustscale.device import resolve_device
    from robustscale.errors import RobustscaleError
    from robustscale.evaluate import evaluate_checkpoint, evaluate_run
    from robustscale.threads import configure_cpu_threads

    if resolve_device(args.device).type == "cpu":
        configure_cpu_threads()  # OMP_NUM_THREADS, else the usable physical cores
    common = dict(
        attack=args.attack,
        n=args.n,
        steps=args.steps,
        restarts=args.restarts,
        norm=args.norm,
        batch_size=args.batch_size,
        version=args.version,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
    )
    target = Path(args.target)
    if target.is_file() or (args.model is not None and not target.exists()):
        if args.model is None:
            raise RobustscaleError(
                f"{args.target!r} is a file: evaluating a checkpoint file needs --model NAME "
                "(and --dataset); a run is given by its directory"
            )
        eps = args.eps if args.eps is not None else 8 / 255
        result = evaluate_checkpoint(
            target,
            model=args.model,
            dataset=args.dataset,
            data_dir=args.data_dir,
            eps=eps,
            activation=args.activation,
            **common,
        )
        where = target.parent / "eval"
    else:
        if args.model is not None or args.activation is not None:
            raise RobustscaleError(
                f"--model and --activation apply to a checkpoint file; {args.target!r} is not a "
                "file (a run directory knows its model)"
            )
        result = evaluate_run(target, checkpoint=args.checkpoint, eps=args.eps, **common)
        where = target / "eval"
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_table(result))
        from robustscale.evaluate import result_filename

        print(f"wrote {where / result_filename(result)}")
    return 0


def format_table(result: dict[str, Any]) -> str:
    """A few lines a reviewer can read: settings, clean, each attack, the final number, warnings."""
    from robustscale.recipe import format_eps

    who = result.get("run_id") or result.get("checkpoint")
    lines = [
        f"{who} ({result['checkpoint']}), first {result['n']} {result['split']} examples, "
        f"eps {format_eps(result['eps'])} ({result['norm']}), seed {result['seed']}"
    ]
    if result["per_attack"] is None:
        name = f"PGD-{result['steps']}" + (
            f" x{result['restarts']} restarts" if result["restarts"] > 1 else ""
        )
        lines.append(f"  step size {result['step_size']:.4g} ({result['step_size_rule']})")
        rows = [("clean", result["clean_acc"]), (name, result["robust_acc"])]
    else:
        rows = [("clean", result["clean_acc"])] + [
            (f"after {a}", v) for a, v in result["per_attack"].items()
        ]
        rows.append((f"AutoAttack {result['version']}", result["robust_acc"]))
        if result.get("resumed_after"):
            lines.append(f"  resumed after {', '.join(result['resumed_after'])}")
    lines += [f"  {label:<28} {value:6.2f}%" for label, value in rows]
    workers = result.get("workers") or 1
    side_by_side = f", batches in {workers} processes" if workers > 1 else ""
    lines.append(f"  {result['seconds']:.1f} s on {result['device']}{side_by_side}")
    lines += [f"  warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
