"""The steps of ``benchmarks/device_check.py``, each run in a worker process, and its summary.

A worker appends one JSON line per result to its records file as soon as the result exists;
the parent (device_check.py) merges them into ``device-check.json`` while the worker runs.
CUDA and ``--quick`` CPU runs go through the same code; only the sizes differ (``SIZES``).
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Record = Callable[[dict], None]

# Sizes of each step. "cuda": the targets on one H100/H200; "quick": a CPU in seconds.
SIZES = {
    "cuda": {
        "step_common": ["--warmup", "1", "--iters", "2", "--repeats", "3"],
        "wrn28": ["--model", "wrn28_10", "--batch-size", "512", "--loss", "pgd", "--steps", "10"],
        "wrn70": [
            "--model",
            "wrn70_16",
            "--batch-size",
            "128",
            "--loss",
            "trades",
            "--steps",
            "10",
            "--project-epochs",
            "400",
        ],
        "data": (4096, 1000),
        "train": dict(
            model="wrn28_10",
            batch_size=512,
            attack_steps=10,
            val_attack_steps=10,
            val_size=512,
            channels_last=True,
        ),
        "eval_n": 500,
        "eval_batch": 500,
    },
    "quick": {
        "step_common": [
            "--warmup",
            "0",
            "--iters",
            "1",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--image-size",
            "16",
        ],
        "wrn28": ["--model", "wrn10_1", "--batch-size", "8", "--loss", "pgd", "--steps", "1"],
        "wrn70": [
            "--model",
            "wrn16_1",
            "--batch-size",
            "8",
            "--loss",
            "trades",
            "--steps",
            "1",
            "--project-epochs",
            "400",
        ],
        "data": (192, 64),
        "train": dict(
            model="wrn10_1",
            batch_size=64,
            attack_steps=1,
            val_attack_steps=2,
            val_size=32,
            channels_last=False,
        ),
        "eval_n": 16,
        "eval_batch": 16,
    },
}


def run_worker(
    steps: list[str], *, device: str, quick: bool, work: Path, records: Path, compile: bool
) -> None:
    """Run ``steps`` in order on ``device``, appending to ``records`` (JSON lines) a start and an
    end event per step and each result as soon as it exists. A step that raises is recorded as
    failed and the next one runs."""
    import traceback

    if device == "cpu":
        import torch

        torch.set_num_threads(1)  # the CPU check runs on shared machines (benchmarks/README.md)
    sizes = SIZES["quick" if quick else "cuda"]
    for step in steps:

        def record(rec: dict, step: str = step) -> None:
            with open(records, "a") as f:
                f.write(json.dumps({"_step": step, **rec}, default=str) + "\n")

        record({"_event": "start"})
        try:
            STEP_FUNCTIONS[step](
                device=device, sizes=sizes, work=work, record=record, compile=compile
            )
            state = "done"
        except Exception as exc:
            traceback.print_exc()
            state = f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        record({"_event": "end", "state": state})
        sys.stdout.flush()


# ---- 1. environment -----------------------------------------------------------------------------


def step_environment(*, device: str, record: Record, **_: object) -> None:
    import platform

    import torch

    from benchmarks.train_step import peak_tflops

    out = {
        "section": "environment",
        "device": device,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        dev = torch.device("cuda")
        out.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            driver=_driver_version(),
            peak_tflops_bf16=peak_tflops(dev, "bf16")[0],
            peak_tflops_fp32=peak_tflops(dev, "fp32")[0],
            peak_basis=peak_tflops(dev, "bf16")[1],
        )
    else:
        from robustscale.cost.energy import _cpu_name

        mem = (
            next(
                (
                    ln.split()[1]
                    for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemTotal")
                ),
                None,
            )
            if Path("/proc/meminfo").exists()
            else None
        )
        out.update(
            cpu=_cpu_name(),
            cpu_count=os.cpu_count(),
            threads=torch.get_num_threads(),
            memory_gib=round(int(mem) / 2**20, 1) if mem else None,
            peak_basis="CPU: no MFU",
        )
    from robustscale.cost import open_meter

    with open_meter(device) as meter:
        out["energy_meter"] = meter.source
    record(out)


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml or no NVML: ask nvidia-smi
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            return None


# ---- 2. the CUDA-marked tests -------------------------------------------------------------------


def step_cuda_tests(*, work: Path, record: Record, **_: object) -> None:
    import xml.etree.ElementTree as ET

    import pytest

    xml = work / "cuda-tests.xml"
    t0 = time.monotonic()
    os.chdir(ROOT)  # in this process: one interpreter start less (the check runs in CI too)
    code = int(
        pytest.main(
            [
                "-m",
                "cuda",
                "tests/test_cuda.py",
                "-q",
                "-rA",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ]
        )
    )
    tests = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", None
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (
                        (el.get("message") or "").splitlines()[0][:300]
                        if el.get("message")
                        else None
                    )
            tests.append(
                {
                    "test": case.get("name"),
                    "outcome": outcome,
                    "seconds": float(case.get("time", 0)),
                    "message": message,
                }
            )
    counts = {
        k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")
    }
    record(
        {
            "section": "cuda_tests",
            "exit_code": code,
            "seconds": round(time.monotonic() - t0, 1),
            **counts,
            "tests": tests,
        }
    )


# ---- 3. the training step -----------------------------------------------------------------------


def train_step_variants(sizes: dict, compile: bool) -> list[tuple[str, list[str]]]:
    """(label, train_step.py arguments), in the order run: the WRN-70-16 pair before compile,
    whose compilation is the one part that could run long."""
    c, w28, w70 = sizes["step_common"], sizes["wrn28"], sizes["wrn70"]
    variants = [
        ("fp32 (+ baseline)", w28 + c),
        ("bf16", w28 + c + ["--precision", "bf16", "--no-baseline"]),
        (
            "bf16 + channels_last",
            w28 + c + ["--precision", "bf16", "--channels-last", "--no-baseline"],
        ),
        (
            "trades bf16 + channels_last",
            w70 + c + ["--precision", "bf16", "--channels-last", "--no-baseline"],
        ),
        (
            "trades bf16 + channels_last + checkpointing",
            w70
            + c
            + ["--precision", "bf16", "--channels-last", "--grad-checkpointing", "--no-baseline"],
        ),
    ]
    if compile:
        variants.append(
            (
                "bf16 + channels_last + compile",
                w28 + c + ["--precision", "bf16", "--channels-last", "--compile", "--no-baseline"],
            )
        )
    return variants


def step_train_step(
    *, device: str, sizes: dict, work: Path, record: Record, compile: bool, **_: object
) -> None:
    import torch

    from benchmarks import train_step

    for label, argv in train_step_variants(sizes, compile):
        out = work / "train_step.part.jsonl"
        out.unlink(missing_ok=True)
        t0 = time.monotonic()
        try:
            train_step.main(argv + ["--device", device, "--out", str(out)])
            error = None
        except Exception as exc:  # one variant failing must not cost the others
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        recs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        for rec in recs:
            record({"section": "train_step", "variant": label, **rec})
        if error or not recs:
            record(
                {
                    "section": "train_step",
                    "variant": label,
                    "impl": "robustscale",
                    "error": error or "no result",
                    "seconds": round(time.monotonic() - t0, 1),
                }
            )
        gc.collect()
        if device == "cuda":
            torch._dynamo.reset()
            torch.cuda.empty_cache()


# ---- 4. a short real training, then AutoAttack ---------------------------------------------------


def write_random_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10 in torchvision's on-disk layout (``cifar-10-batches-py``), random uint8 images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    batches = [
        (f"data_batch_{i + 1}", n, f"training batch {i + 1} of 5") for i, n in enumerate(per)
    ]
    for name, n, label in batches + [("test_batch", n_test, "testing batch 1 of 1")]:
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": label,
                    "labels": rng.integers(0, 10, size=n).tolist(),
                    "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                    "filenames": [f"img_{i}.png" for i in range(n)],
                },
                f,
            )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per[0], "num_vis": 3072}, f)
    return root


def _cli(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """``robustscale ARGS`` (the console script's ``main``) in this process, output captured."""
    import contextlib
    import io
    import logging

    from robustscale.cli import main

    out, err = io.StringIO(), io.StringIO()
    root, handlers = logging.getLogger(), list(logging.getLogger().handlers)
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        # main's logging.basicConfig wrote to this call's stderr: the next call gets its own
        finally:
            for h in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(h)
    sys.stdout.write(out.getvalue()[-4000:] + err.getvalue()[-4000:])
    return subprocess.CompletedProcess(
        ["robustscale", *args], code or 0, out.getvalue(), err.getvalue()
    ), time.monotonic() - t0


def step_train_eval(*, device: str, sizes: dict, work: Path, record: Record, **_: object) -> None:
    from robustscale import Recipe

    n_train, n_test = sizes["data"]
    data = write_random_cifar10(work / "data", n_train, n_test)
    recipe = Recipe(
        dataset="cifar10",
        data_dir=str(data),
        loss="pgd",
        eps=8 / 255,
        step_size=2 / 255,
        epochs=2,
        precision="bf16",
        device=device,
        seed=0,
        **sizes["train"],
    )
    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(recipe.to_yaml())
    run_dir = work / "run"
    proc, secs = _cli(["train", str(recipe_path), "--run-dir", str(run_dir), "--no-progress"])
    rec = {
        "section": "train_eval",
        "part": "train",
        "exit_code": proc.returncode,
        "seconds": round(secs, 1),
        "model": recipe.model,
        "examples": n_train,
        "epochs": 2,
        "precision": "bf16",
        "run_dir": str(run_dir),
    }
    if proc.returncode == 0:
        cost = json.loads((run_dir / "cost.json").read_text())
        rec.update(
            {
                k: cost.get(k)
                for k in (
                    "energy_source",
                    "energy_measured",
                    "energy_kwh",
                    "device_seconds",
                    "train_flops",
                    "devices",
                )
            }
        )
        rec["status"] = json.loads((run_dir / "status.json").read_text()).get("state")
        rec["metrics_rows"] = max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
        rec["run_files"] = sorted(p.name for p in run_dir.iterdir())
    else:
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    record(rec)
    if proc.returncode != 0:
        return
    n, bs = sizes["eval_n"], sizes["eval_batch"]
    proc, secs = _cli(
        [
            "eval",
            str(run_dir),
            "--attack",
            "autoattack",
            "--n",
            str(n),
            "--batch-size",
            str(bs),
            "--device",
            device,
            "--json",
        ]
    )
    rec = {
        "section": "train_eval",
        "part": "eval-cli",
        "exit_code": proc.returncode,
        "seconds": round(secs, 1),
        "command": f"robustscale eval RUN --attack autoattack --n {n} --batch-size {bs}",
    }
    if proc.returncode == 0:
        try:
            result = json.loads(proc.stdout[proc.stdout.index("{") :])
            rec.update(
                {
                    k: result.get(k)
                    for k in ("clean_acc", "robust_acc", "per_attack", "n", "seconds")
                }
            )
            rec["attack_seconds"] = rec.pop("seconds")
            rec["seconds"] = round(secs, 1)
        except ValueError:
            rec["error"] = "no JSON in the output of eval --json"
        eval_dir = run_dir / "eval"
        rec["eval_files"] = sorted(p.name for p in eval_dir.iterdir()) if eval_dir.is_dir() else []
    else:
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    record(rec)
    record(compare_autoattack(run_dir, device, n, bs))


def compare_autoattack(run_dir: Path, device: str, n: int, batch_size: int) -> dict:
    """Plain pyautoattack and robustscale's adapter on the same model and examples: seconds and
    per-example verdicts (each read from the library's own robust flags)."""
    import torch

    from benchmarks.eval import plain_autoattack_flags, rs_autoattack_option, timed
    from robustscale.evaluate import load_split
    from robustscale.runs import load

    dev = torch.device(device)
    x, y = load_split(run_dir, "test", n)
    eps = 8 / 255
    out = {}
    for name, fn in (
        ("pyautoattack", plain_autoattack_flags),
        ("robustscale", rs_autoattack_option(workers="auto")),  # eval's default: 1 on a GPU
    ):
        model = load(run_dir, device=dev)
        if name == "pyautoattack":
            for p in model.parameters():
                p.requires_grad_(True)
        out[name] = timed(lambda fn=fn, model=model: fn(model, x, y, eps, batch_size, dev), dev)
    plain, ours = out["pyautoattack"], out["robustscale"]
    rec = {
        "section": "train_eval",
        "part": "autoattack-vs-plain",
        "n": len(y),
        "batch_size": batch_size,
        "plain_seconds": round(plain["seconds"], 2),
        "robustscale_seconds": round(ours["seconds"], 2),
        "speedup_vs_pyautoattack": plain["seconds"] / ours["seconds"],
        "plain_robust_acc": plain["robust_acc"],
        "robust_acc": ours["robust_acc"],
        "verdicts_identical": bool(torch.equal(plain["flags"], ours["flags"])),
        "verdicts_differing": int((plain["flags"] != ours["flags"]).sum()),
    }
    if device == "cuda":  # the adapter's opt-in options, judged by the same two numbers
        for name, opts in (
            ("channels_last", {"channels_last": True}),
            ("compile", {"compile": True}),
        ):
            model = load(run_dir, device=dev)
            r = timed(
                lambda opts=opts, model=model: rs_autoattack_option(**opts)(
                    model, x, y, eps, batch_size, dev
                ),
                dev,
            )
            rec[f"{name}_seconds"] = round(r["seconds"], 2)  # compile: compilation included
            rec[f"{name}_speedup_vs_pyautoattack"] = plain["seconds"] / r["seconds"]
            rec[f"{name}_verdicts_differing"] = int((plain["flags"] != r["flags"]).sum())
    return rec


STEP_FUNCTIONS = {
    "environment": step_environment,
    "cuda_tests": step_cuda_tests,
    "train_step": step_train_step,
    "train_eval": step_train_eval,
}
