"""Batches: seeded order, exact synthetic mixing, streamed extra data, augmentation as tensor ops.

The order of a batch is a pure function of (seed, epoch, step): resuming at step ``s`` of
epoch ``e`` replays exactly the batches an uninterrupted run would have seen, without storing
a sampler. Following Gowal et al., an epoch is defined over the *original* data: it has
``len(real) // real_per_batch`` batches, each with ``batch_size - syn_per_batch`` real and
``syn_per_batch = round(batch_size * synthetic_fraction)`` extra examples (the last,
incomplete batch is dropped so that every batch has the same mix).

Extra examples are drawn *without replacement across epochs*: one seeded permutation of all N
is walked in order and a new one is drawn when it is used up, so a run sees
``min(N, steps * syn_per_batch)`` distinct extra images (:meth:`BatchPlan.unique_synthetic_seen`).
The real set stays resident on the device; a streamed set (extra data, or an ``arrays``
training set) is gathered on the host by a background thread (``robustscale/data/stream.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustscale.data import to_float
from robustscale.data.arrays import ImageSource
from robustscale.data.stream import Prefetcher
from robustscale.errors import RobustscaleError


def seeded_generator(seed: int, *salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    # A fresh generator per purpose: results depend on (seed, salt) only, never on global RNG state.
    g = torch.Generator(device=device)
    mixed = seed
    for s in salt:
        mixed = (mixed * 1_000_003 + s + 0x9E3779B9) % (2**63 - 1)
    g.manual_seed(mixed)
    return g


@dataclass
class BatchPlan:
    """How each epoch is cut into batches."""

    n_real: int
    n_syn: int
    batch_size: int
    synthetic_fraction: float
    seed: int
    rank: int = 0
    world_size: int = 1

    @classmethod
    def for_recipe(
        cls, recipe: Any, *, n_real: int, n_syn: int, rank: int = 0, world_size: int = 1
    ) -> BatchPlan:
        """The plan of a recipe's run over ``n_real`` real and ``n_syn`` extra examples: the one
        place the recipe's batch keys become a plan (training, forecasts, sweeps, the planner).
        Only whether ``n_syn`` is 0 matters to the shape of an epoch."""
        return cls(
            n_real,
            n_syn,
            recipe.batch_size,
            recipe.synthetic_fraction,
            recipe.seed,
            rank,
            world_size,
        )

    def __post_init__(self) -> None:
        self.syn_per_batch = (
            int(round(self.batch_size * self.synthetic_fraction)) if self.n_syn else 0
        )
        self.real_per_batch = self.batch_size - self.syn_per_batch
        if self.real_per_batch < 1:
            raise RobustscaleError(
                f"synthetic_fraction={self.synthetic_fraction} leaves no real example in a batch "
                f"of {self.batch_size}; allowed: a fraction below {1 - 1 / self.batch_size:.4f}"
            )
        self.steps_per_epoch = self.n_real // self.real_per_batch
        if self.steps_per_epoch < 1:
            raise RobustscaleError(
                f"batch_size={self.batch_size} is larger than the {self.n_real} training examples; "
                f"allowed: at most {self.n_real}"
            )
        if self.batch_size % self.world_size:
            raise RobustscaleError(
                f"batch_size={self.batch_size} (global) does not split over {self.world_size} "
                "processes; allowed: a multiple of the number of processes"
            )

    @property
    def examples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def epoch_indices(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(real, synthetic) index tensors of shape (steps, per_batch) for ``epoch`` (this rank's
        share)."""
        g = seeded_generator(self.seed, epoch, 1)
        real = torch.randperm(self.n_real, generator=g)[
            : self.steps_per_epoch * self.real_per_batch
        ]
        real = real.view(self.steps_per_epoch, self.real_per_batch)
        syn = None
        if self.syn_per_batch:
            need = self.steps_per_epoch * self.syn_per_batch
            syn = self.synthetic_positions(epoch * need, need)
            syn = syn.view(self.steps_per_epoch, self.syn_per_batch)
        if self.world_size > 1:
            real = real[:, self.rank :: self.world_size]
            syn = syn[:, self.rank :: self.world_size] if syn is not None else None
        return real, syn

    def synthetic_positions(self, start: int, count: int) -> torch.Tensor:
        """Extra-data indices ``start..start+count`` of the run's walk: permutation ``c`` of all N
        (seeded by (seed, c)) covers positions ``c*N..(c+1)*N``."""
        parts, pos, end = [], start, start + count
        while pos < end:
            cycle, lo = divmod(pos, self.n_syn)
            hi = min(self.n_syn, lo + end - pos)
            parts.append(self._permutation(cycle)[lo:hi].long())
            pos += hi - lo
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def _permutation(self, cycle: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_perms", {})
        if cycle not in cache:
            if len(cache) >= 2:  # an epoch spans at most two cycles when N >= one epoch's draw
                cache.pop(min(cache))
            dtype = torch.int32 if self.n_syn < 2**31 else torch.int64  # 4 bytes an image
            g = seeded_generator(self.seed, cycle, 3)
            cache[cycle] = torch.randperm(self.n_syn, generator=g, dtype=dtype)
        return cache[cycle]

    def unique_synthetic_seen(self, steps_done: int) -> int:
        """Distinct extra images in the first ``steps_done`` steps of the run (all processes)."""
        return min(self.n_syn, steps_done * self.syn_per_batch) if self.syn_per_batch else 0

    def unique_real_seen(self, steps_done: int) -> int:
        """Distinct real training examples in the first ``steps_done`` steps of the run (all
        processes): each epoch drops a different remainder of the ``n_real``, so the count is
        the union of the epochs' draws, walked until it covers every real example."""
        if steps_done <= 0:
            return 0
        covered = self.__dict__.get("_real_covered_at")  # steps by which every one was seen
        if covered is not None and steps_done >= covered:
            return self.n_real
        seen = torch.zeros(self.n_real, dtype=torch.bool)
        for epoch in range(-(-steps_done // self.steps_per_epoch)):
            g = seeded_generator(self.seed, epoch, 1)  # the real order of epoch_indices
            steps = min(self.steps_per_epoch, steps_done - epoch * self.steps_per_epoch)
            seen[torch.randperm(self.n_real, generator=g)[: steps * self.real_per_batch]] = True
            if bool(seen.all()):
                self.__dict__["_real_covered_at"] = epoch * self.steps_per_epoch + steps
                break
        return int(seen.sum())


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with ``pad`` zero-padding and random horizontal flip, per example, as tensor
    ops."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    flip = torch.rand(b, 1, device=dev, generator=generator) < 0.5
    rows = oy + torch.arange(h, device=dev)  # b x h
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip, w - 1 - cols, cols) + ox  # b x w
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # b x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


class BatchStream:
    """Yields (x in [0, 1] float32, y) training batches of one epoch.

    ``real`` is resident tensors (moved to ``device``) or an :class:`ImageSource` to stream;
    ``synthetic`` is an :class:`ImageSource` (in memory or memory-mapped), always streamed:
    its rows are gathered on the host ahead of the step and copied asynchronously.
    """

    def __init__(
        self,
        plan: BatchPlan,
        real: tuple[torch.Tensor, torch.Tensor] | ImageSource,
        synthetic: ImageSource | None,
        augment: bool,
        device: torch.device,
        prefetch: int = 4,
    ):
        self.plan = plan
        if isinstance(real, ImageSource):
            self.real_source, self.x, self.y = real, None, None
        else:
            self.real_source, self.x, self.y = None, real[0].to(device), real[1].to(device)
        self.synthetic = synthetic if plan.syn_per_batch else None
        self.augment = augment
        self.device = device
        self.prefetch = prefetch

    def epoch(self, epoch: int, start_step: int = 0):
        """Batches ``start_step..`` of ``epoch``: the same tensors, resumed or not."""
        real_idx, syn_idx = self.plan.epoch_indices(epoch)
        parts = []
        if self.real_source is not None:
            parts.append((self.real_source, real_idx[start_step:]))
        else:
            real_idx = real_idx.to(self.device)
        if self.synthetic is not None:
            parts.append((self.synthetic, syn_idx[start_step:]))
        feed = Prefetcher(parts, self.device, depth=self.prefetch) if parts else None
        try:
            for step in range(start_step, self.plan.steps_per_epoch):
                streamed = feed.next() if feed is not None else []
                if self.real_source is None:
                    xs, ys = [to_float(self.x[real_idx[step]])], [self.y[real_idx[step]]]
                else:
                    xs, ys = [], []
                for sx, sy in streamed:
                    xs.append(to_float(sx))
                    ys.append(sy)
                xb, yb = (torch.cat(xs), torch.cat(ys)) if len(xs) > 1 else (xs[0], ys[0])
                if self.augment:
                    g = seeded_generator(
                        self.plan.seed, epoch, step, 2 + self.plan.rank, device=self.device
                    )
                    xb = random_crop_flip(xb, 4, g)
                yield step, xb, yb
        finally:
            if feed is not None:
                feed.close()
