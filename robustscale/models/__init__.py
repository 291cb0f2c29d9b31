"""Models: CIFAR WideResNets in timm's registry, and any timm model, behind one input contract.

Every model robustscale builds takes images in [0, 1] and normalises inside
(:class:`Normalized`), so attack libraries see the threat model's own input space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import timm
import torch
from torch import nn

from robustscale.errors import RobustscaleError, first_line
from robustscale.models import dm_wrn as _dm_wrn  # noqa: F401  (registers the DeepMind WideResNets)
from robustscale.models import wrn as _wrn  # noqa: F401  (registers the WideResNets with timm)
from robustscale.models.dm_wrn import DM_WRN_VARIANTS, DMWideResNet
from robustscale.models.wrn import WRN_VARIANTS, WideResNet

if TYPE_CHECKING:
    from robustscale.data import DatasetInfo
    from robustscale.recipe import Recipe

__all__ = [
    "Normalized",
    "build_model",
    "build_model_for",
    "count_params",
    "WideResNet",
    "WRN_VARIANTS",
    "DMWideResNet",
    "DM_WRN_VARIANTS",
]


class Normalized(nn.Module):
    """``net((x - mean) / std)``: a classifier of [0, 1] images. ``net`` holds the weights."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    activation: str = "relu",
    drop_rate: float = 0.0,
    img_size: Sequence[int] | None = None,
) -> Normalized:
    """Create ``name`` from timm's registry with the dataset's classes and channels, normalising
    inside.

    ``img_size`` (height, width) reaches models whose layers depend on it (ViTs' position
    embeddings, as ``timm.create_model(..., img_size=32)`` does for CIFAR); convolutional
    models take any size and do not accept the argument."""
    if not timm.is_model(name):
        raise RobustscaleError(
            f"model={name!r} is not a registered timm model; use one of "
            f"{', '.join([*WRN_VARIANTS, *DM_WRN_VARIANTS])} or any name from timm.list_models()"
        )
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if name in WRN_VARIANTS:
        kwargs.update(act_layer=activation, drop_rate=drop_rate)
    elif name in DM_WRN_VARIANTS:
        if drop_rate:
            raise RobustscaleError(
                f"drop_rate={drop_rate!r} is not allowed for model={name!r}: the DeepMind "
                "WideResNet has no dropout; allowed: 0"
            )
        kwargs["act_layer"] = activation
    else:
        if drop_rate:
            kwargs["drop_rate"] = drop_rate
        if activation != "relu":
            kwargs["act_layer"] = activation
    try:
        if img_size is not None and name not in WRN_VARIANTS and name not in DM_WRN_VARIANTS:
            try:
                net = timm.create_model(name, pretrained=False, img_size=tuple(img_size), **kwargs)
            except TypeError:  # a model without an img_size argument: it takes any input size
                net = timm.create_model(name, pretrained=False, **kwargs)
        else:
            net = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise RobustscaleError(f"model={name!r} does not accept {sorted(kwargs)}: {exc}") from None
    except (ValueError, AssertionError, RuntimeError) as exc:
        size = "x".join(map(str, img_size)) if img_size is not None else "these"
        raise RobustscaleError(
            f"model={name!r} cannot be built for {size} images with {in_chans} channels: "
            f"{first_line(exc)}"
        ) from None
    return Normalized(net, mean, std)


def build_model_for(recipe: Recipe, info: DatasetInfo) -> Normalized:
    """The recipe's model for the dataset ``info`` describes (classes, channels, image size,
    normalisation): the one way a run's architecture is built, for training, loading and
    counting."""
    return build_model(
        recipe.model,
        info.num_classes,
        info.shape[0],
        info.mean,
        info.std,
        activation=recipe.activation,
        drop_rate=recipe.drop_rate,
        img_size=info.shape[1:],
    )


def count_params(
    name: str, num_classes: int = 10, in_chans: int = 3, activation: str = "relu"
) -> int:
    """Trainable parameters of ``name`` built for the given classes and channels."""
    with torch.device("meta"):
        model = build_model(
            name, num_classes, in_chans, [0.0] * in_chans, [1.0] * in_chans, activation=activation
        )
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
