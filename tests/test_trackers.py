"""Trackers through their own libraries: what TensorBoard, MLflow and W&B receive equals
metrics.csv and cost.json, also after a run was SIGKILLed and resumed; bad tracker input is one
line before anything is written; a failing tracker never stops training."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny

from robustscale import RobustscaleError, train
from robustscale.files import read_csv_rows
from robustscale.trackers import COST_KEYS, TrackerSet
from robustscale.train import checkpoint as ckpt

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

# 40 steps per epoch, 3 epochs, a checkpoint every 3 steps: room to kill it in epoch 2; an
# estimated power draw so that the energy columns and the cumulative cost are there to compare.
KILL_RECIPE = tiny(
    epochs=3,
    batch_size=32,
    attack_steps=2,
    checkpoint_every_steps=3,
    val_attack_steps=3,
    power_watts=50.0,
    trackers=["tensorboard", "mlflow"],
)


@pytest.fixture(autouse=True)
def _mlflow_file_store(monkeypatch):
    """Reading the file store back needs MLflow 3's opt-in too (robustscale sets it for itself)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _csv(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    rows = read_csv_rows(run / "metrics.csv")
    return [k for k in rows[0] if k != "epoch"], rows


def _tensorboard(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


def _hparams_of(recipe) -> dict:
    from robustscale.trackers.base import hparam_value

    return {k: hparam_value(v) for k, v in recipe.to_dict().items()}


def _tensorboard_hparams(run: Path) -> dict:
    """The recipe as TensorBoard's hparams plugin reads it (the session start info)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    meta = acc.SummaryMetadata("_hparams_/session_start_info")
    data = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    out = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def _mlflow(run: Path) -> tuple[object, str]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    return MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri()), state["run_id"]


def test_killed_and_resumed_run_logs_every_epoch_once_equal_to_the_files(tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(KILL_RECIPE.to_yaml())
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "robustscale",
        "train",
        str(recipe_path),
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        state = (
            json.loads((run / "trackers.json").read_text())
            if (run / "trackers.json").exists()
            else {}
        )
        if (
            state.get("tensorboard", {}).get("epoch") == 1
            and (run / "checkpoints" / "last.pt").exists()
        ):
            if ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mlflow_run_before = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "warning" not in resumed.stderr

    columns, rows = _csv(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    cost = json.loads((run / "cost.json").read_text())
    curves = _tensorboard(run)
    client, run_id = _mlflow(run)
    assert run_id == mlflow_run_before  # the resumed process continued the same MLflow run
    for name in columns:
        want = [(int(r["epoch"]), float(r[name])) for r in rows if r[name] != ""]
        assert want, name
        assert curves[name] == want, name  # every step once, values bit-equal to metrics.csv
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert history == want, name
    for name, key in COST_KEYS.items():
        if cost.get(key) is None:
            continue
        assert curves[name][-1] == (3, cost[key])
        assert client.get_metric_history(run_id, name)[-1].value == cost[key]
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == KILL_RECIPE.run_id
    assert (
        mlrun.data.params["attack_steps"] == "2"
        and mlrun.data.params["trackers"] == "['tensorboard', 'mlflow']"
    )
    assert client.get_experiment(mlrun.info.experiment_id).name == "robustscale"
    assert _tensorboard_hparams(run) == {
        k: v if not isinstance(v, int) or isinstance(v, bool) else float(v)
        for k, v in _hparams_of(KILL_RECIPE).items()
    }

    # a process killed after its last TensorBoard write but before trackers.json said so:
    # the next one purges those steps and writes them again, still once each
    state = json.loads((run / "trackers.json").read_text())
    state["tensorboard"]["epoch"] = 1
    (run / "trackers.json").write_text(json.dumps(state))
    again = TrackerSet(["tensorboard"], run, KILL_RECIPE.to_dict(), KILL_RECIPE.run_id)
    again.sync_epochs()
    again.close(finished=True)
    assert _tensorboard(run)["train_loss"] == curves["train_loss"]


def test_final_evaluation_reaches_the_trackers(tmp_path):
    run = train(
        tiny(epochs=1, trackers=["tensorboard", "mlflow"]),
        out_root=tmp_path,
        progress=False,
        final_eval="pgd",
    )
    result = json.loads(next((run / "eval").glob("pgd-*.json")).read_text())
    assert _tensorboard(run)["pgd40_acc"] == [(1, result["robust_acc"])]
    client, run_id = _mlflow(run)
    assert client.get_run(run_id).data.metrics["pgd40_acc"] == result["robust_acc"]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_wandb_offline_run_in_a_sweep_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from robustscale.sweep.ledger import Ledger

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    (tmp_path / "wandb-home").mkdir()
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    Ledger(sweep / "ledger.sqlite").set_meta(name="grid-7")
    recipe = tiny(epochs=1, trackers=["wandb", "mlflow"])
    run = train(recipe, run_dir=sweep / "runs" / recipe.run_id, progress=False)
    wandb_id = json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    files = list(
        (tmp_path / "wandb-home" / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb")
    )
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert b"grid-7" in files[0].read_bytes()  # the W&B group is the sweep's name
    client, run_id = _mlflow(run)
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "grid-7"


def test_a_failing_tracker_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from robustscale.trackers.tensorboard_tracker import TensorBoardTracker

    def broken(self, step, values):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(TensorBoardTracker, "log", broken)
    with caplog.at_level(logging.WARNING, logger="robustscale.trackers"):
        run = train(
            tiny(epochs=2, trackers=["tensorboard", "mlflow"]), out_root=tmp_path, progress=False
        )
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    warnings = [
        r.getMessage() for r in caplog.records if "tracker tensorboard failed" in r.getMessage()
    ]
    assert len(warnings) == 1 and "disk quota exceeded" in warnings[0]
    client, run_id = _mlflow(run)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [
        1,
        2,
    ]  # the others go on


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from robustscale.cli import main

    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_unknown_tracker_is_one_line_and_writes_nothing(tmp_path, capsys):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(tiny(epochs=1).to_yaml())
    code, err = _cli(
        [
            "train",
            str(recipe_path),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "trackers=[tensorboard, neptune]",
        ],
        capsys,
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "'neptune'" in err and "tensorboard, mlflow, wandb" in err
    assert not (tmp_path / "run").exists()


def test_missing_tracker_extra_names_the_extra_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(RobustscaleError, match=r'pip install "robustscale\[wandb\]"'):
        train(tiny(epochs=1, trackers=["wandb"]), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_unwritable_tracker_folder_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{blocker / 'mlruns'}")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(tiny(epochs=1, trackers=["mlflow"]).to_yaml())
    code, err = _cli(
        ["train", str(recipe_path), "--run-dir", str(tmp_path / "run"), "--no-progress"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "a-file" in err and "mlflow" in err
    assert not (tmp_path / "run").exists()


def test_trackers_do_not_change_the_run_id():
    assert tiny(trackers=["tensorboard", "wandb"]).run_id == tiny().run_id
    assert tiny(trackers="mlflow").trackers == ["mlflow"]
