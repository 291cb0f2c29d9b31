"""Checkpoint files trained elsewhere (RobustBench's model zoo, DM-Improves-AT, timm-adv-training).

:func:`load_weights_file` (``robustscale.load(PATH, model=NAME)``, ``robustscale eval CKPT
--model NAME``) builds robustscale's ``model`` and loads a checkpoint file into it: a plain state
dict, or one under ``state_dict``, ``model_state_dict`` (DM-Improves-AT, Bartoldson et al.: the
EMA weights) or ``model``; with any wrapper prefix (``module.``, ``module.0.``, ``model.``) and
normaliser keys (robustscale.models.robustbench). Loading is ``weights_only``: nothing in the
file runs. Exports of robustscale runs for RobustBench are robustscale/export.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

__all__ = ["load_weights_file", "read_state_dict"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of tensors in a checkpoint file, out of its container (``state_dict``,
    ``model_state_dict``, ``model``, nested as saved). Never runs code from the file."""
    from robustscale.checkpoint_io import safe_load
    from robustscale.models.robustbench import CONTAINER_KEYS

    state = safe_load(path)
    while isinstance(state, dict):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise RobustscaleError(
            f"checkpoint {str(path)!r} holds no state dict of tensors (looked under "
            f"{', '.join(CONTAINER_KEYS)} too)"
        )
    return state


def load_weights_file(
    path: str | Path,
    *,
    model: str | None,
    dataset: str = "cifar10",
    activation: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A checkpoint file trained elsewhere as robustscale's ``model``: eval mode, parameters
    frozen, inputs in [0, 1], with the normalisation the checkpoint was trained with.

    ``activation`` defaults to the architecture's own (SiLU/Swish for ``dm_wrn*``, as RobustBench's
    entries; ReLU otherwise). A missing or unreadable file, a state dict of another architecture
    or an unknown model is one line (RobustscaleError)."""
    from robustscale.data import dataset_info
    from robustscale.models import DM_WRN_VARIANTS, build_model
    from robustscale.models.dm_wrn import DM_DEFAULT_ACTIVATION
    from robustscale.models.robustbench import weights_into

    if model is None:
        raise RobustscaleError(
            f"{str(path)!r} is a checkpoint file: loading it needs model=NAME "
            "(e.g. dm_wrn70_16); a run is given by its directory"
        )
    if Path(path).is_dir():
        raise RobustscaleError(
            f"{str(path)!r} is a directory: model= loads a checkpoint file; a run "
            "directory loads without it (it knows its model)"
        )
    info = dataset_info(dataset)
    act = activation or (DM_DEFAULT_ACTIVATION if model in DM_WRN_VARIANTS else "relu")
    if act not in ("relu", "gelu", "silu"):
        raise RobustscaleError(f"activation={act!r} is not known; allowed: relu, gelu, silu")
    net = build_model(
        model,
        info.num_classes,
        info.shape[0],
        info.mean,
        info.std,
        activation=act,
        img_size=info.shape[1:],
    )
    state = read_state_dict(path)  # after the model name is known good: its errors come first
    applied = weights_into(net, model, state, dataset=dataset, source=str(path))
    log.debug(
        "loaded %s into %s (prefix %r, normalisation from %s)",
        path,
        model,
        applied["prefix"],
        applied["normalisation_from"],
    )
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
