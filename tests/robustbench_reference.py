"""Reference implementations of RobustBench's two CIFAR WideResNets, for tests only.

Written from the published description of ``robustbench/model_zoo/architectures/dm_wide_resnet.py``
(DMWideResNet, after Gowal et al. 2020's DeepMind code) and ``wide_resnet.py`` (the TRADES
WideResNet), not copied: what matters is that attribute names, so state-dict keys, and the
arithmetic are those of RobustBench, independently of robustscale's own code.

DMWideResNet: normalisation inside with mean/std as non-persistent buffers; ``init_conv``; three
groups ``layer.{g}``, each ``block.{i}`` with ``batchnorm_0``, ``conv_0`` (no padding of its own:
"SAME" padding (1,1,1,1) at stride 1, (0,1,0,1) at stride 2), ``batchnorm_1``, ``conv_1``, and a 1x1
``shortcut`` when the channel count changes (then it and ``conv_0`` both read act(bn_0(x)));
``batchnorm``; ``avg_pool2d(8)``; ``logits``. WideResNet: no normalisation; ``conv1``;
``block{1,2,3}.layer.{i}`` with ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``convShortcut``; ``bn1``;
``avg_pool2d(8)``; ``fc``; ReLU only. ``normalize_model(model, mean, std)``: ``normalize`` +
``model`` in an ``nn.Sequential``, how RobustBench entries normalise a WideResNet.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class RefSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class RefDMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.projects = cin != cout
        if self.projects:
            self.shortcut = nn.Conv2d(
                cin, cout, kernel_size=1, stride=stride, padding=0, bias=False
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        skip = self.shortcut(pre) if self.projects else x
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        h = self.conv_0(F.pad(pre, pad))
        h = self.conv_1(self.relu_1(self.batchnorm_1(h)))
        return skip + h


class RefDMGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(
            *[
                RefDMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class RefDMWideResNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 28,
        width: int = 10,
        activation_fn: type[nn.Module] = nn.ReLU,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        num_input_channels: int = 3,
    ):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean).view(num_input_channels, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std).view(num_input_channels, 1, 1), persistent=False
        )
        ch = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(
            num_input_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False
        )
        self.layer = nn.Sequential(
            RefDMGroup(n, ch[0], ch[1], 1, activation_fn),
            RefDMGroup(n, ch[1], ch[2], 2, activation_fn),
            RefDMGroup(n, ch[2], ch[3], 2, activation_fn),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(ch[3], num_classes)
        self.channels = ch[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.init_conv((x - self.mean) / self.std)
        h = self.relu(self.batchnorm(self.layer(h)))
        return self.logits(F.avg_pool2d(h, 8).view(-1, self.channels))


class RefBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.same = cin == cout
        self.convShortcut = (
            None if self.same else nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        h = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return (x if self.same else self.convShortcut(pre)) + h


class RefNetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                RefBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RefWideResNet(nn.Module):
    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = RefNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = RefNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = RefNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        self.channels = ch[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(self.conv1(x))))
        h = self.relu(self.bn1(h))
        return self.fc(F.avg_pool2d(h, 8).view(-1, self.channels))


class RefImageNormalizer(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def ref_normalize_model(model: nn.Module, mean, std) -> nn.Module:
    """RobustBench's ``normalize_model``: an ``nn.Sequential`` of ``normalize`` (persistent
    mean/std buffers) and ``model``, for architectures that do not normalise themselves."""
    return nn.Sequential(
        OrderedDict([("normalize", RefImageNormalizer(mean, std)), ("model", model)])
    )


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics (a fresh model's BNs are identities in eval mode,
    which would hide a swapped or misnamed BatchNorm), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                else:
                    t.copy_(0.3 * torch.randn(t.shape, generator=g))
    return model.eval()
