"""The CUDA path: fast settings agree with fp32, NVML energy counts, resume is exact, AutoAttack
on the GPU gives the CPU's verdict. Marked ``cuda`` (``pytest -m cuda``); skipped with the
reason where torch sees no GPU, so CI (CPU only) collects and skips them. On a GPU machine they
run inside ``benchmarks/device_check.py``'s second step (docs/performance.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_EPS, tiny

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]

CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0) -> torch.nn.Module:
    from robustscale.models import build_model

    torch.manual_seed(seed)
    return build_model("wrn10_1", 10, 1, [0.5], [0.25]).to(CUDA)


def _batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g).to(CUDA), torch.randint(0, 10, (n,), generator=g).to(
        CUDA
    )


@pytest.fixture
def exact_fp32():
    """fp32 that means fp32: no TF32 in matmuls or cuDNN convolutions, no autotuning."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    ) = saved


def _step(
    precision: str, channels_last: bool, compile: bool, loss: str
) -> tuple[float, list[torch.Tensor]]:
    """One robustscale training step (lr 0, so the weight gradients can be read) on fixed
    weights."""
    from benchmarks.train_step import make_robustscale_step
    from robustscale.train.setup import Forward

    model = _model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = _batch()
    step = make_robustscale_step(
        Forward(model, precision, channels_last, compile, CUDA).train(),
        torch.optim.SGD(model.parameters(), lr=0.0),
        x,
        y,
        loss=loss,
        eps=DIGITS_EPS,
        step_size=DIGITS_EPS / 4,
        steps=2,
        beta=6.0,
        seed=5,
    )
    value = step().item()
    return value, [p.grad.detach().float().cpu() for p in model.parameters()]


@pytest.mark.parametrize("loss", ["pgd", "trades"])
def test_channels_last_step_agrees_with_fp32_on_cuda(exact_fp32, loss):
    # the CPU tests' tolerances for two computations of the same fp32 step (1e-5 on the loss,
    # 1e-4 / 1e-6 on the gradients: test_baseline_and_robustscale_steps_compute_the_same_...)
    ref_loss, ref = _step("fp32", False, False, loss)
    cl_loss, cl = _step("fp32", True, False, loss)
    assert cl_loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(ref, cl):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_compiled_step_agrees_with_eager_fp32_on_cuda(exact_fp32):
    # inductor's GPU kernels, at test_compiled_step_matches_eager_on_cpu's tolerances (one loss:
    # the compiled graphs are the model's; each compilation costs tens of seconds)
    ref_loss, ref = _step("fp32", False, False, "pgd")
    c_loss, c = _step("fp32", False, True, "pgd")
    assert c_loss == pytest.approx(ref_loss, rel=1e-4)
    for a, b in zip(ref, c):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "loss,channels_last,compile",
    [
        ("standard", False, False),
        ("pgd", False, False),
        ("trades", True, False),
        ("pgd", True, True),
    ],
)
def test_bf16_step_on_cuda_tracks_fp32(exact_fp32, loss, channels_last, compile):
    # bf16 keeps 8 mantissa bits, so not fp32's tolerances. Measured on the CPU (same model,
    # batch and seeds): the loss within 0.6% of fp32's; the weight gradient's cosine with
    # fp32's 0.99 without an attack and 0.78-0.88 with one (the attack's sign steps fork on
    # bf16 rounding, so the adversarial batch itself differs a little). Bounds: 2%, 0.98, 0.5.
    ref_loss, ref = _step("fp32", False, False, loss)
    value, grads = _step("bf16", channels_last, compile, loss)
    assert value == pytest.approx(ref_loss, rel=2e-2)
    flat, flat_ref = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref])
    assert torch.isfinite(flat).all()
    cos = torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0).item()
    assert cos > (0.98 if loss == "standard" else 0.5), cos


def test_nvml_energy_counter_is_nonzero_and_monotone():
    from robustscale.cost import open_meter

    with open_meter(CUDA) as meter:
        assert meter.source == "nvml-energy", (
            f"NVML's energy counter is not readable here ({meter.source})"
        )
        a = torch.randn(4096, 4096, device=CUDA)
        readings = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # the counter updates about every 100 ms
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()
            readings.append(meter.read_joules())
    assert all(r is not None for r in readings)
    assert all(b >= a for a, b in zip(readings, readings[1:])), readings
    assert readings[-1] > 0, readings


# warn_only: some CUDA kernels the WideResNets use have no deterministic flag although their
# result is (adaptive_avg_pool2d's backward to 1x1 sums without atomics); PyTorch would refuse
# them outright, and the test then checks that the resumed weights are bitwise the reference's.
_DETERMINISTIC_TRAIN = (
    "import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
    "from robustscale.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _train_cmd(recipe_path: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        _DETERMINISTIC_TRAIN,
        "train",
        str(recipe_path),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]


def test_checkpoint_written_on_cuda_resumes_exactly_under_deterministic_algorithms(tmp_path):
    from robustscale.train import checkpoint as ckpt

    recipe = tiny(
        epochs=2,
        batch_size=32,
        attack_steps=3,
        checkpoint_every_steps=3,
        val_attack_steps=5,
        device="cuda",
    )
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(recipe.to_yaml())
    # PYTHONPATH kept: on the device machine it also holds the carried wheels (docs/performance.md)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONPATH": path}
    reference = tmp_path / "reference"
    subprocess.run(
        _train_cmd(recipe_path, reference), check=True, env=env, capture_output=True, timeout=600
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(recipe_path, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                progress = ckpt.load_checkpoint(last)["progress"]
            except Exception:  # being replaced this instant
                progress = {"epoch": 0, "step": 0}
            if progress["epoch"] == 1 and progress["step"] >= 3:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        _train_cmd(recipe_path, killed), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    for name in ("last.pt", "best.pt"):
        a = ckpt.load_checkpoint(reference / "checkpoints" / name)["model"]
        b = ckpt.load_checkpoint(killed / "checkpoints" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume on CUDA"
    assert json.loads((killed / "status.json").read_text())["state"] == "done"


def test_autoattack_on_cuda_gives_the_cpu_robust_accuracy(adversarial_run, exact_fp32):
    # The attacks draw their random starts on the CPU generator and move them to the device,
    # so CPU and GPU attack from the same points; with exact fp32 the verdicts are the same.
    from robustscale.evaluate import evaluate, load_split
    from robustscale.runs import load

    x, y = load_split(adversarial_run, "test", 100)
    results = {
        dev: evaluate(
            load(adversarial_run, device=dev),
            x,
            y,
            attack="autoattack",
            eps=DIGITS_EPS,
            batch_size=100,
            device=dev,
        )
        for dev in ("cpu", "cuda")
    }
    cpu, gpu = results["cpu"], results["cuda"]
    assert 0 < cpu["robust_acc"] < cpu["clean_acc"]  # a robust model that AutoAttack partly breaks
    assert gpu["clean_acc"] == cpu["clean_acc"]
    assert gpu["robust_acc"] == cpu["robust_acc"], (cpu["per_attack"], gpu["per_attack"])
