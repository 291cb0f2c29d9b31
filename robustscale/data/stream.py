"""Streaming image rows into the training step: a background thread gathers, the step copies.

For every step, a worker thread gathers the rows the batch needs from each
:class:`~robustscale.data.arrays.ImageSource` (a memory map or an in-memory array) into host
memory, pinned when the device is a GPU, and keeps up to ``depth`` batches ready. The step
takes the next one and copies it with ``non_blocking=True``, so on CUDA the copy overlaps the
previous step's kernels and the step waits on disk only when the disk is slower than the model.
PyTorch's pinned-memory allocator records the copy's stream on each block, so a buffer is not
reused before its copy is done. On a CPU the code path is the same without pinning. Which rows
a step gets is fixed by the caller's index table, so prefetching never changes a batch.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from robustscale.data.arrays import ImageSource

__all__ = ["Prefetcher"]

_END = object()


class Prefetcher:
    """Batches of rows ``idx[s]`` of each (source, idx) part, gathered ahead in a worker thread."""

    def __init__(
        self, parts: list[tuple[ImageSource, torch.Tensor]], device: torch.device, depth: int = 4
    ):
        self.parts = [(src, idx.cpu().numpy().astype(np.int64, copy=False)) for src, idx in parts]
        self.device = device
        self.pin = device.type == "cuda"
        self.steps = len(self.parts[0][1]) if self.parts else 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="robustscale-prefetch", daemon=True)
        self._thread.start()

    def _gather(self, source: ImageSource, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.empty((len(idx), *source.image_shape), dtype=torch.uint8, pin_memory=self.pin)
        source.gather(idx, out=x.numpy())
        y = torch.from_numpy(source.labels[idx])
        return x, (y.pin_memory() if self.pin else y)

    def _work(self) -> None:
        try:
            for step in range(self.steps):
                if self._stop.is_set():
                    return
                self._put([self._gather(src, idx[step]) for src, idx in self.parts])
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next step's (images N x C x H x W uint8, labels int64) per part, on the device."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            raise RuntimeError("the prefetcher was asked for more steps than its index table holds")
        out = []
        for x, y in item:
            x = x.to(self.device, non_blocking=self.pin).permute(0, 3, 1, 2)
            out.append((x.contiguous(), y.to(self.device, non_blocking=self.pin)))
        return out

    def close(self) -> None:
        """Stop the worker (an epoch ended or the step raised) and wait for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
