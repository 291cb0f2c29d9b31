"""`robustscale zoo DIR [-o zoo.csv|zoo.parquet]`: gather finished run directories into one table."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="gather every finished run directory under DIR into one zoo table",
        description="Gather every finished run directory under DIR into one zoo table "
        "(columns: docs/zoo-schema.md). Unfinished or broken runs are listed with the reason "
        "and left out. With --import, read an external zoo table (CSV or Parquet) instead, check "
        "it, and write it out in our format.",
    )
    p.add_argument("dir", help="folder holding run directories (searched recursively), or with "
                   "--import a zoo table file")
    p.add_argument("-o", "--output", default="zoo.csv", help="output table, .csv or .parquet (default zoo.csv)")
    p.add_argument("--import", dest="import_table", action="store_true",
                   help="DIR is an external zoo table (CSV/Parquet) to check and convert")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustscale.zoo import gather_zoo, read_zoo, write_zoo

    if args.import_table:
        df, skipped = read_zoo(args.dir), []
    else:
        df, skipped = gather_zoo(args.dir)
    path = write_zoo(df, args.output)
    for item in skipped:
        print(f"left out {item.path}: {item.reason}", file=sys.stderr)
    print(f"{len(df)} runs -> {path}" + (f" ({len(skipped)} left out)" if skipped else ""))
    return 0
