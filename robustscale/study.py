"""The paper's study in small, offline: a digits sweep, AutoAttack on every run, one zoo table.

``run_study`` works through a sweep file (default ``recipes/sweeps/digits-study.yaml``: 3
model sizes x 3 amounts of unique training data x both losses, 2/3/5 attack steps, EMA on and
off = 36 runs) with the local launcher, evaluates every run with standard AutoAttack on the
whole digits test split, then with PGD-40 (the zoo's ``pgd40_loss``, which the joint law is
fitted on), and gathers the sweep folder into a zoo table that ``analyze``,
``predict`` and ``plan`` read. It is the same sweep, ledger and zoo machinery as a cluster
study: started again on the same folder it skips finished runs and resumes interrupted ones.
Beside the table it writes ``<table>.about.txt``: the command, the machine and the time taken.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_text

log = logging.getLogger(__name__)

STUDY_SPEC = "recipes/sweeps/digits-study.yaml"
# analyze's default --collapse-threshold: runs at or below it are "collapsed" (no robustness)
COLLAPSE_THRESHOLD = 10.0


@dataclass
class StudyResult:
    """What one ``run_study`` produced."""

    zoo_path: Path
    sweep_dir: Path
    counts: dict[str, int]  # ledger states of the sweep's runs
    rows: int  # runs in the zoo table
    with_autoattack: int
    collapsed: list[str] = field(default_factory=list)  # run ids with AutoAttack <= the threshold
    seconds: float = 0.0  # this invocation
    span: float | None = None  # first run started to last run finished, over every invocation
    about: Path | None = None
    pgd40_evaluated: int = 0  # runs given their PGD-40 evaluation by this invocation


def find_spec(spec: str | Path | None) -> Path:
    """The sweep file: ``spec`` as given, or the digits study from the working directory or from
    the checkout this package was installed from (an editable install)."""
    if spec is not None:
        path = Path(spec)
        if not path.is_file():
            raise RobustscaleError(f"sweep file {str(path)!r} does not exist")
        return path
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / STUDY_SPEC).is_file():
            return base / STUDY_SPEC
    raise RobustscaleError(
        f"{STUDY_SPEC} is not in this folder nor beside the installed package; "
        "run from a robustscale checkout or give the sweep file"
    )


def machine_line() -> str:
    """One line saying what this ran on: CPU model, usable cores, OS, Python, torch."""
    import torch

    from robustscale.threads import physical_cores, usable_cpus

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}; {physical_cores()} physical core(s), {len(usable_cpus())} "
        f"usable logical CPU(s); {gpu}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"torch {torch.__version__}"
    )


def run_study(
    spec: str | Path | None = None,
    out: str | Path = "sweeps/digits-study",
    zoo_path: str | Path = "digits-zoo.csv",
    *,
    overrides: dict[str, Any] | None = None,
    max_parallel: int | None = None,
    max_attempts: int = 3,
    command: str | None = None,
    train: bool = True,
) -> StudyResult:
    """Train and AutoAttack every run of ``spec`` into ``out``, then write the zoo table
    ``zoo_path``.

    ``max_parallel`` defaults to the usable physical cores, each run with one thread. Runs that
    failed for good are reported in ``counts`` and left out of the table; the table is written
    whenever at least one run finished. ``train=False`` trains nothing: it writes the table of
    the runs finished so far (a study still running elsewhere, or one that was stopped).
    """
    from robustscale.sweep.launch import LaunchOptions, launch_local
    from robustscale.sweep.spec import load_sweep
    from robustscale.threads import physical_cores
    from robustscale.zoo import gather_zoo, write_zoo

    zoo_path, out = Path(zoo_path), Path(out)
    if zoo_path.suffix.lower() not in (".csv", ".parquet"):
        raise RobustscaleError(
            f"output {str(zoo_path)!r} has suffix {zoo_path.suffix!r}; allowed: .csv or .parquet"
        )
    if max_parallel is not None and max_parallel < 1:
        raise RobustscaleError(f"--max-parallel={max_parallel}; allowed: an integer >= 1")
    sweep = load_sweep(find_spec(spec), overrides or {})
    parallel = max_parallel or physical_cores()
    log.info(
        "study %s: %d runs, %d at a time, each trained and evaluated with AutoAttack, into %s",
        sweep.name,
        len(sweep.runs),
        parallel,
        out,
    )
    t0 = time.time()
    if train:
        counts = launch_local(
            sweep,
            out,
            LaunchOptions(
                max_parallel=parallel, final_eval="autoattack", max_attempts=max_attempts
            ),
        )
    else:
        counts = _ledger_counts(out, [r.run_id for r in sweep.runs])
    span = _sweep_span(out, [r.run_id for r in sweep.runs])
    # the sweep's runs the ledger has settled as done (trained and evaluated): not one still in
    # its final AutoAttack, whose status.json already says done
    done = _ledger_done(out, [r.run_id for r in sweep.runs])
    pgd40 = _pgd40_evals(out, done)
    seconds = time.time() - t0
    df, _ = gather_zoo(out)
    df = df[df["run_id"].isin(done)].reset_index(drop=True)
    if not len(df):
        raise RobustscaleError(
            f"no run of the study finished ({_counts(counts)}); see: robustscale status {out}"
        )
    write_zoo(df, zoo_path)
    aa = df["autoattack_acc"]
    collapsed = df.loc[aa.notna() & (aa <= COLLAPSE_THRESHOLD), "run_id"].astype(str).tolist()
    result = StudyResult(
        zoo_path=zoo_path,
        sweep_dir=out,
        counts=counts,
        rows=len(df),
        with_autoattack=int(aa.notna().sum()),
        collapsed=collapsed,
        seconds=seconds,
        span=span,
        pgd40_evaluated=pgd40,
    )
    result.about = _write_about(
        result,
        sweep.name,
        command or " ".join(["robustscale", *sys.argv[1:]]),
        parallel if train else None,
    )
    return result


def _pgd40_evals(out: Path, run_ids: list[str]) -> int:
    """PGD-40 on the whole test split of each run that lacks it: the zoo's ``pgd40_loss``, the
    continuous robust loss the joint law is fitted on (Bartoldson et al.), a second or two a
    run beside AutoAttack's minute. Returns how many were evaluated now."""
    from robustscale.evaluate import evaluate_run
    from robustscale.sweep.launch import SweepFolder

    todo = []
    for rid in run_ids:
        run = SweepFolder(out).run(rid)
        have = any(
            r.attack == "pgd" and r.steps == 40 and r.checkpoint == "best" and r.n == r.split_size
            for _, r in run.read_evals()
        )
        if not have:
            todo.append(run)
    if todo:
        log.info("PGD-40 on the test split of %d run(s), for pgd40_loss", len(todo))
    for run in todo:
        evaluate_run(run.path, attack="pgd", steps=40, checkpoint="best")
    return len(todo)


def _ledger_done(out: Path, run_ids: list[str]) -> list[str]:
    from robustscale.sweep.launch import SweepFolder
    from robustscale.sweep.ledger import Ledger

    return [
        r["run_id"] for r in Ledger(SweepFolder(out).ledger).rows(run_ids) if r["state"] == "done"
    ]


def _ledger_counts(out: Path, run_ids: list[str]) -> dict[str, int]:
    from robustscale.sweep.launch import SweepFolder
    from robustscale.sweep.ledger import Ledger

    path = SweepFolder(out).ledger
    if not path.is_file():
        raise RobustscaleError(
            f"{str(out)!r} holds no study (no ledger.sqlite); run robustscale study first"
        )
    counts = {s: 0 for s in ("pending", "running", "done", "failed")}
    for row in Ledger(path).rows(run_ids):
        counts[row["state"]] += 1
    counts["pending"] += len(run_ids) - sum(counts.values())  # not in the ledger yet
    return counts


def _sweep_span(out: Path, run_ids: list[str]) -> float | None:
    """Seconds from the first run's start to the last run's finish, from the sweep's ledger."""
    from robustscale.sweep.launch import SweepFolder
    from robustscale.sweep.ledger import Ledger

    rows = Ledger(SweepFolder(out).ledger).rows(run_ids)
    started = [r["started"] for r in rows if r.get("started")]
    finished = [r["finished"] for r in rows if r.get("finished")]
    return max(finished) - min(started) if started and finished else None


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no runs"


def _span(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 60:.1f} min"


def _write_about(result: StudyResult, name: str, command: str, parallel: int | None) -> Path:
    """``<zoo>.about.txt``: how the table was made, so a shipped copy says where it came from."""
    path = result.zoo_path.with_name(result.zoo_path.name + ".about.txt")
    from robustscale.threads import default_threads

    threads = (
        os.environ.get("OMP_NUM_THREADS")
        or f"{default_threads(parallel or 1)} per run (launcher default)"
    )
    runs_line = (
        f"runs at a time: {parallel}; OMP_NUM_THREADS: {threads}"
        if parallel is not None
        else "this invocation trained nothing (--no-train)"
    )
    text = "\n".join(
        [
            f"zoo table {result.zoo_path.name}: study {name}, {result.rows} runs "
            f"({result.with_autoattack} with AutoAttack, {len(result.collapsed)} collapsed at <= "
            f"{COLLAPSE_THRESHOLD:g}% AutoAttack)",
            f"command: {command}",
            f"written: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            f"machine: {machine_line()}",
            runs_line,
            f"PGD-40 on the test split (pgd40_loss): {result.pgd40_evaluated} of {result.rows} "
            "run(s) evaluated by this invocation"
            + (", the others by an earlier one" if result.pgd40_evaluated < result.rows else ""),
            f"wall time: {_span(result.span)} from the first run's start to the last run's end "
            f"(ledger); this invocation {result.seconds:.0f} s",
            f"ledger: {_counts(result.counts)}"
            + (
                ""
                if result.counts.get("done", 0) + result.counts.get("failed", 0)
                == sum(result.counts.values())
                else " (the study is not finished: this table holds the runs done so far)"
            ),
            "",
        ]
    )
    atomic_write_text(path, text)
    return path


__all__ = ["STUDY_SPEC", "StudyResult", "find_spec", "machine_line", "run_study"]
