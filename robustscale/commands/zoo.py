"""`robustscale zoo DIR [-o zoo.csv|zoo.parquet]`: gather finished run directories into one
table."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="gather every finished run directory under DIR into one zoo table",
        description="Gather every finished run directory under DIR into one zoo table "
        "(columns: docs/zoo-schema.md). Unfinished runs are listed with the reason and left "
        "out; damaged runs (a file missing or unreadable, a missing or truncated best checkpoint) "
        "are listed in a 'damaged runs' section and kept out of the table. With --import, read an "
        "external zoo table (CSV or Parquet) instead, check "
        "it, and write it out in our format.",
    )
    p.add_argument(
        "dir",
        help="folder holding run directories (searched recursively), or with "
        "--import a zoo table file",
    )
    p.add_argument(
        "-o", "--output", default="zoo.csv", help="output table, .csv or .parquet (default zoo.csv)"
    )
    p.add_argument(
        "--import",
        dest="import_table",
        action="store_true",
        help="DIR is an external zoo table (CSV/Parquet) to check and convert",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustscale.files import check_output_file
    from robustscale.zoo import check_zoo_output, gather_zoo, read_zoo, write_zoo

    check_zoo_output(check_output_file(args.output, "zoo table"))  # before any reading
    if args.import_table:
        df, skipped = read_zoo(args.dir), []
    else:
        df, skipped = gather_zoo(args.dir)
    path = write_zoo(df, args.output)
    damaged = [item for item in skipped if item.damaged]
    for item in skipped:
        if not item.damaged:
            print(f"left out {item.path}: {item.reason}", file=sys.stderr)
    if damaged:
        print(
            f"damaged runs ({len(damaged)}; kept out of the table: restore the file named, or "
            "delete the run directory and train the run again):",
            file=sys.stderr,
        )
        for item in damaged:
            print(f"  {item.path}: {item.reason}", file=sys.stderr)
    extra = f" ({len(skipped)} left out" + (f", {len(damaged)} damaged" if damaged else "") + ")"
    print(f"{len(df)} runs -> {path}" + (extra if skipped else ""))
    return 0
