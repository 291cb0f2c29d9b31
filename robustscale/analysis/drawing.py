"""Figures drawn in a second process while this one fits: :class:`FigureDrawer`.

Importing matplotlib and drawing the figures of a 10,000-run zoo (PNG and SVG) took 2.7-3.0 s
of CPU, importing scikit-learn and fitting about 2 s; on two cores the two run side by side. The
drawer forks a child process that imports matplotlib at once and draws the figure jobs
(``report.Job``) it is given: the first ones travel with the fork, later ones (the predictor's
and the joint law's figures, known only after their fits) through a queue. Where this process
has matplotlib loaded already (a second analysis in one process), it draws its later jobs
itself and, once its fits are done, shares the first ones with the child. The child draws with
the same code and the same data as this process would, so the files are the same.

Where forking is not available (not Linux, one usable core, ``parallel=False``; by default
also in a process that has loaded torch), or when the child cannot be started or dies, the
figures are drawn in this process: slower, the same files.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from robustscale.analysis.report import Job, draw_job, in_figure_order

log = logging.getLogger(__name__)
FIGURES_MODULE = "robustscale.analysis.figures"  # imports matplotlib


def fork_available() -> bool:
    """Whether figures may be drawn in a forked process: Linux (macOS frameworks are not safe
    to use after a fork; Windows has none) with at least two usable cores."""
    if sys.platform != "linux":
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except OSError:
        cores = os.cpu_count() or 1
    return cores >= 2


def _take(counter: Any, n: int) -> int | None:
    """The next unclaimed index below ``n`` of a counter shared by both processes, or None."""
    with counter.get_lock():
        i = counter.value
        if i >= n:
            return None
        counter.value = i + 1
    return i


def _serve(first: list[Job], counter: Any, jobs: Any, results: Any, parent: int) -> None:
    """The child: draw the unclaimed jobs of ``first``, then each job from ``jobs`` until
    ``None`` (or until the parent is gone); answer each with ("ok", name, path) or ("error",
    name, exception, its traceback text)."""
    import queue
    import signal

    # Ctrl-C is the parent's to handle: it stops this process (close()) without a second
    # traceback from here
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def draw(job: Job) -> None:
        try:
            results.send(("ok", job[0], draw_job(job)))
        except Exception as exc:  # the parent raises it, as drawing there would have
            text = traceback.format_exc()
            try:
                results.send(("error", job[0], exc, text))
            except Exception:  # an exception that does not pickle
                results.send(("error", job[0], RuntimeError(str(exc)), text))

    try:
        __import__(FIGURES_MODULE)  # matplotlib, while the parent fits
    except Exception:
        pass  # the first job raises it again, in draw()
    while (i := _take(counter, len(first))) is not None:
        draw(first[i])
    while os.getppid() == parent:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            continue
        if job is None:
            return
        draw(job)


class FigureDrawer:
    """Draw figure jobs, in a forked child process where :func:`fork_available`, else here.

    ``FigureDrawer(first, parallel)`` starts drawing ``first`` at once; :meth:`submit` adds
    jobs; :meth:`finish` waits for all and returns figure name -> PNG path in report order;
    :meth:`close` (also on leaving a ``with`` block) stops the child.
    """

    def __init__(self, first: list[Job], parallel: bool | None = None) -> None:
        self.first = first
        self.sent: list[Job] = []  # jobs sent to the child through the queue
        self.local: list[Job] = []  # jobs to draw here, in finish()
        self.paths: dict[str, Path] = {}
        self.proc: Any = None
        # matplotlib already loaded here: drawing here costs no import, so share the work
        self.helps = FIGURES_MODULE in sys.modules
        if parallel is None:
            # analysis never imports torch; a process that did (a notebook that also trains, a
            # test session) holds torch's native thread pools, whose state a fork would copy
            # mid-flight: there the figures are drawn here unless parallel=True asks otherwise
            parallel = fork_available() and "torch" not in sys.modules
        if parallel:
            self._start()
        if self.proc is None:
            self.local.extend(first)

    def _start(self) -> None:
        import multiprocessing

        try:
            ctx = multiprocessing.get_context("fork")
            self.counter = ctx.Value("i", 0)  # the next index of self.first to draw
            self.jobs = ctx.Queue()  # a feeder thread sends: submit() never waits for the child
            self.results, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_serve,
                args=(self.first, self.counter, self.jobs, child_end, os.getpid()),
                daemon=True,
                name="figures",
            )
            with warnings.catch_warnings():
                # Python >= 3.12 warns of fork() in a process with threads (numpy's OpenBLAS
                # pool); the child only draws with matplotlib and numpy, whose pools re-form
                # after a fork
                warnings.filterwarnings(
                    "ignore", "This process .* is multi-threaded", DeprecationWarning
                )
                proc.start()
            child_end.close()
        except (OSError, ValueError) as exc:
            log.info("figures drawn in this process: no second process (%s)", exc)
            return
        self.proc = proc

    def submit(self, jobs: list[Job]) -> None:
        """Draw ``jobs`` too (in the child while it runs, unless this process can draw)."""
        if self.proc is None or self.helps:
            self.local.extend(jobs)
            return
        for job in jobs:
            self.jobs.put(job)
        self.sent.extend(jobs)

    def finish(self) -> dict[str, Path]:
        """Wait for every job; figure name -> PNG path, in the report's order."""
        for job in self.local:
            self.paths[job[0]] = draw_job(job)
        self.local = []
        if self.proc is not None:
            if self.helps:
                while (i := _take(self.counter, len(self.first))) is not None:
                    self.paths[self.first[i][0]] = draw_job(self.first[i])
            self._collect()
            for job in self.local:  # what a child that died did not draw
                self.paths[job[0]] = draw_job(job)
            self.local = []
        return in_figure_order(self.paths)

    def _unanswered(self) -> list[Job]:
        return [job for job in self.first + self.sent if job[0] not in self.paths]

    def _collect(self) -> None:
        try:
            while self._unanswered():
                # a child that died without closing its end (or whose end another fork holds)
                # must not leave this process waiting for ever
                while not self.results.poll(1.0):
                    if not self.proc.is_alive():
                        raise EOFError
                msg = self.results.recv()
                if msg[0] == "error":
                    _, name, exc, text = msg
                    if hasattr(exc, "add_note"):  # Python >= 3.11
                        exc.add_note(f"figure {name}, drawn in a second process:\n{text}")
                    raise exc
                self.paths[msg[1]] = msg[2]
        except (EOFError, OSError):  # the child died: draw what it did not, here
            self.proc.join(timeout=1)
            self.local = self._unanswered()
            log.warning(
                "the figure process ended (exit code %s); %d figure(s) drawn in this process",
                self.proc.exitcode,
                len(self.local),
            )
        finally:
            self.close()

    def close(self) -> None:
        """Stop the child (if any; at once when it has jobs left) and let go of the queue."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.is_alive() and not self._unanswered():  # idle: let it leave on its own
                self.jobs.put(None)
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        finally:
            self.jobs.cancel_join_thread()  # unread jobs of a dead child must not block exit
            self.jobs.close()
            self.results.close()

    def __enter__(self) -> FigureDrawer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
