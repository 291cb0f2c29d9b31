"""Training objectives: TRADES equals CE + beta * KL computed by hand; PGD-AT is CE on the
adversarial input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustscale.attacks import frozen_bn_stats, pgd
from robustscale.data.batches import seeded_generator
from robustscale.losses import REPORTS_CLEAN_ACCURACY, compute_loss, trades_objective
from robustscale.models import build_model


def test_trades_objective_equals_ce_plus_beta_kl_by_hand():
    torch.manual_seed(0)
    clean, adv = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    beta = 6.0
    ce = 0.0
    kl = 0.0
    for i in range(5):
        p = [math.exp(v) for v in clean[i].tolist()]
        q = [math.exp(v) for v in adv[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        ce += -math.log(p[int(y[i])])
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = ce / 5 + beta * kl / 5
    assert abs(trades_objective(clean, adv, y, beta).item() - expected) < 1e-5


def test_trades_loss_uses_the_objective_on_its_own_logits():
    torch.manual_seed(0)
    model = build_model("wrn10_1", 10, 1, [0.3], [0.4]).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    out = compute_loss(
        "trades",
        model,
        x,
        y,
        eps=0.2,
        step_size=0.05,
        steps=3,
        beta=6.0,
        generator=seeded_generator(0),
    )
    assert torch.allclose(
        out.loss.detach(), trades_objective(out.logits_clean, out.logits_adv, y, 6.0)
    )
    # beta = 0 is plain cross-entropy on clean inputs
    out0 = compute_loss(
        "trades",
        model,
        x,
        y,
        eps=0.2,
        step_size=0.05,
        steps=3,
        beta=0.0,
        generator=seeded_generator(0),
    )
    assert torch.allclose(out0.loss.detach(), F.cross_entropy(out0.logits_clean, y))


def test_pgd_at_is_cross_entropy_on_the_pgd_example():
    torch.manual_seed(0)
    model = build_model("wrn10_1", 10, 1, [0.3], [0.4]).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    out = compute_loss(
        "pgd", model, x, y, eps=0.2, step_size=0.05, steps=3, generator=seeded_generator(4)
    )
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.load_state_dict(snapshot)
    with frozen_bn_stats(model):
        x_adv = pgd(model, x, y, 0.2, 3, 0.05, generator=seeded_generator(4))
    # the generator alone decides the start
    assert torch.allclose(out.loss.detach(), F.cross_entropy(model(x_adv), y), atol=1e-5)
    # PGD-AT runs no clean forward (it would cost 1F of (2K + 3)F): no clean logits to report
    assert out.logits_clean is None and out.logits_adv is not None
    assert "pgd" not in REPORTS_CLEAN_ACCURACY


def test_pgd_at_runs_only_attack_and_update_forwards():
    model = build_model("wrn10_1", 10, 1, [0.3], [0.4]).train()
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(o.requires_grad))
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    compute_loss(
        "pgd", model, x, y, eps=0.2, step_size=0.05, steps=3, generator=seeded_generator(0)
    )
    # K attack forwards (their output needs grad for the input gradient) + the update's forward
    assert len(calls) == 3 + 1 and all(calls)
    for kind in REPORTS_CLEAN_ACCURACY:  # these do return clean logits
        out = compute_loss(
            kind, model, x, y, eps=0.2, step_size=0.05, steps=1, generator=seeded_generator(0)
        )
        assert out.logits_clean is not None
