"""`robustscale train RECIPE.yaml [--set k=v ...] [--run-dir DIR]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one recipe into a run directory (resumes an existing one)",
        description="Train one recipe end to end. Pointed at an existing run directory it "
        "resumes it; a finished run is left as it is.",
    )
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable), e.g. --set epochs=5 --set eps=8/255",
    )
    p.add_argument("--run-dir", help="run directory (default: <out>/<run_id>)")
    p.add_argument(
        "--out", default="runs", help="parent folder of the default run directory (default: runs)"
    )
    p.add_argument(
        "--final-eval",
        choices=["pgd", "autoattack"],
        help="evaluate the best checkpoint on the test set at the end",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustscale.recipe import Recipe
    from robustscale.train import train

    recipe = Recipe.from_yaml(args.recipe, args.overrides, site_defaults=True)
    run_dir = train(
        recipe,
        args.run_dir,
        out_root=args.out,
        progress=not args.no_progress,
        final_eval=args.final_eval,
    )
    if args.final_eval:  # the evaluation's lines, as `robustscale eval` prints them
        from pathlib import Path

        from robustscale.commands.evaluate import format_table
        from robustscale.evaluate import eval_filename
        from robustscale.files import read_json

        result = Path(run_dir) / "eval" / eval_filename(args.final_eval, recipe.eps)
        print(format_table(read_json(result)))
        print(f"wrote {result}")
    print(run_dir)
    return 0
