"""Projected gradient descent under L-inf and L2, the one attack training and evaluation share.

``pgd(model, x, y, eps, steps, step_size)`` returns an adversarial ``x`` that never leaves the
eps-ball around ``x`` nor [0, 1]. The image, the perturbation and the projection stay in fp32
whatever precision the model runs in: in bf16 an 8/255 ball holds only a handful of
representable values and small steps would round to nothing. Gradients are taken with respect
to the perturbation only (``torch.autograd.grad``), so no weight gradient is ever computed by
the attack: PGD-K costs (2K)F per example, not (3K)F.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: each example's gradient is independent of batch size."""
    return F.cross_entropy(logits, y, reduction="sum")


def kl_sum(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || softmax(logits)) summed over the batch (TRADES' inner objective)."""
    return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps normalising with batch statistics in train mode but stops updating its
    running statistics (the paper: generating adversarial examples must not move them).
    Turning ``track_running_stats`` off for the duration does exactly that without an extra
    forward pass; in eval mode nothing changes."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not model.training:
        bns = []
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * (eps / n).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def _init_delta(
    x: torch.Tensor, eps: float, norm: str, init: str, generator: torch.Generator | None
) -> torch.Tensor:
    if init == "zero" or eps == 0:
        return torch.zeros_like(x)
    if init == "normal":  # TRADES' start: a tiny Gaussian
        return 0.001 * torch.randn(x.shape, device=x.device, generator=generator)
    if norm == "linf":
        return (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * eps
    d = torch.randn(x.shape, device=x.device, generator=generator)
    n = d.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    r = torch.rand(x.shape[0], device=x.device, generator=generator).view_as(n)
    return d / n.clamp_min(1e-12) * r * eps


def _step(grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return step_size * grad / n


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    norm: Literal["linf", "l2"] = "linf",
    init: Literal["uniform", "normal", "zero"] = "uniform",
    loss_fn: LossFn = ce_sum,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise ``loss_fn(model(x + delta), y)`` over the ``norm`` eps-ball intersected with [0, 1].

    ``y`` is whatever ``loss_fn`` compares the logits with (labels for CE, clean probabilities
    for TRADES' KL). Returns the adversarial input (detached, fp32). The caller chooses the
    model's mode; wrap in :func:`frozen_bn_stats` when attacking in train mode.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x = x.detach().float()
    delta = _project(_init_delta(x, eps, norm, init, generator), x, eps, norm)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _project(delta.detach() + _step(grad, step_size, norm), x, eps, norm)
    return (x + delta).detach()


@torch.no_grad()
def _correct(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return model(x).argmax(1) == y


def pgd_worst_case(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    restarts: int = 1,
    norm: Literal["linf", "l2"] = "linf",
    generator: torch.Generator | None = None,
    clean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD with random restarts for evaluation: per example, the first restart that fools the
    model is kept. Returns (x_adv, robust mask). Examples already misclassified clean count
    as not robust and are not attacked; pass their ``clean`` mask when it is already known."""
    x_adv = x.detach().clone().float()
    robust = _correct(model, x_adv, y) if clean is None else clean.clone()
    for _r in range(max(1, restarts)):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        cand = pgd(model, x[idx], y[idx], eps, steps, step_size, norm=norm, generator=generator)
        fooled = ~_correct(model, cand, y[idx])
        x_adv[idx[fooled]] = cand[fooled]
        robust[idx[fooled]] = False
    return x_adv, robust


def pgd_accuracy(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    batch_size: int,
    restarts: int = 1,
    norm: Literal["linf", "l2"] = "linf",
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and PGD-robust correct counts (device tensors) over ``x`` in batches; one clean
    forward per example, robust a subset of clean. Each batch's random start depends only on
    ``(seed, batch index)``, so the numbers do not depend on what ran before. This is the
    evaluation both model selection during training and ``robustscale eval`` use.
    ``on_batch(n)`` is called after each batch of ``n`` examples (a progress bar)."""
    counts = pgd_counts(
        model,
        x,
        y,
        eps,
        steps,
        step_size,
        batch_size=batch_size,
        restarts=restarts,
        norm=norm,
        seed=seed,
        with_losses=False,
        on_batch=on_batch,
    )
    return counts.clean, counts.robust


class PGDCounts(NamedTuple):
    """Device tensors summed over the examples: clean and robust correct counts, and (when
    asked for) the cross-entropy and the CW margin ``max_{j != y} z_j - z_y`` at the final
    adversarial examples (the clean input where the model is already wrong)."""

    clean: torch.Tensor
    robust: torch.Tensor
    ce: torch.Tensor | None = None
    cw: torch.Tensor | None = None


def cw_margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` summed over the batch (> 0: fooled)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (other - true).sum()


def pgd_counts(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    batch_size: int,
    restarts: int = 1,
    norm: Literal["linf", "l2"] = "linf",
    seed: int = 0,
    with_losses: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> PGDCounts:
    """:func:`pgd_accuracy`'s counts, plus with ``with_losses`` the summed robust cross-entropy
    and CW margin at the adversarial examples (one more forward per example): the continuous
    robust loss that scaling laws fit (Bartoldson et al. 2024) instead of accuracy."""
    from robustscale.data import to_float
    from robustscale.data.batches import seeded_generator

    dev = y.device
    clean = torch.zeros((), device=dev, dtype=torch.long)
    robust = torch.zeros((), device=dev, dtype=torch.long)
    ce = torch.zeros((), device=dev, dtype=torch.float64)
    cw = torch.zeros((), device=dev, dtype=torch.float64)
    for b, i in enumerate(range(0, len(y), batch_size)):
        xb, yb = to_float(x[i : i + batch_size]), y[i : i + batch_size]
        ok = _correct(model, xb, yb)
        clean += ok.sum()
        x_adv = xb
        if eps > 0 and steps > 0:
            g = seeded_generator(seed, 4_001, b, device=dev)
            x_adv, ok = pgd_worst_case(
                model,
                xb,
                yb,
                eps,
                steps,
                step_size,
                restarts=restarts,
                norm=norm,
                generator=g,
                clean=ok,
            )
        robust += ok.sum()
        if with_losses:
            with torch.no_grad():
                logits = model(x_adv).float()
            ce += ce_sum(logits, yb).double()
            cw += cw_margin_sum(logits, yb).double()
        if on_batch is not None:
            on_batch(len(yb))
    if not with_losses:
        return PGDCounts(clean, robust)
    return PGDCounts(clean, robust, ce, cw)
