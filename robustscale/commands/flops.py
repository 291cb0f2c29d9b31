"""`robustscale flops MODEL|RECIPE.yaml`: parameters and FLOPs, and what a recipe will cost.

An argument that names an existing .yaml/.yml file is a recipe; anything else is a model name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "flops",
        help="parameters and FLOPs of a model, or FLOPs and cost forecast of a recipe",
        description="With a MODEL name: parameters and forward FLOPs of one "
        "example at the dataset's "
        "input size. With a RECIPE.yaml: FLOPs per example, per epoch and in total (measured with "
        "torch.utils.flop_counter, and the paper's convention, backward = 2 x forward), before "
        "training; with --throughput and --power-watts, or --calibrate, also device-hours, kWh, "
        "USD and CO2. FLOPs count 2 per multiply-add. See docs/cost.md.",
    )
    p.add_argument(
        "target", metavar="MODEL|RECIPE.yaml", help="a model name (e.g. wrn28_10) or a recipe file"
    )
    p.add_argument(
        "--dataset", default="cifar10", help="input size and classes for a MODEL (default cifar10)"
    )
    p.add_argument("--activation", default="relu", help="activation for a MODEL (default relu)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--throughput",
        type=float,
        metavar="EXAMPLES_PER_S",
        help="training examples per second on one device, for the cost forecast",
    )
    src.add_argument(
        "--calibrate",
        action="store_true",
        help="measure throughput (and power, where a meter can) with a few real training "
        "steps of the recipe on random data, on the recipe's device",
    )
    p.add_argument(
        "--power-watts",
        type=float,
        metavar="W",
        help="average device power draw for the forecast (an estimate; a measured power "
        "from --calibrate takes precedence; default: the recipe's power_watts, which "
        "robustscale.toml's [cost] table can set)",
    )
    p.add_argument(
        "--calibrate-steps", type=int, default=3, metavar="N", help="timed steps (default 3)"
    )
    p.add_argument(
        "--calibrate-batch",
        type=int,
        metavar="B",
        help="batch size for calibration (default: the recipe's)",
    )
    p.set_defaults(func=run)


def _is_recipe(target: str) -> bool:
    return Path(target).suffix.lower() in (".yaml", ".yml") and Path(target).is_file()


def run(args: argparse.Namespace) -> int:
    from robustscale.errors import RobustscaleError

    if _is_recipe(args.target):
        return _recipe(args)
    if Path(args.target).suffix.lower() in (".yaml", ".yml"):
        raise RobustscaleError(
            f"recipe file {args.target!r} does not exist; give an existing .yaml or a model name"
        )
    for flag, value in (
        ("--set", args.overrides),
        ("--throughput", args.throughput),
        ("--calibrate", args.calibrate),
        ("--power-watts", args.power_watts),
    ):
        if value:
            raise RobustscaleError(
                f"{flag} needs a RECIPE.yaml, not the model name {args.target!r}"
            )
    return _model(args)


def _model(args: argparse.Namespace) -> int:
    import torch

    from robustscale.cost.flops import forward_flops
    from robustscale.data import dataset_info
    from robustscale.models import build_model

    info = dataset_info(args.dataset)
    with torch.device("meta"):
        model = build_model(
            args.target,
            info.num_classes,
            info.shape[0],
            info.mean,
            info.std,
            activation=args.activation,
        )
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {
        "model": args.target,
        "dataset": args.dataset,
        "input_shape": list(info.shape),
        "params": params,
        "forward_flops": forward_flops(model, info.shape),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        c, h, w = info.shape
        print(f"{args.target} on {args.dataset} ({c}x{h}x{w}, {info.num_classes} classes)")
        print(f"  params         {params / 1e6:.2f} M")
        print(
            f"  forward        {_fl(out['forward_flops'])} per example (2 FLOPs per multiply-add)"
        )
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from robustscale.cost.forecast import calibrate, forecast_recipe
    from robustscale.recipe import Recipe

    recipe = Recipe.from_yaml(args.target, args.overrides, site_defaults=True)
    throughput, power, source, cal = args.throughput, args.power_watts, "given", None
    if power is None and recipe.power_watts is not None:
        power = recipe.power_watts
    if args.calibrate:
        cal = calibrate(recipe, steps=args.calibrate_steps, batch_size=args.calibrate_batch)
        throughput = cal["throughput_examples_per_s"]
        if cal["power_watts"] is not None:
            power, source = cal["power_watts"], f"measured ({cal['energy_source']})"
    out = forecast_recipe(recipe, throughput=throughput, power_watts=power, power_source=source)
    if cal is not None:
        out["calibration"] = cal
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(_table(out, recipe))
    return 0


def _fl(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.4g} {unit}FLOPs"
    return f"{x:.4g} FLOPs"


def _table(o: dict[str, Any], recipe: Any) -> str:
    f, pc = o["forward_flops"], o["paper_convention"]
    steps = f"-{o['attack_steps']}" if o["attack_steps"] else ""
    syn = f", {recipe.synthetic_fraction:.0%} synthetic" if recipe.synthetic_data else ""
    lines = [
        f"{o['dataset']} {o['model']} {o['loss']}{steps}: {o['epochs']} epochs x "
        f"{o['examples_per_epoch']:,} "
        f"examples ({o['steps_per_epoch']:,} batches of {recipe.batch_size}{syn})",
        f"  params                      {o['params'] / 1e6:.2f} M",
        f"  forward                     {_fl(f)} per example",
        f"  training step, measured     {_fl(o['train_flops_per_example'])} per example "
        f"({o['train_flops_per_example'] / f:.2f} forwards)",
        f"  training step, paper conv.  {_fl(pc['train_flops_per_example'])} per example "
        f"({pc['train_flops_per_example'] / f:.2f} forwards; backward = 2 x forward)",
        f"  per epoch                   {_fl(o['train_flops_per_epoch'])} (paper "
        f"{_fl(pc['train_flops_per_epoch'])})",
        f"  total training              {_fl(o['train_flops_total'])} (paper "
        f"{_fl(pc['train_flops_total'])})"
        f" = {o['train_flops_total']:.3e}",
        f"  validation (not training)   {_fl(o['val_flops_total'])} total: {recipe.val_size} "
        f"examples x PGD-{recipe.val_attack_steps} x {o['epochs']} epochs"
        + (
            f", + clean-accuracy samples {_fl(o['monitor_flops_per_epoch'])} per epoch"
            if o.get("monitor_flops_per_epoch")
            else ""
        ),
    ]
    fc = o.get("forecast")
    if fc is None:
        lines.append(
            "  cost forecast: give --throughput EXAMPLES_PER_S [--power-watts W], or --calibrate"
        )
        return "\n".join(lines)
    cal = o.get("calibration")
    if cal:
        lines.append(
            f"  calibration                 {cal['steps']} steps of "
            f"{cal['batch_size']} on {cal['device']} "
            f"({', '.join(cal['device_names'])}) in {cal['seconds']:.2f} s; energy "
            f"source {cal['energy_source']}"
        )
    lines.append(
        "  throughput                  "
        f"{fc['throughput_examples_per_s']:,.1f} examples/s per device"
    )
    lines.append(
        f"  device-hours                {fc['device_hours']:.4g} (train "
        f"{fc['device_hours_train']:.4g}, "
        f"validation {fc['device_hours_val']:.4g}, scaled by FLOPs)"
    )
    if fc["power_watts"] is None:
        lines.append(
            "  energy, cost, CO2           unknown: no power measured; give "
            "--power-watts W for an estimate"
        )
    else:
        label = "estimated" if fc["energy_estimated"] else fc["power_source"]
        lines += [
            f"  power                       {fc['power_watts']:,.1f} W ({label})",
            f"  energy                      {fc['energy_kwh']:.4g} kWh (PUE {fc['pue']})",
            f"  electricity                 ${fc['electricity_cost_usd']:.4g} (at "
            f"${fc['usd_per_kwh']}/kWh)",
            f"  CO2                         {fc['co2_kg']:.4g} kg (at {fc['gco2_per_kwh']} g/kWh)",
        ]
    return "\n".join(lines)
