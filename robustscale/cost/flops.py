"""FLOPs of one training step and one validation step, counted by PyTorch itself.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add for matmuls and
convolutions (elementwise ops, BatchNorm and the loss are not counted) and, in backward, only
the gradients autograd actually computes: an attack step's backward (input gradient only)
costs about 1F, the update's backward (input and weight gradients) about 2F. That is the
*measured* convention. The paper measured forward FLOPs with DeepSpeed's profiler and took
every backward as 2x its forward; :attr:`StepFlops.train_paper` reproduces that convention
from the same measurement so the two can be compared.

Counting runs on a copy of the model on the ``meta`` device: shapes only, no memory, no
arithmetic, so it is free even for WRN-70-16 and never touches the real model's weights,
buffers, gradients, mode or the global RNG.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

__all__ = ["StepFlops", "measure_step_flops", "forward_flops", "meta_clone", "PassCounter"]


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per example of one step (all floats are FLOPs, 2 per multiply-add).

    ``forward``: one forward pass. ``train``: one training step as measured (attack forwards
    and input-gradient backwards, the update's forward and backward, TRADES' extra forward).
    ``train_paper``: the same passes with each backward counted as 2x its forward (a forward
    with no backward counts 1x). ``val``: one
    validation example in eval mode: clean forward + PGD-``val_steps`` + final forward.
    """

    forward: float
    train: float
    train_paper: float
    val: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class PassCounter:
    """Splits a FlopCounterMode total into forward passes and the rest (backward).

    A forward hook on the top-level module reads the counter's running total before and after
    every call; whether the output requires grad says whether that pass will get a backward
    (every such pass in our losses does). ``paper`` is then sum(F_i * (3 if grad else 1)).
    """

    def __init__(self, model: nn.Module, counter: FlopCounterMode):
        self.counter = counter
        self.forward_grad = 0
        self.forward_nograd = 0
        self._start: list[int] = []
        self._handles = [
            model.register_forward_pre_hook(self._pre),
            model.register_forward_hook(self._post),
        ]

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self._start.append(self.counter.get_total_flops())

    def _post(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        flops = self.counter.get_total_flops() - self._start.pop()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            self.forward_grad += flops
        else:
            self.forward_nograd += flops

    @property
    def forward(self) -> int:
        return self.forward_grad + self.forward_nograd

    @property
    def paper(self) -> int:
        return self.forward_nograd + 3 * self.forward_grad

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile (``_orig_mod``) and DDP/DataParallel (``module``)."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def meta_clone(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers live on ``meta``.

    The deepcopy memo is pre-filled with meta stand-ins for every parameter and buffer, so no
    weight is copied (a CPU copy of WRN-70-16 would be 1 GB) and gradients are left behind.
    """
    model = _unwrap(model)
    memo: dict[int, object] = {}
    for p in model.parameters(recurse=True):
        memo[id(p)] = nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in model.buffers(recurse=True):
        memo[id(b)] = torch.empty_like(b, device="meta")
    clone = copy.deepcopy(model, memo)
    clone.zero_grad(set_to_none=True)
    return clone


def _count(model: nn.Module, fn: Callable[[], None]) -> tuple[int, PassCounter]:
    with FlopCounterMode(display=False) as counter:
        passes = PassCounter(model, counter)
        try:
            fn()
        finally:
            passes.remove()
    return counter.get_total_flops(), passes


def _inputs(batch: int, input_shape: tuple[int, int, int], num_classes: int, device: torch.device):
    x = torch.rand(batch, *input_shape, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    return x, y


def _measure(
    model: nn.Module,
    loss: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    eps: float,
    step_size: float,
    attack_steps: int,
    trades_beta: float,
    val_steps: int,
) -> StepFlops:
    from robustscale.attacks.pgd import pgd
    from robustscale.losses import compute_loss

    device = next(iter(model.parameters()), torch.empty(0)).device
    x, y = _inputs(batch, input_shape, num_classes, device)

    model.eval()

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    f_total, _ = _count(model, fwd)

    model.train()

    def train_step() -> None:
        out = compute_loss(
            loss, model, x, y, eps=eps, step_size=step_size, steps=attack_steps, beta=trades_beta
        )
        out.loss.backward()

    t_total, t_passes = _count(model, train_step)
    model.zero_grad(set_to_none=True)

    model.eval()

    def val_step() -> None:
        with torch.no_grad():
            model(x)
        x_adv = pgd(model, x, y, eps, val_steps, step_size)
        with torch.no_grad():
            model(x_adv)

    v_total, _ = _count(model, val_step)
    return StepFlops(
        forward=f_total / batch,
        train=t_total / batch,
        train_paper=t_passes.paper / batch,
        val=v_total / batch,
    )


def measure_step_flops(
    model: nn.Module,
    loss: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    eps: float,
    step_size: float,
    attack_steps: int,
    trades_beta: float,
    val_steps: int = 40,
    batch_size: int = 2,
    exact: bool = False,
) -> StepFlops:
    """FLOPs per example of one training step of ``loss`` and one validation step.

    Counted on a meta copy of ``model`` (``model`` itself is not modified: weights, buffers,
    gradients, train/eval mode and the global RNG stay as they were). Per-example counts do
    not depend on ``batch_size``; it only sets the shape of the counted batch. Attack and
    validation steps are counted at 1 and 2 iterations and extended linearly (exact, see
    :func:`_measure_steps`) unless ``exact``. Should an operator have no meta kernel, the
    count falls back to a CPU copy with a batch of 2.
    """
    if loss not in ("standard", "pgd", "trades"):
        raise ValueError(f"unknown loss {loss!r}")

    def count(clone: nn.Module, batch: int) -> StepFlops:
        return _measure_steps(
            clone,
            loss,
            tuple(input_shape),
            num_classes,
            batch,
            eps,
            step_size,
            attack_steps,
            trades_beta,
            val_steps,
            exact,
        )

    with torch.random.fork_rng(devices=[]):
        try:
            return count(meta_clone(model), batch_size)
        except NotImplementedError as exc:  # an op without a meta kernel
            log.warning("FLOP counting on meta failed (%s); counting on a CPU copy instead", exc)
            clone = copy.deepcopy(_unwrap(model)).to("cpu")
            clone.zero_grad(set_to_none=True)
            return count(clone, 2)


def _measure_steps(
    model: nn.Module,
    loss: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    eps: float,
    step_size: float,
    attack_steps: int,
    trades_beta: float,
    val_steps: int,
    exact: bool,
) -> StepFlops:
    """Every PGD iteration runs the same passes on the same shapes, so the count at K steps is
    c(1) + (K - 1) * (c(2) - c(1)) exactly; counting 1 and 2 steps makes a 40-step validation
    of WRN-70-16 cost two iterations instead of forty (``exact=True`` counts all K)."""

    def at(k_train: int, k_val: int) -> StepFlops:
        return _measure(
            model,
            loss,
            input_shape,
            num_classes,
            batch,
            eps,
            step_size,
            k_train,
            trades_beta,
            k_val,
        )

    k_train = attack_steps if loss != "standard" else 1  # standard training runs no attack
    if exact or max(k_train, val_steps) <= 2:
        return at(attack_steps, val_steps)
    one, two = at(1, 1), at(2, 2)

    def ext(a: float, b: float, k: int) -> float:
        return a + (k - 1) * (b - a)

    return StepFlops(
        forward=one.forward,
        train=ext(one.train, two.train, k_train),
        train_paper=ext(one.train_paper, two.train_paper, k_train),
        val=ext(one.val, two.val, val_steps),
    )


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """FLOPs of one forward pass of one example (eval mode, meta copy; ``model`` is untouched)."""
    clone = meta_clone(model).eval()
    x = torch.zeros(2, *input_shape, device="meta")

    def fwd() -> None:
        with torch.no_grad():
            clone(x)

    total, _ = _count(clone, fwd)
    return total / 2
