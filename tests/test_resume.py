"""Crash safety: a SIGKILLed run resumes to the same result; bad checkpoints never load or run code;
NaN and exceptions mark the run failed; a changed recipe is refused; writes are atomic."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny

from robustscale import RobustscaleError, train
from robustscale.files import append_csv_row, atomic_write_json, read_csv_rows
from robustscale.train import checkpoint as ckpt
from robustscale.train import engine

# 40 steps per epoch (1309 training digits / 32), 2 epochs, a checkpoint every 3 steps.
KILL_RECIPE = tiny(
    epochs=2, batch_size=32, attack_steps=3, checkpoint_every_steps=3, val_attack_steps=5
)
VOLATILE = {"seconds", "epoch_energy_kwh"}  # wall time differs between two runs; nothing else may


def _train_cmd(recipe_path: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robustscale",
        "train",
        str(recipe_path),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(KILL_RECIPE.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in every process

    reference = tmp_path / "reference"
    subprocess.run(
        _train_cmd(recipe_path, reference), check=True, env=env, capture_output=True, timeout=900
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(recipe_path, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:  # last.pt is briefly absent between the two renames that replace it
            state = ckpt.load_checkpoint(last) if last.exists() else None
        except RobustscaleError:
            state = None
        # wait for a mid-epoch checkpoint in the second epoch, so a finished epoch is replayed too
        if state is not None and state["progress"]["epoch"] == 1 and state["progress"]["step"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "status.json").read_text())["state"] == "running"

    resumed = subprocess.run(
        _train_cmd(recipe_path, killed), env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr

    for name in ("last.pt", "best.pt"):
        a, b = _weights(reference / "checkpoints" / name), _weights(killed / "checkpoints" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    assert _metrics(killed) == _metrics(reference)
    assert json.loads((killed / "status.json").read_text())["state"] == "done"


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    run = train(tiny(epochs=2, val_size=0), out_root=tmp_path, progress=False)
    last, prev = run / "checkpoints" / "last.pt", run / "checkpoints" / "last-prev.pt"
    assert prev.exists()
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(RobustscaleError) as exc:
        ckpt.load_checkpoint(last)
    assert "last.pt" in str(exc.value) and "\n" not in str(exc.value)
    state, path = ckpt.load_resume_checkpoint(run / "checkpoints")
    assert path == prev and state["progress"]["epoch"] == 1
    assert "falling back" in caplog.text
    # a run resumed from the older checkpoint redoes epoch 2 and finishes
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    train(tiny(epochs=2, val_size=0), run_dir=run, progress=False)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert len(read_csv_rows(run / "metrics.csv")) == 2


def test_last_checkpoint_exists_at_every_moment_of_its_replacement(tmp_path, monkeypatch):
    # a reader (status, a tracker) must never find last.pt missing while a new one replaces it
    last, prev = tmp_path / "last.pt", tmp_path / "last-prev.pt"
    ckpt.save_checkpoint(last, {"model": {}, "progress": {"step": 1}}, keep_previous=True)
    real_replace, present = os.replace, []

    def watching(src, dst):
        real_replace(src, dst)
        present.append(last.exists())

    monkeypatch.setattr(os, "replace", watching)
    ckpt.save_checkpoint(last, {"model": {}, "progress": {"step": 2}}, keep_previous=True)
    monkeypatch.undo()
    assert present and all(present)
    assert ckpt.load_checkpoint(last)["progress"]["step"] == 2
    assert ckpt.load_checkpoint(prev)["progress"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-prev.pt", "last.pt"]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_a_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"model": {}, "x": _Payload(str(marker))}, f, pickle_module=pickle)
    with pytest.raises(RobustscaleError, match="evil.pt"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_nan_loss_marks_the_run_failed_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = engine.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 20 + 5:  # epoch 2 (20 steps per epoch at batch 64), 6th step
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(engine, "compute_loss", poisoned)
    recipe = tiny(epochs=3)
    with pytest.raises(engine.TrainingDiverged):
        train(recipe, out_root=tmp_path, progress=False)
    run = tmp_path / recipe.run_id
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed"
    assert (
        "not finite" in status["reason"]
        and "epoch 2" in status["reason"]
        and "step 6" in status["reason"]
    )
    assert "pgd" in status["reason"]
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    assert all(
        torch.isfinite(v).all()
        for v in _weights(run / "checkpoints" / "last.pt").values()
        if v.is_floating_point()
    )


def test_exception_is_recorded_with_its_message(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine, "compute_loss", broken)
    recipe = tiny(epochs=1)
    with pytest.raises(RuntimeError):
        train(recipe, out_root=tmp_path, progress=False)
    status = json.loads((tmp_path / recipe.run_id / "status.json").read_text())
    assert status["state"] == "failed" and "simulated device failure" in status["reason"]


def test_resuming_with_a_changed_recipe_is_refused(tmp_path):
    run = train(tiny(epochs=1), out_root=tmp_path, progress=False)
    with pytest.raises(RobustscaleError) as exc:
        train(tiny(epochs=1, eps=0.1), run_dir=run, progress=False)
    assert "eps" in str(exc.value) and "0.2" in str(exc.value) and "0.1" in str(exc.value)
    # settings that do not change results may differ
    assert train(tiny(epochs=1, device="cpu", pue=1.2), run_dir=run, progress=False) == run


def test_a_run_killed_before_its_first_checkpoint_starts_clean(tmp_path):
    """A kill after an epoch's metrics row but before that epoch's last.pt: the restart trains the
    epoch again and must not leave its row twice."""
    run = train(tiny(epochs=1), out_root=tmp_path, progress=False)
    first = _metrics(run)
    for f in (run / "checkpoints").glob("*.pt"):
        f.unlink()
    (run / "status.json").unlink()
    with open(run / "metrics.csv", "a") as f:
        f.write("2,0.01")  # and a torn row from the kill
    train(tiny(epochs=1), run_dir=run, progress=False)
    again = _metrics(run)
    assert [r["epoch"] for r in again] == ["1"]
    assert {k: v for k, v in again[0].items() if k != "seconds"} == {
        k: v for k, v in first[0].items() if k != "seconds"
    }


def test_a_failed_run_without_a_checkpoint_may_change_its_recipe(tmp_path, monkeypatch):
    def boom(self, epoch):
        raise RuntimeError("simulated failure in the first epoch")

    monkeypatch.setattr(engine._Engine, "_train_epoch", boom)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train(tiny(epochs=1, lr=5.0), run_dir=run, progress=False)
    monkeypatch.undo()
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    train(
        tiny(epochs=1), run_dir=run, progress=False
    )  # nothing to keep, so a new recipe is accepted
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert "lr: 0.05" in (run / "recipe.yaml").read_text()


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(tiny(epochs=1).to_yaml())
    from robustscale.cli import main

    assert (
        main(["train", str(recipe_path), "--run-dir", str(blocker / "run"), "--no-progress"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a-file" in err


def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    atomic_write_json(target, {"state": "running"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RobustscaleError, match="no space left"):
        atomic_write_json(target, {"state": "done"})
    assert json.loads(target.read_text()) == {"state": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"], "temporary file left behind"


def test_a_torn_metrics_row_is_ignored(tmp_path):
    path = tmp_path / "metrics.csv"
    append_csv_row(path, ["epoch", "loss"], {"epoch": 1, "loss": 0.5})
    with open(path, "a") as f:
        f.write("2,0.4")  # killed before the newline
    assert read_csv_rows(path) == [{"epoch": "1", "loss": "0.5"}]
