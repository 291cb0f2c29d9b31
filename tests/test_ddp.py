"""One run on several processes (DDP under torchrun), on CPU with gloo and two processes."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny

from robustscale.runs import read_status
from robustscale.sweep import expand
from robustscale.sweep.launch import LaunchOptions, launch_local
from robustscale.sweep.ledger import Ledger


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _grad_check(rank: int, world: int, init_file: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from robustscale.losses import compute_loss
    from robustscale.models import build_model
    from robustscale.train.setup import Forward

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cpu = torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        xs, ys = x[rank::world], y[rank::world]  # this process's slice of the global batch
        for loss in ("pgd", "trades"):
            torch.manual_seed(0)
            model = build_model(
                "wrn10_1", 10, 1, (0.5,), (0.25,), activation="relu", drop_rate=0.0
            ).train()
            bare = copy.deepcopy(model)
            ddp = DistributedDataParallel(model)
            calls = []
            ddp.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
            fwd = Forward(model, "fp32", False, False, cpu, ddp=ddp)
            out = compute_loss(
                loss,
                fwd,
                xs,
                ys,
                eps=0.2,
                step_size=0.05,
                steps=3,
                generator=torch.Generator().manual_seed(rank),
            )
            out.loss.backward()
            # reference: this slice's gradient on a bare copy, averaged over the processes by hand
            ref = compute_loss(
                loss,
                Forward(bare, "fp32", False, False, cpu),
                xs,
                ys,
                eps=0.2,
                step_size=0.05,
                steps=3,
                generator=torch.Generator().manual_seed(rank),
            )
            ref.loss.backward()
            for p, q in zip(model.parameters(), bare.parameters()):
                dist.all_reduce(q.grad)
                torch.testing.assert_close(p.grad, q.grad / world, rtol=1e-5, atol=1e-7)
            # only the update's forwards went through DDP (PGD-AT: 1, TRADES: clean + adversarial)
            assert len(calls) == (1 if loss == "pgd" else 2), (loss, len(calls))
    finally:
        dist.destroy_process_group()


def test_ddp_averages_update_gradients_and_the_attack_bypasses_it(tmp_path):
    mp.spawn(_grad_check, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_ddp_run_trains_as_one_run_and_resumes_exactly(tmp_path):
    recipe = tiny(attack_steps=1, val_attack_steps=2, val_size=64, epochs=3, seed=4)
    sweep = expand({"base": recipe.to_dict()}, name="ddp")
    out = tmp_path / "sweep"
    counts = launch_local(sweep, out, LaunchOptions(nproc_per_run=2, poll=0.2))
    rows = Ledger(out / "ledger.sqlite").rows()
    assert counts["done"] == 1 and len(rows) == 1 and rows[0]["attempts"] == 1, (
        out / "logs" / f"{recipe.run_id}.log"
    ).read_text()
    assert [p.name for p in (out / "runs").iterdir()] == [
        recipe.run_id
    ]  # one run directory, rank 0 wrote it
    whole = _metrics(out / "runs" / recipe.run_id)
    assert [int(r["epoch"]) for r in whole] == [1, 2, 3]
    assert (
        int(whole[0]["examples"]) == 21 * 64
    )  # the batch size is global: 21 steps of 64 over 2 processes
    log = (out / "logs" / f"{recipe.run_id}.log").read_text()
    assert log.count("epoch 1/3") == 1  # one log per run: only rank 0 speaks

    # the same run, killed after its first epoch and started again, ends with the same numbers
    run_dir = tmp_path / "again"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "robustscale",
        "train",
        str(out / "recipes" / f"{recipe.run_id}.yaml"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        status = read_status(run_dir) if (run_dir / "status.json").exists() else None
        if status and status["epoch"] >= 1:
            first.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    first.communicate(timeout=120)
    assert (read_status(run_dir) or {}).get("state") != "done"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming" in second.stdout + second.stderr
    resumed = _metrics(run_dir)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    for a, b in zip(whole, resumed):
        for key in (
            "train_loss",
            "train_clean_acc",
            "train_robust_acc",
            "val_clean_acc",
            "val_pgd_acc",
        ):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-9), key
