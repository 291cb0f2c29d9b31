"""The Slurm launcher: one job-array task per run, through ``submitit``.

Each task claims its run in the ledger (so a run never trains twice at once, whatever was
submitted), trains it in the job's process with a heartbeat thread, and records the result.
On a time-out or a pre-emption Slurm sends USR2; submitit calls :meth:`SweepJob.checkpoint`,
which gives the lease back and returns the same callable, and requeues the job, which resumes
the run from ``last.pt``. A run on several GPUs is one task per GPU joined by
``torch.distributed`` (submitit exports RANK, WORLD_SIZE, MASTER_ADDR, ...); task 0 holds the
lease. ``cluster="local"`` runs the same jobs on this machine (submitit's LocalExecutor).

submitit requeues a job after at most ``max_num_timeout`` time-outs (3 by default; pre-emptions
are not counted); :attr:`SlurmOptions.max_timeouts` raises that to 1,000, so that a run longer
than many time limits continues. A run given back as ``pending`` whose job is gone (it timed out
more often than that, was cancelled while queued, or its node failed) is submitted again: the
launcher asks ``sacct`` whether each recorded job is still alive.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.runs import SweepFolder
from robustscale.sweep.launch import prepare
from robustscale.sweep.ledger import Claim, Heartbeat, Ledger
from robustscale.sweep.spec import Sweep

log = logging.getLogger(__name__)

try:  # submitit is a dependency, but keep the module importable for --help without it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[assignment,misc]


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 1440
    gpus_per_run: int = 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    array_parallelism: int = 64
    lease_timeout: float = 900.0
    heartbeat: float = 60.0
    max_timeouts: int = 1000  # requeues after a time-out per job (submitit's max_num_timeout; its default is 3)
    additional: dict[str, Any] | None = None  # passed as slurm_additional_parameters

    @classmethod
    def from_sources(cls, sweep_file: dict[str, Any], flags: dict[str, Any]) -> SlurmOptions:
        """The sweep file's ``slurm:`` section, overridden by command-line flags."""
        known = {f.name for f in fields(cls)}
        merged = {**sweep_file, **flags}
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise RobustscaleError(f"unknown slurm option {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
        out = cls(**merged)
        if not isinstance(out.max_timeouts, int) or isinstance(out.max_timeouts, bool) or out.max_timeouts < 0:
            raise RobustscaleError(f"slurm option max_timeouts={out.max_timeouts!r}; allowed: an integer >= 0")
        return out

    def executor_parameters(self, name: str) -> dict[str, Any]:
        p: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "gpus_per_node": self.gpus_per_run,
                             "tasks_per_node": max(1, self.gpus_per_run), "nodes": 1,
                             "slurm_array_parallelism": self.array_parallelism}
        for key, value in (("cpus_per_task", self.cpus_per_task), ("mem_gb", self.mem_gb),
                           ("slurm_partition", self.partition), ("slurm_account", self.account),
                           ("slurm_qos", self.qos), ("slurm_additional_parameters", self.additional)):
            if value is not None:
                p[key] = value
        return p


class SweepJob(Checkpointable):  # type: ignore[misc,valid-type]
    """What one array task runs: claim the run, train it (retrying up to ``max_attempts``), record."""

    def __init__(self, folder: str, run_id: str, *, max_attempts: int, lease_timeout: float, heartbeat: float,
                 final_eval: str | None = None, sync_bn: bool = False):
        self.folder, self.run_id = str(folder), run_id
        self.max_attempts, self.lease_timeout, self.heartbeat = max_attempts, lease_timeout, heartbeat
        self.final_eval, self.sync_bn = final_eval, sync_bn
        self._claim: Claim | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_claim", "_beat")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._claim = None

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        if not logging.getLogger().handlers:  # the run's log lines go to the job's log file
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        if env.num_tasks > 1:  # one run on several GPUs: join the tasks into one process group
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if self.sync_bn:
                os.environ["ROBUSTSCALE_SYNC_BN"] = "1"
        ledger = Ledger(SweepFolder(Path(self.folder)).ledger, wal=False)
        if env.global_rank != 0:
            return self._follow(ledger, env.job_id)
        return self._lead(ledger, env.job_id)

    def _lead(self, ledger: Ledger, job_id: str) -> str:
        while True:
            claim = ledger.claim([self.run_id], max_attempts=self.max_attempts, lease_timeout=self.lease_timeout,
                                 job_id=job_id)
            if claim is None:
                row = ledger.rows([self.run_id])
                return row[0]["state"] if row else "unknown"
            self._claim = claim
            ok, error = self._train(ledger, claim)
            self._claim = None
            if ok:
                return "done"
            if claim.attempt >= self.max_attempts:
                raise RobustscaleError(f"{self.run_id} failed {claim.attempt} times; last: {error}")

    def _train(self, ledger: Ledger, claim: Claim) -> tuple[bool, str | None]:
        from robustscale.recipe import Recipe
        from robustscale.train import train

        folder = SweepFolder(Path(self.folder))
        beat = Heartbeat(ledger, self.heartbeat)
        beat.add(claim)
        try:
            recipe = Recipe.from_yaml(folder.recipe(self.run_id))
            train(recipe, folder.run_dir(self.run_id), progress=False, final_eval=self.final_eval)
        except Exception as exc:  # noqa: BLE001 - record it; SystemExit (requeue) passes through
            error = str(exc) if isinstance(exc, RobustscaleError) else f"{type(exc).__name__}: {exc}"
            ledger.finish(claim, ok=False, error=error.splitlines()[0] if error else type(exc).__name__)
            log.error("%s failed (attempt %d): %s", self.run_id, claim.attempt, error)
            return False, error
        finally:
            beat.stop()
        ledger.finish(claim, ok=True)
        return True, None

    def _follow(self, ledger: Ledger, job_id: str) -> str:
        """Tasks other than 0 of a multi-GPU run: train once task 0 holds the lease."""
        from robustscale.recipe import Recipe
        from robustscale.train import train

        deadline = time.time() + 300
        while time.time() < deadline:
            row = (ledger.rows([self.run_id]) or [{}])[0]
            if row.get("state") == "running" and row.get("job_id") == job_id:
                folder = SweepFolder(Path(self.folder))
                recipe = Recipe.from_yaml(folder.recipe(self.run_id))
                train(recipe, folder.run_dir(self.run_id), progress=False)
                return "done"
            if row.get("state") == "done" or (row.get("state") == "running" and row.get("job_id") != job_id
                                              and time.time() - (row.get("heartbeat") or 0) < self.lease_timeout):
                return str(row.get("state"))
            time.sleep(1.0)
        return "not claimed"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Time-out or pre-emption: give the lease back (the attempt is not counted) and requeue;
        the requeued job resumes the run from its last.pt."""
        if self._claim is not None:
            try:
                Ledger(SweepFolder(Path(self.folder)).ledger, wal=False).release(self._claim, "requeued")
            except Exception as exc:  # noqa: BLE001 - a stale lease is taken over anyway
                log.warning("could not give %s back before the requeue: %s", self.run_id, exc)
        return super().checkpoint(*args, **kwargs)


# sacct states of a job that will not run (again) by itself; any other state is a live job.
DEAD_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                         "PREEMPTED", "REVOKED", "TIMEOUT"})


def slurm_job_states(job_ids: list[str]) -> dict[str, str] | None:
    """The sacct state (``PENDING``, ``TIMEOUT``, ...) of each job or array task in ``job_ids``
    that sacct knows; None when sacct cannot be asked (not on PATH, an error)."""
    if not job_ids:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    bases = sorted({str(j).split("_")[0] for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State", "--parsable2", "-j", ",".join(bases)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot ask sacct whether the recorded jobs are alive (%s); pending runs with a job are "
                    "not submitted again (use --resubmit)", exc)
        return None
    info = SlurmInfoWatcher().read_info(res.stdout)
    states = {}
    for job_id in job_ids:
        state = (info.get(str(job_id)) or {}).get("State") or ""
        if state:
            states[str(job_id)] = state.split()[0].rstrip("+")  # "CANCELLED by 123" -> CANCELLED
    return states


def dead_jobs(job_ids: list[str], states: Callable[[list[str]], dict[str, str] | None] = slurm_job_states,
              ) -> set[str]:
    """The jobs among ``job_ids`` known to be over (a job sacct does not know yet counts as alive:
    accounting lags behind a fresh submission)."""
    known = states(job_ids) or {}
    return {j for j in job_ids if known.get(j) in DEAD_STATES}


def runs_to_submit(ledger: Ledger, run_ids: list[str], *, max_attempts: int, lease_timeout: float,
                   resubmit: bool, jobs_over: Callable[[list[str]], set[str]] | None = None) -> list[str]:
    """Runs that need a job: pending ones not yet submitted, pending ones whose recorded job is
    over (``jobs_over`` returns those among the recorded job ids; all pending runs with ``resubmit``),
    failed ones with attempts left, and running ones whose lease went stale."""
    now = time.time()
    rows = ledger.rows(run_ids)
    waiting = [r["job_id"] for r in rows if r["state"] == "pending" and r["job_id"]]
    dead = jobs_over(waiting) if (jobs_over is not None and waiting and not resubmit) else set()
    needs = {
        "pending": lambda r: resubmit or not r["job_id"] or r["job_id"] in dead,
        "failed": lambda r: r["attempts"] < max_attempts,
        "running": lambda r: now - (r["heartbeat"] or 0) > lease_timeout,
    }
    return [r["run_id"] for r in rows if r["state"] in needs and needs[r["state"]](r)]


def launch_slurm(sweep: Sweep, out: str | Path, options: SlurmOptions | None = None, *, max_attempts: int = 3,
                 cluster: str = "slurm", final_eval: str | None = None, sync_bn: bool = False,
                 resubmit: bool = False) -> list[Any]:
    """Submit one array task per run that needs one; returns the submitit jobs. Starting it
    again submits only what is not done, not held by a live lease, and not pending under a job
    that is still alive (sacct; with ``resubmit`` every pending run is submitted again)."""
    import submitit

    o = options or SlurmOptions()
    folder, ledger = prepare(sweep, out, wal=False)  # jobs on several nodes: no WAL (docs/sweeps.md)
    ledger.set_meta(lease_timeout=o.lease_timeout, max_attempts=max_attempts, backend="slurm")
    todo = runs_to_submit(ledger, [r.run_id for r in sweep.runs], max_attempts=max_attempts,
                          lease_timeout=o.lease_timeout, resubmit=resubmit,
                          jobs_over=dead_jobs if cluster == "slurm" else None)
    if not todo:
        return []
    try:
        executor = submitit.AutoExecutor(folder=folder.slurm / "%j", cluster=cluster,
                                         slurm_max_num_timeout=o.max_timeouts, local_max_num_timeout=o.max_timeouts)
    except RuntimeError as exc:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise RobustscaleError(f"cannot submit to Slurm here ({exc}); allowed: run on a Slurm login node, "
                               "or --backend local, or --cluster local") from None
    params = o.executor_parameters(f"rs-{sweep.name}")
    if cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k != "nodes"}
        params["gpus_per_node"] = min(params["gpus_per_node"], len(_visible()))
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(SweepJob(str(folder.root), rid, max_attempts=max_attempts,
                                         lease_timeout=o.lease_timeout, heartbeat=o.heartbeat,
                                         final_eval=final_eval, sync_bn=sync_bn)) for rid in todo]
    ledger.record_jobs([(rid, job.job_id) for rid, job in zip(todo, jobs)])
    log.info("submitted %d run(s) of sweep %s: jobs %s", len(jobs), sweep.name,
             sorted({j.job_id.split("_")[0] for j in jobs}))
    return jobs


def _visible() -> list[str]:
    from robustscale.sweep.launch import visible_gpus

    return visible_gpus()


__all__ = ["SlurmOptions", "SweepJob", "dead_jobs", "launch_slurm", "runs_to_submit", "slurm_job_states"]
