"""`robustscale sweep SPEC.yaml --out DIR` and `robustscale status DIR` (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of recipes (local or Slurm), skipping done runs and "
        "resuming interrupted ones",
        description="Expand a sweep file (a base recipe, axes and zipped axes) "
        "and work through it. The "
        "ledger DIR/ledger.sqlite records every run's state, so starting the same command again "
        "skips done runs, resumes interrupted ones from last.pt and retries failed "
        "ones; several launchers may "
        "share one DIR. See docs/sweeps.md.",
    )
    p.add_argument(
        "spec", metavar="SPEC.yaml", help="sweep file (e.g. recipes/sweeps/digits-small.yaml)"
    )
    p.add_argument(
        "--out", metavar="DIR", help="sweep folder: ledger.sqlite, recipes/, runs/<run_id>/, logs/"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (run id, varying keys, forecast training FLOPs) without training; "
        "a synthetic_data file missing on this machine is allowed here",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    p.add_argument("--no-flops", action="store_true", help="with --dry-run: skip the FLOP forecast")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key in every run (repeatable; applied after the axes)",
    )
    p.add_argument(
        "--backend",
        choices=["local", "slurm"],
        default="local",
        help="where runs train (default local)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        metavar="N",
        help="tries per run before it stays failed (default 3)",
    )
    p.add_argument(
        "--nproc-per-run",
        type=int,
        metavar="N",
        help="processes (GPUs) per run; > 1 trains each run with DDP under torchrun (default 1; "
        "Slurm: the sweep file's slurm.gpus_per_run)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="with DDP: SyncBatchNorm across the processes of a run (CUDA); the same as "
        "--set sync_bn=true (a recipe key: it changes results, hence the run ids)",
    )
    p.add_argument(
        "--final-eval",
        choices=["pgd", "autoattack"],
        help="evaluate each run's best checkpoint at the end",
    )
    loc = p.add_argument_group("local backend")
    loc.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="runs at once (default: visible GPUs / nproc-per-run, or 1 on a CPU)",
    )
    loc.add_argument(
        "--lease-timeout",
        type=float,
        metavar="S",
        help="seconds without a heartbeat before another launcher takes a run "
        "over (default 300; Slurm: 900); at least 2 and 3x --heartbeat",
    )
    loc.add_argument(
        "--heartbeat",
        type=float,
        metavar="S",
        help="seconds between heartbeats (default 30; Slurm: 60); at least 0.1",
    )
    slurm = p.add_argument_group("slurm backend (flags override the sweep file's slurm: section)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument(
        "--time-min",
        type=int,
        metavar="MIN",
        help="time limit per job; runs requeue and resume past it",
    )
    slurm.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="N",
        help="GPUs per run (0: a CPU partition, no GPU request)",
    )
    slurm.add_argument(
        "--cpus-per-task", type=int, metavar="N", help="CPUs per task; also the job's torch threads"
    )
    slurm.add_argument("--mem-gb", type=int, metavar="GB")
    slurm.add_argument(
        "--array-parallelism", type=int, metavar="N", help="runs of the job array at once"
    )
    slurm.add_argument(
        "--max-timeouts",
        type=int,
        metavar="N",
        help="times a job is requeued after hitting --time-min (default 1000; submitit's own is "
        "3); pre-emptions are not counted",
    )
    slurm.add_argument(
        "--resubmit",
        action="store_true",
        help="submit every pending run again, even one whose recorded job sacct says is alive "
        "(without it, pending runs are resubmitted only when their job is over)",
    )
    slurm.add_argument(
        "--cluster",
        choices=["slurm", "local", "debug"],
        default="slurm",
        help="submitit executor (local/debug: this machine, for trying a sweep out)",
    )
    p.set_defaults(func=run_sweep)

    s = sub.add_parser(
        "status",
        help="the state of a sweep: each run's progress, and what failed and why",
        description="Print the ledger of a sweep folder: state, attempts and epoch/epochs of each "
        "run, then what failed and why.",
    )
    s.add_argument("dir", metavar="DIR", help="sweep folder (holds ledger.sqlite)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument(
        "--html",
        nargs="?",
        const="",
        metavar="FILE",
        help="write a live web page of the sweep (default DIR/status.html): runs by state, best "
        "PGD-40 so far, FLOPs and energy spent vs forecast; it reloads itself",
    )
    s.add_argument(
        "--refresh",
        type=int,
        default=30,
        metavar="S",
        help="seconds between page reloads (default 30)",
    )
    s.add_argument(
        "--watch",
        action="store_true",
        help="with --html: rewrite the page every --refresh seconds until no "
        "run is pending or running",
    )
    s.set_defaults(func=run_status)


def run_sweep(args: argparse.Namespace) -> int:
    from robustscale.errors import RobustscaleError
    from robustscale.recipe import parse_overrides
    from robustscale.sweep.spec import load_sweep

    overrides = parse_overrides(args.overrides)
    if args.sync_bn:
        overrides["sync_bn"] = True
    if args.dry_run:
        return _dry_run(load_sweep(args.spec, overrides, check_files=False), args)
    if not args.out:
        raise RobustscaleError(
            "--out DIR is required to run a sweep (it holds the ledger and the runs)"
        )
    for flag in (
        "max_attempts",
        "nproc_per_run",
        "max_parallel",
        "array_parallelism",
        "cpus_per_task",
        "time_min",
        "mem_gb",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RobustscaleError(f"--{flag.replace('_', '-')}={value}; allowed: an integer >= 1")
    if args.gpus_per_run is not None and args.gpus_per_run < 0:
        raise RobustscaleError(
            f"--gpus-per-run={args.gpus_per_run}; allowed: an integer >= 0 (0: no GPU)"
        )
    if args.lease_timeout is not None or args.heartbeat is not None or args.backend == "local":
        from robustscale.sweep.slurm_options import check_leases

        default = (300.0, 30.0) if args.backend == "local" else (900.0, 60.0)
        check_leases(
            default[0] if args.lease_timeout is None else args.lease_timeout,
            default[1] if args.heartbeat is None else args.heartbeat,
            flags=True,
        )
    if args.max_timeouts is not None and args.max_timeouts < 0:
        raise RobustscaleError(f"--max-timeouts={args.max_timeouts}; allowed: an integer >= 0")
    if args.backend != "slurm" and (args.resubmit or args.max_timeouts is not None):
        raise RobustscaleError(
            "--resubmit and --max-timeouts are for --backend slurm; the local backend "
            "takes every pending run by itself"
        )
    sweep = load_sweep(args.spec, overrides)
    if args.backend == "slurm":
        return _slurm(sweep, args)
    from robustscale.sweep.launch import LaunchOptions, launch_local

    opts = LaunchOptions(
        max_parallel=args.max_parallel,
        nproc_per_run=args.nproc_per_run or 1,
        max_attempts=args.max_attempts,
        lease_timeout=300.0 if args.lease_timeout is None else args.lease_timeout,
        heartbeat=30.0 if args.heartbeat is None else args.heartbeat,
        final_eval=args.final_eval,
    )
    t0 = time.time()
    counts = launch_local(sweep, args.out, opts)
    print(
        f"sweep {sweep.name}: {_counts(counts)} in {time.time() - t0:.0f}s; see: "
        f"robustscale status {args.out}"
    )
    return 1 if counts["failed"] or counts["running"] else 0


def _slurm(sweep: Any, args: argparse.Namespace) -> int:
    from robustscale.sweep.slurm import SlurmOptions, launch_slurm

    flags = {
        k: getattr(args, k)
        for k in (
            "partition",
            "account",
            "qos",
            "time_min",
            "gpus_per_run",
            "cpus_per_task",
            "mem_gb",
            "array_parallelism",
            "max_timeouts",
            "lease_timeout",
            "heartbeat",
        )
    }
    if args.nproc_per_run:
        flags["gpus_per_run"] = args.nproc_per_run
    opts = SlurmOptions.from_sources(sweep.slurm, {k: v for k, v in flags.items() if v is not None})
    notes: list[str] = []
    jobs = launch_slurm(
        sweep,
        args.out,
        opts,
        max_attempts=args.max_attempts,
        cluster=args.cluster,
        final_eval=args.final_eval,
        resubmit=args.resubmit,
        notes=notes,
    )
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    asked = f" ({'; '.join(notes)})" if notes else ""
    print(
        f"sweep {sweep.name}: submitted {len(jobs)} run(s) as job(s) "
        f"{', '.join(ids) or '-'}{asked}; see: robustscale status {args.out}"
    )
    return 0


def _dry_run(sweep: Any, args: argparse.Namespace) -> int:
    from robustscale.sweep.spec import forecast_flops

    flops = None if args.no_flops else forecast_flops(sweep.runs)
    note = (
        f"not checked in a dry run (missing here): {', '.join(sweep.unchecked_files)}"
        if sweep.unchecked_files
        else None
    )
    if args.json:
        print(
            json.dumps(
                {
                    "name": sweep.name,
                    "count": len(sweep.runs),
                    "unchecked_files": sweep.unchecked_files,
                    "runs": [
                        {
                            "index": r.index,
                            "run_id": r.run_id,
                            "varying": r.varying,
                            "train_flops": flops[i] if flops else None,
                            "recipe": r.recipe.to_dict(),
                        }
                        for i, r in enumerate(sweep.runs)
                    ],
                },
                indent=1,
                default=str,
            )
        )
        return 0
    width = max(len(r.run_id) for r in sweep.runs) if sweep.runs else 6
    print(f"{'#':>4}  {'run_id':<{width}}  {'train FLOPs' if flops else '':>11}  varying")
    for i, r in enumerate(sweep.runs):
        f = f"{flops[i]:.3g}" if flops and flops[i] is not None else ""
        print(f"{i + 1:>4}  {r.run_id:<{width}}  {f:>11}  {r.label}")
    total = f"; {sum(flops):.3g} training FLOPs in all" if flops else ""
    print(f"{len(sweep.runs)} runs in sweep {sweep.name}{total}")
    if note:
        print(f"note: synthetic_data {note}")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no runs"


def run_status(args: argparse.Namespace) -> int:
    from robustscale.sweep.status import sweep_status

    if args.html is not None or args.watch:
        return _status_page(args)

    rows = sweep_status(args.dir)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    width = max([len(r["run_id"]) for r in rows] + [6])
    slurm = any(r["job_id"] for r in rows)  # Slurm's job id and state beside the ledger's
    jw = max([len(r["job_id"] or "") for r in rows] + [6])
    sw = max([len(r["scheduler_state"]) for r in rows] + [11])
    extra = f"  {'job':<{jw}}  {'slurm state':<{sw}}" if slurm else ""
    print(f"{'#':>4}  {'run_id':<{width}}  {'state':<15} {'tries':>5}  {'epoch':>9}{extra}  where")
    for r in rows:
        progress = f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "-"
        extra = (
            f"  {r['job_id'] or '-':<{jw}}  {r['scheduler_state'] or '-':<{sw}}" if slurm else ""
        )
        print(
            f"{r['idx'] + 1:>4}  {r['run_id']:<{width}}  {r['shown_state']:<15} {r['attempts']:>5} "
            f" {progress:>9}{extra}  {r['where']}"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(f"{len(rows)} runs: {_counts(counts)}")
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        print("failed:")
        for r in failed:
            print(
                f"  {r['run_id']} (after {r['attempts']} "
                f"attempt{'s' if r['attempts'] != 1 else ''}): "
                f"{r['last_error']}"
            )
    return 0


def _status_page(args: argparse.Namespace) -> int:
    from robustscale.errors import RobustscaleError
    from robustscale.sweep.status_page import write_status_page

    if args.html is None:
        raise RobustscaleError("--watch rewrites the --html page; give --html too")
    if args.refresh < 1:
        raise RobustscaleError(f"--refresh={args.refresh}; allowed: an integer >= 1 (seconds)")
    path, data = write_status_page(args.dir, args.html or None, refresh=args.refresh)
    forecast = {r["run_id"]: r["forecast_flops"] for r in data["rows"]}  # computed once
    print(f"wrote {path} ({_counts(data['counts'])})")
    while args.watch and (data["counts"].get("pending") or data["counts"].get("running")):
        time.sleep(args.refresh)
        path, data = write_status_page(
            args.dir, args.html or None, refresh=args.refresh, forecast=forecast
        )
    if args.watch:
        print(f"every run is settled: {_counts(data['counts'])}; {path} is final")
    return 0
