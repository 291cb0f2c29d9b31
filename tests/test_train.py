"""The training engine end to end on digits: a complete run directory, model selection, EMA, CIFAR,
CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import tiny

from robustscale import Recipe, load, train
from robustscale.cli import main
from robustscale.train import METRIC_COLUMNS
from robustscale.train.checkpoint import load_checkpoint


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_run_directory_is_complete(adversarial_run):
    run = adversarial_run
    recipe = Recipe.from_yaml(run / "recipe.yaml")
    for name in [
        "recipe.yaml",
        "metrics.csv",
        "status.json",
        "cost.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ]:
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, recipe.epochs + 1))
    status = json.loads((run / "status.json").read_text())
    assert (
        status["state"] == "done"
        and status["epoch"] == recipe.epochs
        and status["run_id"] == recipe.run_id
    )
    assert status["val_attack_steps"] == recipe.val_attack_steps and status["threads"] >= 1
    # best.pt is the epoch with the highest validation PGD accuracy
    pgd = [float(r["val_pgd_acc"]) for r in rows]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 + int(np.argmax(pgd)) == status["best_epoch"]
    assert (
        best["val_pgd_acc"] == pytest.approx(max(pgd)) == pytest.approx(status["best_val_pgd_acc"])
    )
    cost = json.loads((run / "cost.json").read_text())
    assert cost["train_flops"] == pytest.approx(sum(float(r["epoch_flops"]) for r in rows))
    assert cost["examples_seen"] == sum(int(r["examples"]) for r in rows)
    assert cost["train_flops"] > 0 and cost["params"] > 0
    # the run spent exactly what the cost module forecasts for its recipe, monitoring included
    from robustscale.cost import forecast_recipe

    fc = forecast_recipe(recipe)
    assert cost["train_flops"] == pytest.approx(fc["train_flops_total"], rel=1e-12)
    assert cost["val_flops"] == pytest.approx(fc["val_flops_total"], rel=1e-12)
    monitored = (
        -(-fc["steps_per_epoch"] // 10) * recipe.batch_size
    )  # PGD-AT's sampled clean forwards
    assert fc["monitor_flops_per_epoch"] == fc["forward_flops"] * monitored > 0
    # PGD-AT records robust training accuracy, and clean accuracy sampled on every 10th batch
    assert all(0 <= float(r["train_robust_acc"]) < float(r["train_clean_acc"]) <= 100 for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_loaded_model_is_the_selected_checkpoint(adversarial_run):
    model = load(adversarial_run)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    best = load_checkpoint(adversarial_run / "checkpoints" / "best.pt")
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_ema_weights_are_validated_and_saved(tmp_path):
    run = train(tiny(ema_decay=0.9, epochs=2, val_size=0), out_root=tmp_path, progress=False)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert last["ema"] is not None
    # no validation set: the last epoch is selected, and what is selected is the EMA, not the raw
    # weights
    assert all(torch.equal(best["model"][k], last["ema"][k]) for k in last["ema"])
    assert any(
        not torch.equal(last["model"][k], last["ema"][k]) for k in last["ema"] if "weight" in k
    )


def test_warmup_then_cosine_schedule(tmp_path):
    run = train(
        tiny(loss="standard", attack_steps=0, epochs=4, warmup_epochs=1, val_size=0),
        out_root=tmp_path,
        progress=False,
    )
    lrs = [float(r["lr"]) for r in _rows(run)]
    assert lrs[0] == pytest.approx(0.05, rel=0.05)  # end of warm-up: the peak
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]


def test_cifar10_trains_from_files_on_disk(cifar10_dir, tmp_path):
    recipe = tiny(
        dataset="cifar10",
        data_dir=str(cifar10_dir),
        eps=8 / 255,
        step_size=2 / 255,
        attack_steps=2,
        epochs=1,
        batch_size=16,
        val_size=10,
        val_attack_steps=2,
    )
    run = train(recipe, out_root=tmp_path, progress=False)
    rows = _rows(run)
    assert len(rows) == 1 and int(rows[0]["examples"]) == 32  # 40 training examples, 2 full batches


def test_synthetic_examples_count_as_seen(tmp_path):
    npz = tmp_path / "extra.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        image=rng.integers(0, 256, (500, 8, 8, 1), dtype=np.uint8),
        label=rng.integers(0, 10, 500),
    )
    run = train(
        tiny(synthetic_data=str(npz), synthetic_fraction=0.5, epochs=1),
        out_root=tmp_path,
        progress=False,
    )
    cost = json.loads((run / "cost.json").read_text())
    real_per_batch = 32
    steps = (1437 - 128) // real_per_batch
    assert cost["examples_seen"] == steps * 64 and cost["synthetic_size"] == 500


def test_cli_train_prints_run_dir_last_and_skips_a_done_run(tmp_path, capsys, caplog):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny(epochs=1).to_yaml())
    args = ["train", str(recipe), "--out", str(tmp_path / "runs"), "--no-progress"]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert (tmp_path / "runs" / Recipe.from_yaml(recipe).run_id).samefile(run_dir)
    mtime = (
        (tmp_path / "runs")
        .joinpath(Recipe.from_yaml(recipe).run_id, "checkpoints", "last.pt")
        .stat()
        .st_mtime
    )
    caplog.set_level("INFO", logger="robustscale")
    assert main(args) == 0  # already done: exits 0 without training
    second = capsys.readouterr()
    assert second.out.strip().splitlines()[-1] == run_dir
    assert "already done" in caplog.text
    assert (tmp_path / "runs").joinpath(
        Recipe.from_yaml(recipe).run_id, "checkpoints", "last.pt"
    ).stat().st_mtime == mtime


def test_bf16_and_channels_last_train_on_cpu(tmp_path):
    seen = {"dtypes": set(), "layouts": set()}

    def conv_hook(module, inputs, output):  # every convolution the run executes
        if (
            isinstance(module, torch.nn.Conv2d)
            and inputs[0].shape[1] > 1
            and inputs[0].device.type != "meta"
        ):
            seen["dtypes"].add(output.dtype)
            seen["layouts"].add(inputs[0].is_contiguous(memory_format=torch.channels_last))

    handle = torch.nn.modules.module.register_module_forward_hook(conv_hook)
    try:
        run = train(
            tiny(precision="bf16", channels_last=True, epochs=1), out_root=tmp_path, progress=False
        )
    finally:
        handle.remove()
    rows = _rows(run)
    assert np.isfinite(float(rows[0]["train_loss"]))
    assert (
        torch.bfloat16 in seen["dtypes"]
    )  # autocast reached the convolutions (validation included)
    assert seen["layouts"] == {True}  # and every multi-channel activation was channels_last
    assert 0 < float(rows[0]["train_robust_acc"]) < 100


def test_final_eval_on_a_done_run_runs_once(tmp_path):
    recipe = tiny(loss="standard", attack_steps=0, epochs=1, val_size=0)
    run = train(recipe, out_root=tmp_path, progress=False)
    result = run / "eval" / "pgd-51-255.json"
    assert not result.exists()
    assert (
        train(recipe, out_root=tmp_path, progress=False, final_eval="pgd") == run
    )  # done, yet evaluated now
    first = json.loads(result.read_text())
    assert (
        first["attack"] == "pgd"
        and first["checkpoint"] == "best"
        and first["robust_acc"] <= first["clean_acc"]
    )
    mtime = result.stat().st_mtime_ns
    train(
        recipe, out_root=tmp_path, progress=False, final_eval="pgd"
    )  # its result is there: not rerun
    assert result.stat().st_mtime_ns == mtime


def test_pgd_at_clean_accuracy_sampling_only_observes(tmp_path, monkeypatch):
    """The sampled clean forward must change nothing: same weights and BatchNorm statistics as a
    run without it (dropout off), only train_clean_acc filled in."""
    from robustscale.train import engine

    recipe = tiny(epochs=1, attack_steps=2)
    watched = train(recipe, run_dir=tmp_path / "watched", progress=False)
    monkeypatch.setattr(engine, "samples_clean_accuracy", lambda loss, step: False)
    blind = train(recipe, run_dir=tmp_path / "blind", progress=False)
    a = load_checkpoint(watched / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(blind / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # BN buffers included
    w, o = _rows(watched)[0], _rows(blind)[0]
    assert 0 < float(w["train_clean_acc"]) <= 100 and o["train_clean_acc"] == ""
    assert w["train_robust_acc"] == o["train_robust_acc"] and w["val_pgd_acc"] == o["val_pgd_acc"]
