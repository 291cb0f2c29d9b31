"""The adversarial training step as the field's reference code writes it: the baseline that
``benchmarks/train_step.py`` times robustscale's step against.

What is copied from the peer repositories is what a step *costs*:

- PGD-AT (Rice et al.'s ``train_cifar.py``, advertorch's ``perturb_iterative`` used by the
  Gowal et al. reproduction): the attack calls ``loss.backward()``, so every attack step also
  computes (and accumulates, then throws away) the weight gradients: 3F per step, not 2F.
  After the update, a separate clean forward *with* autograd (train mode) gives the clean
  accuracy, and every metric is read with ``.item()`` on every batch.
- TRADES (Zhang et al.'s ``trades.py``): the attack takes ``autograd.grad`` w.r.t. the input
  but recomputes ``softmax(model(x_natural))`` with autograd on every step (2 forwards per
  step), and the loss runs ``model(x_natural)`` twice (once for the CE logits, once for the KL
  target) besides ``model(x_adv)``.
- Both switch ``model.eval()`` for the attack and back to ``model.train()`` (``attack_bn="eval"``),
  run in fp32, NCHW, eagerly, with the optimizer's default (per-tensor) implementation.

What is *not* copied is arithmetic that would make the two steps compute different numbers:
the random start is drawn from the given generator with robustscale's formulas, and the
projection is robustscale's (``clamp(delta, -eps, eps)`` then ``clamp(x + delta, 0, 1) - x``).
(The TRADES reference evaluates its first step at an unclamped Gaussian start; the cost is
the same.) With ``attack_bn="frozen"`` the attack runs in train mode and the BatchNorm
running statistics are restored afterwards, which is what robustscale computes (batch
statistics, running statistics untouched); then both steps give the same loss and gradients
in fp32 (``tests/test_performance.py``). ``attack_bn="eval"`` is the reference behaviour and
what is timed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BNMode = Literal["eval", "frozen"]


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [
        b
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]


class _AttackMode:
    """``model.eval()`` for the attack (the references), or train mode with the BN buffers
    saved and restored (what robustscale computes, for like-with-like tests)."""

    def __init__(self, model: nn.Module, bn: BNMode):
        self.model, self.bn = model, bn

    def __enter__(self) -> None:
        if self.bn == "eval":
            self.model.eval()
        else:
            self.saved = [b.clone() for b in _bn_buffers(self.model)]

    def __exit__(self, *exc: object) -> None:
        if self.bn == "eval":
            self.model.train()
        else:
            for b, s in zip(_bn_buffers(self.model), self.saved):
                b.copy_(s)


def _start(
    x: torch.Tensor, eps: float, kind: str, generator: torch.Generator | None
) -> torch.Tensor:
    if kind == "normal":
        d = 0.001 * torch.randn(x.shape, device=x.device, generator=generator)
    else:
        d = (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * eps
    return _project(d, x, eps)


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + delta.clamp(-eps, eps)).clamp(0.0, 1.0) - x


def attack_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rice et al. / advertorch: ``loss.backward()`` per step (weight gradients computed too)."""
    delta = _start(x, eps, "uniform", generator)
    delta.requires_grad = True
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        delta.data = _project(delta.data + step_size * grad.sign(), x, eps)
        delta.grad.zero_()
    return delta.detach()


def attack_trades(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zhang et al.: KL attack from a tiny Gaussian start; the clean forward is redone each step."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    delta = _start(x, eps, "normal", generator)
    for _ in range(steps):
        # the reference differentiates w.r.t. x_adv = x + delta: the same gradient
        delta.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(
                F.log_softmax(model(x + delta), dim=1), F.softmax(model(x), dim=1)
            )
        grad = torch.autograd.grad(loss_kl, [delta])[0]
        delta = _project(delta.detach() + step_size * torch.sign(grad.detach()), x, eps)
    return (x + delta).detach()


def baseline_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    eps: float,
    step_size: float,
    steps: int,
    beta: float = 6.0,
    generator: torch.Generator | None = None,
    attack_bn: BNMode = "eval",
    sync: bool = True,
) -> dict[str, float]:
    """One training step of ``loss`` ("pgd" or "trades") the reference way; returns its metrics
    read on the host (``sync=False`` skips the reads, for FLOP counting on ``meta``). Weight
    gradients are left in ``.grad`` after the step (the references zero them before backward)."""
    model.train()
    batch = len(x)
    if loss == "pgd":
        with _AttackMode(model, attack_bn):
            delta = attack_pgd(model, x, y, eps, step_size, steps, generator)
        robust_output = model(x + delta)  # the projection already keeps x + delta in [0, 1]
        robust_loss = F.cross_entropy(robust_output, y)
        opt.zero_grad()
        robust_loss.backward()
        opt.step()
        output = model(x)  # the clean accuracy, with autograd, after the update
        clean_loss = F.cross_entropy(output, y)
        total = robust_loss
    elif loss == "trades":
        with _AttackMode(model, attack_bn):
            x_adv = attack_trades(model, x, eps, step_size, steps, generator)
        opt.zero_grad()
        logits = model(x)
        loss_natural = F.cross_entropy(logits, y)
        criterion_kl = nn.KLDivLoss(reduction="sum")
        loss_robust = (1.0 / batch) * criterion_kl(
            F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)
        )
        total = loss_natural + beta * loss_robust
        total.backward()
        opt.step()
        output, robust_output, clean_loss = logits, None, loss_natural
    else:
        raise ValueError(f"baseline loss must be 'pgd' or 'trades', got {loss!r}")
    if not sync:
        return {}
    metrics = {
        "loss": total.item(),
        "clean_loss": clean_loss.item(),
        "clean_acc": (output.max(1)[1] == y).sum().item() / batch,
    }
    if robust_output is not None:
        metrics["robust_acc"] = (robust_output.max(1)[1] == y).sum().item() / batch
    return metrics
