"""`robustscale study [SPEC.yaml]`: the small digits study end to end, into one zoo table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the paper's study in small: a digits sweep, AutoAttack on every run, a zoo table",
        description="Train every run of a sweep file (default "
        "recipes/sweeps/digits-study.yaml: 36 digits runs "
        "over 3 model sizes, 3 amounts of unique data, both losses, 2/3/5 attack "
        "steps, EMA on and off), "
        "evaluate each with standard AutoAttack on the whole test split, and "
        "write the zoo table that "
        "analyze, predict and plan read, with <table>.about.txt (command, machine, "
        "time) beside it. Offline, on "
        "a CPU, AutoAttack taking most of the time (what it took where "
        "examples/digits-zoo.csv was made: "
        "examples/digits-zoo.csv.about.txt); started again on the same --out it skips finished "
        "runs and resumes interrupted ones.",
    )
    p.add_argument(
        "spec", nargs="?", metavar="SPEC.yaml", help="sweep file (default: the digits study)"
    )
    p.add_argument(
        "--out",
        default="sweeps/digits-study",
        metavar="DIR",
        help="sweep folder: ledger, run directories, logs (default: sweeps/digits-study)",
    )
    p.add_argument(
        "-o",
        "--output",
        default="digits-zoo.csv",
        metavar="ZOO",
        help="zoo table to write, .csv or .parquet (default: digits-zoo.csv)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key in every run (repeatable)",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="runs at once, one CPU thread each (default: the usable physical cores)",
    )
    p.add_argument(
        "--max-attempts", type=int, default=3, metavar="N", help="tries per run (default 3)"
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: write the table of the runs finished so far (a study still running "
        "in another terminal, or one that was stopped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustscale.recipe import parse_overrides
    from robustscale.study import run_study

    r = run_study(
        args.spec,
        args.out,
        args.output,
        overrides=parse_overrides(args.overrides),
        max_parallel=args.max_parallel,
        max_attempts=args.max_attempts,
        train=not args.no_train,
    )
    failed = r.counts.get("failed", 0)
    left = r.counts.get("pending", 0) + r.counts.get("running", 0)
    if left:
        print(f"study: {left} runs not finished yet; the table holds the {r.rows} done so far")
    print(
        f"study: {r.rows} runs in {r.zoo_path} ({r.with_autoattack} with "
        f"AutoAttack, {len(r.collapsed)} "
        f"collapsed at <= 10% AutoAttack, {failed} failed) in {r.seconds:.0f}s; about: {r.about}"
    )
    print("next:")
    print(f"  robustscale analyze {r.zoo_path} -o report --target-acc 40")
    print(f"  robustscale predict recipes/digits-trades.yaml --zoo {r.zoo_path}")
    print(
        f"  robustscale plan --budget 1e13 --zoo {r.zoo_path} --models "
        "wrn10_1,wrn16_1,wrn22_1 -o planned.yaml"
    )
    return 1 if failed else 0
