"""`robustscale demo`: the quick-start (digits, CPU, under a minute on 2 cores)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="quick-start: standard vs adversarial training on digits, compared",
        description="Train a standard and a PGD-AT WRN-10-1 on scikit-learn's digits (offline, "
        "CPU; 25-30 s on 2 idle cores), evaluate both with PGD-40 "
        "and print a table.",
    )
    p.add_argument(
        "--out", default="runs/demo", help="where the two run directories go (default: runs/demo)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustscale.demo import format_table, run_demo

    rows = run_demo(args.out, progress=not args.no_progress)
    print(format_table(rows))
    return 0
