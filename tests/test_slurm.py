"""The Slurm launcher's resubmission rules and requeue limit, without a real Slurm: fake
``sbatch`` and ``sacct`` on PATH (see also the Slurm tests in test_sweep.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.sweep.ledger import Ledger
from robustscale.sweep.slurm import (
    SlurmOptions,
    dead_jobs,
    runs_to_submit,
    slurm_job_states,
)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "recipes" / "sweeps" / "digits-small.yaml"  # 8 runs

SACCT_HEADER = "JobID|State\n"


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch):
    """Fake sbatch (job ids 1234, 1235, ...; each call's arguments and script logged) and sacct
    (prints FAKE_SACCT_OUT after its header, logs its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, counter, sacct_out = tmp_path / "sbatch.log", tmp_path / "sbatch.n", tmp_path / "sacct.out"
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\necho "ARGS $@" >> "$FAKE_SBATCH_LOG"\n'
        'for a in "$@"; do f="$a"; done\ncat "$f" >> "$FAKE_SBATCH_LOG"\n'
        'n=$(cat "$FAKE_SBATCH_N" 2>/dev/null || echo 1233); n=$((n + 1)); echo $n > "$FAKE_SBATCH_N"\n'
        'echo "Submitted batch job $n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sacct").write_text('#!/bin/sh\necho "$@" >> "$FAKE_SACCT_OUT.args"\n'
                                   f'printf "{SACCT_HEADER}"\ncat "$FAKE_SACCT_OUT" 2>/dev/null\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(log))
    monkeypatch.setenv("FAKE_SBATCH_N", str(counter))
    monkeypatch.setenv("FAKE_SACCT_OUT", str(sacct_out))
    return {"log": log, "sacct": sacct_out, "bin": bin_dir}


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
    assert runs_to_submit(ledger, ids, resubmit=True, jobs_over=over, **kw) == ["r0", "r1", "r2", "r3"]
    assert runs_to_submit(ledger, ids, resubmit=False, **kw) == ["r0", "r3"]  # nothing to ask: as before


def test_sacct_states_are_read_for_single_tasks_ranges_and_reasons(fake_slurm):
    fake_slurm["sacct"].write_text("1234_0|TIMEOUT\n1234_0.batch|CANCELLED\n1234_1|CANCELLED by 1000\n"
                                   "1234_[2-5%2]|PENDING\n1234_6|RUNNING\n77|COMPLETED\n")
    jobs = ["1234_0", "1234_1", "1234_3", "1234_6", "1234_7", "77"]
    states = slurm_job_states(jobs)
    assert states == {"1234_0": "TIMEOUT", "1234_1": "CANCELLED", "1234_3": "PENDING", "1234_6": "RUNNING",
                      "77": "COMPLETED"}
    assert "-j 1234,77" in fake_slurm["sacct"].with_suffix(".out.args").read_text()
    # a job sacct does not list (yet) is taken for alive
    assert dead_jobs(jobs) == {"1234_0", "1234_1", "77"}


def test_without_sacct_no_pending_run_is_resubmitted(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sacct here
    assert slurm_job_states(["1_0"]) is None and dead_jobs(["1_0"]) == set()


def _submitted_countdowns(out: Path) -> list[int]:
    pkls = sorted((out / "slurm").rglob("*_submitted.pkl"))
    assert pkls, "submitit wrote no job pickle"
    return [pickle.loads(p.read_bytes())._timeout_countdown for p in pkls]


def test_cli_resubmits_runs_whose_job_is_gone_and_raises_the_requeue_limit(tmp_path, fake_slurm):
    out = tmp_path / "out"
    log = fake_slurm["log"]
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm", "--time-min", "30"]) == 0
    assert log.read_text().count("ARGS") == 1
    assert set(_submitted_countdowns(out)) == {1000}  # submitit's default would stop after 3 time-outs
    # task 0 timed out too often and was given back; task 1 was cancelled while queued; the rest wait
    fake_slurm["sacct"].write_text("1234_0|TIMEOUT\n1234_1|CANCELLED by 0\n1234_[2-7%8]|PENDING\n")
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm"]) == 0
    text = log.read_text()
    assert text.count("ARGS") == 2 and "#SBATCH --array=0-1%2" in text
    rows = Ledger(out / "ledger.sqlite").rows()
    assert [r["job_id"] for r in rows] == ["1235_0", "1235_1"] + [f"1234_{i}" for i in range(2, 8)]
    # both resubmitted jobs are alive now: nothing more to send
    fake_slurm["sacct"].write_text("1235_[0-1]|PENDING\n1234_[2-7%8]|PENDING\n")
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm"]) == 0
    assert log.read_text().count("ARGS") == 2
    # --resubmit sends every pending run again, with the requeue limit given
    assert main(["sweep", str(DIGITS), "--out", str(out), "--backend", "slurm", "--resubmit",
                 "--max-timeouts", "7"]) == 0
    text = log.read_text()
    assert text.count("ARGS") == 3 and "#SBATCH --array=0-7%8" in text
    assert {r["job_id"] for r in Ledger(out / "ledger.sqlite").rows()} == {f"1236_{i}" for i in range(8)}
    assert 7 in _submitted_countdowns(out)


def test_slurm_only_flags_and_bad_limits_are_one_line(tmp_path, capsys):
    for extra, words in ((["--resubmit"], "for --backend slurm"),
                         (["--backend", "slurm", "--max-timeouts", "-1"], "--max-timeouts=-1")):
        assert main(["sweep", str(DIGITS), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
    with pytest.raises(RobustscaleError, match="max_timeouts"):
        SlurmOptions.from_sources({"max_timeouts": "many"}, {})
    assert SlurmOptions.from_sources({"max_timeouts": 50}, {}).max_timeouts == 50
    assert SlurmOptions().max_timeouts == 1000
