"""Time one adversarial training step: robustscale's against the reference-code baseline.

For each loss (PGD-AT, TRADES) and each number of attack steps k, in one process, on the same
random batch and the same initial weights:

- ``baseline``: :func:`benchmarks.baseline.baseline_step`, the step as the TRADES and
  Rice/Gowal-reproduction code write it (fp32, NCHW, eager, ``model.eval()`` for the attack,
  weight gradients in the PGD attack, a separate clean forward, ``.item()`` every batch,
  PyTorch's default optimizer implementation and ``cudnn.benchmark`` off).
- ``robustscale``: what the engine runs per step: :class:`robustscale.train.setup.Forward`
  (precision, channels_last, torch.compile as chosen) + :func:`robustscale.losses.compute_loss`
  + backward + optimizer step (GradScaler for fp16), with a per-step seeded generator and no
  host sync.

Data loading and augmentation are outside the timed step for both (the batch is resident).
Timing: the first call is timed alone (``first_call_s``; with ``--compile`` that is mostly
compilation, reported as ``compile_s``), then ``--warmup`` more calls, then ``--repeats``
groups of ``--iters`` calls; the figure is the median group's seconds per step (CUDA events
after ``torch.cuda.synchronize()`` on a GPU, ``perf_counter`` on a CPU).

FLOPs: ``flops_per_example`` is robustscale's measured count (``measure_step_flops``: the
FLOPs the algorithm needs) and is the numerator of ``achieved_tflops`` and ``mfu`` for both
implementations, so their ratio is the speed ratio; ``executed_flops_per_example`` is what
each implementation actually computes (FlopCounterMode on a meta copy), which for the
baseline includes the attack's weight gradients and the extra forwards.

A setting that runs out of GPU memory is recorded as ``"fits": false`` (with the error) instead
of ending the run; ``--project-epochs N`` adds the wall time of N epochs of ``--epoch-examples``
at the measured rate (the step alone: no data loading, no validation).
``benchmarks/device_check.py`` runs this script's GPU variants in one call.

Example (the GPU target)::

    python benchmarks/train_step.py --model wrn28_10 --batch-size 512 --precision bf16 \\
        --channels-last --compile --loss pgd --steps 10

Writes one JSON line per measurement to stdout (and ``--out FILE.jsonl``) and a summary
table to stderr.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline import baseline_step  # noqa: E402
from robustscale.data.batches import seeded_generator  # noqa: E402
from robustscale.losses import compute_loss  # noqa: E402
from robustscale.models import build_model  # noqa: E402
from robustscale.train.setup import Forward, make_optimizer  # noqa: E402

# Dense peak TFLOP/s by GPU, from the vendors' data sheets: (bf16/fp16, tf32, fp32).
GPU_PEAKS = [
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100", (989.0, 495.0, 67.0)),  # SXM; NVL and H200 have the same compute
    ("H200", (989.0, 495.0, 67.0)),
    ("A100", (312.0, 156.0, 19.5)),
]


# ---- device facts --------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(device)}
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": "cpu", "device_name": name, "threads": torch.get_num_threads()}


@functools.cache
def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The dense peak to compute utilisation against, and where it came from.

    fp32 on a GPU counts against the TF32 peak: cuDNN convolutions use TF32 by default in
    PyTorch (``torch.backends.cudnn.allow_tf32``). On a CPU there is no MFU: a measured matmul
    rate is reported beside the figures (``cpu_matmul_tflops``) but convolutions through oneDNN
    beat it, and on a shared machine it moves with the other processes' load."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, tf32, fp32) in GPU_PEAKS:
            if key in name:
                if precision in ("bf16", "fp16"):
                    return half, f"{key} dense {precision} data sheet"
                if torch.backends.cudnn.allow_tf32:
                    return tf32, f"{key} dense TF32 data sheet"
                return fp32, f"{key} FP32 data sheet"
        return None, f"unknown GPU {name!r}: no MFU"
    return None, "CPU: no MFU"


@functools.cache
def measured_cpu_peak(
    precision: str, n: int = 1024, trials: int = 7, seconds: float = 0.2
) -> float:
    """TFLOP/s of an n x n matmul at ``precision`` on the current threads: the best of several
    short trials, since other processes' load only ever lowers a trial."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
    return best


# ---- timing --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _group(
    fn: Callable[[], object], device: torch.device, iters: int
) -> tuple[float, float | None]:
    """(wall seconds per call, CPU seconds per call or None on a GPU). On a shared CPU the
    process's CPU time is the figure that other processes' load disturbs least."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0 / iters, None
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int,
    iters: int,
    repeats: int,
) -> dict[str, dict]:
    """Per implementation: the first call alone, then ``warmup`` calls (peak memory is read over
    these); then ``repeats`` rounds that time a group of ``iters`` calls of each implementation
    in turn, so that a machine whose load drifts (shared CPUs) slows both alike."""
    out: dict[str, dict] = {}
    for name, fn in fns.items():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
        out[name] = {
            "first_call_s": first,
            "step_peak_mem_bytes": peak,
            "step_s_groups": [],
            "cpu_s_groups": [],
        }
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = _group(fn, device, iters)
            out[name]["step_s_groups"].append(wall)
            if cpu is not None:
                out[name]["cpu_s_groups"].append(cpu)
    for rec in out.values():
        rec["step_s"] = median(rec["step_s_groups"])
        rec["step_s_min"] = min(rec["step_s_groups"])
        rec["cpu_s"] = median(rec["cpu_s_groups"]) if rec["cpu_s_groups"] else None
    return out


def resident_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Weights, buffers and optimizer state (gradients are counted in the step's peak)."""
    ts = list(model.parameters()) + list(model.buffers())
    ts += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in ts)


# ---- the two steps -------------------------------------------------------------------------------


def make_robustscale_step(
    forward: Forward,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
    scaler: torch.amp.GradScaler | None = None,
    seed: int = 0,
) -> Callable[[], torch.Tensor]:
    """The engine's step on a resident batch; returns the detached loss (no host sync).
    Gradients are zeroed before backward (the engine does it after the step; same work), so
    they can be compared after a call."""
    counter = [0]

    def step() -> torch.Tensor:
        g = seeded_generator(seed, 0, counter[0], 7, device=x.device)
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        out = compute_loss(
            loss, forward, x, y, eps=eps, step_size=step_size, steps=steps, beta=beta, generator=g
        )
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            out.loss.backward()
            opt.step()
        return out.loss.detach()

    return step


def make_optimizer_for(
    kind: str, model: torch.nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """``timm``: what the engine builds (foreach on CUDA, default elsewhere); ``plain`` /
    ``foreach`` / ``fused``: torch.optim.SGD with that implementation (same hyper-parameters)."""
    if kind == "timm":
        return make_optimizer(model, 0.1, 0.9, True, 5e-4, device)
    impl = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[
        kind
    ]
    return torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, **impl
    )


def executed_flops(
    step: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], object],
    model: torch.nn.Module,
    shape: tuple[int, int, int],
    num_classes: int,
    batch: int = 2,
) -> float:
    """FLOPs per example that ``step(meta_model, x, y)`` actually computes."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustscale.cost.flops import meta_clone

    clone = meta_clone(model).train()
    x = torch.rand(batch, *shape, device="meta")
    y = torch.randint(0, num_classes, (batch,), device="meta")
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        step(clone, x, y)
    return counter.get_total_flops() / batch


# ---- one measurement -----------------------------------------------------------------------------


def parse_fraction(s: str) -> float:
    return float(Fraction(s))


def build(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    c = args.channels
    model = build_model(args.model, args.num_classes, c, [0.5] * c, [0.25] * c).to(device)
    return model


def measure(
    args: argparse.Namespace,
    device: torch.device,
    loss: str,
    k: int,
    base_model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> list[dict]:
    from robustscale.cost import measure_step_flops

    shape = (args.channels, args.image_size, args.image_size)
    common = {
        "bench": "train_step",
        **device_info(device),
        "torch": torch.__version__,
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "loss": loss,
        "steps": k,
        "eps": args.eps,
        "step_size": args.step_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "repeats": args.repeats,
    }
    kw = dict(loss=loss, eps=args.eps, step_size=args.step_size, steps=k)
    useful = measure_step_flops(
        base_model,
        loss,
        shape,
        args.num_classes,
        eps=args.eps,
        step_size=args.step_size,
        attack_steps=k,
        trades_beta=args.beta,
    ).train
    fns, settings, opts = {}, {}, {}
    if args.baseline:
        b_model = copy.deepcopy(base_model)
        b_opt = make_optimizer_for("plain", b_model, device)
        opts["baseline"] = (b_model, b_opt)

        def b_step() -> None:
            if device.type == "cuda":  # PyTorch's defaults, as in the reference code
                torch.backends.cudnn.benchmark = False
                torch.backends.cuda.matmul.allow_tf32 = False
            baseline_step(b_model, b_opt, x, y, beta=args.beta, **kw)

        fns["baseline"] = b_step
        settings["baseline"] = {
            "precision": "fp32",
            "channels_last": False,
            "compile": False,
            "optimizer": "plain",
            "grad_checkpointing": False,
            "executed_flops_per_example": executed_flops(
                lambda m, xb, yb: baseline_step(
                    m,
                    torch.optim.SGD(m.parameters(), lr=0.1),
                    xb,
                    yb,
                    beta=args.beta,
                    sync=False,
                    **kw,
                ),
                base_model,
                shape,
                args.num_classes,
            ),
        }
    model = copy.deepcopy(base_model)
    if args.grad_checkpointing:
        model.net.set_grad_checkpointing(True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = Forward(model, args.precision, args.channels_last, args.compile, device).train()
    opts["robustscale"] = (model, make_optimizer_for(args.optimizer, model, device))
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    r_step = make_robustscale_step(
        forward, opts["robustscale"][1], x, y, beta=args.beta, scaler=scaler, seed=args.seed, **kw
    )

    def rs_step() -> None:
        if device.type == "cuda":  # what robustscale.train.setup.training_device sets
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
        r_step()

    fns["robustscale"] = rs_step
    settings["robustscale"] = {
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "optimizer": args.optimizer,
        "grad_checkpointing": args.grad_checkpointing,
        "executed_flops_per_example": executed_flops(
            lambda m, xb, yb: compute_loss(
                loss, m, xb, yb, eps=args.eps, step_size=args.step_size, steps=k, beta=args.beta
            ).loss.backward(),
            base_model,
            shape,
            args.num_classes,
        ),
    }
    timed = time_interleaved(fns, device, args.warmup, args.iters, args.repeats)
    records = []
    for name, rec in timed.items():
        m, o = opts[name]
        res = resident_bytes(m, o)
        rec["resident_bytes"] = res
        rec["peak_mem_bytes"] = (
            res + rec["step_peak_mem_bytes"] if rec["step_peak_mem_bytes"] is not None else None
        )
        s = settings[name]
        r = {
            **common,
            "impl": name,
            **s,
            **rec,
            **figures(
                rec,
                useful,
                s["executed_flops_per_example"],
                args.batch_size,
                device,
                s["precision"],
            ),
        }
        if name == "robustscale" and args.compile:
            r["compile_s"] = max(0.0, rec["first_call_s"] - rec["step_s"])
        records.append(r)
    if "baseline" in timed:
        b, r = timed["baseline"], timed["robustscale"]
        records[-1]["speedup_vs_baseline"] = b["step_s"] / r["step_s"]
        records[-1]["speedup_paired_median"] = median(
            bs / rs for bs, rs in zip(b["step_s_groups"], r["step_s_groups"])
        )
        records[-1]["speedup_min"] = b["step_s_min"] / r["step_s_min"]
        if r["cpu_s"]:
            records[-1]["speedup_cpu_time"] = b["cpu_s"] / r["cpu_s"]
    return records


def figures(
    rec: dict, useful: float, executed: float, batch: int, device: torch.device, precision: str
) -> dict:
    peak, basis = peak_tflops(device, precision)
    achieved = useful * batch / rec["step_s"] / 1e12
    out = {
        "examples_per_s": batch / rec["step_s"],
        "flops_per_example": useful,
        "achieved_tflops": achieved,
        "executed_tflops": executed * batch / rec["step_s"] / 1e12,
        "peak_tflops": peak,
        "peak_basis": basis,
        "mfu": achieved / peak if peak else None,
    }
    if device.type == "cpu":
        out["cpu_matmul_tflops"] = measured_cpu_peak(precision)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="wrn16_1")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--loss", default="pgd,trades", help="comma list of pgd, trades")
    p.add_argument("--steps", default="1,2,5,10", help="comma list of attack steps k")
    p.add_argument("--eps", type=parse_fraction, default=8 / 255)
    p.add_argument("--step-size", type=parse_fraction, default=2 / 255)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--optimizer", choices=["timm", "plain", "foreach", "fused"], default="timm")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--project-epochs",
        type=int,
        default=None,
        help="also report the wall time of this many epochs of "
        "--epoch-examples at the measured rate",
    )
    p.add_argument(
        "--epoch-examples", type=int, default=50_000, help="examples per epoch (CIFAR: 50,000)"
    )
    p.add_argument("--out", type=Path, default=None, help="append JSON lines to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    base_model = build(args, device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.rand(
        args.batch_size, args.channels, args.image_size, args.image_size, device=device, generator=g
    )
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device, generator=g)
    for loss in args.loss.split(","):
        for k in (int(s) for s in args.steps.split(",")):
            try:
                records = measure(args, device, loss, k, base_model, x, y)
            except torch.OutOfMemoryError as exc:  # "does it fit?" is itself a figure
                records = [
                    {
                        "bench": "train_step",
                        **device_info(device),
                        "torch": torch.__version__,
                        "model": args.model,
                        "batch_size": args.batch_size,
                        "loss": loss,
                        "steps": k,
                        "impl": "robustscale",
                        "precision": args.precision,
                        "channels_last": args.channels_last,
                        "compile": args.compile,
                        "grad_checkpointing": args.grad_checkpointing,
                        "fits": False,
                        "error": str(exc).splitlines()[0],
                    }
                ]
            if device.type == "cuda":  # the failed attempt's tensors are gone with its frames
                torch.cuda.empty_cache()
            for rec in records:
                if "examples_per_s" in rec:
                    rec["fits"] = True
                    if (
                        args.project_epochs
                    ):  # one GPU, this step alone (no data loading, no validation)
                        rec["projected_epochs"] = args.project_epochs
                        rec["projected_wall_s"] = (
                            args.project_epochs * args.epoch_examples / rec["examples_per_s"]
                        )
                emit(rec, args.out)


def emit(rec: dict, out: Path | None) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")
    if not rec.get("fits", True):
        print(
            f"{rec['impl']:>11} {rec['loss']:>6} k={rec['steps']:<2} does not fit: {rec['error']}",
            file=sys.stderr,
            flush=True,
        )
        return
    ratio = ""
    if "speedup_vs_baseline" in rec:
        ratio = f"  x{rec['speedup_vs_baseline']:.2f} vs baseline (min x{rec['speedup_min']:.2f}"
        ratio += f", CPU time x{rec['speedup_cpu_time']:.2f})" if "speedup_cpu_time" in rec else ")"
    mfu = f"  MFU {100 * rec['mfu']:.1f}%" if rec["mfu"] is not None else ""
    mem = f"  {rec['peak_mem_bytes'] / 2**30:.2f} GiB" if rec["peak_mem_bytes"] else ""
    print(
        f"{rec['impl']:>11} {rec['loss']:>6} k={rec['steps']:<2} {rec['examples_per_s']:9.1f} ex/s "
        f" {rec['achieved_tflops']:.3f} TFLOP/s{mfu}{mem}{ratio}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
