"""The input pipeline alone: images/s delivered to the device and host peak RSS, on-disk vs in RAM.

Writes an N-image CIFAR-sized set (uint8 32x32x3, shards of 100k images, written chunk by
chunk) under ``--dir`` (default /tmp), then, each in a fresh process so that its peak RSS is
its own, times ``robustscale.data.batches.BatchStream`` delivering training batches (real
CIFAR-sized part resident on the device, ``round(B*f)`` extra images a batch, augmentation
included, as the engine gets them):

- ``disk``: the set read from disk by the prefetch thread (``dataset: ...`` with a folder), page
  cache warm (just written) and, with ``--cold``, evicted first (``posix_fadvise DONTNEED``);
- ``ram``: the same images held in memory (what an ``.npz`` source is);
- ``disk`` at 3k and 300k images too, for peak RSS against N (the target: 300k uses at most
  ~150 MB more than 3k).

Every mode walks the same seeded batches. The set is deleted at the end (``--keep`` to keep).
One JSON line per measurement to stdout (and ``--out``), a summary to stderr::

    python benchmarks/data.py --threads 1 --n 1000000 --steps 300            # this machine (CPU)
    python benchmarks/data.py --device cuda --n 1000000 --steps 2000 --cold   # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARD = 100_000


def _write_set(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, lo in enumerate(range(0, n, SHARD)):
        m = min(SHARD, n - lo)
        with open(folder / f"image-{k:05d}.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (m, 32, 32, 3)}
            )
            for c in range(0, m, 10_000):
                f.write(
                    rng.integers(0, 256, (min(10_000, m - c), 32, 32, 3), dtype=np.uint8).tobytes()
                )
        np.save(folder / f"label-{k:05d}.npy", rng.integers(0, 10, m))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> dict:
    import torch

    from robustscale.data.arrays import InMemorySource, open_source
    from robustscale.data.batches import BatchPlan, BatchStream
    from robustscale.device import resolve_device

    torch.set_num_threads(args.threads) if args.threads else None
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    real = (
        torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (50_000,), generator=g),
    )
    if args.cold:
        for p in Path(args.set).glob("image-*.npy"):
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    base = _rss_mb()  # torch, CUDA context and the resident real part: the same in every mode
    source = open_source(args.set)
    if args.mode == "ram":
        source = InMemorySource(source.gather(np.arange(len(source))), source.labels)
    plan = BatchPlan(50_000, len(source), args.batch_size, args.fraction, seed=0)
    stream = BatchStream(plan, real, source, augment=True, device=device, prefetch=args.prefetch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    done, epoch, t0 = 0, 0, None
    while done < args.steps + args.warmup:
        for _, _xb, _ in stream.epoch(epoch):
            done += 1
            if done == args.warmup:
                sync()
                t0 = time.perf_counter()
            if done == args.steps + args.warmup:
                break
        epoch += 1
    sync()
    seconds = time.perf_counter() - t0
    return {
        "mode": args.mode,
        "n": len(source),
        "cold": args.cold,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size,
        "fraction": args.fraction,
        "steps": args.steps,
        "images_per_s": args.steps * args.batch_size / seconds,
        "extra_images_per_s": args.steps * plan.syn_per_batch / seconds,
        "peak_rss_mb": _rss_mb(),
        "rss_before_data_mb": base,
        "peak_rss_data_mb": _rss_mb() - base,
        "threads": args.threads,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--fraction", type=float, default=0.7)
    p.add_argument("--steps", type=int, default=300, help="timed batches per mode")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--cold", action="store_true", help="also time the on-disk set with the page cache evicted"
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out")
    p.add_argument("--child", choices=["disk", "ram"], dest="mode")
    p.add_argument("--set")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    root = Path(args.dir) / f"robustscale-data-bench-{os.getpid()}"
    try:
        t = time.perf_counter()
        _write_set(root / "all", args.n)
        print(
            f"wrote {args.n} images ({args.n * 3072 / 1e9:.2f} GB) "
            f"in {time.perf_counter() - t:.0f}s",
            file=sys.stderr,
        )
        _write_set(root / "3k", 3000)
        small = root / "300k"
        small.mkdir()
        for k in range(3):  # the first three shards of the big set
            for kind in ("image", "label"):
                name = f"{kind}-{k:05d}.npy"
                if (root / "all" / name).exists():
                    os.link(root / "all" / name, small / name)
        runs = [
            ("disk", root / "3k", False),
            ("disk", small, False),
            ("disk", root / "all", False),
            ("ram", root / "all", False),
        ]
        if args.cold:
            runs.insert(3, ("disk", root / "all", True))
        rows = []
        for mode, folder, cold in runs:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--set",
                str(folder),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch-size",
                str(args.batch_size),
                "--fraction",
                str(args.fraction),
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--prefetch",
                str(args.prefetch),
            ] + (["--cold"] if cold else [])
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{mode} {folder} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        if args.out:
            Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        ram = rows[-1]["images_per_s"]
        print(
            f"{'mode':<6}{'N':>10}{'cold':>6}{'images/s':>12}{'x ram':>7}"
            f"{'peak RSS MB':>13}{'data MB':>9}",
            file=sys.stderr,
        )
        for r in rows:
            print(
                f"{r['mode']:<6}{r['n']:>10}{str(r['cold']):>6}{r['images_per_s']:>12.0f}"
                f"{r['images_per_s'] / ram:>7.2f}{r['peak_rss_mb']:>13.0f}"
                f"{r['peak_rss_data_mb']:>9.0f}",
                file=sys.stderr,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
