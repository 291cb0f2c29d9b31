"""RobustBench's key names, in and out: the field's checkpoints <-> robustscale models.

Pure functions on state dicts (no files): :func:`weights_into` puts a checkpoint's weights into a
robustscale model, whatever wrapper saved them; :func:`to_robustbench` gives a robustscale
model's weights in the key names of RobustBench's architecture.

* ``dm_wrn*`` is RobustBench's ``DMWideResNet``: the keys are the same, nothing is renamed.
* ``wrn*`` is RobustBench's classic ``WideResNet`` (TRADES / Rice et al. code): ``conv1`` <->
  ``stem``, ``block{g}.layer.{i}.*`` <-> ``blocks.{(g - 1) * n + i}.*``, ``convShortcut`` <->
  ``shortcut``, ``bn1`` <-> ``bn``, ``fc`` <-> ``fc``.
* any other timm model: its own keys.

Checkpoints carry wrappers: ``module.`` (DataParallel), ``module.0.`` / ``model.`` (Sequential or
a normaliser wrapped around the net), robustscale's ``net.``. The prefix is found by anchoring the
architecture's first key. Normalisation buffers (a key whose last part is ``mean`` or ``std``:
RobustBench's own persistent buffers in older versions, timm-adv-training's ``normalize.mean`` /
``normalize.std``, robustscale's ``mean`` / ``std``) are not weights: they are dropped from the
state dict and their values become the model's normalisation. Without them, the architecture's
RobustBench convention applies: ``DMWideResNet`` normalises with its CIFAR mean/std, the classic
``WideResNet`` not at all (its entries were trained on raw [0, 1] inputs).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from torch import nn

from robustscale.errors import RobustscaleError
from robustscale.models.dm_wrn import DM_WRN_VARIANTS
from robustscale.models.wrn import WRN_VARIANTS

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINER_KEYS",
    "architecture_name",
    "constructor_line",
    "from_robustbench",
    "rb_normalisation",
    "split_normalisation",
    "to_robustbench",
    "weights_into",
]

# Where published checkpoints keep their weights: DM-Improves-AT and Bartoldson et al. save the
# EMA weights under model_state_dict; RobustBench's files and many repos state_dict; others model.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")

# RobustBench's DMWideResNet defaults (dm_wide_resnet.py CIFAR10_/CIFAR100_MEAN and _STD).
_DM_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ACTIVATION_FN = {"relu": "nn.ReLU", "silu": "Swish", "gelu": "nn.GELU"}


def _depth_width(name: str) -> tuple[int, int] | None:
    return DM_WRN_VARIANTS.get(name) or WRN_VARIANTS.get(name)


def architecture_name(name: str) -> str:
    """RobustBench's model-info ``architecture`` of a robustscale model: ``WideResNet-70-16``."""
    dw = _depth_width(name)
    return f"WideResNet-{dw[0]}-{dw[1]}" if dw else name


def _family(name: str) -> str:
    return "dm" if name in DM_WRN_VARIANTS else "wrn" if name in WRN_VARIANTS else "timm"


def _describe(name: str) -> str:
    fam, dw = _family(name), _depth_width(name)
    if fam == "dm":
        return f"RobustBench DMWideResNet(depth={dw[0]}, width={dw[1]})"
    if fam == "wrn":
        return f"RobustBench WideResNet(depth={dw[0]}, widen_factor={dw[1]})"
    return f"timm {name}"


def rb_normalisation(
    name: str, dataset: str, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation RobustBench's architecture for ``name`` applies when a checkpoint brings
    none: DMWideResNet's CIFAR statistics, none for the classic WideResNet; for anything else
    (and datasets RobustBench has no statistics for) the dataset's ``mean`` / ``std``."""
    fam, c = _family(name), len(mean)
    if fam == "dm" and dataset in _DM_STATS:
        return _DM_STATS[dataset]
    if fam == "wrn":
        return (0.0,) * c, (1.0,) * c
    return tuple(mean), tuple(std)


_RB_BLOCK = re.compile(r"^block([123])\.layer\.(\d+)\.(.+)$")
_OUR_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def from_robustbench(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in RobustBench's key names for ``name``'s architecture, in robustscale's
    (the net's own keys, without the ``net.`` of the normalising wrapper). Keys that belong to
    no layer of the architecture keep their names, so a strict load reports them."""
    if _family(name) != "wrn":
        return dict(state)
    n = (WRN_VARIANTS[name][0] - 4) // 6
    out = {}
    for key, value in state.items():
        m = _RB_BLOCK.match(key)
        if m:
            rest = m.group(3).replace("convShortcut.", "shortcut.")
            key = f"blocks.{(int(m.group(1)) - 1) * n + int(m.group(2))}.{rest}"
        elif key.startswith("conv1."):
            key = "stem." + key.removeprefix("conv1.")
        elif key.startswith("bn1."):
            key = "bn." + key.removeprefix("bn1.")
        out[key] = value
    return out


def to_robustbench(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The net's state dict (robustscale's keys, no ``net.``) in RobustBench's key names."""
    fam = _family(name)
    if fam == "timm":
        raise RobustscaleError(
            f"model={name!r} has no RobustBench architecture; RobustBench export covers "
            f"the WideResNets: {', '.join([*WRN_VARIANTS, *DM_WRN_VARIANTS])}"
        )
    if fam == "dm":
        return dict(state)
    n = (WRN_VARIANTS[name][0] - 4) // 6
    out = {}
    for key, value in state.items():
        m = _OUR_BLOCK.match(key)
        if m:
            k = int(m.group(1))
            rest = m.group(2).replace("shortcut.", "convShortcut.")
            key = f"block{k // n + 1}.layer.{k % n}.{rest}"
        elif key.startswith("stem."):
            key = "conv1." + key.removeprefix("stem.")
        elif key.startswith("bn."):
            key = "bn1." + key.removeprefix("bn.")
        out[key] = value
    return out


def split_normalisation(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """(weights, {"mean": [...], "std": [...], "keys": ...}) — the normalisation buffers a wrapper
    saved (a key whose last part is ``mean`` or ``std``, e.g. ``normalize.mean``) taken out; an
    empty dict when there were none. BatchNorm's ``running_mean`` is a weight, not one of these."""
    weights, found = {}, {}
    for key, value in state.items():
        last = key.rsplit(".", 1)[-1]
        if last in ("mean", "std"):
            found[key] = value
        else:
            weights[key] = value
    if not found:
        return weights, {}
    means = [k for k in found if k.rsplit(".", 1)[-1] == "mean"]
    stds = [k for k in found if k.rsplit(".", 1)[-1] == "std"]
    if len(means) != 1 or len(stds) != 1:
        raise RobustscaleError(
            f"the checkpoint holds normalisation buffers {sorted(found)}; expected one "
            "mean and one std (e.g. normalize.mean, normalize.std)"
        )
    return weights, {
        "mean": found[means[0]].flatten().tolist(),
        "std": found[stds[0]].flatten().tolist(),
        "keys": f"{means[0]}, {stds[0]}",
    }


def _best_prefix(
    state: dict[str, torch.Tensor], expected: set[str], anchor: str
) -> tuple[str, int]:
    """The wrapper prefix in front of ``anchor`` under which most of ``expected`` is found."""
    best = ("", sum(k in expected for k in state))
    for key in state:
        if key == anchor or key.endswith("." + anchor):
            prefix = key[: len(key) - len(anchor)]
            score = sum(k[len(prefix) :] in expected for k in state if k.startswith(prefix))
            if score > best[1]:
                best = (prefix, score)
    return best


def _match(
    name: str, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's weights in the net's own keys, and the wrapper prefix that was removed."""
    if not own:
        return state, ""
    first = next(iter(own))
    prefix, score = _best_prefix(state, set(own), first)
    if _family(name) == "wrn":
        rb_own = to_robustbench(name, own)
        rb_prefix, rb_score = _best_prefix(state, set(rb_own), next(iter(rb_own)))
        if rb_score > score:
            weights = {k.removeprefix(rb_prefix): v for k, v in state.items()}
            dropped = [k for k in weights if k.startswith("sub_block1.")]
            if (
                dropped
            ):  # some TRADES-era checkpoints carry an unused extra group; forward never reads it
                log.info(
                    "dropped %d sub_block1.* keys (an unused layer of RobustBench's WideResNet)",
                    len(dropped),
                )
            weights = {k: v for k, v in weights.items() if not k.startswith("sub_block1.")}
            return from_robustbench(name, weights), rb_prefix
    return {k.removeprefix(prefix): v for k, v in state.items()}, prefix


def weights_into(
    model: nn.Module, name: str, state: dict[str, torch.Tensor], *, dataset: str, source: str
) -> dict[str, object]:
    """Load a checkpoint's state dict into ``model`` (a robustscale ``Normalized``, ``.net`` the
    architecture ``name``) strictly, with the normalisation the checkpoint was trained with.

    Returns what was applied: ``{"mean", "std", "normalisation_from", "prefix"}``. A mismatch is one
    line naming ``source``, the first missing and unexpected keys and the architecture tried."""
    weights, norm = split_normalisation(state)
    own = model.net.state_dict()
    weights, prefix = _match(name, weights, own)
    _check_keys(name, weights, own, source)
    mean, std, origin = _normalisation(model, name, dataset, norm, source)
    # the key check was strict; only num_batches_tracked counters may be absent
    model.net.load_state_dict(weights, strict=False)
    with torch.no_grad():
        model.mean.copy_(torch.tensor(mean, dtype=torch.float32).view_as(model.mean))
        model.std.copy_(torch.tensor(std, dtype=torch.float32).view_as(model.std))
    return {"mean": mean, "std": std, "normalisation_from": origin, "prefix": prefix}


def _check_keys(
    name: str, weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str
) -> None:
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        rb_name = (
            next(iter(to_robustbench(name, {missing[0]: None}))) if _family(name) == "wrn" else None
        )
        also = f", RobustBench's {rb_name!r}" if rb_name and rb_name != missing[0] else ""
        parts.append(f"first missing key {missing[0]!r}{also} ({len(missing)} missing)")
    if unexpected:
        parts.append(f"first unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{k!r} is {tuple(weights[k].shape)} in the checkpoint, "
            f"{tuple(own[k].shape)} in the model"
        )
    raise RobustscaleError(
        f"checkpoint {source!r} does not fit model={name!r} "
        f"({_describe(name)}): " + "; ".join(parts)
    )


def _normalisation(
    model: nn.Module, name: str, dataset: str, norm: dict, source: str
) -> tuple[list[float], list[float], str]:
    """(mean, std, where from): the checkpoint's normaliser keys, else RobustBench's convention
    for the architecture; logged where it is not what one would assume."""
    c = model.mean.numel()
    ours = model.mean.flatten().tolist(), model.std.flatten().tolist()
    rb_mean, rb_std = rb_normalisation(name, dataset, *ours)
    if not norm:
        mean, std, origin = list(rb_mean), list(rb_std), f"{_describe(name)}'s convention"
        if _differ([*mean, *std], [*ours[0], *ours[1]]):
            log.info(
                "normalisation: mean %s, std %s, %s (the checkpoint has no mean/std keys)",
                _fmt(mean),
                _fmt(std),
                origin,
            )
        return mean, std, origin
    if len(norm["mean"]) not in (1, c) or len(norm["std"]) not in (1, c):
        raise RobustscaleError(
            f"checkpoint {source!r} normalises {len(norm['mean'])} channels "
            f"({norm['keys']}); model={name!r} takes {c}"
        )
    mean = norm["mean"] * (c if len(norm["mean"]) == 1 else 1)
    std = norm["std"] * (c if len(norm["std"]) == 1 else 1)
    origin = f"the checkpoint's {norm['keys']}"
    if _differ([*mean, *std], [*rb_mean, *rb_std]):
        log.info(
            "normalisation from %s: mean %s, std %s (RobustBench's %s default: mean %s, std %s)",
            origin,
            _fmt(mean),
            _fmt(std),
            _describe(name),
            _fmt(rb_mean),
            _fmt(rb_std),
        )
    return mean, std, origin


def _differ(a: Sequence[float], b: Sequence[float]) -> bool:
    return any(abs(x - y) > 1e-6 for x, y in zip(a, b))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def constructor_line(
    name: str, activation: str, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> str:
    """The RobustBench model-zoo constructor for an exported model (its ``model`` entry)."""
    depth, width = _depth_width(name) or (0, 0)
    if _family(name) == "dm":
        return (
            f"DMWideResNet(num_classes={num_classes}, depth={depth}, width={width}, "
            f"activation_fn={_ACTIVATION_FN[activation]}, mean={_fmt(mean)}, std={_fmt(std)})"
        )
    if _family(name) == "wrn":
        net = f"WideResNet(depth={depth}, widen_factor={width}, num_classes={num_classes})"
        if all(m == 0 for m in mean) and all(s == 1 for s in std):
            return net
        return f"normalize_model({net}, mean={_fmt(mean)}, std={_fmt(std)})"
    raise RobustscaleError(f"model={name!r} has no RobustBench architecture")
