"""What Slurm says about the jobs of a sweep: ``squeue``, or ``sacct`` where squeue cannot answer.

``squeue --states=all`` lists every job the controller holds: queued, running, requeued, and
those that ended less than ``MinJobAge`` seconds ago (300 by default). A job id it does not list
is over (it ended, or was cancelled, before that). That needs no accounting storage, which many
small clusters do not run (there ``sacct`` fails). ``sacct`` is asked only when squeue cannot be
run; it lags behind a fresh submission, so a job it does not list counts as alive.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# States of a job or array task that will not run (again) by itself; any other state is alive.
DEAD_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


@dataclass(frozen=True)
class JobInfo:
    """One job or array task: its scheduler state, requeue count (squeue only) and reason."""

    state: str
    restarts: int = 0
    reason: str = ""

    @property
    def shown(self) -> str:
        """``PENDING``, ``RUNNING``, ``PENDING (requeued 2x)``, ..."""
        return self.state + (f" (requeued {self.restarts}x)" if self.restarts else "")


@dataclass
class QueueView:
    """The answer of one question to Slurm: ``source`` is ``squeue`` or ``sacct``."""

    source: str
    jobs: dict[str, JobInfo] = field(default_factory=dict)

    def over(self, job_id: str) -> bool:
        info = self.jobs.get(str(job_id))
        if info is None:  # squeue lists every job that is not over; sacct lags
            return self.source == "squeue"
        return info.state in DEAD_STATES


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def ask_squeue(job_ids: list[str]) -> QueueView | None:
    """squeue's view of ``job_ids`` (array tasks one by one); None when squeue cannot answer."""
    bases = sorted({str(j).split("_")[0] for j in job_ids})
    cmd = [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        "--jobs",
        ",".join(bases),
        "--Format=JobArrayID:64,State:32,RestartCnt:12,Reason:128",
    ]
    try:
        res = _run(cmd)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("squeue cannot be run: %s", exc)
        return None
    if res.returncode != 0:
        if "Invalid job id" in res.stderr:  # none of the jobs is known any more: all are over
            return QueueView("squeue")
        log.debug("squeue failed: %s", res.stderr.strip())
        return None
    view = QueueView("squeue")
    for line in res.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 2:
            restarts = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
            view.jobs[parts[0]] = JobInfo(
                parts[1].rstrip("+"), restarts, parts[3].strip() if len(parts) > 3 else ""
            )
    return view


def ask_sacct(job_ids: list[str]) -> QueueView | None:
    """sacct's view of ``job_ids``; None when sacct cannot answer (no accounting storage)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    bases = sorted({str(j).split("_")[0] for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State", "--parsable2", "-j", ",".join(bases)]
    try:
        res = _run(cmd)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("sacct cannot be run: %s", exc)
        return None
    if res.returncode != 0:
        log.debug("sacct failed: %s", res.stderr.strip())
        return None
    info = SlurmInfoWatcher().read_info(res.stdout)
    view = QueueView("sacct")
    for job_id in job_ids:
        state = (info.get(str(job_id)) or {}).get("State") or ""
        if state:  # "CANCELLED by 123" -> CANCELLED
            view.jobs[str(job_id)] = JobInfo(state.split()[0].rstrip("+"))
    return view


def queue_view(job_ids: list[str]) -> QueueView | None:
    """Ask squeue, else sacct, about ``job_ids``; None (with a warning) when neither answers."""
    if not job_ids:
        return QueueView("none needed")
    view = ask_squeue(job_ids) or ask_sacct(job_ids)
    if view is None:
        log.warning(
            "cannot ask squeue or sacct whether the recorded jobs are alive; pending runs with a "
            "job are not submitted again (use --resubmit)"
        )
    else:
        log.debug("job states of %d recorded job(s) from %s", len(job_ids), view.source)
    return view


__all__ = ["DEAD_STATES", "JobInfo", "QueueView", "ask_sacct", "ask_squeue", "queue_view"]
