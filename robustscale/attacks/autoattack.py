"""AutoAttack through its reference implementation (PyPI ``pyautoattack``), resumable and exact.

We do not re-implement any attack: ``pyautoattack.AutoAttack.run_standard_evaluation`` runs
APGD-CE, APGD-T, FAB-T and Square exactly as a direct call would (same batches, same seeds), so
our numbers equal the library's. This adapter adds three things the library leaves to its
caller, all read from the library's own logger (``auto-attack``) and state file:

* **Per-attack accuracy.** The library keeps the robust accuracy after each attack in a local
  dict; it only *logs* it. At each such log line the robust flags are read back from the
  state file the library has just written (exact counts, not the rounded percentage).
* **Exact resume.** The library's state file records robust flags after every batch, but its
  restore is unusable in pyautoattack 0.2.0 (the set of attacks is saved as the text of a
  Python set, so restoring always fails with "different set of attacks"), and an attack
  interrupted half-way would be rerun on a re-batched remainder, giving slightly different
  numbers. So at every attack boundary a snapshot (finished attacks, robust flags) is written
  atomically beside the state file. A killed evaluation resumes at the start of the attack it
  was in: the library runs the remaining attacks on the examples still robust at that
  boundary, which it cuts into exactly the batches an uninterrupted run would have (each
  attack reseeds per batch), so the result is the uninterrupted one. A snapshot is only
  reused when model weights, examples, eps, norm, version, attacks, seed and batch size all
  match (a digest of each).
* **Warnings.** The library's checks (randomised or dynamic defence, softmax output, too few
  classes, zero gradients, Square beating the white-box attacks) log warnings; they are
  collected and returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robustscale.files import atomic_write_json, read_json

log = logging.getLogger(__name__)

AA_LOGGER = "auto-attack"
_AFTER = re.compile(r"^robust accuracy after (\S+): ")
_RUNNING = re.compile(r"^running (\S+)$")
_BATCH = re.compile(r"^(\S+) - (\d+)/(\d+) - (\d+) out of (\d+) successfully perturbed")


@dataclass
class AutoAttackOutcome:
    """What one AutoAttack evaluation found. Accuracies are percent 0-100."""

    clean_acc: float
    robust_acc: float
    robust: torch.Tensor  # bool per example: still correctly classified after every attack
    per_attack: dict[str, float]  # robust accuracy after each attack, in the order run
    warnings: list[str] = field(default_factory=list)
    resumed_after: list[str] = field(default_factory=list)  # attacks finished by earlier sessions
    seconds_before: float = 0.0  # time spent by earlier sessions
    workers: int = 1  # processes the batches ran in (1 where the request could not be met)


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings: object) -> str:
    """A digest of weights, examples and settings: a snapshot is only reused for the same
    evaluation."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class _Snapshots:
    """Attack-boundary snapshots of one evaluation: ``<state>.progress.json`` beside the state
    file."""

    def __init__(self, state_path: Path, key: str, n: int, attacks: list[str]):
        self.state_path, self.key, self.n, self.attacks = state_path, key, n, attacks
        self.path = state_path.with_name(state_path.name + ".progress.json")
        self.done: list[tuple[str, int]] = []  # (attack, robust count after it)
        self.clean: int | None = None
        self.flags: torch.Tensor | None = None  # robust flags (all n examples) at the last boundary
        self.index = torch.arange(n)  # which examples the library is attacking now
        self.seconds_before = 0.0
        self.started = time.perf_counter()

    def load(self) -> list[str]:
        """Read the last boundary of an earlier session; returns the attacks it had finished."""
        snap = read_json(self.path) if self.path.is_file() else None
        if snap is None or snap.get("key") != self.key:
            if snap is not None:
                log.info(
                    "AutoAttack state in %s belongs to another evaluation; starting over",
                    self.state_path,
                )
            self.clear()
            return []
        self.state_path.unlink(missing_ok=True)  # the library's own file is never read back
        self.clean, self.seconds_before = snap["clean"], snap["seconds"]
        self.done = [(a, c) for a, c in snap["done"]]
        self.flags = torch.tensor(snap["flags"], dtype=torch.bool)
        return [a for a, _ in self.done]

    def boundary(self, attack: str | None) -> None:
        """The library reported clean accuracy (attack None) or finished an attack: the robust flags
        it has just saved are exact; map them back to all n examples and snapshot them."""
        from pyautoattack.state import EvaluationState

        if attack is None and self.clean is not None:
            return  # a resumed session: clean accuracy on the subset means nothing
        flags = torch.zeros(self.n, dtype=torch.bool)
        flags[self.index] = EvaluationState.from_disk(self.state_path).robust_flags.bool()
        if attack is None:
            self.clean = int(flags.sum())
            self.flags = flags
            self._write()
        else:
            self.record(attack, flags)

    def record(self, attack: str, flags: torch.Tensor) -> None:
        """``attack`` has finished with ``flags`` (all n examples) robust: snapshot them."""
        self.flags = flags.clone()
        self.done.append((attack, int(flags.sum())))
        self._write()

    def _write(self) -> None:
        flags = self.flags
        assert flags is not None
        atomic_write_json(
            self.path,
            {
                "key": self.key,
                "n": self.n,
                "attacks": self.attacks,
                "clean": self.clean,
                "done": self.done,
                "flags": flags.to(torch.uint8).tolist(),
                "seconds": self.seconds_before + time.perf_counter() - self.started,
            },
        )

    def clear(self) -> None:
        for p in (self.state_path, self.path):
            p.unlink(missing_ok=True)


class _Progress:
    """One bar per evaluation: attacks done of those to run, the current attack and its batch,
    and how many examples are still robust (robustscale.progress: silent when quiet or not a TTY,
    one line per attack then)."""

    def __init__(self, attacks: list[str], n: int, enabled: bool):
        from robustscale.progress import bar

        self.n, self.robust, self.attack = n, None, ""
        self.t_attack = time.perf_counter()
        self.bar = bar(len(attacks), "AutoAttack", unit="attack", enabled=enabled)

    def running(self, attack: str, robust: int | None) -> None:
        self.attack, self.robust, self.t_attack = attack, robust, time.perf_counter()
        self._show()

    def batch(self, attack: str, b: int, nb: int, broken: int) -> None:
        if self.robust is not None:
            self.robust -= broken
        self._show(f" batch {b}/{nb}")

    def after(self, attack: str, robust: int) -> None:
        self.robust = robust
        self.bar.update(1)
        self._show()
        from robustscale.progress import bars_on

        if not bars_on():  # no bar: one line per attack instead
            log.info(
                "AutoAttack %s: %d of %d examples robust (%.1f%%) after %.1fs",
                attack,
                robust,
                self.n,
                100.0 * robust / self.n,
                time.perf_counter() - self.t_attack,
            )

    def _show(self, extra: str = "") -> None:
        left = "?" if self.robust is None else str(self.robust)
        self.bar.set_postfix_str(f"{self.attack}{extra}, robust {left}/{self.n}")

    def close(self) -> None:
        self.bar.close()


class _Listener(logging.Handler):
    """Reads the library's log: boundaries go to the snapshots, warnings are collected, progress
    goes to the bar."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.snapshots: _Snapshots | None = None
        self.progress: _Progress | None = None
        self.warnings: list[str] = []

    def emit(
        self, record: logging.LogRecord
    ) -> None:  # errors propagate: a lost snapshot must not pass silently
        msg = record.getMessage()
        snaps, prog = self.snapshots, self.progress
        if record.levelno >= logging.WARNING:
            self.warn(msg)
        elif snaps is not None and msg.startswith("initial accuracy:"):
            snaps.boundary(None)
        elif snaps is not None and (m := _AFTER.match(msg)) is not None:
            snaps.boundary(m.group(1).lower())
            if prog is not None and snaps.flags is not None:
                prog.after(m.group(1).lower(), int(snaps.flags.sum()))
        elif prog is not None and (m := _RUNNING.match(msg)) is not None:
            flags = snaps.flags if snaps is not None else None
            prog.running(m.group(1), int(flags.sum()) if flags is not None else None)
        elif prog is not None and (m := _BATCH.match(msg)) is not None:
            prog.batch(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
        else:
            log.debug("autoattack: %s", msg)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)
            log.warning("warning (AutoAttack check): %s", msg)

    def handleError(
        self, record: logging.LogRecord
    ) -> None:  # pragma: no cover - emit raises instead
        raise


@contextlib.contextmanager
def _listening(listener: _Listener) -> Iterator[None]:
    logger = logging.getLogger(AA_LOGGER)
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its debug chatter must not reach the user's root handlers
    logger.addHandler(listener)
    try:
        yield
    finally:
        logger.removeHandler(listener)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Fast(nn.Module):
    """The model as the attacks call it: channels_last inputs and/or ``torch.compile``.

    Both change which kernels compute a logit (not what it means), so their last bits may
    differ from the eager NCHW model's and an attack's path can fork on a near-tie; they are
    opt-in, and ``benchmarks/eval.py --attacks autoattack-options`` checks per-example verdicts
    against the plain library run before a figure is trusted (docs/performance.md). The weights
    are left as they are: a channels_last input picks the kernels (for 3-channel images; a
    1-channel batch is NCHW and NHWC at once, so the first convolution may keep NCHW)."""

    def __init__(self, model: nn.Module, channels_last: bool, compile: bool):
        super().__init__()
        self.model = model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # dynamic: the attacks shrink their batches as examples break (Square every query)
        self.fn = torch.compile(self.model, dynamic=True) if compile else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.contiguous(memory_format=self.memory_format))


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    state_path: str | Path | None = None,
    channels_last: bool = False,
    compile: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> AutoAttackOutcome:
    """Run pyautoattack on (x, y) (CPU tensors, x in [0, 1]) and read back per-attack accuracy.

    ``attacks`` runs a custom list (version ``custom``) with the version's settings otherwise
    unchanged: for plumbing tests. With ``state_path`` a killed run resumes at the attack it was
    in (the state and its snapshot are removed once the run finishes); without, a temporary
    state file is used. The model must already be in eval mode with frozen parameters.
    ``channels_last`` / ``compile`` run the model that way under the attacks (see :class:`_Fast`;
    off by default because they can move a near-tie verdict).
    ``progress`` shows a bar (attack, examples still robust, elapsed/ETA) on a terminal, or logs
    a line per attack elsewhere (robustscale.progress).
    ``workers`` > 1 (CPU only; see :func:`default_workers`) runs each attack's batches side by
    side in that many forked processes, each with its share of the threads: the library's own
    batches with its own seeds, so the same verdicts (below, "batches in parallel").
    """
    from pyautoattack import AutoAttack

    if workers < 1:
        raise ValueError(f"workers={workers!r}; allowed: an integer >= 1")
    if compile or torch.device(device).type != "cpu" or not _fork_pool_available():
        workers = 1  # one GPU, one process; a compiled model would compile again in each worker
    listener = _Listener()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    net = _Fast(model, channels_last, compile) if channels_last or compile else model
    with contextlib.ExitStack() as stack:
        stack.enter_context(_listening(listener))
        aa = AutoAttack(net, eps=eps, norm=norm, version=version, seed=seed, device=device)
        if attacks is not None:  # the version's settings, a custom list of attacks
            aa.version, aa.attacks_to_run = "custom", list(attacks)
        order = list(aa.attacks_to_run)
        if state_path is None:
            state_path = (
                Path(stack.enter_context(tempfile.TemporaryDirectory())) / "autoattack.state"
            )
        state_path = Path(state_path)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        key = fingerprint(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            version=version,
            attacks=order,
            seed=seed,
            batch_size=batch_size,
            pyautoattack=_library_version(),
            **({"channels_last": True} if channels_last else {}),
            **({"compile": True} if compile else {}),
        )
        listener.snapshots = snaps = _Snapshots(state_path, key, len(y), order)
        resumed = snaps.load()
        todo = order[len(resumed) :]
        if snaps.flags is not None:  # resume: the remaining attacks on the examples still robust
            snaps.index = snaps.flags.nonzero().flatten()
            aa.attacks_to_run = todo
            log.info(
                "resuming AutoAttack after %s: %d of %d examples left for %s",
                ", ".join(resumed) or "the clean pass",
                len(snaps.index),
                len(y),
                ", ".join(todo) or "nothing",
            )
        if todo and len(snaps.index):
            # the attacks reseed torch's global RNG; fork it so the caller's stream is left as it
            # was
            stack.enter_context(torch.random.fork_rng(devices=devices, device_type="cuda"))
            listener.progress = _Progress(todo, len(y), progress)
            stack.callback(listener.progress.close)
            if workers > 1:
                _run_batches_in_parallel(
                    aa, x, y, todo, batch_size, state_path, snaps, listener, workers
                )
            else:
                aa.run_standard_evaluation(
                    x[snaps.index], y[snaps.index], batch_size=batch_size, state_path=state_path
                )
        return _outcome(snaps, listener, resumed, order, len(y), workers)


# ---- batches of an attack in parallel processes (CPU) -------------------------------------------
#
# Each attack of the library reseeds torch's RNG at every batch (``perturb`` calls
# ``manual_seed(seed)``) and starts from the clean images, and the library cuts the examples
# still robust before an attack into consecutive batches of ``batch_size``. So a batch's verdicts
# depend on that batch alone: running the library on each batch by itself, in another process,
# gives the batches an uninterrupted call would have computed, and the same verdicts (up to the
# last bits of a logit: each worker computes with its own thread count). A small tiny-model CPU
# evaluation spends its time in the Python and dispatch overhead of many small operators, which
# intra-op threads do not spread over the cores; whole batches side by side do. The snapshots,
# resume and progress are those of the sequential path, updated here per batch and per attack.

_JOB: dict = {}  # what the workers attack: set before the pool forks, inherited by the workers


def _fork_pool_available() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux"


def default_workers(device: torch.device | str) -> int:
    """Processes for AutoAttack's batches: on a CPU the intra-op threads this process has (one
    worker each, at most 8: each worker holds a batch's activations), else 1."""
    if torch.device(device).type != "cpu" or not _fork_pool_available():
        return 1
    return max(1, min(8, torch.get_num_threads()))


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(OSError, AttributeError):  # die with the evaluation (Linux)
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    logger = logging.getLogger(AA_LOGGER)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):  # the parent's listener came along with the fork
        logger.removeHandler(h)
    logger.addHandler(_JOB["warnings"])


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.found.append(record.getMessage())


def _attack_one_batch(attack: str, index: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """In a worker: the library's run of ``attack`` on one batch; robust flags and warnings."""
    aa, found = _JOB["aa"], _JOB["warnings"].found
    found.clear()
    aa.attacks_to_run = [attack]
    xb, yb = _JOB["x"][index], _JOB["y"][index]
    _, y_adv = aa.run_standard_evaluation(xb, yb, batch_size=len(index))
    return y_adv.eq(yb), list(found)


class _Pipeline:
    """Which batches of which attacks are known, in the library's order.

    Attack ``a``'s batches are consecutive runs of ``batch_size`` among the examples still robust
    after attack ``a - 1``. Its batch ``j`` is therefore fixed as soon as attack ``a - 1`` has
    settled every example up to the ``(j + 1) * batch_size``-th one still robust: the next attack
    can start on the first examples while the last batches of this one still run, so no core
    idles at the end of an attack with fewer batches than workers."""

    def __init__(self, flags: torch.Tensor, attacks: list[str], batch_size: int):
        n = len(flags)
        self.attacks, self.batch_size, self.n = attacks, batch_size, n
        self.inputs = [flags.clone()] + [torch.zeros(n, dtype=torch.bool) for _ in attacks[1:]]
        self.known = [n] + [0] * (len(attacks) - 1)  # examples [0, known) of each input are known
        self.out = [torch.zeros(n, dtype=torch.bool) for _ in attacks]  # robust after the attack
        self.settled = [torch.zeros(n, dtype=torch.bool) for _ in attacks]
        self.formed: list[list[torch.Tensor]] = [[] for _ in attacks]
        self.complete = [False] * len(attacks)  # every batch of the attack formed
        self.finished = 0  # attacks whose output is known for every example
        self._form(0)
        self._pass_on(0)

    def _form(self, a: int) -> None:
        """Cut attack ``a``'s batches from the known part of its input; settle the rest."""
        k = self.known[a]
        self.settled[a][:k] |= ~self.inputs[a][:k]  # not robust before: not robust after
        robust = self.inputs[a][:k].nonzero().flatten()
        used = sum(len(b) for b in self.formed[a])
        while len(robust) - used >= self.batch_size or (
            k == self.n and used < len(robust) and not self.complete[a]
        ):
            batch = robust[used : used + self.batch_size]
            self.formed[a].append(batch)
            used += len(batch)
        self.complete[a] = k == self.n and used == len(robust)

    def record(self, a: int, index: torch.Tensor, robust: torch.Tensor) -> None:
        """Attack ``a`` has settled ``index``: pass the newly known prefix to the next attack."""
        self.out[a][index], self.settled[a][index] = robust, True
        self._pass_on(a)

    def _pass_on(self, a: int) -> None:
        for b in range(a, len(self.attacks) - 1):
            unsettled = (~self.settled[b]).nonzero()
            prefix = int(unsettled[0]) if len(unsettled) else self.n
            if prefix == self.known[b + 1]:
                break
            self.inputs[b + 1][:prefix] = self.out[b][:prefix]
            self.known[b + 1] = prefix
            self._form(b + 1)

    def done(self, a: int) -> bool:
        return self.complete[a] and bool(self.settled[a].all())


def _run_batches_in_parallel(
    aa,
    x: torch.Tensor,
    y: torch.Tensor,
    todo: list[str],
    batch_size: int,
    state_path: Path,
    snaps: _Snapshots,
    listener: _Listener,
    workers: int,
) -> None:
    """The library's loop over attacks, the batches spread over ``workers`` processes as soon as
    each is fixed (:class:`_Pipeline`); a batch that nothing else can run beside runs here, with
    every thread. Snapshots at each attack boundary, as in the sequential path."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from pyautoattack import checks

    prog = listener.progress
    if snaps.flags is None:  # the library's checks and clean pass, exactly as it runs them
        aa.attacks_to_run = []
        aa.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)
    # from here on the library runs one attack on one batch at a time: its log lines speak of
    # that batch, so only its warnings are listened to
    listener.snapshots = listener.progress = None
    accuracy = {"clean": snaps.clean / len(y), **{a: c / len(y) for a, c in snaps.done}}
    line = _Pipeline(snaps.flags, todo, batch_size)
    _JOB.update(aa=aa, x=x, y=y, warnings=_Warnings())
    threads = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(threads,),
    )
    submitted = [0] * len(todo)  # batches of each attack handed out
    running: dict = {}  # future -> (attack number, batch index)
    try:
        if prog is not None:
            prog.running(todo[0], int(snaps.flags.sum()))
        while line.finished < len(todo):
            ready = [
                (a, j)
                for a in range(line.finished, len(todo))
                for j in range(submitted[a], len(line.formed[a]))
            ]
            if not running and not ready:  # pragma: no cover - _Pipeline forms every batch
                raise RuntimeError(f"AutoAttack's batches stalled at {todo[line.finished]}")
            if not running and len(ready) == 1:  # nothing can run beside it: here, all threads
                (a, j), index = ready[0], line.formed[ready[0][0]][ready[0][1]]
                submitted[a] += 1
                aa.attacks_to_run = [todo[a]]
                _, y_adv = aa.run_standard_evaluation(x[index], y[index], batch_size=batch_size)
                line.record(a, index, y_adv.eq(y[index]))
            else:
                for a, j in ready[: max(0, workers - len(running))]:
                    future = pool.submit(_attack_one_batch, todo[a], line.formed[a][j])
                    running[future] = (a, j)
                    submitted[a] += 1
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    a, j = running.pop(future)
                    robust, warnings = future.result()
                    for msg in warnings:
                        listener.warn(msg)
                    line.record(a, line.formed[a][j], robust)
                    if prog is not None and a == line.finished:
                        prog.batch(todo[a], j + 1, len(line.formed[a]), int((~robust).sum()))
            while line.finished < len(todo) and line.done(line.finished):
                a = line.finished
                robust_left = int(line.out[a].sum())
                accuracy[todo[a]] = robust_left / len(y)
                snaps.record(todo[a], line.out[a])
                line.finished += 1
                if prog is not None:
                    prog.after(todo[a], robust_left)
                    if line.finished < len(todo):
                        prog.running(todo[line.finished], robust_left)
                if robust_left == 0:  # as the library: nothing left to attack
                    line.finished = len(todo)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOB.clear()
    checks.check_square_sr(accuracy, logger=aa.logger)


def _outcome(
    snaps: _Snapshots,
    listener: _Listener,
    resumed: list[str],
    order: list[str],
    n: int,
    workers: int,
) -> AutoAttackOutcome:
    if (
        snaps.flags is None or snaps.clean is None
    ):  # pragma: no cover - the library always reports clean accuracy
        raise RuntimeError(
            "pyautoattack reported no clean accuracy; its log format may have changed"
        )
    per_attack = {a: 100.0 * c / n for a, c in snaps.done}
    last = 100.0 * int(snaps.flags.sum()) / n
    for a in order:  # attacks the library skipped because nothing robust was left
        per_attack.setdefault(a, last)
    outcome = AutoAttackOutcome(
        clean_acc=100.0 * snaps.clean / n,
        robust_acc=last,
        robust=snaps.flags,
        per_attack={a: per_attack[a] for a in order},
        warnings=listener.warnings,
        resumed_after=resumed,
        seconds_before=snaps.seconds_before,
        workers=workers,
    )
    snaps.clear()
    return outcome


def _library_version() -> str:
    import pyautoattack

    return getattr(pyautoattack, "__version__", "unknown")
