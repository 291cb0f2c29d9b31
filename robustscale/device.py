"""Which torch device a command runs on: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""

from __future__ import annotations

import torch

from robustscale.errors import RobustscaleError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks the current CUDA GPU when one is visible, else the CPU; asking for CUDA where
    there is none is one clear line."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustscaleError(
            f"device={str(name)!r} is not known; allowed: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RobustscaleError(
                f"device={str(name)!r} but no CUDA GPU is visible; allowed here: auto, cpu"
            )
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type != "cpu":
        raise RobustscaleError(
            f"device={str(name)!r} is not supported; allowed: auto, cpu, cuda, cuda:N"
        )
    return dev
