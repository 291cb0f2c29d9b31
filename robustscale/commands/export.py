"""`robustscale export RUN --format robustbench -o DIR`: a run as a RobustBench model-zoo entry.

Writes DIR/<name>.pt (a plain state dict in RobustBench's key names) and DIR/<name>.json
(RobustBench's model-info fields) and prints the constructor line the entry needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run's best checkpoint for RobustBench",
        description="Write DIR/<name>.pt (the run's best checkpoint, EMA weights when the run had "
        "EMA, as a plain state dict in the key names of RobustBench's DMWideResNet or WideResNet) "
        "and DIR/<name>.json (RobustBench's model-info fields, filled from the recipe and "
        "eval/autoattack-<eps>.json; empty where "
        "unknown), and print the model-zoo constructor line. See docs/evaluation.md.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a finished run directory")
    p.add_argument(
        "--format", default="robustbench", help="export format: robustbench (the only one)"
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write <name>.pt and <name>.json",
    )
    p.add_argument(
        "--name", default=None, help="entry name, e.g. Smith2026Scaling_70_16 (default: the run id)"
    )
    p.add_argument("--authors", default="", help="model-info authors (default empty)")
    p.add_argument("--venue", default="", help="model-info venue (default empty)")
    p.add_argument(
        "--footnote", default=None, help="model-info footnote (default: the recipe in one sentence)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.error = _one_line_error  # type: ignore[method-assign]  # usage errors: one line, exit 2
    p.set_defaults(func=run)


def _one_line_error(message: str) -> NoReturn:
    print(f"robustscale: error: export: {message}", file=sys.stderr)
    sys.exit(2)


def run(args: argparse.Namespace) -> int:
    from robustscale.errors import RobustscaleError
    from robustscale.export import EXPORT_FORMATS, export_robustbench

    if args.format not in EXPORT_FORMATS:
        raise RobustscaleError(
            f"--format {args.format!r} is not known; allowed: {', '.join(EXPORT_FORMATS)}"
        )
    out = export_robustbench(
        args.run,
        args.out,
        name=args.name,
        authors=args.authors,
        venue=args.venue,
        footnote=args.footnote,
    )
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    info = out["model_info"]
    print(f"wrote {out['weights']}")
    print(
        f"wrote {out['info']} ({info['architecture']}, clean {_pct(info['clean_acc'])}, "
        f"AutoAttack {_pct(info['autoattack_acc'])})"
    )
    print(f"model-zoo entry: 'model': lambda: {out['constructor']}")
    return 0


def _pct(value: str) -> str:
    return f"{value}%" if value else "not evaluated (robustscale eval RUN --attack autoattack)"
