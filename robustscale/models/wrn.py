"""CIFAR WideResNets (Zagoruyko & Komodakis), registered in timm's model registry.

Pre-activation basic blocks, three groups of widths 16k, 32k, 64k with (depth - 4) / 6 blocks
each, as in the TRADES, Rice et al. and Gowal et al. code the paper builds on. After
``import robustscale.models`` they are ordinary timm models: ``timm.create_model("wrn28_10")``.
The activation is a constructor argument because the paper's grid varies it (ReLU vs GELU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from timm.models import register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if cls is not nn.GELU else cls()


@contextlib.contextmanager
def _bn_stats_untouched(module: nn.Module) -> Iterator[None]:
    """While a checkpointed block is recomputed for backward its BatchNorms run again; their
    running statistics (and batch counters) are restored afterwards so that they are updated
    once per forward, as without checkpointing. The recomputed output is the same: in train
    mode BatchNorm normalises with the batch statistics."""
    bufs = [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``x`` through ``blocks`` in order; with ``checkpointed`` (and autograd on) each block is
    recomputed in backward instead of keeping its activations, its BatchNorm statistics updated
    once per forward as without checkpointing."""
    if not (checkpointed and torch.is_grad_enabled()):
        for blk in blocks:
            x = blk(x)
        return x
    compiling = torch.compiler.is_compiling()
    for blk in blocks:
        if compiling:  # traced once: the recomputation replays no buffer mutation
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = checkpoint(
                blk,
                x,
                use_reentrant=False,
                context_fn=lambda blk=blk: (contextlib.nullcontext(), _bn_stats_untouched(blk)),
            )
    return x


class BasicBlock(nn.Module):
    """Pre-activation block: BN-act-conv3x3-BN-act-(dropout)-conv3x3 plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = _act(act)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = _act(act)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.equal = c_in == c_out and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.drop(self.act2(self.bn2(y))))
        # The projection shortcut takes the pre-activated input, as in the reference WRN code.
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-width for small images (CIFAR 32x32, digits 8x8). Inputs as the caller normalises
    them."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        act: str = "relu",
        drop_rate: float = 0.0,
        **_: object,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.num_classes = num_classes
        self.num_features = widths[3]
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                c_in = widths[g] if i == 0 else widths[g + 1]
                blocks.append(
                    BasicBlock(c_in, widths[g + 1], stride if i == 0 else 1, act, drop_rate)
                )
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.act = _act(act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.grad_checkpointing = False
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: when training with autograd on, keep only each block's input and
        recompute the block in backward (about one more forward of the blocks per backward,
        for activation memory of one block). Used to fit WRN-70-16 TRADES at large batches."""
        self.grad_checkpointing = enable

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, x, self.grad_checkpointing and self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self._blocks(self.stem(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


def _wrn(depth: int, width: int, pretrained: bool = False, **kwargs: object) -> WideResNet:
    if pretrained:
        raise ValueError("robustscale WideResNets have no pretrained weights")
    act = kwargs.pop("act_layer", None) or kwargs.pop("activation", "relu")
    return WideResNet(depth=depth, width=width, act=str(act), **kwargs)  # type: ignore[arg-type]


# (depth, width) of every registered variant: the paper's four and small ones for tests/digits.
WRN_VARIANTS = {
    "wrn10_1": (10, 1),
    "wrn16_1": (16, 1),
    "wrn22_1": (22, 1),
    "wrn16_2": (16, 2),
    "wrn16_4": (16, 4),
    "wrn28_10": (28, 10),
    "wrn34_10": (34, 10),
    "wrn34_20": (34, 20),
    "wrn70_16": (70, 16),
}


@register_model
def wrn10_1(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(10, 1, pretrained, **kwargs)


@register_model
def wrn16_1(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(16, 1, pretrained, **kwargs)


@register_model
def wrn22_1(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(22, 1, pretrained, **kwargs)


@register_model
def wrn16_2(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(16, 2, pretrained, **kwargs)


@register_model
def wrn16_4(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(16, 4, pretrained, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(28, 10, pretrained, **kwargs)


@register_model
def wrn34_10(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(34, 10, pretrained, **kwargs)


@register_model
def wrn34_20(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(34, 20, pretrained, **kwargs)


@register_model
def wrn70_16(pretrained: bool = False, **kwargs: object) -> WideResNet:
    return _wrn(70, 16, pretrained, **kwargs)
