"""``dataset: arrays``: any labelled uint8 image set in the on-disk layout as the training set.

``data_dir`` holds ``train/`` and ``test/``, each an image set (``image.npy`` + ``label.npy``, or
shards; see ``robustscale/data/arrays.py``). What a model needs to know of the images (number
of classes, shape, per-channel mean and std of the training images) is computed once, in one
chunked pass whose memory does not grow with N, and stored beside them as ``dataset.json``;
later runs read it. Write ``num_classes`` into that file first to set it yourself (a set whose
top classes have no training image); otherwise it is the largest label + 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from robustscale.data.arrays import ImageSource, check_source, open_source
from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

__all__ = ["arrays_info", "open_split", "INFO_FILE"]

INFO_FILE = "dataset.json"


def _split_source(data_dir: Path, split: str) -> ImageSource:
    folder = data_dir / split
    if not folder.is_dir():
        raise RobustscaleError(
            f"dataset='arrays': {str(folder)!r} is not a folder; expected data_dir to hold "
            "train/ and test/, each with image.npy and label.npy"
        )
    return open_source(folder)


def _stats(source: ImageSource) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 chunk by chunk."""
    c = source.image_shape[-1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for images, _ in source.chunks(8192):
        flat = images.reshape(-1, c).astype(np.float64) / 255.0
        total += flat.sum(0)
        sq += np.square(flat).sum(0)
        n += len(flat)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(max(v, 1e-6)), 6) for v in std]


def arrays_info(data_dir: Path):
    """The DatasetInfo of an ``arrays`` data_dir, from its ``dataset.json`` (made on first use)."""
    from robustscale.data import DatasetInfo
    from robustscale.files import atomic_write_json, read_json

    path = data_dir / INFO_FILE
    stored = read_json(path) if path.is_file() else {}
    if not isinstance(stored, dict):
        raise RobustscaleError(
            f"{str(path)!r} is not a JSON object; delete it to have it computed again"
        )
    train = _split_source(data_dir, "train")
    h, w, c = train.image_shape
    if stored.get("train_size") != len(train) or "mean" not in stored or "std" not in stored:
        test = _split_source(data_dir, "test")
        top = max(int(train.labels.max(initial=-1)), int(test.labels.max(initial=-1)))
        mean, std = _stats(train)
        stored = {
            "num_classes": stored.get("num_classes", top + 1),
            "shape": [c, h, w],
            "mean": mean,
            "std": std,
            "train_size": len(train),
            "test_size": len(test),
        }
        try:
            atomic_write_json(path, stored)
        except RobustscaleError as exc:  # a read-only data folder: use the numbers, say so
            log.warning("could not store the arrays dataset's statistics: %s", exc)
    k = stored.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise RobustscaleError(f"{str(path)!r} has num_classes={k!r}; expected an integer >= 2")
    if len(stored["mean"]) != c or len(stored["std"]) != c:
        raise RobustscaleError(
            f"{str(path)!r} has statistics for {len(stored['mean'])} channels; expected {c}"
        )
    return DatasetInfo(
        "arrays", k, (c, h, w), tuple(stored["mean"]), tuple(stored["std"]), crop_flip=True
    )


def open_split(data_dir: Path, split: str, info) -> ImageSource:
    """The ``train`` or ``test`` set of an ``arrays`` data_dir, checked against ``info``."""
    source = _split_source(data_dir, split)
    check_source(
        source, f"dataset='arrays' {split}", info.shape, info.num_classes, "this arrays dataset"
    )
    return source
