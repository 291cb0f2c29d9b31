"""DeepMind WideResNet at full size: logits against the test reference, and the padding's cost.

    python benchmarks/dm_wrn_check.py [--sizes 28_10,70_16] [--threads 1]

1. For each size, a RobustBench-layout checkpoint of the reference ``DMWideResNet``
   (tests/robustbench_reference.py; PyTorch's default init, random BatchNorm statistics), saved
   under ``model_state_dict`` with ``module.0.`` keys, goes through ``robustscale.load(PATH,
   model=...)``; prints the largest logit difference on two CIFAR-sized inputs.
2. The cost of padding stride-1 convolutions explicitly (``F.pad`` then ``padding=0``) against
   the convolution's own zero padding, which robustscale uses: forward+backward of dm_wrn16_1
   at batch 64, process CPU time, median of 7 interleaved rounds; prints the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from robustbench_reference import RefDMWideResNet, RefSwish  # noqa: E402

import robustscale  # noqa: E402
from robustscale.models import build_model  # noqa: E402
from robustscale.models.dm_wrn import _Block  # noqa: E402


def logits_check(depth: int, width: int) -> None:
    ref = RefDMWideResNet(depth=depth, width=width, activation_fn=RefSwish).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1, 0.1), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        torch.save(
            {"model_state_dict": {f"module.0.{k}": v for k, v in ref.state_dict().items()}}, path
        )
        t = time.perf_counter()
        model = robustscale.load(path, model=f"dm_wrn{depth}_{width}")
        seconds = time.perf_counter() - t
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        diff, scale = (model(x) - ref(x)).abs().max().item(), ref(x).abs().max().item()
    n = sum(p.numel() for p in model.parameters())
    print(
        f"dm_wrn{depth}_{width}: {n:,} params, load {seconds:.1f} s, max |logit diff| {diff:.3g} "
        f"(max |logit| {scale:.3g})"
    )


def pad_cost() -> None:
    def make(explicit: bool) -> torch.nn.Module:
        m = build_model("dm_wrn16_1", 10, 3, [0.5] * 3, [0.25] * 3, activation="silu").train()
        if explicit:
            for b in m.modules():
                if isinstance(b, _Block) and b._pad is None:
                    b._pad, b.conv_0.padding = (1, 1, 1, 1), (0, 0)
        return m

    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    own, explicit = make(False), make(True)
    explicit.load_state_dict(own.state_dict())

    def step(m: torch.nn.Module) -> None:
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()

    times: dict[str, list[float]] = {"own padding": [], "explicit F.pad": []}
    for _ in range(2):
        step(own), step(explicit)
    for _ in range(7):
        for name, m in (("own padding", own), ("explicit F.pad", explicit)):
            t = time.process_time()
            for _ in range(3):
                step(m)
            times[name].append((time.process_time() - t) / 3)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        ", ".join(f"{k} {v:.4f} s" for k, v in med.items()),
        f"-> explicit / own = {med['explicit F.pad'] / med['own padding']:.3f}",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="28_10,70_16")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for size in args.sizes.split(","):
        depth, width = map(int, size.split("_"))
        logits_check(depth, width)
    pad_cost()


if __name__ == "__main__":
    main()
