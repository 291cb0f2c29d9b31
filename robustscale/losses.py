"""Adversarial-training objectives: standard CE, PGD-AT (Madry et al.) and TRADES (Zhang et al.).

Each takes the model in train mode and a batch in [0, 1] and returns a :class:`LossOutput`
whose ``loss`` is ready for ``backward()``. Adversarial examples are generated with BatchNorm
running statistics frozen (batch statistics still normalise), as the paper prescribes.

Forward-pass cost per example (F = one forward): standard 3F; PGD-AT (2K + 3)F (attack +
update; it runs no clean forward: the engine samples the clean training accuracy on a tenth of
the batches, counted with validation); TRADES (2K + 7)F
(clean target, attack, forward + backward on clean and adversarial inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustscale.attacks.pgd import ce_sum, frozen_bn_stats, kl_sum, pgd

Model = Callable[[torch.Tensor], torch.Tensor]


# Losses whose LossOutput carries clean logits, i.e. that report a clean training accuracy for free.
# PGD-AT does not: a clean forward on every batch only for that metric would cost 1F of its
# (2K + 3)F per example (and, in train mode, would feed BatchNorm's statistics clean batches).
REPORTS_CLEAN_ACCURACY = frozenset({"standard", "trades"})

# The engine estimates PGD-AT's clean training accuracy on every CLEAN_ACC_EVERY-th batch instead:
# one no-grad forward with BatchNorm statistics frozen, i.e. F/10 per example (0.4% of PGD-10's
# 23F), counted as monitoring FLOPs with validation, not as training FLOPs.
CLEAN_ACC_EVERY = 10


def samples_clean_accuracy(loss: str, step: int) -> bool:
    """Whether the engine runs that extra clean forward at ``step`` (0-based, within the epoch)."""
    return (
        loss not in REPORTS_CLEAN_ACCURACY and step % CLEAN_ACC_EVERY == 0
    )  # steps 0, 10, 20, ...


def clean_monitor_steps(loss: str, steps_per_epoch: int) -> int:
    """Steps per epoch on which the engine runs that extra clean forward (0 for other losses)."""
    return sum(samples_clean_accuracy(loss, s) for s in range(steps_per_epoch))


@dataclass
class LossOutput:
    loss: torch.Tensor
    logits_clean: torch.Tensor | None  # detached; None when not computed
    logits_adv: torch.Tensor | None  # detached; None for standard training


def standard_loss(model: Model, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
    logits = model(x).float()
    return LossOutput(F.cross_entropy(logits, y), logits.detach(), None)


def pgd_at_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Madry et al.: cross-entropy on the PGD adversarial example (uniform random start).

    No clean forward: ``logits_clean`` is None (the engine samples the clean training accuracy
    on every ``CLEAN_ACC_EVERY``-th batch instead)."""
    with frozen_bn_stats(model):
        x_adv = pgd(model, x, y, eps, steps, step_size, generator=generator)
    logits_adv = model(x_adv).float()
    return LossOutput(F.cross_entropy(logits_adv, y), None, logits_adv.detach())


def trades_objective(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the KL averaged over the batch (TRADES'
    'batchmean')."""
    natural = F.cross_entropy(logits_clean, y)
    robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean"
    )
    return natural + beta * robust


def trades_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Zhang et al.: delta maximises KL(f(x) || f(x + delta)) from a tiny Gaussian start, then the
    TRADES objective on clean and adversarial forwards (two forwards, as the reference code)."""
    with frozen_bn_stats(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        x_adv = pgd(
            model,
            x,
            p_clean,
            eps,
            steps,
            step_size,
            init="normal",
            loss_fn=kl_sum,
            generator=generator,
        )
    logits_clean = model(x).float()
    logits_adv = model(x_adv).float()
    loss = trades_objective(logits_clean, logits_adv, y, beta)
    return LossOutput(loss, logits_clean.detach(), logits_adv.detach())


def compute_loss(
    kind: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    beta: float = 6.0,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Dispatch on the recipe's ``loss`` name (standard | pgd | trades)."""
    if kind == "standard":
        return standard_loss(model, x, y)
    if kind == "pgd":
        return pgd_at_loss(model, x, y, eps, step_size, steps, generator)
    if kind == "trades":
        return trades_loss(model, x, y, eps, step_size, steps, beta, generator)
    raise ValueError(f"unknown loss {kind!r}")


__all__ = [
    "CLEAN_ACC_EVERY",
    "LossOutput",
    "REPORTS_CLEAN_ACCURACY",
    "clean_monitor_steps",
    "samples_clean_accuracy",
    "compute_loss",
    "standard_loss",
    "pgd_at_loss",
    "trades_loss",
    "trades_objective",
    "ce_sum",
]
