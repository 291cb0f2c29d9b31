"""Sweeps: grid expansion, the SQLite ledger under concurrent launchers, stale leases, retries,
the status table, and the Slurm launcher (submitit's local executor, a faked sbatch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import tiny

from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.runs import read_status
from robustscale.sweep import load_sweep
from robustscale.sweep.launch import LaunchOptions, launch_local
from robustscale.sweep.ledger import Ledger, pid_alive
from robustscale.sweep.status import sweep_status

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "recipes" / "sweeps" / "paper-cifar10.yaml"
DIGITS = ROOT / "recipes" / "sweeps" / "digits-small.yaml"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Child trainings share 2 cores with the test runner: one OpenMP thread each avoids spinning.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_sweep(folder: Path, axes: dict, zips: list | None = None, **base) -> Path:
    """A sweep of tiny digits runs (1 epoch, 1 attack step) in ``folder``."""
    recipe = tiny(
        **{"attack_steps": 1, "val_attack_steps": 2, "val_size": 64, "epochs": 1, **base}
    ).to_dict()
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": recipe, "axes": axes, "zip": zips or []}))
    return path


def launcher(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "robustscale", "sweep", str(spec), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metric_epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(ln.split(",")[0]) for ln in lines]


# ---- the sweep file ----------------------------------------------------------------------------


def wait_for_first_epoch(run_dir, seconds: float = 240):
    """The run's status once it has finished an epoch, or None after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status = read_status(run_dir) if (run_dir / "status.json").exists() else None
        if status and status["epoch"] >= 1:
            return status
        time.sleep(0.05)
    return None


def test_paper_grid_expands_to_320_distinct_runs_with_the_paper_values():
    sweep = load_sweep(PAPER, check_files=False)
    runs = [r.recipe for r in sweep.runs]
    assert len(runs) == 320
    assert len({r.run_id for r in runs}) == 320
    assert [r.run_id for r in load_sweep(PAPER, check_files=False).runs] == [
        r.run_id for r in runs
    ]  # stable
    sizes = ("wrn28_10", "wrn34_10", "wrn34_20", "wrn70_16")
    assert Counter(r.model for r in runs) == {m: 40 for s in sizes for m in (s, f"dm_{s}")}
    # the smooth-activation arm is the DeepMind WRN with Swish, as the paper's code trained it
    assert Counter((r.model.startswith("dm_"), r.activation) for r in runs) == {
        (False, "relu"): 160,
        (True, "silu"): 160,
    }
    assert Counter(r.loss for r in runs) == {"pgd": 160, "trades": 160}
    assert Counter(r.attack_steps for r in runs) == {k: 64 for k in (1, 2, 5, 7, 10)}
    for r in runs:
        assert r.dataset == "cifar10" and r.eps == pytest.approx(8 / 255)
        assert r.step_size == pytest.approx(10 / 255 if r.attack_steps == 1 else 2 / 255)
        assert (r.epochs, r.ema_decay) in ((100, None), (400, 0.995))
        assert (r.synthetic_data is None and r.synthetic_fraction == 0) or (
            r.synthetic_data.endswith(".npz") and r.synthetic_fraction == 0.7
        )
    assert Counter(r.epochs for r in runs) == {100: 160, 400: 160}
    assert sum(r.synthetic_data is not None for r in runs) == 160
    assert sweep.unchecked_files == ["data/cifar10-1m-synthetic.npz"]


def test_a_missing_synthetic_file_fails_expansion_in_one_line_except_for_dry_runs():
    with pytest.raises(RobustscaleError) as err:
        load_sweep(PAPER)
    msg = str(err.value)
    assert (
        "\n" not in msg
        and "synthetic_data='data/cifar10-1m-synthetic.npz'" in msg
        and "run 2" in msg
    )


def test_dry_run_lists_runs_with_forecast_flops(capsys):
    from robustscale.cost import forecast_recipe

    assert main(["sweep", str(DIGITS), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 8 and len({r["run_id"] for r in out["runs"]}) == 8
    assert set(out["runs"][0]["varying"]) == {
        "loss",
        "attack_steps",
        "step_size",
        "epochs",
        "ema_decay",
    }
    # per-example FLOPs are measured at 1 and 2 steps and extended linearly: exact at 3 steps
    sweep = load_sweep(DIGITS)
    for run, listed in zip(sweep.runs, out["runs"]):
        if run.recipe.attack_steps == 3 and run.recipe.loss == "trades":
            assert listed["train_flops"] == pytest.approx(
                forecast_recipe(run.recipe)["train_flops_total"], rel=1e-9
            )
    assert main(["sweep", str(PAPER), "--dry-run", "--no-flops"]) == 0
    text = capsys.readouterr().out
    assert "320 runs in sweep paper-cifar10" in text and "not checked in a dry run" in text


def test_sweep_file_mistakes_are_one_line_errors(tmp_path):
    base = {"dataset": "digits"}
    cases = [
        (
            {"base": base, "zip": [{"attack_steps": [1, 2], "step_size": [0.1]}]},
            "different lengths",
        ),
        ({"base": base, "axes": {"device": ["cpu", "auto"]}}, "same recipe"),
        ({"base": base, "axes": {"epochs": [1]}, "zip": [{"epochs": [2]}]}, "more than one axis"),
        ({"base": base, "grid": {}}, "unknown sweep key 'grid'"),
        ({"base": "missing.yaml"}, "relative to the sweep file"),
        ({"base": base, "axes": {"lr": [-1]}}, "lr=-1"),
    ]
    for spec, expected in cases:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(RobustscaleError, match=expected):
            load_sweep(path)
    for text, expected in [
        ("", "is empty"),
        ("[1, 2]\n", "must hold a mapping"),
        ("a: [\n", "not valid YAML"),
    ]:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(RobustscaleError, match=expected):
            load_sweep(path)
    with pytest.raises(RobustscaleError, match="does not exist"):
        load_sweep(tmp_path / "nowhere.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"dataset": "digits", "epochs": 3}))
    (tmp_path / "sub" / "s.yaml").write_text(
        yaml.safe_dump({"base": "../r.yaml", "axes": {"seed": [0, 1]}})
    )
    runs = load_sweep(tmp_path / "sub" / "s.yaml", {"lr": 0.01}).runs
    assert [(r.recipe.epochs, r.recipe.seed, r.recipe.lr) for r in runs] == [
        (3, 0, 0.01),
        (3, 1, 0.01),
    ]


# ---- the ledger --------------------------------------------------------------------------------


def test_ledger_claims_are_exclusive_and_stale_leases_are_taken_over(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ids = [f"r{i}" for i in range(30)]
    ledger.add_runs([(rid, i, "") for i, rid in enumerate(ids)])
    got: list[str] = []

    def worker():
        own = Ledger(tmp_path / "ledger.sqlite")
        while (c := own.claim(ids, max_attempts=3, lease_timeout=60)) is not None:
            got.append(c.run_id)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # each run claimed exactly once
    assert ledger.claim(ids, max_attempts=3, lease_timeout=60) is None
    # a lease without heartbeats goes stale and is taken over (attempt 2)
    time.sleep(0.3)
    claim = ledger.claim(ids, max_attempts=3, lease_timeout=0.2)
    assert claim is not None and claim.attempt == 2 and claim.took_over
    rows = {r["run_id"]: r for r in ledger.rows()}
    assert rows[claim.run_id]["lease"] == claim.token
    assert (
        ledger.meta() == {}
        and ledger.unsettled(ids, max_attempts=3, lease_timeout=60)["held"] == 30
    )


# ---- the local launcher ------------------------------------------------------------------------


def test_two_concurrent_launchers_run_each_run_once(tmp_path):
    spec = write_sweep(tmp_path, {"seed": [0, 1], "loss": ["pgd", "trades"]})
    out = tmp_path / "out"
    procs = [launcher(spec, out, "--heartbeat", "1", "--lease-timeout", "60") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = Ledger(out / "ledger.sqlite").rows()
    assert (
        len(rows) == 4
        and {r["state"] for r in rows} == {"done"}
        and {r["attempts"] for r in rows} == {1}
    )
    for r in rows:
        log = (out / "logs" / f"{r['run_id']}.log").read_text()
        assert log.count("=== attempt") == 1
        assert metric_epochs(out / "runs" / r["run_id"]) == [1]
    started = [ln for o in outputs for ln in o.splitlines() if ": started" in ln]
    assert len(started) == 4  # the two launchers shared the work, nobody ran a run twice


def test_a_killed_launcher_leaves_a_stale_lease_that_the_next_takes_over_and_resumes(tmp_path):
    spec = write_sweep(tmp_path, {"seed": [3]}, epochs=4)
    out = tmp_path / "out"
    first = launcher(spec, out, "--heartbeat", "0.5", "--lease-timeout", "3")
    rid = load_sweep(spec).runs[0].run_id
    run_dir = out / "runs" / rid
    status = wait_for_first_epoch(run_dir)
    if status is None:
        first.kill()
        pytest.fail(f"the run never finished an epoch: {first.communicate()[0]}")
    first.send_signal(signal.SIGKILL)
    first.wait()
    trainer = status["pid"]
    deadline = time.time() + 30
    while pid_alive(trainer) and time.time() < deadline:  # the child dies with its launcher
        time.sleep(0.1)
    assert not pid_alive(trainer)
    row = Ledger(out / "ledger.sqlite").rows()[0]
    assert row["state"] == "running" and row["pid"] == first.pid  # a lease nobody renews
    counts = launch_local(
        load_sweep(spec), out, LaunchOptions(lease_timeout=3, heartbeat=0.5, poll=0.5)
    )
    assert counts["done"] == 1
    row = Ledger(out / "ledger.sqlite").rows()[0]
    assert row["state"] == "done" and row["attempts"] == 2
    assert metric_epochs(run_dir) == [1, 2, 3, 4]  # no epoch lost, none repeated
    assert "resuming" in (out / "logs" / f"{rid}.log").read_text()


def test_failed_runs_are_retried_then_reported(tmp_path, capsys):
    spec = write_sweep(tmp_path, {"model": ["wrn10_1", "no_such_model"]})
    out = tmp_path / "out"
    counts = launch_local(load_sweep(spec), out, LaunchOptions(max_attempts=2, poll=0.2))
    assert counts == {"pending": 0, "running": 0, "done": 1, "failed": 1}
    rows = {r["label"]: r for r in Ledger(out / "ledger.sqlite").rows()}
    bad = rows["model=no_such_model"]
    assert (
        bad["attempts"] == 2
        and "no_such_model" in bad["last_error"]
        and "\n" not in bad["last_error"]
    )
    assert rows["model=wrn10_1"]["attempts"] == 1
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 done, 1 failed" in text and "failed:" in text
    assert (
        f"{bad['run_id']} (after 2 attempts): model='no_such_model' is not a registered timm model"
        in text
    )
    # starting again: the done run is skipped; the failed one only gets tries that are left
    assert (
        launch_local(load_sweep(spec), out, LaunchOptions(max_attempts=2, poll=0.2))["failed"] == 1
    )
    assert Ledger(out / "ledger.sqlite").rows()[1]["attempts"] == 2
    launch_local(load_sweep(spec), out, LaunchOptions(max_attempts=3, poll=0.2))
    rows = {r["label"]: r for r in sweep_status(out)}
    assert rows["model=no_such_model"]["attempts"] == 3 and rows["model=wrn10_1"]["attempts"] == 1
    assert rows["model=wrn10_1"]["epoch"] == 1 and rows["model=wrn10_1"]["epochs"] == 1


# ---- Slurm through submitit ----------------------------------------------------------------------


def test_slurm_submission_with_a_faked_sbatch(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\necho "ARGS $@" >> "$FAKE_SBATCH_LOG"\n'
        'for a in "$@"; do f="$a"; done\ncat "$f" >> "$FAKE_SBATCH_LOG"\n'
        'echo "Submitted batch job 1234"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    # squeue: every task of job 1234 still queued (a real squeue on this machine would not know it)
    (bin_dir / "squeue").write_text(
        '#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo "1234_$i PENDING 0 None"; done\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(record))
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                str(DIGITS),
                "--out",
                str(out),
                "--backend",
                "slurm",
                "--partition",
                "gpu",
                "--time-min",
                "30",
                "--array-parallelism",
                "2",
                "--max-attempts",
                "2",
            ]
        )
        == 0
    )
    script = record.read_text()
    assert script.count("ARGS") == 1  # one sbatch call: a job array
    for line in (
        "#SBATCH --array=0-7%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=30",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --signal=USR2@",
    ):
        assert line in script
    rows = Ledger(out / "ledger.sqlite").rows()
    assert [r["job_id"] for r in rows] == [f"1234_{i}" for i in range(8)] and {
        r["state"] for r in rows
    } == {"pending"}
    assert Ledger(out / "ledger.sqlite").meta()["backend"] == "slurm"
    # submitting again sends nothing: every run is already submitted
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm"]) == 0
    assert record.read_text().count("ARGS") == 1


def test_slurm_job_on_submitits_local_executor_is_preempted_requeued_and_resumes(tmp_path):
    from robustscale.sweep.slurm import SlurmOptions, launch_slurm

    spec = write_sweep(tmp_path, {"seed": [5]}, epochs=4)
    out = tmp_path / "out"
    sweep = load_sweep(spec)
    jobs = launch_slurm(
        sweep, out, SlurmOptions(time_min=10, heartbeat=0.5, lease_timeout=10), cluster="local"
    )
    assert len(jobs) == 1
    run_dir = out / "runs" / sweep.runs[0].run_id
    status = wait_for_first_epoch(run_dir)
    assert status is not None, "the run never finished an epoch"
    os.kill(
        status["pid"], signal.SIGUSR2
    )  # what Slurm sends the job before pre-emption or the time limit
    assert jobs[0].result() == "done"
    row = Ledger(out / "ledger.sqlite").rows()[0]
    assert row["state"] == "done" and row["attempts"] == 1  # a requeue is not a failed attempt
    assert metric_epochs(run_dir) == [1, 2, 3, 4]
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.*"))
    assert "resuming" in logs and "Requeued" in logs
