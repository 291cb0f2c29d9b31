"""The local launcher: works through a sweep's ledger on this machine.

One run per visible GPU at a time (``nproc_per_run`` GPUs per run under ``torchrun`` when
larger than one), or one at a time on a CPU (``max_parallel`` to change either). Every run
trains in a child process (``python -m robustscale train``) whose output goes to
``<out>/logs/<run_id>.log``, so a crash or a kill of one run never takes the launcher down; the
ledger records a failure with the last line of the error. Children die with the launcher
(Linux ``PR_SET_PDEATHSIG``), so a killed launcher leaves a stale lease and a ``last.pt``,
never a training that nobody watches.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.runs import RunDir, SweepFolder
from robustscale.sweep.ledger import Claim, Heartbeat, Ledger
from robustscale.sweep.spec import Sweep

log = logging.getLogger(__name__)

# Runs in the child before it becomes the training command: ask the kernel to SIGTERM it when
# the launcher thread that started it dies, then exec. Kept free of imports of robustscale
# (which would load torch twice).
_EXEC_WITH_DEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except Exception:\n    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n    sys.exit(3)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@dataclass
class LaunchOptions:
    max_parallel: int | None = None  # default: GPUs // nproc_per_run, or 1 on CPU
    nproc_per_run: int = 1  # processes (GPUs) per run; > 1 runs torchrun (DDP)
    max_attempts: int = 3
    lease_timeout: float = 300.0  # seconds without a heartbeat before a lease is taken over
    heartbeat: float = 30.0  # seconds between heartbeats
    poll: float = 5.0  # seconds between looks at the ledger while others hold the last runs
    final_eval: str | None = None  # "pgd" | "autoattack": evaluate each run's best checkpoint


def prepare(sweep: Sweep, out: str | Path, *, wal: bool = True) -> tuple[SweepFolder, Ledger]:
    """Create the sweep folder, write each run's recipe and record the runs in the ledger
    (runs already there keep their state). Safe to call from several launchers at once."""
    from robustscale.files import atomic_write_text, check_component, contained

    folder = SweepFolder(Path(out))
    for run in sweep.runs:  # every name checked and every path contained before anything is written
        check_component(run.run_id, "run id")
        for path in (folder.recipe(run.run_id), folder.run_dir(run.run_id), folder.log(run.run_id)):
            contained(folder.root, path)
    check_folder_permissions(folder.root)
    for sub in ("recipes", "runs", "logs"):
        try:
            (folder.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or full disk, or a file where the folder should be
            from robustscale.files import fs_error

            raise fs_error(folder.root / sub, exc) from None
    for run in sweep.runs:
        path = folder.recipe(run.run_id)
        if not path.exists():
            atomic_write_text(path, run.recipe.to_yaml())
    ledger = Ledger(folder.ledger, wal=wal)
    check_states(ledger)
    ledger.add_runs([(r.run_id, r.index, r.label) for r in sweep.runs])
    ledger.set_meta(name=sweep.name, source=str(sweep.path) if sweep.path else None)
    return folder, ledger


def check_folder_permissions(root: Path) -> None:
    """Refuse a sweep folder (or its ``slurm/``) that anyone may write, warn when its group may.

    Whoever can write the folder can change what runs: a recipe, the ledger, and under Slurm
    the pickles submitit's jobs execute (``slurm/<job>/*_submitted.pkl``). docs/security.md."""
    import stat

    for path in (root, root / "slurm"):
        try:
            mode = path.stat().st_mode
        except OSError:  # not created yet: created below under this user's umask (slurm/: 0700)
            continue
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise RobustscaleError(
                f"sweep folder {str(path)!r} is writable by every user (mode "
                f"{stat.filemode(mode)}); anyone could change what its runs "
                "execute; allowed: writable by its owner only "
                f"(chmod go-w {str(path)!r})"
            )
        if mode & stat.S_IWGRP:
            log.warning(
                "sweep folder %s is writable by its group (mode %s): every member can "
                "change what its runs execute (chmod g-w to prevent it)",
                path,
                stat.filemode(mode),
            )


def check_states(ledger: Ledger) -> None:
    """A ledger row in a state this version does not know is one line, not a KeyError later."""
    from robustscale.sweep.ledger import STATES

    for row in ledger.rows():
        if row["state"] not in STATES:
            raise RobustscaleError(
                f"ledger {str(ledger.path)!r}: run {row['run_id']} has state "
                f"{row['state']!r}; allowed: {', '.join(STATES)} (was it "
                "written by another program?)"
            )


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch CUDA: a CPU machine
        return []


def train_command(recipe: Path, run_dir: Path, nproc: int, final_eval: str | None) -> list[str]:
    """The child's command: ``python -m robustscale train`` or the same under torchrun."""
    args = ["-m", "robustscale", "train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]
    if final_eval:
        args += ["--final-eval", final_eval]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


def last_error_line(log_path: Path, returncode: int) -> str:
    """The line of a child's log that says why it failed (a one-line robustscale error, else the
    exception line of the traceback, else the last line), or the signal that killed it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    try:
        lines = [
            ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()
        ]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if ln.startswith("robustscale: error:"):
            return ln[len("robustscale: error:") :].strip()
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Diverged)\b(:|$)", ln):
            return ln
    return lines[-1] if lines else f"exited with status {returncode}"


class LocalLauncher:
    """Slots (threads) that claim runs from the ledger and train each in a child process."""

    def __init__(self, sweep: Sweep, out: str | Path, options: LaunchOptions | None = None):
        self.opt = options or LaunchOptions()
        from robustscale.sweep.slurm_options import check_leases

        check_leases(self.opt.lease_timeout, self.opt.heartbeat)
        if self.opt.nproc_per_run < 1:
            raise RobustscaleError(
                f"nproc_per_run={self.opt.nproc_per_run}; allowed: an integer >= 1"
            )
        self.sweep = sweep
        self.folder, self.ledger = prepare(sweep, out)
        self.ledger.set_meta(
            lease_timeout=self.opt.lease_timeout, max_attempts=self.opt.max_attempts
        )
        self.run_ids = [r.run_id for r in sweep.runs]
        self.stop = threading.Event()
        self._children: dict[str, subprocess.Popen] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()

    def slots(self) -> list[list[str] | None]:
        """The device group of each slot: GPU ids, or None for a CPU slot."""
        gpus, n = visible_gpus(), self.opt.nproc_per_run
        if gpus:
            groups: list[list[str] | None] = [
                gpus[i : i + n] for i in range(0, len(gpus) - n + 1, n)
            ]
            if not groups:
                raise RobustscaleError(f"nproc_per_run={n} but only {len(gpus)} GPUs are visible")
        else:
            groups = [None] * (self.opt.max_parallel or 1)
        return groups[: self.opt.max_parallel] if self.opt.max_parallel else groups

    def run(self) -> dict[str, int]:
        """Work until every run is done or failed for good; returns the ledger's counts by state."""
        slots = self.slots()
        self.n_slots = len(slots)
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops like Ctrl-C
            signal.signal(signal.SIGTERM, _raise_interrupt)
        log.info(
            "sweep %s: %d runs, %d slot(s) %s, ledger %s",
            self.sweep.name,
            len(self.run_ids),
            len(slots),
            [",".join(s) if s else "cpu" for s in slots],
            self.folder.ledger,
        )
        with Heartbeat(self.ledger, self.opt.heartbeat, on_lost=self._on_lost) as self.beat:
            threads = [
                threading.Thread(target=self._slot, args=(g,), name=f"slot-{i}", daemon=True)
                for i, g in enumerate(slots)
            ]
            for t in threads:
                t.start()
            bar = _SweepBar(self)
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.2)
                    bar.poll()
                bar.close()
            except KeyboardInterrupt:
                bar.close()
                log.warning(
                    "interrupted: stopping the runs of this launcher; their "
                    "leases go back to pending"
                )
                self.stop.set()
                self._terminate_children()
                for t in threads:
                    t.join()
                raise
        return self.counts()

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("pending", "running", "done", "failed")}
        for row in self.ledger.rows(self.run_ids):
            counts[row["state"]] += 1
        return counts

    def _slot(self, devices: list[str] | None) -> None:
        o = self.opt
        while not self.stop.is_set():
            claim = self.ledger.claim(
                self.run_ids, max_attempts=o.max_attempts, lease_timeout=o.lease_timeout
            )
            if claim is None:
                left = self.ledger.unsettled(
                    self.run_ids, max_attempts=o.max_attempts, lease_timeout=o.lease_timeout
                )
                if left["claimable"] == 0 and left["held"] == 0:
                    return
                self.stop.wait(o.poll)  # others hold the remaining runs: take over if they go stale
                continue
            if claim.took_over:
                log.warning(
                    "%s: lease of %s went stale; taking the run over (attempt %d)",
                    claim.run_id,
                    claim.took_over,
                    claim.attempt,
                )
            self.beat.add(claim)
            try:
                self._train(claim, devices)
            except Exception as exc:  # noqa: BLE001 - e.g. its log cannot be opened
                self.ledger.finish(claim, ok=False, error=f"launcher: {type(exc).__name__}: {exc}")
                log.error("%s: could not be started here: %s", claim.run_id, exc)
            finally:
                self.beat.remove(claim)

    def _train(self, claim: Claim, devices: list[str] | None) -> None:
        f, o = self.folder, self.opt
        rid = claim.run_id
        cmd = train_command(f.recipe(rid), f.run_dir(rid), o.nproc_per_run, o.final_eval)
        env = dict(os.environ)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        elif "OMP_NUM_THREADS" not in env:
            # CPU runs side by side get one thread each, since oversubscribed OpenMP threads spin
            # (measured: a digits run took 6x longer with 2 threads on 2 busy cores than with 1);
            # a lone run gets the usable physical cores (robustscale/threads.py).
            from robustscale.threads import default_threads

            env["OMP_NUM_THREADS"] = str(default_threads(self.n_slots * o.nproc_per_run))
        log_path = f.log(rid)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(log_path, "a") as out:
            out.write(
                f"=== attempt {claim.attempt} on {self.ledger.host} at {stamp}: {' '.join(cmd)}\n"
            )
            out.flush()
            with self._lock:
                if self.stop.is_set():
                    self.ledger.release(claim, "interrupted before start")
                    return
                child = subprocess.Popen(
                    [sys.executable, "-c", _EXEC_WITH_DEATHSIG, str(os.getpid()), *cmd],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
                self._children[rid] = child
            log.info(
                "%s: started (attempt %d, %s, pid %d)",
                rid,
                claim.attempt,
                "cpu" if devices is None else "gpu " + ",".join(devices),
                child.pid,
            )
            rc = child.wait()
        with self._lock:
            self._children.pop(rid, None)
            lost = rid in self._lost
        if lost:
            log.warning("%s: lease lost to another launcher; stopped here", rid)
        elif self.stop.is_set() and rc != 0:
            self.ledger.release(claim, "interrupted")
        elif rc == 0 and _run_done(f.run_dir(rid)):
            self.ledger.finish(claim, ok=True)
            log.info("%s: done", rid)
        else:
            reason = (
                last_error_line(log_path, rc)
                if rc != 0
                else "exited 0 but status.json does not say done"
            )
            self.ledger.finish(claim, ok=False, error=reason)
            log.warning(
                "%s: failed (attempt %d of %d): %s", rid, claim.attempt, o.max_attempts, reason
            )

    def _on_lost(self, claim: Claim) -> None:
        with self._lock:
            self._lost.add(claim.run_id)
            child = self._children.get(claim.run_id)
        if child is not None:
            child.terminate()

    def _terminate_children(self) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.terminate()
        deadline = time.time() + 30
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()


class _SweepBar:
    """Runs done / running / failed of this launcher's sweep, read from the ledger about once a
    second."""

    def __init__(self, launcher: LocalLauncher):
        from robustscale.progress import bar

        self.launcher, self.last = launcher, 0.0
        self.bar = bar(len(launcher.run_ids), f"sweep {launcher.sweep.name}", unit="run")
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        c = self.launcher.counts()
        done = c["done"] + c["failed"]
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"done {c['done']}, running {c['running']}, failed {c['failed']}")

    def close(self) -> None:
        self.poll(force=True)
        self.bar.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_done(run_dir: Path) -> bool:
    try:
        status = RunDir(run_dir).read_status()
    except RobustscaleError:  # an unreadable status is not done
        return False
    return status is not None and status.state == "done"


def launch_local(
    sweep: Sweep, out: str | Path, options: LaunchOptions | None = None
) -> dict[str, int]:
    """Run ``sweep`` into ``out`` on this machine; returns counts by state. Safe to start
    several times on one folder (concurrently too): done runs are skipped, interrupted ones
    resume from their ``last.pt``, failed ones are retried up to ``max_attempts``."""
    return LocalLauncher(sweep, out, options).run()


__all__ = [
    "LaunchOptions",
    "LocalLauncher",
    "SweepFolder",
    "check_folder_permissions",
    "check_states",
    "launch_local",
    "prepare",
    "last_error_line",
    "train_command",
    "visible_gpus",
]
