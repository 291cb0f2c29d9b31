"""One prepared device check: prove the CUDA path and measure the targets in one call.

``python benchmarks/device_check.py --out DIR`` runs, in this order, each step under its own
time limit (and all of them inside ``--budget`` seconds):

1. ``environment``: GPU name, driver, CUDA, torch, the peak TFLOP/s MFU is computed against,
   memory (on a CPU: its name, threads, memory);
2. ``cuda_tests``: the test suite's CUDA-marked tests (``pytest -m cuda tests/test_cuda.py``;
   on a CPU they are collected and skipped with their reason);
3. ``train_step``: ``benchmarks/train_step.py`` for WRN-28-10 PGD-10 batch 512 (the reference
   baseline fp32 against robustscale fp32, bf16, bf16 + channels_last, + compile) and
   WRN-70-16 TRADES-10 batch 128 bf16 with and without activation checkpointing (fits?,
   examples/s, projected 400-epoch wall time on this one GPU);
4. ``train_eval``: a 2-epoch bf16 training (energy metered) on a CIFAR-format set written here
   (random images in torchvision's on-disk layout), a real run directory, then
   ``robustscale eval RUN --attack autoattack --n 500``, and plain pyautoattack against
   robustscale's adapter on the same model and examples (per-example verdicts compared);
5. a summary table, printed last and written to ``DIR/device-check.md``.

Every record is added to ``DIR/device-check.json`` as soon as it exists (atomic rewrites), so
a run cut off by its time limit still returns what it measured. An existing ``DIR`` keeps what
it holds: each invocation is one more entry of the JSON's ``sessions``, its logs are named
``s<N>-<step>.log`` and its table is appended to ``device-check.md``. ``--device cpu
--quick`` runs the same steps at toy sizes on a CPU (tested in CI). Asked for CUDA
(``--device cuda``) where there is none, it says so in one line and runs the CPU steps.
The bulky work (data, run directories) goes to ``--work-dir`` (default ``DIR/work``).

The parent process imports nothing heavy and never touches the GPU. The steps run in a worker
process (``device_check.py --worker STEP,...``) that appends JSON lines (a start and an end
event per step, and every result) to a file the parent follows; a step past its limit ends
the worker and its whole process group, and a new worker takes the steps left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("environment", "cuda_tests", "train_step", "train_eval")
# Seconds per step: on an H100/H200 (inside the 8-minute budget), and at --quick sizes on a CPU.
LIMITS = {
    "cuda": {"environment": 30, "cuda_tests": 150, "train_step": 160, "train_eval": 80},
    "cpu": {"environment": 60, "cuda_tests": 120, "train_step": 120, "train_eval": 180},
}


# ---- the parent: sessions, time limits, the JSON file --------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (or a cut-off run) only ever sees a whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _load_sessions(path: Path) -> dict:
    if not path.exists():
        return {"format": 1, "sessions": []}
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("sessions"), list):
            return data
    except (OSError, json.JSONDecodeError):
        pass
    keep = path.with_name(f"{path.stem}.unreadable-{int(time.time())}.json")  # never overwritten
    path.rename(keep)
    print(f"device_check: {path} was not a device-check file; kept as {keep.name}", file=sys.stderr)
    return {"format": 1, "sessions": []}


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def cuda_available() -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU, asked in a subprocess so the parent never holds one."""
    code = "import torch; print(torch.cuda.is_available(), torch.__version__, torch.version.cuda)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        ok, ver, cuda = out.stdout.split()
        return ok == "True", f"torch {ver}, CUDA build {cuda}"
    except (subprocess.SubprocessError, ValueError) as exc:
        return False, f"torch not usable ({exc})"


def run_steps(
    steps: list[str],
    args: argparse.Namespace,
    session: dict,
    data: dict,
    json_path: Path,
    budget: float | None,
) -> None:
    """Run ``steps`` in one worker process, each under its own time limit (and all inside
    ``budget``), merging records into the JSON as they appear. A step past its limit ends the
    worker; a new one takes the steps left. A worker start costs an interpreter and torch."""
    t0 = time.monotonic()
    left = list(steps)
    launch = 0
    while left:
        launch += 1
        records_path = Path(session["work_dir"]) / f"records-{launch}.jsonl"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            ",".join(left),
            "--device",
            session["device"],
            "--work-dir",
            session["work_dir"],
            "--records",
            str(records_path),
        ]
        cmd += ["--quick"] if session["quick"] else []
        cmd += ["--no-compile"] if args.no_compile else []
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }
        with open(args.out / session["log"], "a") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
            left = _watch(proc, records_path, left, session, data, json_path, t0, budget)


def _watch(
    proc: subprocess.Popen,
    records_path: Path,
    steps: list[str],
    session: dict,
    data: dict,
    json_path: Path,
    t0: float,
    budget: float | None,
) -> list[str]:
    """Follow one worker until it ends or its current step runs out of time; returns the steps
    still to run."""
    seen, current, started = 0, None, 0.0
    while True:
        try:
            proc.wait(timeout=0.5)
            done = True
        except subprocess.TimeoutExpired:
            done = False
        lines = _read_records(records_path)
        for rec in lines[seen:]:
            step = rec.pop("_step")
            event = rec.pop("_event", None)
            entry = session["steps"].setdefault(step, {"records": []})
            if event == "start":
                current, started = step, time.monotonic()
                limit = session["limits"][step]
                remaining = None if budget is None else budget - (started - t0)
                entry.update(
                    state="running", limit_s=limit if remaining is None else min(limit, remaining)
                )
                if remaining is not None and remaining < 10:  # this step and the rest are not run
                    _kill(proc)
                    for s in steps[steps.index(step) :]:
                        session["steps"][s] = {"state": "skipped (budget spent)", "records": []}
                    _write_json(json_path, data)
                    return []
            elif event == "end":
                entry.update(state=rec["state"], seconds=round(time.monotonic() - started, 1))
                _report(step, entry)
                current = None
            else:
                entry["records"].append(rec)
        if len(lines) != seen:
            seen = len(lines)
            _write_json(json_path, data)
        if done:
            break
        if (
            current is not None
            and time.monotonic() - started > session["steps"][current]["limit_s"]
        ):
            _kill(proc)
            entry = session["steps"][current]
            entry.update(state="timed out", seconds=round(time.monotonic() - started, 1))
            _report(current, entry)
            _write_json(json_path, data)
            rest = steps[steps.index(current) + 1 :]
            if budget is not None and budget - (time.monotonic() - t0) < 10:
                for s in rest:
                    session["steps"][s] = {"state": "skipped (budget spent)", "records": []}
                return []
            return rest
    unfinished = [
        s for s in steps if session["steps"].get(s, {}).get("state") in (None, "waiting", "running")
    ]
    if proc.returncode != 0 and unfinished == steps and current is None:  # it died before any step
        for s in steps:
            session["steps"][s].update(
                state=f"failed (worker exit {proc.returncode} before the step)"
            )
        _write_json(json_path, data)
        return []
    if current is not None:  # the worker died inside a step
        session["steps"][current].update(
            state=f"failed (worker exit {proc.returncode})",
            seconds=round(time.monotonic() - started, 1),
        )
        _report(current, session["steps"][current])
        unfinished.remove(current)
    _write_json(json_path, data)
    return unfinished if proc.returncode != 0 else []


def _report(step: str, entry: dict) -> None:
    print(
        f"device_check: {step}: {entry['state']} in {entry.get('seconds')} s "
        f"({len(entry['records'])} records)",
        file=sys.stderr,
        flush=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    """End the worker and everything it started (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for device-check.json/.md and the step logs")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true", help="toy sizes (always on a CPU)")
    p.add_argument("--skip", default="", help=f"comma list of steps to skip: {', '.join(STEPS)}")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all steps together (default: 420 on a GPU, none on a CPU)",
    )
    p.add_argument(
        "--work-dir", type=Path, default=None, help="data and run directories (default DIR/work)"
    )
    p.add_argument(
        "--limit",
        default="",
        metavar="STEP=SECONDS,...",
        help="override steps' time limits (defaults: LIMITS in this file)",
    )
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # comma list of steps, run in this process
    p.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        from benchmarks.device_steps import run_worker

        run_worker(
            args.worker.split(","),
            device=args.device,
            quick=args.quick,
            work=args.work_dir,
            records=args.records,
            compile=not args.no_compile,
        )
        return 0
    if args.out is None:
        p.error("--out DIR is required")
    skip = [s for s in args.skip.split(",") if s]
    bad = [s for s in skip if s not in STEPS]
    if bad:
        print(
            f"device_check: --skip {','.join(bad)}: no such step; steps are {', '.join(STEPS)}",
            file=sys.stderr,
        )
        return 2
    limits = {}
    for item in (i for i in args.limit.split(",") if i):
        step, _, secs = item.partition("=")
        try:
            if step not in STEPS or float(secs) <= 0:
                raise ValueError
            limits[step] = float(secs)
        except ValueError:
            print(
                f"device_check: --limit {item!r}: give STEP=SECONDS with a "
                f"step of {', '.join(STEPS)} "
                "and seconds > 0",
                file=sys.stderr,
            )
            return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"device_check: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "device-check.json"
    data = _load_sessions(json_path)

    device, note = args.device, None
    if device != "cpu":
        ok, versions = cuda_available()
        if ok:
            device = "cuda"
        elif args.device == "cuda":
            note = (
                f"no CUDA device ({versions}): the CUDA steps are skipped; the CPU "
                "steps run at --quick sizes"
            )
            print(f"device_check: {note}", file=sys.stderr, flush=True)
            device = "cpu"
        else:
            device = "cpu"
    quick = args.quick or device == "cpu"
    idx = len(data["sessions"]) + 1
    work = (args.work_dir or args.out / "work") / f"s{idx}"
    if (
        work.exists()
    ):  # left by an earlier session (another --out, or a removed JSON): kept as it is
        work = work.with_name(f"s{idx}-{int(time.time())}")
    work.mkdir(parents=True)
    session = {
        "index": idx,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:] if argv is None else argv,
        "device": device,
        "quick": quick,
        "limits": {**LIMITS[device], **limits},
        "requested_device": args.device,
        "note": note,
        "work_dir": str(work),
        "log": f"s{idx}.log",
        "steps": {},
    }
    data["sessions"].append(session)
    _write_json(json_path, data)

    budget = args.budget if args.budget is not None else (420.0 if device == "cuda" else None)
    t0 = time.monotonic()
    for step in skip:
        session["steps"][step] = {"state": "skipped (--skip)", "records": []}
    todo = [s for s in STEPS if s not in skip]
    for step in todo:  # in the order run, before any has started
        session["steps"][step] = {"state": "waiting", "records": []}
    run_steps(todo, args, session, data, json_path, budget)
    session["seconds"] = round(time.monotonic() - t0, 1)
    from benchmarks.device_summary import summary_table

    table = summary_table(session)
    session["summary"] = table
    _write_json(json_path, data)
    with open(args.out / "device-check.md", "a") as f:
        f.write(table + "\n")
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
