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
launcher asks ``squeue`` (or ``sacct`` where squeue cannot answer; robustscale.sweep.slurm_queue)
whether each recorded job is still alive. Anything ``sbatch`` refuses is one RobustscaleError
line with sbatch's own words, and no run is recorded as submitted.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.runs import SweepFolder
from robustscale.sweep.launch import prepare
from robustscale.sweep.ledger import Claim, Heartbeat, Ledger
from robustscale.sweep.slurm_options import SlurmOptions
from robustscale.sweep.slurm_queue import QueueView, queue_view
from robustscale.sweep.spec import Sweep

log = logging.getLogger(__name__)

try:  # submitit is a dependency, but keep the module importable for --help without it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[assignment,misc]


class SweepJob(Checkpointable):  # type: ignore[misc,valid-type]
    """What one array task runs: claim the run, train it (retrying up to ``max_attempts``),
    record."""

    def __init__(
        self,
        folder: str,
        run_id: str,
        *,
        max_attempts: int,
        lease_timeout: float,
        heartbeat: float,
        final_eval: str | None = None,
        threads: int | None = None,
    ):
        self.folder, self.run_id = str(folder), run_id
        self.max_attempts, self.lease_timeout, self.heartbeat = (
            max_attempts,
            lease_timeout,
            heartbeat,
        )
        self.final_eval, self.threads = final_eval, threads
        self._claim: Claim | None = None
        self._requeued = False  # set by checkpoint() (USR2): the job is being requeued

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_claim", "_beat", "_requeued")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._claim, self._requeued = None, False

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        if not logging.getLogger().handlers:  # the run's log lines go to the job's log file
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        if getattr(self, "threads", None):  # --cpus-per-task: torch's intra-op threads
            import torch

            torch.set_num_threads(self.threads)
            log.info(
                "%s: torch intra-op threads %d (--cpus-per-task)",
                self.run_id,
                torch.get_num_threads(),
            )
        if env.num_tasks > 1:  # one run on several GPUs: join the tasks into one process group
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        ledger = Ledger(SweepFolder(Path(self.folder)).ledger, wal=False)
        if env.global_rank != 0:
            return self._follow(ledger, env.job_id)
        return self._lead(ledger, env.job_id)

    def _lead(self, ledger: Ledger, job_id: str) -> str:
        while True:
            claim = ledger.claim(
                [self.run_id],
                max_attempts=self.max_attempts,
                lease_timeout=self.lease_timeout,
                job_id=job_id,
            )
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
            if getattr(self, "_requeued", False):
                # Raised inside the USR2 handler after checkpoint() gave the run back: `scontrol
                # requeue` (a child of the job) is often killed by the requeue it asked for. Not a
                # failure of the run; this process is about to be killed and the job restarts.
                log.warning(
                    "%s: requeue in progress (%s); not counted as a failure", self.run_id, exc
                )
                raise
            error = (
                str(exc) if isinstance(exc, RobustscaleError) else f"{type(exc).__name__}: {exc}"
            )
            ledger.finish(
                claim, ok=False, error=error.splitlines()[0] if error else type(exc).__name__
            )
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
            if row.get("state") == "done" or (
                row.get("state") == "running"
                and row.get("job_id") != job_id
                and time.time() - (row.get("heartbeat") or 0) < self.lease_timeout
            ):
                return str(row.get("state"))
            time.sleep(1.0)
        return "not claimed"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Time-out or pre-emption: give the lease back (the attempt is not counted) and requeue;
        the requeued job resumes the run from its last.pt."""
        self._requeued = True
        if self._claim is not None:
            try:
                Ledger(SweepFolder(Path(self.folder)).ledger, wal=False).release(
                    self._claim, "requeued"
                )
            except Exception as exc:  # noqa: BLE001 - a stale lease is taken over anyway
                log.warning("could not give %s back before the requeue: %s", self.run_id, exc)
        return super().checkpoint(*args, **kwargs)


def dead_jobs(
    job_ids: list[str], view: Callable[[list[str]], QueueView | None] = queue_view
) -> set[str]:
    """The jobs among ``job_ids`` known to be over (none when Slurm cannot be asked)."""
    answer = view(job_ids)
    return set() if answer is None else {j for j in job_ids if answer.over(j)}


def runs_to_submit(
    ledger: Ledger,
    run_ids: list[str],
    *,
    max_attempts: int,
    lease_timeout: float,
    resubmit: bool,
    jobs_over: Callable[[list[str]], set[str]] | None = None,
) -> list[str]:
    """Runs that need a job: pending ones not yet submitted, pending ones whose recorded job is
    over (``jobs_over`` returns those among the recorded job ids; all pending runs with
    ``resubmit``), failed ones with attempts left, and running ones whose lease went stale."""
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


def launch_slurm(
    sweep: Sweep,
    out: str | Path,
    options: SlurmOptions | None = None,
    *,
    max_attempts: int = 3,
    cluster: str = "slurm",
    final_eval: str | None = None,
    resubmit: bool = False,
    notes: list[str] | None = None,
) -> list[Any]:
    """Submit one array task per run that needs one; returns the submitit jobs. Starting it
    again submits only what is not done, not held by a live lease, and not pending under a job
    that is still alive (squeue or sacct; with ``resubmit`` every pending run is submitted again).
    A refusal by sbatch is one RobustscaleError line, and no run is recorded as submitted.
    ``notes`` (a list) receives one line on what Slurm was asked about the recorded jobs."""
    import submitit

    o = options or SlurmOptions()
    o.validate()
    folder, ledger = prepare(
        sweep, out, wal=False
    )  # jobs on several nodes: no WAL (docs/sweeps.md)
    ledger.set_meta(lease_timeout=o.lease_timeout, max_attempts=max_attempts, backend="slurm")

    def jobs_over(job_ids: list[str]) -> set[str]:
        view = queue_view(job_ids)
        over = set() if view is None else {j for j in job_ids if view.over(j)}
        if notes is not None:
            notes.append(
                f"asked {view.source} about {len(job_ids)} recorded job(s): {len(over)} over"
                if view is not None
                else "neither squeue nor sacct answered: pending runs with a job are not "
                "submitted again (--resubmit to force it)"
            )
        return over

    todo = runs_to_submit(
        ledger,
        [r.run_id for r in sweep.runs],
        max_attempts=max_attempts,
        lease_timeout=o.lease_timeout,
        resubmit=resubmit,
        jobs_over=jobs_over if cluster == "slurm" else None,
    )
    if not todo:
        return []
    # submitit's pickles in slurm/ are what the jobs run: only their owner may write there.
    (folder.root / "slurm").mkdir(mode=0o700, exist_ok=True)
    try:
        executor = submitit.AutoExecutor(
            folder=folder.slurm / "%j",
            cluster=cluster,
            slurm_max_num_timeout=o.max_timeouts,
            local_max_num_timeout=o.max_timeouts,
        )
    except (
        RuntimeError
    ) as exc:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise RobustscaleError(
            f"cannot submit to Slurm here ({exc}); allowed: run on a Slurm login node, "
            "or --backend local, or --cluster local"
        ) from None
    params = o.executor_parameters(f"rs-{sweep.name}")
    if cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k != "nodes"}
        params["gpus_per_node"] = min(params.get("gpus_per_node", 0), len(_visible()))
    executor.update_parameters(**params)
    tasks = [
        SweepJob(
            str(folder.root),
            rid,
            max_attempts=max_attempts,
            lease_timeout=o.lease_timeout,
            heartbeat=o.heartbeat,
            final_eval=final_eval,
            threads=o.cpus_per_task,
        )
        for rid in todo
    ]
    jobs = _submit(executor, tasks)
    ledger.record_jobs([(rid, job.job_id) for rid, job in zip(todo, jobs)])
    log.info(
        "submitted %d run(s) of sweep %s: jobs %s",
        len(jobs),
        sweep.name,
        sorted({j.job_id.split("_")[0] for j in jobs}),
    )
    return jobs


def _submit(executor: Any, tasks: list[SweepJob]) -> list[Any]:
    """Submit ``tasks`` as one array; sbatch's refusal becomes one line (submitit would print
    sbatch's stderr and raise FailedJobError with a traceback)."""
    import contextlib
    import io

    from submitit.core.utils import FailedJobError

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    except (FailedJobError, subprocess.SubprocessError, OSError) as exc:
        words = [ln.strip() for ln in (str(exc) or said.getvalue()).splitlines() if ln.strip()]
        words = [w.removeprefix("sbatch: error: ") for w in words] or [type(exc).__name__]
        raise RobustscaleError(
            f"sbatch refused the job array of {len(tasks)} run(s): "
            f"{'; '.join(words)} (no run was submitted)"
        ) from None
    return jobs


def _visible() -> list[str]:
    from robustscale.sweep.launch import visible_gpus

    return visible_gpus()


__all__ = ["SlurmOptions", "SweepJob", "dead_jobs", "launch_slurm", "runs_to_submit"]
