"""One run on several processes: PyTorch DDP, started by ``torchrun``.

``torchrun --nproc_per_node=N -m robustscale train RECIPE.yaml`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_from_env` joins them into one
process group (NCCL on CUDA, gloo on CPU). The recipe's ``batch_size`` stays the *global*
batch: each process trains on its ``batch_size / N`` slice of every batch (``BatchPlan`` cuts
them), so a run gives the same batches, schedule and FLOP count on 1 or N devices. Only rank 0
writes files; every rank loads the same checkpoint on resume.

The recipe key ``sync_bn: true`` converts BatchNorm to SyncBatchNorm (CUDA only), so batch
statistics are taken over the global batch rather than each process's slice; it changes results,
so it is part of the run id.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; a single process otherwise.
    On CUDA, each process takes GPU ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if rank != 0:  # one log per run: the main process speaks, the others only warn
        logging.getLogger("robustscale").setLevel(logging.WARNING)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return DistEnv(rank, world, local, owns)


def shutdown(env: DistEnv, *, clean: bool = True) -> None:
    """Leave the process group. On a clean exit every process first waits for the others (the
    main process may still be writing the last checkpoint) and drops what still holds the group
    (DDP's reducer lives in reference cycles): tearing gloo down under a peer that is still
    working, or with a live reducer, aborts the process ("terminate called without an active
    exception") in some fraction of runs. After a failure the peers may be gone, so no barrier."""
    if env.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(env: DistEnv, tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the processes, in place (one collective per tensor; epoch sums only)."""
    if env.enabled:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def sum_float(env: DistEnv, value: float, device: torch.device) -> float:
    if not env.enabled:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def prepare_model(
    model: nn.Module, env: DistEnv, device: torch.device, *, sync_bn: bool
) -> nn.Module:
    """SyncBatchNorm when the recipe asks for it (``sync_bn: true``) on a distributed CUDA run."""
    if sync_bn and env.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module | None:
    """The DDP wrapper that the update's forward and backward go through (None for one process).
    Its backward averages the gradients over the processes."""
    if not env.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


__all__ = [
    "DistEnv",
    "init_from_env",
    "shutdown",
    "barrier",
    "all_reduce_sum",
    "sum_float",
    "prepare_model",
    "wrap",
]
