"""`robustscale <command>`: parse, call the library, print.

Each command lives in ``robustscale/commands/<name>.py`` with a ``register(subparsers)``
function; this file only assembles them and turns :class:`RobustscaleError` into one line on
stderr with exit status 2. Command modules import heavy libraries (torch, sklearn) inside their
handlers so that ``robustscale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from robustscale.errors import RobustscaleError

# Order is the order shown by --help.
COMMAND_MODULES = [
    "robustscale.commands.train",
    "robustscale.commands.demo",
    "robustscale.commands.study",
    "robustscale.commands.evaluate",
    "robustscale.commands.export",
    "robustscale.commands.flops",
    "robustscale.commands.sweep",
    "robustscale.commands.zoo",
    "robustscale.commands.analyze",
    "robustscale.commands.plan",
    "robustscale.commands.data",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustscale",
        description="Compute-aware adversarial robustness: train, evaluate, cost, sweep, analyse.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars and no progress lines, warnings and errors only "
        "(bars are also off when stderr is not a terminal: one line per stage "
        "then)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except RobustscaleError as exc:  # a flag's type check (robustscale/commands/values.py)
        print(f"robustscale: error: {exc}", file=sys.stderr)
        return 2
    from robustscale.progress import set_quiet

    set_quiet(args.quiet)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except RobustscaleError as exc:
        print(f"robustscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustscale: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
