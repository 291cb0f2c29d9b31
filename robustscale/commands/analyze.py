"""`robustscale analyze ZOO` (fits, figures, report) and `robustscale predict RECIPE --zoo ZOO`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robustscale.commands import values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="scaling laws, predictor, figures and report from a zoo table",
        description="Check a zoo table (ours or anyone's), fit the predictor and the envelope "
        "power laws, and write report.html, fits.json and the figures into REPORT_DIR.",
    )
    p.add_argument("zoo", help="zoo table, .csv or .parquet")
    p.add_argument("-o", "--output", default="report", help="report folder (default ./report)")
    p.add_argument(
        "--target-acc",
        type=values.number("--target-acc", low=0, high=100, low_open=True),
        default=None,
        metavar="X",
        help="also give the FLOPs, kWh, USD and kg CO2 the laws say X%% AutoAttack accuracy takes",
    )
    p.add_argument(
        "--seed",
        type=values.seed(),
        default=0,
        help="seed of the splits and the bootstrap (default 0)",
    )
    p.add_argument(
        "--collapse-threshold",
        type=values.number("--collapse-threshold", low=0, high=100),
        default=10.0,
        metavar="PCT",
        help="runs with AutoAttack accuracy at or below this are collapsed "
        "and left out (default 10)",
    )
    p.add_argument(
        "--vector",
        action="append",
        choices=["svg", "pdf"],  # report.VECTOR_FORMATS (not imported: the CLI loads lazily)
        default=[],
        metavar="FORMAT",
        help="also write each figure as svg or pdf (vector, for papers) beside its PNG; "
        "repeat for both (default: PNG only, each vector copy adds a drawing pass)",
    )
    p.set_defaults(func=run_analyze)

    q = subparsers.add_parser(
        "predict",
        help="predict AutoAttack accuracy and cost of a recipe not yet trained",
        description="Predict the AutoAttack accuracy of RECIPE (with an interval from repeated "
        "splits) and forecast its FLOPs, kWh, USD and kg CO2 from the zoo's laws.",
    )
    q.add_argument("recipe", help="recipe YAML")
    q.add_argument("--zoo", required=True, help="zoo table, .csv or .parquet")
    q.add_argument("--seed", type=values.seed(), default=0)
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=run_predict)


def run_analyze(args: argparse.Namespace) -> int:
    from robustscale.analysis import analyze_zoo
    from robustscale.analysis.target import describe_target
    from robustscale.files import check_output_folder
    from robustscale.zoo import read_zoo

    check_output_folder(args.output, "report folder")  # before the fit
    fits = analyze_zoo(
        read_zoo(args.zoo),
        args.output,
        target_acc=args.target_acc,
        seed=args.seed,
        collapse_threshold=args.collapse_threshold,
        vector=tuple(args.vector),
    )
    acc = fits["scaling"]["accuracy"]
    print(
        f"{fits['n_runs']} runs, {fits['n_fitted']} fitted, {len(fits['collapsed_runs'])} collapsed"
    )
    if acc.get("alpha") is not None:
        ci = acc.get("alpha_ci") or (None, None)
        ci_text = (
            f"alpha 95% CI [{ci[0]:.4g}, {ci[1]:.4g}]"
            if None not in ci
            else "no CI: too few bins to bootstrap"
        )  # 2 bins: the line goes through both
        print(
            f"accuracy = {acc['C']:.4g} * FLOPs^{acc['alpha']:.4g}  (R2 "
            f"{acc['r2']:.3f}, {ci_text}, "
            f"{acc['n_bins']} bins)"
        )
    elif acc.get("error"):
        print(f"accuracy law {acc['error']}")
    pred = fits["predictor"]
    if "error" not in pred:
        print(
            f"predictor: R2 {pred['r2']:.3f}, MAE {pred['mae']:.2f} on held-out runs "
            f"(repeated: R2 {pred['r2_mean']:.3f} +- {pred['r2_std']:.3f})"
        )
    joint = fits.get("joint")
    if joint is not None:
        if "error" in joint:
            print(f"joint law L(N, D): not fitted: {joint['error']}")
        elif not joint["identifiable"]:
            print(
                f"joint law L(N, D) ({joint['family_name']}): not identifiable: "
                + "; ".join(joint["reasons"])
                + " (plan --method frontier plans from the best measured runs instead)"
            )
        else:
            law = joint["law"]
            print(
                f"joint law L(N, D) ({joint['family_name']}, L = {joint['L']}): "
                f"alpha {law['alpha']:.3g}, "
                f"beta {law['beta']:.3g}, held-out R2 {joint['heldout_r2']:.3f}, asymptote "
                f"{joint['asymptote_acc']:.1f}%"
            )
    if "target" in fits:
        print(describe_target(fits["target"]))
    print(f"report: {Path(args.output) / 'report.html'}")
    return 0


def _read_recipe(path: str):
    """The recipe file as a validated Recipe (one line on a mistake), read as `train` reads it."""
    from robustscale.recipe import Recipe

    return Recipe.from_yaml(path)


def run_predict(args: argparse.Namespace) -> int:
    from robustscale.analysis import fit_zoo, forecast_recipe_outcome
    from robustscale.errors import RobustscaleError
    from robustscale.zoo import read_zoo

    recipe = _read_recipe(args.recipe)  # checked before the zoo is fitted
    a = fit_zoo(read_zoo(args.zoo), seed=args.seed)
    if isinstance(a.predictor, str):
        raise RobustscaleError(f"zoo {args.zoo!r}: predictor {a.predictor}")
    out = forecast_recipe_outcome(recipe, a.zoo, a.predictor, a.laws)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for warning in out["warnings"]:
        print(f"warning: {warning}")
    lo, hi = out["autoattack_acc_ci"]
    print(
        f"predicted AutoAttack accuracy: {out['autoattack_acc']:.1f}% (95% "
        f"interval {lo:.1f}-{hi:.1f}%)"
    )
    if out["flops"] is None:
        print(out["flops_source"])
        return 0
    print(
        f"forecast FLOPs: {out['flops']:.3g}"
        + ("" if out["flops_in_zoo_range"] else " (outside the zoo's range)")
    )
    for key, unit in (("kwh", "kWh"), ("usd", "USD"), ("kg_co2", "kg CO2")):
        v = out[key]
        if v["value"] is None:
            print(f"{unit}: unavailable ({v.get('note')})")
        else:
            ci = (
                f" (95% interval {v['ci'][0]:.3g}-{v['ci'][1]:.3g})"
                if v["ci"][0] is not None
                else ""
            )
            print(f"{unit}: {v['value']:.3g}{ci}")
    return 0
