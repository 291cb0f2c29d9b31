"""The fast paths compute what the slow ones do: the benchmark compares like with like, the
speed settings (bf16 autocast, channels_last, torch.compile, activation checkpointing) run on
a CPU and keep the attack as strong as fp32.

The benchmarks themselves (``benchmarks/``) are run by hand; only tiny smoke runs are here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import DIGITS_EPS  # noqa: E402

from benchmarks.baseline import baseline_step  # noqa: E402
from benchmarks.train_step import make_robustscale_step  # noqa: E402
from robustscale import Recipe, train  # noqa: E402
from robustscale.attacks.pgd import pgd  # noqa: E402
from robustscale.data import read_split  # noqa: E402
from robustscale.data.batches import seeded_generator  # noqa: E402
from robustscale.losses import compute_loss  # noqa: E402
from robustscale.models import build_model  # noqa: E402
from robustscale.runs import load, read_recipe  # noqa: E402
from robustscale.train.setup import Forward  # noqa: E402

CPU = torch.device("cpu")


def _model(seed: int = 0, name: str = "wrn10_1") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, 10, 1, [0.3], [0.4]).train()


def _batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("loss", ["pgd", "trades"])
def test_baseline_and_robustscale_steps_compute_the_same_loss_and_gradients(loss):
    # The baseline attacks in eval mode (as the reference code does); robustscale attacks in
    # train mode with BN running statistics frozen (the paper). Those are different attacks,
    # so here the baseline runs with attack_bn="frozen" (train mode, running statistics
    # restored after the attack): the setting in which the two coincide. Same weights, batch
    # and random start (the generator robustscale's step draws from); SGD with lr 0 so that
    # the weight gradients can be read after the step.
    kw = dict(loss=loss, eps=DIGITS_EPS, step_size=DIGITS_EPS / 4, steps=3, beta=6.0)
    x, y = _batch()
    fast, slow = _model(), _model()
    step = make_robustscale_step(
        Forward(fast, "fp32", False, False, CPU).train(),
        torch.optim.SGD(fast.parameters(), lr=0.0),
        x,
        y,
        seed=5,
        **kw,
    )
    fast_loss = step().item()
    metrics = baseline_step(
        slow,
        torch.optim.SGD(slow.parameters(), lr=0.0),
        x,
        y,
        generator=seeded_generator(5, 0, 0, 7),
        attack_bn="frozen",
        **kw,
    )
    assert metrics["loss"] == pytest.approx(fast_loss, rel=1e-5)
    for a, b in zip(_grads(fast), _grads(slow)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # The reference's eval-mode attack is another attack: a different loss on the same batch.
    other = _model()
    ref = baseline_step(
        other,
        torch.optim.SGD(other.parameters(), lr=0.0),
        x,
        y,
        generator=seeded_generator(5, 0, 0, 7),
        attack_bn="eval",
        **kw,
    )
    assert ref["loss"] != pytest.approx(fast_loss, rel=1e-5)


def test_baseline_pgd_attack_computes_weight_gradients_and_robustscale_does_not():
    # What the benchmark's ratio is made of: the reference PGD attack runs a full backward.
    from benchmarks.train_step import executed_flops

    model = _model()
    kw = dict(loss="pgd", eps=DIGITS_EPS, step_size=0.05, steps=4)
    base = executed_flops(
        lambda m, x, y: baseline_step(
            m, torch.optim.SGD(m.parameters(), lr=0.1), x, y, sync=False, **kw
        ),
        model,
        (1, 8, 8),
        10,
    )
    ours = executed_flops(
        lambda m, x, y: compute_loss(
            "pgd", m, x, y, eps=DIGITS_EPS, step_size=0.05, steps=4
        ).loss.backward(),
        model,
        (1, 8, 8),
        10,
    )
    # (3K + 4)F against (2K + 3)F: 16F vs 11F at K = 4
    assert base == pytest.approx(ours * 16 / 11, rel=0.05)


@pytest.mark.parametrize(
    "precision,channels_last", [("bf16", False), ("fp32", True), ("bf16", True)]
)
@pytest.mark.parametrize("loss", ["pgd", "trades"])
def test_fast_settings_run_on_cpu_with_finite_losses(loss, precision, channels_last):
    model = _model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = _batch()
    before = [p.detach().clone() for p in model.parameters()]
    step = make_robustscale_step(
        Forward(model, precision, channels_last, False, CPU).train(),
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        x,
        y,
        loss=loss,
        eps=DIGITS_EPS,
        step_size=0.05,
        steps=2,
        beta=6.0,
    )
    losses = [step() for _ in range(2)]
    assert all(torch.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_compiled_step_matches_eager_on_cpu():
    # torch.compile on a CPU: inductor compiles the train-mode graphs (attack with input
    # gradients, no-grad clean forward, update) on the first calls.
    x, y = _batch()
    kw = dict(loss="pgd", eps=DIGITS_EPS, step_size=0.05, steps=2, beta=6.0)
    eager, compiled = _model(), _model()
    e = make_robustscale_step(
        Forward(eager, "fp32", False, False, CPU).train(),
        torch.optim.SGD(eager.parameters(), lr=0.0),
        x,
        y,
        **kw,
    )
    c = make_robustscale_step(
        Forward(compiled, "fp32", False, True, CPU).train(),
        torch.optim.SGD(compiled.parameters(), lr=0.0),
        x,
        y,
        **kw,
    )
    le, lc = e(), c()
    assert torch.isfinite(lc)
    assert lc.item() == pytest.approx(le.item(), rel=1e-4)
    for a, b in zip(_grads(eager), _grads(compiled)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("loss", ["pgd", "trades"])
def test_grad_checkpointing_gives_the_same_loss_gradients_and_bn_statistics(loss):
    plain, ckpt = _model(), _model()
    ckpt.net.set_grad_checkpointing(True)
    x, y = _batch()
    results = []
    for model in (plain, ckpt):
        for _ in range(2):  # two steps: BN running statistics are updated once per forward
            model.zero_grad(set_to_none=True)
            out = compute_loss(
                loss,
                model,
                x,
                y,
                eps=DIGITS_EPS,
                step_size=0.05,
                steps=2,
                generator=torch.Generator().manual_seed(3),
            )
            out.loss.backward()
        results.append((out.loss.detach(), _grads(model), [b.clone() for b in model.buffers()]))
    (l0, g0, b0), (l1, g1, b1) = results
    torch.testing.assert_close(l0, l1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b)
    for a, b in zip(b0, b1):
        torch.testing.assert_close(a, b)


def test_grad_checkpointing_applies_only_when_training_with_autograd(monkeypatch):
    from robustscale.models import wrn

    calls = []
    real = wrn.checkpoint
    monkeypatch.setattr(
        wrn, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or real(fn, *a, **kw)
    )
    model = _model()
    model.net.set_grad_checkpointing(True)
    x, _ = _batch()
    with torch.no_grad():
        model(x)  # train mode, no autograd (PGD-AT's clean forward, TRADES' target)
    model.eval()(x)  # eval mode with autograd (validation PGD)
    assert calls == []
    model.train()(x)
    assert len(calls) == len(model.net.blocks)


def test_grad_checkpointing_recipe_key_checkpoints_and_trains_the_same_run(tmp_path, monkeypatch):
    from conftest import tiny

    from robustscale.models import wrn
    from robustscale.train.checkpoint import load_checkpoint

    calls = []
    real = wrn.checkpoint
    monkeypatch.setattr(
        wrn, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or real(fn, *a, **kw)
    )
    plain = train(tiny(epochs=1), out_root=tmp_path / "plain", progress=False)
    assert calls == []
    ckpt = train(
        tiny(epochs=1, grad_checkpointing=True), out_root=tmp_path / "ckpt", progress=False
    )
    assert calls  # the engine turned it on
    assert plain.name == ckpt.name  # not a result key: the same run id
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in (plain, ckpt))
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the same weights, bit for bit


# ---- bf16 does not weaken the attack ------------------------------------------------------------


def _robust_acc(
    model: torch.nn.Module,
    precision: str,
    x: torch.Tensor,
    y: torch.Tensor,
    judge: torch.nn.Module | None = None,
) -> tuple[float, torch.Tensor]:
    """PGD-20 accuracy (%) with the attack run at ``precision``, judged by ``judge`` (default: the
    attacked forward). Also returns the per-example 'fooled' mask."""
    f = Forward(model, precision, False, False, CPU).eval()
    judge = judge or f
    x_adv = pgd(f, x, y, DIGITS_EPS, 20, DIGITS_EPS / 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ok = judge(x_adv).argmax(1) == y
    return 100.0 * ok.float().mean().item(), ~ok


def test_bf16_pgd_is_as_strong_as_fp32_on_the_same_weights(adversarial_run):
    model = load(adversarial_run)
    x, y = read_split("digits", "test")
    fp32 = Forward(model, "fp32", False, False, CPU).eval()
    acc32, fooled32 = _robust_acc(model, "fp32", x, y)
    acc16, fooled16 = _robust_acc(model, "bf16", x, y, judge=fp32)  # bf16 attack, fp32 verdict
    # 360 test examples: one example is 0.28 points. Same examples, so the noise is the
    # examples near the decision boundary; bf16 must not be weaker by more than that.
    assert acc16 <= acc32 + 3.0, (acc16, acc32)
    assert abs(acc16 - acc32) <= 3.0, (acc16, acc32)
    assert (fooled32 & fooled16).sum() >= 0.9 * fooled32.sum()


@pytest.mark.slow
def test_bf16_trained_model_is_as_robust_as_fp32_trained(adversarial_run, tmp_path):
    # Same recipe and seed as the fp32 ``adversarial_run``, trained with bf16 autocast; both
    # judged by the same fp32 PGD-20 on the 360 held-out digits. The two trainings diverge
    # numerically, so the difference is of the order of seed-to-seed noise (measured: see
    # docs/performance.md).
    recipe = Recipe(**{**read_recipe(adversarial_run).to_dict(), "precision": "bf16"})
    run16 = train(recipe, out_root=tmp_path, progress=False)
    x, y = read_split("digits", "test")
    acc32, _ = _robust_acc(load(adversarial_run), "fp32", x, y)
    acc16, _ = _robust_acc(load(run16), "fp32", x, y)
    acc16_bf16_attack, _ = _robust_acc(load(run16), "bf16", x, y)
    assert acc32 > 35.0 and acc16 > 35.0  # both learned robustness (a standard model: ~1%)
    assert abs(acc16 - acc32) <= 8.0, (acc16, acc32)
    assert abs(acc16_bf16_attack - acc16) <= 3.0, (acc16_bf16_attack, acc16)


# ---- the benchmarks run -------------------------------------------------------------------------


def test_train_step_benchmark_writes_json_lines(tmp_path, capsys):
    from benchmarks import train_step

    out = tmp_path / "b.jsonl"
    train_step.main(
        [
            "--model",
            "wrn10_1",
            "--image-size",
            "8",
            "--channels",
            "1",
            "--batch-size",
            "8",
            "--loss",
            "pgd,trades",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--repeats",
            "1",
            "--eps",
            "0.2",
            "--step-size",
            "0.05",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["loss"]) for r in rows] == [
        ("baseline", "pgd"),
        ("robustscale", "pgd"),
        ("baseline", "trades"),
        ("robustscale", "trades"),
    ]
    rs = rows[1]
    for key in (
        "device",
        "torch",
        "examples_per_s",
        "achieved_tflops",
        "flops_per_example",
        "step_s",
        "speedup_vs_baseline",
        "peak_tflops",
    ):
        assert key in rs
    assert (
        rows[0]["executed_flops_per_example"]
        > rs["executed_flops_per_example"]
        == rs["flops_per_example"]
    )
    assert capsys.readouterr().out.count("\n") == 4


def test_eval_benchmark_writes_json_lines(adversarial_run, tmp_path):
    from benchmarks import eval as eval_bench

    out = tmp_path / "e.jsonl"
    eval_bench.main(
        [
            "--run",
            str(adversarial_run),
            "--n",
            "32",
            "--attacks",
            "pgd40",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = {r["impl"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"robustscale", "peer-pgd", "apgd-ce", "robustscale-bf16"}
    assert {"speedup_vs_peer-pgd", "speedup_vs_apgd-ce"} <= set(rows["robustscale"])
    assert all(0 <= r["robust_acc"] <= r["clean_acc"] for r in rows.values())


@pytest.mark.slow
def test_eval_benchmark_compares_autoattack_options_example_by_example(
    adversarial_run, tmp_path, monkeypatch
):
    from benchmarks import eval as eval_bench

    # two worker processes whatever this machine's thread count (the option's default)
    monkeypatch.setitem(
        eval_bench.AA_OPTIONS, "workers", eval_bench.rs_autoattack_option(workers=2)
    )

    out = tmp_path / "aa.jsonl"
    eval_bench.main(
        [
            "--run",
            str(adversarial_run),
            "--n",
            "8",
            "--batch-size",
            "4",
            "--attacks",
            "autoattack-options",
            "--aa-options",
            "robustscale,channels_last,workers",
            "--aa-repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = {r["impl"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"pyautoattack", "robustscale", "channels_last", "workers"}
    # the adapter runs the library itself: the same verdict on every example as the plain call,
    # also with two batches of 4 in two worker processes
    assert rows["robustscale"]["verdicts_identical_to_pyautoattack"]
    assert rows["workers"]["verdicts_identical_to_pyautoattack"] and rows["workers"]["workers"] == 2
    assert rows["robustscale"]["robust_acc"] == pytest.approx(rows["pyautoattack"]["robust_acc"])
    assert all(r["cpu_seconds"] > 0 and r["speedup_cpu_time"] > 0 for r in rows.values())
