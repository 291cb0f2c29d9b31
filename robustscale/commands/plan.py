"""`robustscale plan`: the compute-optimal model size and data for a budget, or for a target."""

from __future__ import annotations

import argparse
from pathlib import Path

from robustscale.commands import values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="compute-optimal model size, data and bill for a budget or a target accuracy",
        description="Fit L(N, D) = E + A/N^alpha + B/D^beta to the zoo's robust error "
        "and recommend the model "
        "(the candidate nearest the optimal size: the paper's WideResNets, or --models), "
        "the epochs and synthetic "
        "data that a budget should buy, with the predicted AutoAttack accuracy and the bill of the "
        "recipe it writes; or, with --target-acc, the cheapest plan reaching it. Where no recipe "
        "family's joint law is identifiable it refuses with the reason; --method frontier then "
        "plans from the best measured runs instead.",
    )
    p.add_argument("--zoo", required=True, help="zoo table, .csv or .parquet")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--budget",
        type=values.number("--budget", low=0, low_open=True),
        help="compute budget, in --unit",
    )
    goal.add_argument(
        "--target-acc",
        type=values.number("--target-acc", low=0, high=100, low_open=True),
        metavar="X",
        help="cheapest plan predicted to reach X%% AutoAttack",
    )
    p.add_argument(
        "--unit",
        default="flops",
        choices=["flops", "usd", "kwh", "kgco2"],
        help="unit of --budget (default flops); converted with the zoo's cost laws",
    )
    p.add_argument("--loss", default=None, help="fit on runs with this loss only (e.g. trades)")
    p.add_argument(
        "--attack-steps", type=int, default=None, help="fit on runs with these attack steps only"
    )
    p.add_argument(
        "--synthetic-data",
        default=None,
        metavar="PATH.npz",
        help="synthetic data to put in the recipe when the plan recommends it",
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="NAMES",
        help="candidate models, comma-separated timm names or patterns (e.g. 'wrn28_10,resnet18,"
        "resnet*'; at most 50 models per pattern); default: the WideResNets wrn10_1 ... wrn70_16",
    )
    p.add_argument(
        "--method",
        default="joint",
        choices=["joint", "frontier"],
        help="what the plan comes from: the joint law (default; refused where no recipe "
        "family's law is identifiable) or the zoo's measured compute frontier (the best run's "
        "configuration near the compute, its data scaled to it; accuracy from the envelope law)",
    )
    p.add_argument("--seed", type=values.seed(), default=0)
    p.add_argument(
        "-o", "--output", default=None, metavar="RECIPE.yaml", help="write the recipe here"
    )
    p.set_defaults(func=run)


def _fmt_bill(bill: dict) -> str:
    parts = [f"{bill['flops']:.3g} FLOPs"]
    for key, unit in (("kwh", "kWh"), ("usd", "USD"), ("kg_co2", "kg CO2")):
        parts.append(
            f"{bill[key]:.3g} {unit}" if bill.get(key) is not None else f"{unit} unavailable"
        )
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from robustscale.analysis.joint.planner import plan, recipe_yaml
    from robustscale.files import atomic_write_text, check_output_file
    from robustscale.zoo import read_zoo

    if args.output:
        check_output_file(args.output, "recipe output")  # before the fit

    out = plan(
        read_zoo(args.zoo),
        budget=args.budget,
        unit=args.unit,
        target_acc=args.target_acc,
        loss=args.loss,
        attack_steps=args.attack_steps,
        seed=args.seed,
        synthetic_data=args.synthetic_data,
        models=args.models,
        method=args.method,
    )
    law, opt = out["law"], out["optimal"]
    frontier = out["method"] == "frontier"
    if frontier:
        env = law["envelope"]
        print(
            f"from: {out['family_name']} (frontier run {out['frontier_run']}, "
            f"{out['frontier_acc']:.1f}% AutoAttack at {out['frontier_flops']:.3g} FLOPs)"
        )
        print(
            f"law: envelope, AutoAttack accuracy = {env['C']:.3g} * FLOPs^{env['alpha']:.3g} "
            f"(alpha 95% interval {env['alpha_ci'][0]:.3g}-{env['alpha_ci'][1]:.3g}; "
            f"R2 {env['r2']:.3f})"
        )
    else:
        name = "pgd40_loss" if out["L"] == "pgd40_loss" else "robust error"
        print(
            f"family: {out['family_name']} ({law['n_runs']} runs; {len(out['families'])} "
            f"families fitted, {len(out['families_too_small'])} too small)"
        )
        print(
            f"law: {name} = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3g} + "
            f"{law['B']:.3g}/D^{law['beta']:.3g}"
            f"  (held-out R2 {law['r2_heldout']:.3f}; asymptote "
            f"{out['asymptote_acc']:.1f}% robust accuracy)"
        )
    for note in out["notes"]:
        print(f"note: {note}")
    if out["mode"] == "target":
        from robustscale.analysis.target import describe_target

        print(describe_target(out["target"]))
    zoo_k = f"; zoo median {out['k_zoo']:.3g}" if out.get("k_zoo") is not None else ""
    print(
        f"k = {out['k_flops_per_param_example']:.3g} FLOPs per parameter per example "
        f"({out['k_source']}{zoo_k})"
    )
    if not frontier:
        print(
            f"optimum: N* = {opt['N']:.3g} parameters, D* = {opt['D']:.3g} examples "
            f"(predicted {opt['predicted_acc']:.1f}%)"
        )
    ci = out["predicted_acc_ci"]
    band = f" (95% interval {ci[0]:.1f}-{ci[1]:.1f}%)" if ci else ""
    print(
        f"plan: {out['model']} ({out['params'] / 1e6:.3g}M parameters), {out['epochs']} epochs of "
        f"{out['examples_per_epoch']} examples = {out['examples']:.3g} examples; "
        "predicted AutoAttack accuracy "
        f"{out['predicted_acc']:.1f}%{band}"
        + (" from the envelope law (the best run's at this compute)" if frontier else "")
    )
    pred = out.get("predictor")
    if pred and "error" in pred:
        print(f"predictor: {pred['error']}")
    elif pred:
        print(
            f"predictor (robustscale predict on this recipe; held-out R2 {pred['r2_mean']:.2f} "
            f"+/- {pred['r2_std']:.2f}): {pred['acc']:.1f}% "
            f"(95% interval {pred['ci'][0]:.1f}-{pred['ci'][1]:.1f}%)"
        )
    syn = out["synthetic"]
    if syn["in_recipe"]:
        print(
            f"synthetic data: {syn['fraction']:.0%} of each batch ({syn['examples']:.3g} "
            "synthetic examples seen, "
            f"from {syn['unique_images'] or 'unknown'} unique images in the zoo's runs)"
        )
    elif syn["recommended"]:
        print(f"synthetic data: {syn['fraction']:.0%} of each batch recommended, not in the recipe")
    else:
        print("synthetic data: none (the best runs at this compute used none)")
    print(f"bill of the recipe: {_fmt_bill(out['bill'])}")
    for warning in out["warnings"]:
        print(f"warning: {warning}")
    if args.output:
        atomic_write_text(Path(args.output), recipe_yaml(out["recipe"]))
        print(f"recipe: {args.output}")
    return 0
