"""benchmarks/device_check.py at --quick sizes on the CPU: the steps the first GPU lease will run,
each result in the JSON as it comes, time limits that cut a step and let the rest run, and an
existing output folder added to, never overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    # --device cuda on a machine without one: one line, then the CPU steps at --quick sizes
    # (the compile variant is left out: inductor's first CPU compile alone takes ~40 s)
    out = tmp_path_factory.mktemp("device-check")
    proc = _run("--out", str(out), "--device", "cuda", "--quick", "--no-compile")
    return out, proc


@pytest.mark.slow
def test_quick_check_runs_every_step_and_records_each_section(checked):
    out, proc = checked
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if "no CUDA device" in ln]
    assert len(notes) == 1 and "the CPU steps run" in notes[0]
    data = json.loads((out / "device-check.json").read_text())
    (session,) = data["sessions"]
    assert session["device"] == "cpu" and session["requested_device"] == "cuda" and session["quick"]
    steps = session["steps"]
    assert list(steps) == ["environment", "cuda_tests", "train_step", "train_eval"]
    assert all(e["state"] == "done" for e in steps.values()), {
        k: e["state"] for k, e in steps.items()
    }

    (env,) = steps["environment"]["records"]
    assert env["torch"] and env["cpu"] and env["threads"] == 1

    (tests,) = steps["cuda_tests"]["records"]  # collected, and skipped with the reason here
    assert tests["skipped"] >= 4 and tests["passed"] == tests["failed"] == tests["error"] == 0
    assert all("needs a CUDA GPU" in t["message"] for t in tests["tests"])

    rows = steps["train_step"]["records"]
    by_variant = {(r["variant"], r["impl"]): r for r in rows}
    assert ("fp32 (+ baseline)", "baseline") in by_variant
    assert {v for v, _ in by_variant} == {
        "fp32 (+ baseline)",
        "bf16",
        "bf16 + channels_last",
        "trades bf16 + channels_last",
        "trades bf16 + channels_last + checkpointing",
    }
    assert all(r["examples_per_s"] > 0 and r["fits"] for r in rows)
    assert by_variant[("trades bf16 + channels_last + checkpointing", "robustscale")][
        "grad_checkpointing"
    ]
    assert all(r["projected_wall_s"] > 0 for r in rows if r["loss"] == "trades")

    parts = {r["part"]: r for r in steps["train_eval"]["records"]}
    train, cli, versus = parts["train"], parts["eval-cli"], parts["autoattack-vs-plain"]
    assert train["exit_code"] == 0 and train["status"] == "done" and train["metrics_rows"] == 2
    assert {"recipe.yaml", "metrics.csv", "cost.json", "checkpoints", "status.json"} <= set(
        train["run_files"]
    )
    assert cli["exit_code"] == 0 and 0 <= cli["robust_acc"] <= cli["clean_acc"]
    assert any(
        "autoattack" in f and f.endswith(".json") for f in cli["eval_files"]
    )  # a real eval record
    assert versus["verdicts_identical"] and versus["robust_acc"] == cli["robust_acc"]

    table = (out / "device-check.md").read_text()
    assert proc.stdout.strip().endswith(table.strip().splitlines()[-1])  # the table is printed last
    assert (
        "| train_eval | done |" in table and "trades bf16 + channels_last + checkpointing" in table
    )


@pytest.mark.slow
def test_a_step_past_its_limit_is_cut_the_rest_run_and_earlier_results_stay(checked):
    out, first = checked
    before = (out / "device-check.json").read_text()
    proc = _run(
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quick",
        "--no-compile",
        "--skip",
        "cuda_tests,train_eval",
        "--limit",
        "train_step=1",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "device-check.json").read_text())
    assert (
        data["sessions"][0] == json.loads(before)["sessions"][0]
    )  # the first session is kept as it was
    second = data["sessions"][1]
    states = {k: e["state"] for k, e in second["steps"].items()}
    assert states == {
        "environment": "done",
        "train_step": "timed out",
        "cuda_tests": "skipped (--skip)",
        "train_eval": "skipped (--skip)",
    }
    assert (out / "s1.log").exists() and (out / "s2.log").exists()
    assert (out / "device-check.md").read_text().count("## device check, session") == 2


def test_bad_flags_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "never"
    for args in (["--skip", "train"], ["--limit", "train_step=-1"], ["--limit", "nosuch=3"]):
        proc = _run("--out", str(out), "--device", "cpu", *args, timeout=60)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
