"""Assembling a run from its recipe: device, data, model, precision, optimizer, schedule, EMA.

Functions take the few recipe values they need; the engine passes them in.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustscale.data import (
    DatasetInfo,
    check_synthetic_exists,
    dataset_info,
    load_synthetic,
    read_split,
    split_holdout,
)
from robustscale.data.batches import BatchPlan, BatchStream
from robustscale.device import resolve_device
from robustscale.errors import RobustscaleError
from robustscale.recipe import Recipe

log = logging.getLogger(__name__)

# The validation split is held out with a fixed seed, so that runs of different seeds select
# their checkpoints on the same examples and stay comparable.
HOLDOUT_SEED = 0


def training_device(name: str) -> torch.device:
    """The recipe's device (robustscale.device.resolve_device), with cuDNN autotuning and TF32
    matmuls switched on for CUDA training (process-wide flags: only the engine calls this).

    Under ``torch.use_deterministic_algorithms(True)`` autotuning stays off: it may pick
    another (deterministic) convolution algorithm in a resumed process than in the first one."""
    device = resolve_device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunData:
    info: DatasetInfo
    plan: BatchPlan
    stream: BatchStream
    val: tuple[torch.Tensor, torch.Tensor] | None
    synthetic_size: int


def prepare_data(
    recipe: Recipe, device: torch.device, rank: int = 0, world_size: int = 1
) -> RunData:
    info = dataset_info(recipe.dataset, recipe.data_dir)
    if recipe.dataset == "arrays":  # streamed from disk like extra data, never loaded whole
        train_set, val = _arrays_train(recipe, info)
        n_real = len(train_set)
    else:
        x, y = read_split(recipe.dataset, "train", recipe.data_dir)
        check_data_fit(recipe, len(x))
        val = None
        if recipe.val_size:
            if recipe.val_source == "train":
                (x, y), val = split_holdout(x, y, recipe.val_size, HOLDOUT_SEED)
            else:
                val = _test_head(recipe)
        if recipe.train_fraction < 1:
            x, y = train_subset(x, y, recipe.train_subset_size(len(x)))
        train_set, n_real = (x, y), len(x)
    if recipe.synthetic_data:
        check_synthetic_exists(recipe.synthetic_data)
    syn = load_synthetic(recipe.synthetic_data, info) if recipe.synthetic_data else None
    if syn is not None and len(syn) == 0:
        raise RobustscaleError(
            f"synthetic_data={recipe.synthetic_data!r} holds no images; expected at least one "
            f"with synthetic_fraction={recipe.synthetic_fraction}"
        )
    plan = BatchPlan.for_recipe(
        recipe, n_real=n_real, n_syn=len(syn) if syn else 0, rank=rank, world_size=world_size
    )
    stream = BatchStream(plan, train_set, syn, recipe.augment and info.crop_flip, device)
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    return RunData(info, plan, stream, val, len(syn) if syn else 0)


def _test_head(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    tx, ty = read_split(recipe.dataset, "test", recipe.data_dir)
    if recipe.val_size > len(tx):
        raise RobustscaleError(f"val_size={recipe.val_size} exceeds the {len(tx)} test examples")
    return tx[: recipe.val_size], ty[: recipe.val_size]


def _arrays_train(recipe: Recipe, info: DatasetInfo):
    """An ``arrays`` training set as a source to stream, and its validation examples (in memory)."""
    from robustscale.data.arrays import SubsetSource
    from robustscale.data.arraysets import open_split

    source = open_split(Path(recipe.data_dir), "train", info)
    if not recipe.val_size:
        return source, None
    if recipe.val_source == "test":
        return source, _test_head(recipe)
    # the same seeded holdout as split_holdout, on indices: the held-out images alone are read
    idx = torch.arange(len(source)).view(-1, 1, 1, 1)
    (rest, _), (held, _) = split_holdout(
        idx, torch.zeros(len(source)), recipe.val_size, HOLDOUT_SEED
    )
    held = held.flatten().numpy()
    vx = torch.from_numpy(source.gather(held).transpose(0, 3, 1, 2).copy())
    return SubsetSource(source, rest.flatten().numpy()), (vx, torch.from_numpy(source.labels[held]))


def check_data_fit(recipe: Recipe, n_train: int) -> None:
    """Every way ``val_size`` and ``batch_size`` do not fit ``n_train`` training examples, in one
    line with values that would (a shipped CIFAR recipe on a small CIFAR-format set)."""
    problems, fits = [], []
    val = recipe.val_size if recipe.val_source == "train" else 0
    if val >= n_train:
        val = max(1, n_train // 10) if n_train > 1 else 0
        problems.append(
            f"val_size={recipe.val_size} leaves none of the {n_train} training examples"
        )
        fits.append(f"val_size={val}")
    left = recipe.train_subset_size(n_train - val)
    frac = recipe.synthetic_fraction if recipe.synthetic_data else 0.0

    def real(
        batch: int,
    ) -> int:  # the real (not synthetic) examples of a batch, as BatchPlan counts them
        return batch - int(round(batch * frac))

    if real(recipe.batch_size) > left:
        what = f"batch_size={recipe.batch_size}" + (
            f" ({real(recipe.batch_size)} real examples per batch)" if frac else ""
        )
        problems.append(
            f"{what} is larger than the {left} training examples left"
            + (f" after val_size={val}" if val else "")
            + (
                f" and train_fraction={recipe.train_fraction:g}"
                if recipe.train_fraction < 1
                else ""
            )
        )
        fitting = 1 << max(0, recipe.batch_size.bit_length())
        while fitting > 1 and real(fitting) > left:  # the largest power of two that fits
            fitting //= 2
        fits.append(f"batch_size={fitting}")
    if problems:
        where = "" if recipe.dataset == "digits" else f" in {recipe.data_dir!r}"
        raise RobustscaleError(
            f"{recipe.dataset}{where} is too small for this recipe: "
            f"{'; '.join(problems)}; values that fit: {' '.join('--set ' + f for f in fits)}"
        )


def train_subset(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of a fixed random order of the training examples (``train_fraction``).

    The order does not depend on the run's seed, so smaller fractions are subsets of larger
    ones and runs of different seeds see the same examples: only the amount of unique data varies.
    """
    g = torch.Generator().manual_seed(10_007 * HOLDOUT_SEED + 29)
    keep = torch.randperm(len(x), generator=g)[:k].sort().values
    return x[keep], y[keep]


class Forward(nn.Module):
    """How the engine calls a model: channels_last inputs and autocast around the model only.

    The attack's image, perturbation and projection stay fp32 outside this module; logits
    come back as fp32.
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str,
        channels_last: bool,
        compile: bool,
        device: torch.device,
        ddp: nn.Module | None = None,
    ):
        super().__init__()
        self.model = model
        self.fn = torch.compile(model) if compile else model
        # Under DDP, forwards whose parameter gradients are wanted (grad on, input not requiring
        # grad: the update) go through the wrapper, whose backward averages them over processes.
        # The attack's forwards (input requires grad; only input gradients are taken) and no-grad
        # forwards use the bare model: they must not arm DDP's gradient reduction.
        self.ddp = ddp
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.device_type = device.type
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        ctx = (
            torch.autocast(self.device_type, dtype=self.dtype)
            if self.dtype
            else contextlib.nullcontext()
        )
        fn = (
            self.ddp
            if self.ddp is not None and torch.is_grad_enabled() and not x.requires_grad
            else self.fn
        )
        with ctx:
            return fn(x).float()


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Turn on activation checkpointing through timm's switch (``set_grad_checkpointing``) on the
    network inside :class:`robustscale.models.Normalized`; a model without one is refused."""
    net = getattr(model, "net", model)
    switch = getattr(net, "set_grad_checkpointing", None)
    if switch is None:
        raise RobustscaleError(
            f"grad_checkpointing=true: model={name!r} has no set_grad_checkpointing; "
            "use a WideResNet or a timm model that supports it"
        )
    try:
        switch(True)
    except (NotImplementedError, AssertionError) as exc:
        raise RobustscaleError(
            f"grad_checkpointing=true: model={name!r} does not support it ({exc})"
        ) from None


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise RobustscaleError("precision='fp16' needs a CUDA GPU; allowed on CPU: fp32, bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RobustscaleError("precision='bf16' is not supported by this GPU; allowed: fp32, fp16")


def make_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # Weight decay on every parameter (BN and biases included), as the adversarial-training
    # reference code does; timm's default would exempt them.
    return create_optimizer_v2(
        model,
        opt="sgd" if nesterov else "momentum",
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        filter_bias_and_bn=False,
        foreach=device.type == "cuda" or None,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    epochs: int,
    warmup_epochs: int,
    lr: float,
    steps_per_epoch: int,
):
    """timm's cosine or multi-step schedule, updated every optimizer step. Step decay divides the
    learning rate by 10 at 50% and 75% of training (Madry et al.'s CIFAR milestones)."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine" if schedule == "cosine" else "multistep",
        num_epochs=epochs,
        decay_milestones=[max(1, epochs // 2), max(1, (3 * epochs) // 4)],
        decay_rate=0.1,
        warmup_epochs=warmup_epochs,
        warmup_lr=lr * 0.01 if warmup_epochs else lr,
        min_lr=0.0,
        warmup_prefix=True,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


def make_ema(model: nn.Module, decay: float | None):
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)
