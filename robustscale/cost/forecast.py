"""What a recipe will cost, before training it: FLOPs always; hours, kWh, USD and CO2 given a
throughput and a power draw (stated, or measured here by a short calibration run).

FLOPs come from :func:`measure_step_flops` on a meta-device model (free for any size) and the
recipe's :class:`BatchPlan`, so examples per epoch match what the engine will process (real +
synthetic, last incomplete batch dropped). Training set sizes are constants, so no data files
are needed.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import torch

from robustscale.cost.accounting import bill
from robustscale.cost.flops import StepFlops, measure_step_flops
from robustscale.device import resolve_device
from robustscale.errors import RobustscaleError
from robustscale.recipe import TRAIN_SPLIT_SIZES

if TYPE_CHECKING:
    from robustscale.data.batches import BatchPlan

__all__ = [
    "TRAIN_SPLIT_SIZES",
    "forecast_recipe",
    "calibrate",
    "train_examples",
    "recipe_model",
    "recipe_step_flops",
    "recipe_params",
]


def train_examples(recipe: Any) -> int:
    """Real training examples: the train split minus the validation hold-out when it comes from it,
    times ``train_fraction``."""
    n = TRAIN_SPLIT_SIZES[recipe.dataset]
    if recipe.val_source == "train":
        if recipe.val_size >= n:
            raise RobustscaleError(
                f"val_size={recipe.val_size} leaves no training data; allowed: fewer than {n}"
            )
        n -= recipe.val_size
    return recipe.train_subset_size(n)  # train_fraction of what is left


def forecast_batch_plan(recipe: Any) -> BatchPlan:
    """The engine's :class:`BatchPlan` of a recipe, known before any data is read: the real
    examples from the split sizes (:func:`train_examples`), the extra set only as present or not
    (its size does not change the shape of an epoch)."""
    from robustscale.data.batches import BatchPlan

    return BatchPlan.for_recipe(
        recipe, n_real=train_examples(recipe), n_syn=1 if recipe.synthetic_data else 0
    )


def recipe_model(recipe: Any, device: torch.device | str = "meta") -> torch.nn.Module:
    """The recipe's model for its dataset (on ``meta`` by default: shapes only, no memory)."""
    from robustscale.data import dataset_info
    from robustscale.models import build_model_for

    info = dataset_info(recipe.dataset, recipe.data_dir)
    with torch.device(device):
        return build_model_for(recipe, info)


@functools.lru_cache(maxsize=256)
def _model_flops(
    dataset: str,
    model: str,
    activation: str,
    drop_rate: float,
    loss: str,
    attack_steps: int,
    val_steps: int,
) -> tuple[int, StepFlops]:
    # eps, step size, beta and batch size change no FLOP count; a sweep of hundreds of recipes
    # shares a handful of these keys.
    from robustscale.data import dataset_info
    from robustscale.models import build_model

    info = dataset_info(dataset)
    with torch.device("meta"):
        net = build_model(
            model,
            info.num_classes,
            info.shape[0],
            info.mean,
            info.std,
            activation=activation,
            drop_rate=drop_rate,
            img_size=info.shape[1:],
        )
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    sf = measure_step_flops(
        net,
        loss,
        info.shape,
        info.num_classes,
        eps=8 / 255,
        step_size=2 / 255,
        attack_steps=attack_steps,
        trades_beta=6.0,
        val_steps=val_steps,
    )
    return params, sf


def recipe_step_flops(recipe: Any) -> StepFlops:
    """Per-example :class:`StepFlops` of the recipe's model and loss (cached; used by sweeps)."""
    return _recipe_key_flops(recipe)[1]


def recipe_params(recipe: Any) -> int:
    """Trainable parameters of the recipe's model for its dataset."""
    return _recipe_key_flops(recipe)[0]


def _recipe_key_flops(recipe: Any) -> tuple[int, StepFlops]:
    steps = recipe.attack_steps if recipe.loss != "standard" else 0
    return _model_flops(
        recipe.dataset,
        recipe.model,
        recipe.activation,
        recipe.drop_rate,
        recipe.loss,
        steps,
        recipe.val_attack_steps,
    )


def forecast_recipe(
    recipe: Any,
    *,
    throughput: float | None = None,
    power_watts: float | None = None,
    power_source: str = "given",
) -> dict[str, Any]:
    """FLOPs of ``recipe`` per example, per epoch and in total (measured and paper convention),
    plus validation FLOPs (excluded from training FLOPs; they include PGD-AT's sampled
    clean-accuracy forwards, ``monitor_flops_per_epoch``).

    With ``throughput`` (training examples per second on one device) it adds a ``forecast``
    with device-hours (validation time scaled from training time by FLOPs); with
    ``power_watts`` too (average draw of that device; ``power_source`` says where it came
    from), energy, cost and CO2 with the recipe's PUE, price and carbon intensity.
    """
    from robustscale.losses import clean_monitor_steps

    params, sf = _recipe_key_flops(recipe)
    plan = forecast_batch_plan(recipe)
    per_epoch = plan.examples_per_epoch
    # validation, plus PGD-AT's sampled clean-accuracy forwards (robustscale.losses.CLEAN_ACC_EVERY)
    monitor_epoch = (
        sf.forward * clean_monitor_steps(recipe.loss, plan.steps_per_epoch) * plan.batch_size
    )
    val_epoch = sf.val * recipe.val_size + monitor_epoch
    out: dict[str, Any] = {
        "model": recipe.model,
        "dataset": recipe.dataset,
        "loss": recipe.loss,
        "attack_steps": recipe.attack_steps if recipe.adversarial else 0,
        "params": params,
        "forward_flops": sf.forward,
        "train_flops_per_example": sf.train,
        "train_flops_per_epoch": sf.train * per_epoch,
        "train_flops_total": sf.train * per_epoch * recipe.epochs,
        "paper_convention": {
            "forward_flops": sf.forward,
            "train_flops_per_example": sf.train_paper,
            "train_flops_per_epoch": sf.train_paper * per_epoch,
            "train_flops_total": sf.train_paper * per_epoch * recipe.epochs,
        },
        "val_flops_per_example": sf.val,
        "val_flops_per_epoch": val_epoch,
        "monitor_flops_per_epoch": monitor_epoch,
        "val_flops_total": val_epoch * recipe.epochs,
        "examples_per_epoch": per_epoch,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": recipe.epochs,
    }
    if throughput is not None:
        out["forecast"] = _forecast(out, recipe, throughput, power_watts, power_source)
    return out


def _forecast(
    fl: dict[str, Any], recipe: Any, throughput: float, power_watts: float | None, power_source: str
) -> dict[str, Any]:
    if not throughput > 0:
        raise RobustscaleError(
            f"throughput={throughput!r} is not allowed; give examples per second > 0"
        )
    if power_watts is not None and not power_watts > 0:
        raise RobustscaleError(f"power_watts={power_watts!r} is not allowed; give watts > 0")
    train_s = fl["examples_per_epoch"] * fl["epochs"] / throughput
    # Validation runs at about the same FLOP rate as training: scale its time by its FLOPs.
    val_s = fl["val_flops_total"] / fl["train_flops_per_example"] / throughput
    seconds = train_s + val_s
    joules = power_watts * seconds if power_watts is not None else None
    return {
        "throughput_examples_per_s": throughput,
        "power_watts": power_watts,
        "power_source": power_source if power_watts is not None else None,
        "energy_estimated": power_watts is not None and power_source == "given",
        "device_hours_train": train_s / 3600,
        "device_hours_val": val_s / 3600,
        "device_hours": seconds / 3600,
        **bill(
            joules, pue=recipe.pue, usd_per_kwh=recipe.usd_per_kwh, gco2_per_kwh=recipe.gco2_per_kwh
        ),
        "pue": recipe.pue,
        "usd_per_kwh": recipe.usd_per_kwh,
        "gco2_per_kwh": recipe.gco2_per_kwh,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(
    recipe: Any, *, steps: int = 3, warmup: int = 1, batch_size: int | None = None
) -> dict[str, Any]:
    """Time ``steps`` real training steps (after ``warmup``) of the recipe's model and loss on
    random data of the recipe's shape on the recipe's device, and measure the power drawn meanwhile.

    Returns ``throughput_examples_per_s``, ``power_watts`` (None unless a meter measured it;
    the draw of every metered device together), ``energy_source``, ``device``,
    ``device_names``, ``seconds``, ``batch_size``. Power from a sampling meter over a window of
    a few seconds is rough (NVML power is a 1 s average); prefer more steps on a GPU.
    """
    from robustscale.cost.energy import open_meter
    from robustscale.data import dataset_info
    from robustscale.losses import compute_loss

    if steps < 1 or warmup < 0:
        raise RobustscaleError(
            f"calibration steps={steps}, warmup={warmup}; allowed: steps >= 1, warmup >= 0"
        )
    device = resolve_device(recipe.device)
    info = dataset_info(recipe.dataset, recipe.data_dir)
    bs = batch_size or recipe.batch_size
    model = recipe_model(recipe, device).train()
    fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    g = torch.Generator(device=device).manual_seed(recipe.seed)
    x = torch.rand(bs, *info.shape, device=device, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, info.num_classes, (bs,), device=device, generator=g)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
    amp = (
        torch.autocast(device.type, dtype=dtype)
        if dtype is not None
        else torch.autocast(device.type, enabled=False)
    )

    def step() -> None:
        with amp:
            out = compute_loss(
                recipe.loss,
                model,
                x,
                y,
                eps=recipe.eps,
                step_size=recipe.step_size,
                steps=recipe.attack_steps,
                beta=recipe.trades_beta,
                generator=g,
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with open_meter(device, interval=recipe.power_sample_interval) as meter:
        for _ in range(warmup):
            step()
        _sync(device)
        j0, t0 = meter.read_joules(), time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        j1, t1 = meter.read_joules(), time.perf_counter()
    seconds = t1 - t0
    power = (j1 - j0) / seconds if j0 is not None and j1 is not None and seconds > 0 else None
    return {
        "throughput_examples_per_s": steps * bs / seconds,
        "power_watts": power,
        "energy_source": meter.source,
        "device": str(device),
        "device_names": meter.device_names,
        "seconds": seconds,
        "steps": steps,
        "batch_size": bs,
    }
