"""DeepMind WideResNets (Gowal et al. 2020), registered in timm's model registry.

The architecture of RobustBench's ``DMWideResNet`` (``robustbench/model_zoo/architectures/
dm_wide_resnet.py``), which every top CIFAR-10 L-inf entry uses (Gowal et al. 2020/2021,
Rebuffi et al. 2021, Wang et al. 2023, Bartoldson et al. 2024), with the same module names, so
``state_dict()`` is key-for-key the same and a RobustBench checkpoint loads strictly:
``init_conv``; ``layer.{g}.block.{i}.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}``;
``batchnorm``; ``logits``. The numerics are the same too: ``conv_0`` gets TensorFlow's "SAME"
padding, (1,1,1,1) at stride 1 (the same zeros as the convolution's own ``padding=1``) and
(0,1,0,1) at stride 2 (padded explicitly: ``padding=1`` would shift the sampling grid), and in a
block that changes the channel count both ``conv_0`` and the shortcut read
``act(batchnorm_0(x))``.

Differences that change no number: inputs arrive normalised (robustscale's ``Normalized``
wrapper holds mean/std, RobustBench's model holds them as buffers), the activation is
``nn.SiLU`` where RobustBench has its own Swish autograd function (the same function), and the
head averages the final map globally, which at 32x32 inputs (an 8x8 map) is RobustBench's
``avg_pool2d(8)`` and also works for other input sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from robustscale.models.wrn import _act, run_blocks

__all__ = ["DM_DEFAULT_ACTIVATION", "DM_WRN_VARIANTS", "DMWideResNet"]

DM_DEFAULT_ACTIVATION = "silu"  # Swish, as the RobustBench entries were trained


class _Block(nn.Module):
    """Pre-activation block with "SAME" padding on the first (possibly strided) convolution."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(c_in)
        self.relu_0 = _act(act)
        # "SAME" padding: at stride 1 it is (1,1,1,1), the convolution's own zero padding (no
        # copy of the input: an explicit F.pad made a dm_wrn16_1 forward+backward 1.06x slower
        # on one CPU thread); at stride 2 it is (0,1,0,1), which padding=1 is not, so forward
        # pads explicitly there.
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride, 1 if stride == 1 else 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(c_out)
        self.relu_1 = _act(act)
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.has_shortcut = c_in != c_out
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if self.has_shortcut else None
        )
        self._pad = None if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu_0(self.batchnorm_0(x))
        y = self.conv_0(o if self._pad is None else F.pad(o, self._pad))
        y = self.conv_1(self.relu_1(self.batchnorm_1(y)))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class _BlockGroup(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int, act: str):
        super().__init__()
        self.block = nn.Sequential(
            *[
                _Block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, act)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DM-WRN-depth-width; channels [16, 16w, 32w, 64w], (depth - 4) / 6 blocks per group.

    Takes inputs as the caller normalises them (robustscale wraps it in ``Normalized``)."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        act: str = DM_DEFAULT_ACTIVATION,
        drop_rate: float = 0.0,
        **_: object,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DMWideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if drop_rate:
            raise ValueError(
                "DMWideResNet has no dropout (RobustBench's has none); use drop_rate=0"
            )
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width, self.act_name = depth, width, act
        self.num_classes = num_classes
        self.num_features = ch[3]
        self.init_conv = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            *[_BlockGroup(n, ch[g], ch[g + 1], s, act) for g, s in enumerate((1, 2, 2))]
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = _act(act)
        self.logits = nn.Linear(ch[3], num_classes)
        self.grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch, as for robustscale's WideResNet: when training with autograd on,
        recompute each block in backward instead of keeping its activations."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [blk for group in self.layer for blk in group.block]
        x = run_blocks(blocks, self.init_conv(x), self.grad_checkpointing and self.training)
        return self.relu(self.batchnorm(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.logits


def _dm(depth: int, width: int, pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    if pretrained:
        raise ValueError(
            "robustscale DeepMind WideResNets have no pretrained weights; "
            "load RobustBench checkpoints with robustscale.load(PATH, model=NAME)"
        )
    act = kwargs.pop("act_layer", None) or kwargs.pop("activation", DM_DEFAULT_ACTIVATION)
    return DMWideResNet(depth=depth, width=width, act=str(act), **kwargs)  # type: ignore[arg-type]


# (depth, width) of every registered variant: RobustBench's published sizes, small ones for tests.
DM_WRN_VARIANTS = {
    "dm_wrn10_1": (10, 1),
    "dm_wrn16_1": (16, 1),
    "dm_wrn28_10": (28, 10),
    "dm_wrn34_10": (34, 10),
    "dm_wrn34_20": (34, 20),
    "dm_wrn70_16": (70, 16),
    "dm_wrn82_8": (82, 8),
    "dm_wrn94_16": (94, 16),
    "dm_wrn106_16": (106, 16),
}


@register_model
def dm_wrn10_1(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(10, 1, pretrained, **kwargs)


@register_model
def dm_wrn16_1(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(16, 1, pretrained, **kwargs)


@register_model
def dm_wrn28_10(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(28, 10, pretrained, **kwargs)


@register_model
def dm_wrn34_10(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(34, 10, pretrained, **kwargs)


@register_model
def dm_wrn34_20(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(34, 20, pretrained, **kwargs)


@register_model
def dm_wrn70_16(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(70, 16, pretrained, **kwargs)


@register_model
def dm_wrn82_8(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(82, 8, pretrained, **kwargs)


@register_model
def dm_wrn94_16(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(94, 16, pretrained, **kwargs)


@register_model
def dm_wrn106_16(pretrained: bool = False, **kwargs: object) -> DMWideResNet:
    return _dm(106, 16, pretrained, **kwargs)
