"""The Slurm launcher against a real single-node slurmctld/slurmd (``.ci/slurm-up`` starts it).

Marked ``slurm``; skipped with the reason when this machine cannot run Slurm (not root, no
packages). Jobs run this checkout's code (PYTHONPATH and the interpreter go with the job's
environment). Tiny digits runs and short polls keep the whole file to a few minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny

from robustscale.cli import main
from robustscale.runs import read_status
from robustscale.sweep.ledger import Ledger
from robustscale.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
STATE = Path("/var/lib/robustscale-slurm")

pytestmark = pytest.mark.slurm


def _started() -> list[str]:
    try:
        return (STATE / "started").read_text().splitlines()
    except OSError:
        return []


@pytest.fixture(scope="module")
def cluster():
    """A running Slurm (started by .ci/slurm-up when needed; what this fixture started it stops)."""
    if os.geteuid() != 0:
        pytest.skip(
            "real-Slurm tests need root (.ci/slurm-up installs packages and starts daemons)"
        )
    before = _started()
    res = subprocess.run(
        [str(ROOT / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=600
    )
    if res.returncode == 77:
        pytest.skip(f"Slurm cannot run here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, f".ci/slurm-up failed: {res.stderr}"
    ours = [ln.split() for ln in _started()[len(before) :] if ln.strip()]
    yield
    for _name, pid in reversed(ours):  # only what this fixture started, by its pid
        try:
            os.kill(int(pid), 15)
        except ProcessLookupError:
            pass


@pytest.fixture()
def env(cluster, monkeypatch, tmp_path):
    """Jobs import this checkout; every job a test submitted is cancelled at its end."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield tmp_path
    for ledger in tmp_path.rglob("ledger.sqlite"):
        ids = {r["job_id"].split("_")[0] for r in Ledger(ledger, wal=False).rows() if r["job_id"]}
        for base in ids:
            subprocess.run(["scancel", base], capture_output=True)
    for script in tmp_path.rglob(
        "*_submission.sh"
    ):  # jobs recorded nowhere (a second, racing start)
        subprocess.run(["scancel", script.name.split("_")[0]], capture_output=True)


def sweep_file(
    folder: Path, name: str, seeds: list[int], slurm: dict | None = None, **base
) -> Path:
    recipe = tiny(
        **{"attack_steps": 1, "val_attack_steps": 2, "val_size": 64, "epochs": 1, **base}
    ).to_dict()
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "base": recipe,
                "axes": {"seed": seeds},
                "slurm": {"time_min": 10, **(slurm or {})},
            }
        )
    )
    return path


def sweep_cli(spec: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "robustscale",
            "sweep",
            str(spec),
            "--out",
            str(out),
            "--backend",
            "slurm",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(predicate, seconds: float, what: str, poll: float = 0.3):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}")


def states(out: Path) -> list[str]:
    return [r["state"] for r in Ledger(out / "ledger.sqlite", wal=False).rows()]


def job_logs(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (out / "slurm").rglob("*_log.*"))


def squeue(job: str) -> list[tuple[str, str]]:
    res = subprocess.run(
        ["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True
    )
    return [tuple(ln.split()) for ln in res.stdout.splitlines() if ln.strip()]


def test_array_sweep_on_a_cpu_partition_runs_to_done_within_its_throttle_and_two_starts_train_once(
    env,
):
    spec = sweep_file(env, "cpu-array", [0, 1, 2])
    out = env / "out"
    flags = [
        "--gpus-per-run",
        "0",
        "--cpus-per-task",
        "1",
        "--array-parallelism",
        "2",
        "--time-min",
        "10",
    ]
    # two starts at once: they may both submit; each run must still train exactly once. The
    # jobs inherit OMP_NUM_THREADS=2; --cpus-per-task 1 must win in each job.
    starts = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "robustscale",
                "sweep",
                str(spec),
                "--out",
                str(out),
                "--backend",
                "slurm",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        for _ in range(2)
    ]
    said = [p.communicate(timeout=300)[0] for p in starts]
    assert [p.returncode for p in starts] == [0, 0], said
    scripts = sorted((out / "slurm").rglob("*_submission.sh"))
    arrays = sorted({s.name.split("_")[0] for s in scripts})
    text = scripts[0].read_text()
    assert "#SBATCH --array=0-2%2" in text and "#SBATCH --cpus-per-task=1" in text
    assert "gpus" not in text and "gres" not in text  # a CPU job: no GPU request at all
    most: Counter = Counter()

    def settled():
        for array in arrays:  # the %2 throttle, per array
            running = sum(state == "RUNNING" for _, state in squeue(array))
            most[array] = max(most[array], running)
        return set(states(out)) == {"done"} and not any(
            squeue(a) for a in arrays if any(s in ("RUNNING", "PENDING") for _, s in squeue(a))
        )

    wait_for(settled, 240, "the array to finish", poll=0.2)
    assert max(most.values()) <= 2, most
    rows = Ledger(out / "ledger.sqlite", wal=False).rows()
    assert {r["attempts"] for r in rows} == {1}  # nobody trained a run twice
    for r in rows:
        lines = (out / "runs" / r["run_id"] / "metrics.csv").read_text().splitlines()
        assert len(lines) == 2  # header + the one epoch, written once
    logs = job_logs(out)
    assert (
        logs.count("torch intra-op threads 1 (--cpus-per-task)") == 3 * len(arrays)
        and "resuming" not in logs
    )
    # a third start has nothing to do
    again = sweep_cli(spec, out, *flags)
    assert again.returncode == 0 and "submitted 0 run(s)" in again.stdout


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_preempted_then_timed_out_job_is_requeued_and_resumes_to_the_local_weights(env, capsys):
    # A 1-minute limit with USR2 5 s before it: slurmctld checks limits every 30 s and signals up to
    # a check early, so each start of the job gets USR2 25-55 s in. The run needs more than that
    # after the pre-emption's restart, even on an idle machine: a tiny digits epoch takes about
    # 0.6 s there (24 epochs finished before the time limit's signal once the machine was idle).
    epochs = 120
    recipe = dict(
        attack_steps=3, step_size=0.1, val_attack_steps=2, val_size=64, epochs=epochs, seed=7
    )
    spec = sweep_file(env, "requeue", [7], {"time_min": 1, "signal_delay_s": 5}, **recipe)
    out = env / "out"
    assert (
        main(["sweep", str(spec), "--out", str(out), "--backend", "slurm"]) == 0
    )  # one placeholder GPU
    row = Ledger(out / "ledger.sqlite", wal=False).rows()[0]
    job, run_dir = row["job_id"], out / "runs" / row["run_id"]
    local: dict = {}

    def train_here():  # the same recipe, trained here without interruption
        from robustscale import train

        local["dir"] = train(tiny(**recipe), out_root=env / "local", progress=False)

    reference = threading.Thread(target=train_here)
    reference.start()
    wait_for(
        lambda: (
            (run_dir / "status.json").exists()
            and read_status(run_dir)["epoch"] >= 1
            and ("RUNNING",) == tuple(s for _, s in squeue(job))
        ),
        180,
        "the first epoch",
    )
    shown = _status(out, capsys)
    assert job in shown and "RUNNING" in shown
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # a pre-emption
    wait_for(lambda: job_logs(out).count("Requeued job") >= 1, 60, "the requeue after USR2")
    wait_for(lambda: "(requeued" in _status(out, capsys), 30, "status to show the requeue")
    # a later start runs into slurmctld's own USR2 before the 1-minute limit
    wait_for(lambda: job_logs(out).count("Requeued job") >= 2, 180, "the requeue at the time limit")
    wait_for(lambda: states(out) == ["done"], 900, "the run to finish after its requeues")
    reference.join()
    logs = job_logs(out)
    assert logs.count("resuming") >= 2 and logs.count("Caught signal SIGUSR2") >= 2  # we sent one
    row = Ledger(out / "ledger.sqlite", wal=False).rows()[0]
    assert row["attempts"] == 1 and row["last_error"] in (
        None,
        "requeued",
    )  # requeues are not failures
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert [int(ln.split(",")[0]) for ln in lines[1:]] == list(range(1, epochs + 1))
    a, b = _weights(run_dir), _weights(local["dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
        "weights differ from the local run"
    )


def _status(out: Path, capsys) -> str:
    capsys.readouterr()
    main(["status", str(out)])
    return capsys.readouterr().out


def test_a_job_cancelled_while_queued_leaves_its_run_pending_and_the_next_start_resubmits(
    env, capsys
):
    spec = sweep_file(env, "held", [3], {"additional": {"hold": True}})  # queued until released
    out = env / "out"
    assert (
        main(["sweep", str(spec), "--out", str(out), "--backend", "slurm", "--gpus-per-run", "0"])
        == 0
    )
    first = Ledger(out / "ledger.sqlite", wal=False).rows()[0]["job_id"]
    shown = _status(out, capsys)
    assert first in shown and "PENDING" in shown
    subprocess.run(["scancel", first], check=True)
    wait_for(lambda: all(s == "CANCELLED" for _, s in squeue(first)), 30, "the cancel")
    assert states(out) == ["pending"]
    assert "gone" in _status(out, capsys) or "CANCELLED" in _status(out, capsys)
    capsys.readouterr()
    assert (
        main(["sweep", str(spec), "--out", str(out), "--backend", "slurm", "--gpus-per-run", "0"])
        == 0
    )
    said = capsys.readouterr()
    second = Ledger(out / "ledger.sqlite", wal=False).rows()[0]["job_id"]
    assert second != first and "submitted 1 run(s)" in said.out
    assert (
        "asked squeue about 1 recorded job(s): 1 over" in said.out
    )  # no sacct here: it says what it asked
    assert states(out) == ["pending"] and second in _status(out, capsys)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--partition", "nope"], "invalid partition specified: nope"),
        (
            ["--gpus-per-run", "3"],
            "More processors requested than permitted",
        ),  # a task per GPU, 2 CPUs
        (["--time-min", "31"], "Requested time limit is invalid"),
    ],
)
def test_sbatch_refusals_are_one_line_and_submit_nothing(env, capsys, flags, words):
    spec = sweep_file(env, "refused", [0, 1])
    out = env / "out"
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "slurm", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("robustscale: error: sbatch refused")
        and words in err[0]
    ), err
    rows = Ledger(out / "ledger.sqlite", wal=False).rows()
    assert {r["state"] for r in rows} == {"pending"} and {r["job_id"] for r in rows} == {None}


def test_a_bad_gres_request_is_one_line(env, capsys):
    spec = sweep_file(env, "gres", [0], {"additional": {"gres": "fpga:1"}})
    assert (
        main(
            [
                "sweep",
                str(spec),
                "--out",
                str(env / "out"),
                "--backend",
                "slurm",
                "--gpus-per-run",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Invalid generic resource (gres) specification" in err[0], err
