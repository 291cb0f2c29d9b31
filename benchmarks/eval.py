"""Time robust evaluation: robustscale's ``evaluate`` against the attack libraries called plainly.

On the same model and the same examples, in one process:

- PGD-40 (L-inf, step eps/4, one random start):
  ``robustscale``: ``robustscale.evaluate.evaluate(attack="pgd", steps=40)`` (eval mode,
  parameters frozen, input gradients only, one no-grad clean forward per batch);
  ``peer-pgd``: the reference training code's evaluation (Rice et al.'s ``attack_pgd`` from
  ``benchmarks/baseline.py``: ``model.eval()``, ``loss.backward()``, so weight gradients too);
  ``apgd-ce``: pyautoattack's ``APGDAttack(n_iter=40, n_restarts=1, loss="ce")`` called plainly
  (the nearest library attack of the same budget, not the same attack);
  ``robustscale-bf16``: our PGD-40 with the model under bf16 autocast, the same random starts
  as ``robustscale``, judged by the fp32 model: its robust accuracy must equal fp32's within
  noise (the check that bf16 input gradients do not weaken the attack) and its speed is the
  gain bf16 would bring to evaluation.
- AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square):
  ``robustscale``: ``evaluate(attack="autoattack")`` (the library itself, with frozen
  parameters and resumable state); ``pyautoattack``: ``AutoAttack(...).run_standard_evaluation``
  called plainly on the model in eval mode (parameters still requiring grad, as users call it).

AutoAttack's cost depends on how many examples stay robust (about 9,700 forward-equivalents
for each robust one, far fewer for the broken), so the model must be a robust one: by default
a digits PGD-AT WRN-10-1 is trained once into ``--work-dir`` (about 15 s on one CPU core);
``--run DIR`` evaluates a trained run instead. Every record carries the robust accuracy, and
the two AutoAttack implementations must agree on it.

Example (GPU, a CIFAR-10 run)::

    python benchmarks/eval.py --run runs/<run_id> --n 1000 --batch-size 500

One JSON line per measurement on stdout (and ``--out FILE.jsonl``), a summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline import attack_pgd  # noqa: E402
from benchmarks.train_step import device_info, sync  # noqa: E402


def digits_model_run(work_dir: Path) -> Path:
    """A robust digits model (PGD-AT, the test suite's ``adversarial_run`` recipe), trained once."""
    from robustscale import Recipe, train

    recipe = Recipe(
        dataset="digits",
        model="wrn10_1",
        loss="pgd",
        eps=0.2,
        step_size=0.05,
        attack_steps=5,
        val_attack_steps=10,
        epochs=10,
        batch_size=64,
        lr=0.05,
        val_size=128,
        seed=0,
    )
    return train(recipe, out_root=work_dir, progress=False)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (AutoAttack's batch workers)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], dict], device: torch.device) -> dict:
    sync(device)
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = fn()
    sync(device)
    # on a shared CPU the CPU time is what other processes' load disturbs least
    return {**out, "seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0}


# ---- the implementations -------------------------------------------------------------------------


def rs_pgd(model, x, y, eps, bs, device) -> dict:
    from robustscale.evaluate import evaluate

    r = evaluate(
        model,
        x,
        y,
        attack="pgd",
        eps=eps,
        steps=40,
        step_size=eps / 4,
        batch_size=bs,
        device=device,
    )
    return {"robust_acc": r["robust_acc"], "clean_acc": r["clean_acc"]}


def rs_pgd_bf16(model, x, y, eps, bs, device) -> dict:
    """Our PGD-40 with the model under bf16 autocast (image, delta and projection in fp32), the
    same random starts as ``evaluate``; robustness judged by the fp32 model."""
    from robustscale.attacks.pgd import pgd_worst_case
    from robustscale.data.batches import seeded_generator
    from robustscale.train.setup import Forward

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    f = Forward(model, "bf16", False, False, device).eval()
    clean = robust = torch.zeros((), device=device, dtype=torch.long)
    for b, i in enumerate(range(0, len(y), bs)):
        xb, yb = x[i : i + bs].to(device), y[i : i + bs].to(device)
        g = seeded_generator(0, 4_001, b, device=device)
        x_adv, _ = pgd_worst_case(f, xb, yb, eps, 40, eps / 4, generator=g)
        with torch.no_grad():
            clean = clean + (model(xb).argmax(1) == yb).sum()
            robust = robust + (model(x_adv).argmax(1) == yb).sum()
    return {
        "robust_acc": 100.0 * robust.item() / len(y),
        "clean_acc": 100.0 * clean.item() / len(y),
    }


def peer_pgd(model, x, y, eps, bs, device) -> dict:
    model.eval()
    clean = robust = 0
    for i in range(0, len(y), bs):
        xb, yb = x[i : i + bs].to(device), y[i : i + bs].to(device)
        delta = attack_pgd(model, xb, yb, eps, eps / 4, 40)
        with torch.no_grad():
            clean += (model(xb).max(1)[1] == yb).sum().item()
            robust += (model(xb + delta).max(1)[1] == yb).sum().item()
    model.zero_grad(set_to_none=True)
    return {"robust_acc": 100.0 * robust / len(y), "clean_acc": 100.0 * clean / len(y)}


def plain_apgd(model, x, y, eps, bs, device) -> dict:
    from pyautoattack.autopgd_base import APGDAttack

    model.eval()
    apgd = APGDAttack(
        model, n_iter=40, norm="Linf", n_restarts=1, eps=eps, loss="ce", seed=0, device=device
    )
    clean = robust = 0
    for i in range(0, len(y), bs):
        xb, yb = x[i : i + bs].to(device), y[i : i + bs].to(device)
        adv = apgd.perturb(xb, yb)
        with torch.no_grad():
            clean += (model(xb).max(1)[1] == yb).sum().item()
            robust += (model(adv).max(1)[1] == yb).sum().item()
    return {"robust_acc": 100.0 * robust / len(y), "clean_acc": 100.0 * clean / len(y)}


def rs_autoattack(model, x, y, eps, bs, device) -> dict:
    from robustscale.evaluate import evaluate

    r = evaluate(model, x, y, attack="autoattack", eps=eps, batch_size=bs, device=device)
    return {
        "robust_acc": r["robust_acc"],
        "clean_acc": r["clean_acc"],
        "per_attack": r["per_attack"],
    }


def plain_autoattack(model, x, y, eps, bs, device) -> dict:
    import logging

    from pyautoattack import AutoAttack

    model.eval()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=device)
    adv, _ = aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=bs)
    with torch.no_grad():
        robust = sum(
            (model(adv[i : i + bs]).max(1)[1] == y[i : i + bs].to(device)).sum().item()
            for i in range(0, len(y), bs)
        )
        clean = sum(
            (model(x[i : i + bs].to(device)).max(1)[1] == y[i : i + bs].to(device)).sum().item()
            for i in range(0, len(y), bs)
        )
    model.zero_grad(set_to_none=True)
    return {"robust_acc": 100.0 * robust / len(y), "clean_acc": 100.0 * clean / len(y)}


def plain_autoattack_flags(model, x, y, eps, bs, device) -> dict:
    """pyautoattack called plainly, its per-example verdicts read from its own state file."""
    import logging
    import tempfile

    from pyautoattack import AutoAttack
    from pyautoattack.state import EvaluationState

    model.eval()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aa.state"
        aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=bs, state_path=path)
        flags = EvaluationState.from_disk(path).robust_flags.bool().cpu()
    model.zero_grad(set_to_none=True)
    return {"robust_acc": 100.0 * flags.float().mean().item(), "flags": flags}


def rs_autoattack_option(**options) -> Callable:
    """robustscale's adapter with one option: ``channels_last``, ``compile``, a ``batch_scale``
    or ``workers`` ("auto": evaluate's default, one process per CPU thread; 1 on a GPU)."""

    def fn(model, x, y, eps, bs, device) -> dict:
        from robustscale.attacks.autoattack import default_workers, run_autoattack

        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        kw = {k: v for k, v in options.items() if k != "batch_scale"}
        if kw.get("workers") == "auto":
            kw["workers"] = default_workers(device)
        out = run_autoattack(
            model, x, y, eps=eps, batch_size=bs * options.get("batch_scale", 1), device=device, **kw
        )
        return {
            "robust_acc": out.robust_acc,
            "flags": out.robust.bool().cpu(),
            "workers": out.workers,
        }

    return fn


# AutoAttack variants: each one's per-example verdicts are compared with the plain library's.
AA_OPTIONS = {
    "pyautoattack": plain_autoattack_flags,
    "robustscale": rs_autoattack_option(),
    "channels_last": rs_autoattack_option(channels_last=True),
    "compile": rs_autoattack_option(compile=True),
    "channels_last+compile": rs_autoattack_option(channels_last=True, compile=True),
    "batch_x2": rs_autoattack_option(batch_scale=2),
    # the batches of each attack side by side in forked processes (robustscale's CPU default)
    "workers": rs_autoattack_option(workers="auto"),
}

PGD = {
    "robustscale": rs_pgd,
    "peer-pgd": peer_pgd,
    "apgd-ce": plain_apgd,
    "robustscale-bf16": rs_pgd_bf16,
}
AUTOATTACK = {"robustscale": rs_autoattack, "pyautoattack": plain_autoattack}


# ---- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Iterator[dict]:
    from robustscale.evaluate import load_split
    from robustscale.runs import load, read_recipe

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    run_dir = Path(args.run) if args.run else digits_model_run(args.work_dir)
    recipe = read_recipe(run_dir)
    eps = args.eps if args.eps is not None else recipe.eps
    x, y = load_split(run_dir, "test", args.n)
    common = {
        "bench": "eval",
        **device_info(device),
        "torch": torch.__version__,
        "run": str(run_dir),
        "model": recipe.model,
        "dataset": recipe.dataset,
        "n": len(y),
        "eps": eps,
        "batch_size": args.batch_size,
    }
    if "autoattack-options" in args.attacks:
        yield from aa_options(args, run_dir, x, y, eps, device, common)
    for attack, impls, repeats in (("pgd40", PGD, args.repeats), ("autoattack", AUTOATTACK, 1)):
        if attack not in args.attacks:
            continue
        results: dict[str, list[dict]] = {name: [] for name in impls}
        for _ in range(repeats):  # interleaved, so that a drifting machine load slows all alike
            for name, fn in impls.items():
                model = load(run_dir, device=device)
                if name != "robustscale":  # the plain calls get the model as a user holds it
                    for p in model.parameters():
                        p.requires_grad_(True)
                results[name].append(
                    timed(
                        lambda fn=fn, model=model: fn(model, x, y, eps, args.batch_size, device),
                        device,
                    )
                )
        records = []
        for name, rs in results.items():
            secs = [r["seconds"] for r in rs]
            rec = {
                **common,
                "attack": attack,
                "impl": name,
                **{k: v for k, v in rs[0].items() if k not in ("seconds", "cpu_seconds")},
                "seconds": median(secs),
                "seconds_all": secs,
                "examples_per_s": len(y) / median(secs),
            }
            records.append(rec)
        ours = next(r for r in records if r["attack"] == attack and r["impl"] == "robustscale")
        for r in records:
            if r["attack"] != attack or r["impl"] == "robustscale":
                continue
            if r["impl"] == "robustscale-bf16":
                r["speedup_vs_robustscale"] = ours["seconds"] / r["seconds"]
                r["robust_acc_minus_fp32"] = r["robust_acc"] - ours["robust_acc"]
            else:
                ours[f"speedup_vs_{r['impl']}"] = r["seconds"] / ours["seconds"]
        yield from records


def aa_options(
    args: argparse.Namespace,
    run_dir: Path,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    device: torch.device,
    common: dict,
) -> Iterator[dict]:
    """Plain pyautoattack against robustscale's adapter with each of ``--aa-options``, interleaved
    for ``--aa-repeats`` rounds (the first round of ``compile`` includes its compilation, so
    the median of three or more rounds is the figure); verdicts compared example by example."""
    from robustscale.runs import load

    names = ["pyautoattack"] + [n for n in args.aa_options.split(",") if n and n != "pyautoattack"]
    unknown = [n for n in names if n not in AA_OPTIONS]
    if unknown:
        raise SystemExit(f"--aa-options: unknown {unknown}; allowed: {', '.join(AA_OPTIONS)}")
    results: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.aa_repeats):
        for name in names:
            model = load(run_dir, device=device)
            if name == "pyautoattack":  # as a user holds it: parameters requiring grad
                for p in model.parameters():
                    p.requires_grad_(True)
            results[name].append(
                timed(
                    lambda name=name, model=model: AA_OPTIONS[name](
                        model, x, y, eps, args.batch_size, device
                    ),
                    device,
                )
            )
    ref = results["pyautoattack"][0]["flags"]
    base = median(r["seconds"] for r in results["pyautoattack"])
    for name, rs in results.items():
        secs = [r["seconds"] for r in rs]
        cpu = [r["cpu_seconds"] for r in rs]
        same = [bool(torch.equal(r["flags"], ref)) for r in rs]
        yield {
            **common,
            "attack": "autoattack",
            "impl": name,
            "robust_acc": rs[0]["robust_acc"],
            "workers": rs[0].get("workers", 1),
            "seconds": median(secs),
            "seconds_all": secs,
            "examples_per_s": len(y) / median(secs),
            "verdicts_identical_to_pyautoattack": all(same),
            "verdicts_differing": max(int((r["flags"] != ref).sum()) for r in rs),
            "speedup_vs_pyautoattack": base / median(secs),
            "speedup_paired_median": median(
                b["seconds"] / r["seconds"] for b, r in zip(results["pyautoattack"], rs)
            ),
            "cpu_seconds": median(cpu),
            "cpu_seconds_all": cpu,
            "speedup_cpu_time": median(r["cpu_seconds"] for r in results["pyautoattack"])
            / median(cpu),
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", default=None, help="a trained run directory (default: a digits PGD-AT model)"
    )
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robustscale-bench"))
    p.add_argument("--n", type=int, default=None, help="first N test examples (default: all)")
    p.add_argument("--eps", type=float, default=None, help="default: the run's eps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--attacks",
        default="pgd40,autoattack",
        help="comma list of pgd40, autoattack, "
        "autoattack-options (plain pyautoattack against each of --aa-options, verdicts compared)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="repeats of the PGD-40 timings (AutoAttack: 1)"
    )
    p.add_argument(
        "--aa-options",
        default="robustscale,channels_last",
        help=f"with --attacks autoattack-options: comma list of {', '.join(AA_OPTIONS)}",
    )
    p.add_argument("--aa-repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.attacks = args.attacks.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    for rec in run(args):
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out is not None:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        ratios = "  ".join(
            f"x{v:.2f} vs {k[11:]}" for k, v in rec.items() if k.startswith("speedup_vs_")
        )
        print(
            f"{rec['attack']:>10} {rec['impl']:>12} {rec['examples_per_s']:9.1f} ex/s  robust "
            f"{rec['robust_acc']:.2f}%  {ratios}",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
