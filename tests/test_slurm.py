"""The Slurm launcher's resubmission rules, requeue limit and option checks, without a real Slurm:
fake ``sbatch``, ``squeue`` and ``sacct`` on PATH (the same paths against a real slurmctld/slurmd:
tests/test_slurm_cluster.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml

from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.sweep.ledger import Ledger
from robustscale.sweep.slurm import SlurmOptions, dead_jobs, runs_to_submit
from robustscale.sweep.slurm_queue import ask_sacct, ask_squeue, queue_view

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "recipes" / "sweeps" / "digits-small.yaml"  # 8 runs

SACCT_HEADER = "JobID|State\n"


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch):
    """Fake sbatch (job ids 1234, 1235, ...; each call's arguments and script logged), squeue
    (prints FAKE_SQUEUE_OUT, or fails with its text after "FAIL") and sacct (prints
    FAKE_SACCT_OUT after its header); squeue and sacct log their arguments to <out>.args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, counter = tmp_path / "sbatch.log", tmp_path / "sbatch.n"
    sacct_out, squeue_out = tmp_path / "sacct.out", tmp_path / "squeue.out"
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\necho "ARGS $@" >> "$FAKE_SBATCH_LOG"\n'
        'for a in "$@"; do f="$a"; done\ncat "$f" >> "$FAKE_SBATCH_LOG"\n'
        'n=$(cat "$FAKE_SBATCH_N" 2>/dev/null || echo 1233); n=$((n + 1)); '
        'echo $n > "$FAKE_SBATCH_N"\n'
        'echo "Submitted batch job $n"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sacct").write_text(
        '#!/bin/sh\necho "$@" >> "$FAKE_SACCT_OUT.args"\n'
        f'printf "{SACCT_HEADER}"\ncat "$FAKE_SACCT_OUT" 2>/dev/null\n'
    )
    (bin_dir / "squeue").write_text(
        '#!/bin/sh\necho "$@" >> "$FAKE_SQUEUE_OUT.args"\n'
        'if grep -q "^FAIL" "$FAKE_SQUEUE_OUT" 2>/dev/null; then\n'
        '  sed 1d "$FAKE_SQUEUE_OUT" >&2; exit 1\nfi\n'
        'cat "$FAKE_SQUEUE_OUT" 2>/dev/null\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(log))
    monkeypatch.setenv("FAKE_SBATCH_N", str(counter))
    monkeypatch.setenv("FAKE_SACCT_OUT", str(sacct_out))
    monkeypatch.setenv("FAKE_SQUEUE_OUT", str(squeue_out))
    return {"log": log, "sacct": sacct_out, "squeue": squeue_out, "bin": bin_dir}


def _ledger_with_every_state(path: Path) -> Ledger:
    """r0 pending unsubmitted, r1 pending under job 10_1, r2 pending under job 10_2, r3 failed once,
    r4 failed 3 times, r5 running (fresh lease), r6 done."""
    ledger = Ledger(path, wal=False)
    ledger.add_runs([(f"r{i}", i, "") for i in range(7)])
    ledger.record_jobs([("r1", "10_1"), ("r2", "10_2")])
    kw = {"max_attempts": 3, "lease_timeout": 60.0}
    ledger.finish(ledger.claim(["r3"], **kw), ok=False, error="boom")
    for _ in range(3):
        ledger.finish(ledger.claim(["r4"], **kw), ok=False, error="boom")
    ledger.claim(["r5"], **kw)
    ledger.finish(ledger.claim(["r6"], **kw), ok=True)
    return ledger


def test_pending_runs_are_resubmitted_only_when_their_job_is_over(tmp_path):
    ledger = _ledger_with_every_state(tmp_path / "ledger.sqlite")
    asked = []

    def over(job_ids):
        asked.append(sorted(job_ids))
        return {"10_2"}

    ids = [f"r{i}" for i in range(7)]
    kw = {"max_attempts": 3, "lease_timeout": 60.0}
    assert runs_to_submit(ledger, ids, resubmit=False, jobs_over=over, **kw) == ["r0", "r2", "r3"]
    assert asked == [["10_1", "10_2"]]  # only pending runs' jobs are looked up
    assert runs_to_submit(ledger, ids, resubmit=True, jobs_over=over, **kw) == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]
    assert runs_to_submit(ledger, ids, resubmit=False, **kw) == [
        "r0",
        "r3",
    ]  # nothing to ask: as before


def test_squeue_lists_live_jobs_and_a_job_it_does_not_list_is_over(fake_slurm):
    fake_slurm["squeue"].write_text(
        "1234_0   RUNNING   0   None\n1234_3   PENDING   2   BeginTime\n"
        "1234_6   COMPLETED 0   None\n77       PENDING   0   Priority\n"
    )
    jobs = ["1234_0", "1234_1", "1234_3", "1234_6", "77"]
    view = ask_squeue(jobs)
    assert view.source == "squeue"
    assert (
        view.jobs["1234_3"].shown == "PENDING (requeued 2x)"
        and view.jobs["1234_0"].shown == "RUNNING"
    )
    args = fake_slurm["squeue"].with_suffix(".out.args").read_text()
    assert "--jobs 1234,77" in args and "--states=all" in args and "--array" in args
    # squeue lists every job that is not over (and those that ended within MinJobAge)
    assert dead_jobs(jobs) == {"1234_1", "1234_6"}
    fake_slurm["squeue"].write_text("FAIL\nslurm_load_jobs error: Invalid job id specified\n")
    assert ask_squeue(jobs).jobs == {} and dead_jobs(jobs) == set(jobs)  # none is known any more


def test_without_squeue_sacct_is_asked_and_lags(fake_slurm):
    fake_slurm["squeue"].write_text(
        "FAIL\nslurm_load_jobs error: Unable to contact slurm controller\n"
    )
    fake_slurm["sacct"].write_text(
        "1234_0|TIMEOUT\n1234_0.batch|CANCELLED\n1234_1|CANCELLED by 1000\n"
        "1234_[2-5%2]|PENDING\n1234_6|RUNNING\n77|COMPLETED\n"
    )
    jobs = ["1234_0", "1234_1", "1234_3", "1234_6", "1234_7", "77"]
    view = queue_view(jobs)
    assert view.source == "sacct"
    assert {j: i.state for j, i in view.jobs.items()} == {
        "1234_0": "TIMEOUT",
        "1234_1": "CANCELLED",
        "1234_3": "PENDING",
        "1234_6": "RUNNING",
        "77": "COMPLETED",
    }
    assert "-j 1234,77" in fake_slurm["sacct"].with_suffix(".out.args").read_text()
    # a job sacct does not list (yet) is taken for alive: accounting lags behind submissions
    assert dead_jobs(jobs) == {"1234_0", "1234_1", "77"}
    assert ask_sacct(jobs).source == "sacct"


def test_when_slurm_cannot_be_asked_no_pending_run_is_resubmitted(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither squeue nor sacct here
    assert queue_view(["1_0"]) is None and dead_jobs(["1_0"]) == set()


def _submitted_countdowns(out: Path) -> list[int]:
    pkls = sorted((out / "slurm").rglob("*_submitted.pkl"))
    assert pkls, "submitit wrote no job pickle"
    return [pickle.loads(p.read_bytes())._timeout_countdown for p in pkls]


def test_cli_resubmits_runs_whose_job_is_gone_and_raises_the_requeue_limit(tmp_path, fake_slurm):
    out = tmp_path / "out"
    log = fake_slurm["log"]
    assert (
        main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm", "--time-min", "30"])
        == 0
    )
    assert log.read_text().count("ARGS") == 1
    assert set(_submitted_countdowns(out)) == {
        1000
    }  # submitit's default would stop after 3 time-outs
    # task 0 timed out too often and was given back; task 1 was cancelled while queued; the rest
    # wait
    fake_slurm["squeue"].write_text(
        "".join(f"1234_{i} PENDING 0 JobArrayTaskLimit\n" for i in range(2, 8))
    )
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm"]) == 0
    text = log.read_text()
    assert text.count("ARGS") == 2 and "#SBATCH --array=0-1%2" in text
    rows = Ledger(out / "ledger.sqlite").rows()
    assert [r["job_id"] for r in rows] == ["1235_0", "1235_1"] + [f"1234_{i}" for i in range(2, 8)]
    # both resubmitted jobs are alive now: nothing more to send
    fake_slurm["squeue"].write_text(
        "".join(
            f"{j} PENDING 0 Priority\n"
            for j in ["1235_0", "1235_1", *(f"1234_{i}" for i in range(2, 8))]
        )
    )
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm"]) == 0
    assert log.read_text().count("ARGS") == 2
    # --resubmit sends every pending run again, with the requeue limit given
    assert (
        main(
            [
                "sweep",
                str(DIGITS),
                "--out",
                str(out),
                "--backend",
                "slurm",
                "--resubmit",
                "--max-timeouts",
                "7",
            ]
        )
        == 0
    )
    text = log.read_text()
    assert text.count("ARGS") == 3 and "#SBATCH --array=0-7%8" in text
    assert {r["job_id"] for r in Ledger(out / "ledger.sqlite").rows()} == {
        f"1236_{i}" for i in range(8)
    }
    assert 7 in _submitted_countdowns(out)


def test_slurm_only_flags_and_bad_limits_are_one_line(tmp_path, capsys):
    for extra, words in (
        (["--resubmit"], "for --backend slurm"),
        (["--backend", "slurm", "--max-timeouts", "-1"], "--max-timeouts=-1"),
    ):
        assert main(["sweep", str(DIGITS), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
    with pytest.raises(RobustscaleError, match="max_timeouts"):
        SlurmOptions.from_sources({"max_timeouts": "many"}, {})
    assert SlurmOptions.from_sources({"max_timeouts": 50}, {}).max_timeouts == 50
    assert SlurmOptions().max_timeouts == 1000


# ---- Slurm options are values, not script text (issue 21) -----------------------------------

INJECTIONS = [
    ({"partition": "gpu\ntouch INJECTED #"}, "partition"),
    ({"account": "lab; touch INJECTED"}, "account"),
    ({"qos": "normal touch"}, "qos"),
    ({"additional": {"comment": "x\ntouch INJECTED"}}, "comment"),
    ({"additional": {"constraint": "a100 --wrap=touch"}}, "constraint"),
    ({"additional": {"begin": "$(touch INJECTED)"}}, "begin"),
    ({"additional": {"x\ntouch INJECTED": 1}}, "touch"),
    ({"additional": {"output": "/tmp/elsewhere"}}, "set by the launcher"),
    ({"additional": ["exclusive"]}, "a mapping"),
    ({"time_min": "30\ntouch"}, "time_min"),
    ({"gpus_per_run": -1}, "gpus_per_run"),
]


@pytest.mark.parametrize(("slurm", "words"), INJECTIONS)
def test_slurm_options_that_could_add_script_lines_are_refused_before_anything_is_written(
    tmp_path, fake_slurm, capsys, slurm, words
):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"base": {"dataset": "digits", "epochs": 1}, "axes": {"seed": [0]}, "slurm": slurm}
        )
    )
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists() and not fake_slurm["log"].exists()  # nothing written, nothing submitted


def test_the_generated_script_holds_exactly_the_validated_options(tmp_path, fake_slurm):
    spec = tmp_path / "s.yaml"
    additional = {
        "constraint": "a100",
        "exclusive": True,
        "begin": "now+1hour",
        "nodelist": "node[1-2]",
        "requeue": False,
        "comment": "tag=robust,run:1",
    }
    spec.write_text(
        yaml.safe_dump(
            {
                "base": {"dataset": "digits", "epochs": 1},
                "axes": {"seed": [0, 1]},
                "slurm": {"partition": "gpu,debug", "qos": "high", "additional": additional},
            }
        )
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                str(spec),
                "--out",
                str(out),
                "--backend",
                "slurm",
                "--time-min",
                "30",
                "--gpus-per-run",
                "0",
                "--cpus-per-task",
                "4",
            ]
        )
        == 0
    )
    script = fake_slurm["log"].read_text().split("\n", 1)[1]  # after the ARGS line
    lines = [ln for ln in script.splitlines() if ln.strip()]
    options = [ln for ln in lines if ln.startswith("#SBATCH ")]
    for line in (
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --begin=now+1hour",
        "#SBATCH --nodelist='node[1-2]'",
        "#SBATCH --comment=tag=robust,run:1",
        "#SBATCH --partition=gpu,debug",
        "#SBATCH --qos=high",
        "#SBATCH --cpus-per-task=4",
    ):
        assert line in options
    assert not any("requeue" in ln or "gpus" in ln or "gres" in ln for ln in options)
    # every line is a comment, an #SBATCH option, or one of submitit's own three command lines
    rest = [ln for ln in lines if not ln.startswith("#")]
    assert (
        len(rest) == 2
        and rest[0] == "export SUBMITIT_EXECUTOR=slurm"
        and rest[1].startswith("srun ")
    )
    assert (out / "slurm").stat().st_mode & 0o077 == 0  # the pickles the jobs run: owner only


@pytest.mark.parametrize(
    ("lease", "beat", "words"),
    [
        (-1, 30, "lease_timeout=-1"),
        (0, 30, "lease_timeout=0"),
        (float("nan"), 30, "lease_timeout=nan"),
        (float("inf"), 30, "lease_timeout=inf"),
        (900, 0, "heartbeat=0"),
        (60, 30, "at least 3x"),
        (1.5, 0.1, "lease_timeout=1.5"),
        (900, True, "heartbeat=True"),
    ],
)
def test_leases_that_could_livelock_are_refused(lease, beat, words):
    with pytest.raises(RobustscaleError, match=words.replace("(", r"\(")):
        SlurmOptions.from_sources({"lease_timeout": lease, "heartbeat": beat}, {})
    assert SlurmOptions.from_sources({"lease_timeout": 2, "heartbeat": 0.5}, {}).lease_timeout == 2


def test_signal_delay_must_fall_inside_the_time_limit():
    with pytest.raises(RobustscaleError, match="signal_delay_s=60"):
        SlurmOptions.from_sources({"time_min": 1, "signal_delay_s": 60}, {})
    assert SlurmOptions(time_min=1).executor_parameters("x")["slurm_signal_delay_s"] == 30
    assert SlurmOptions().executor_parameters("x")["slurm_signal_delay_s"] == 90
