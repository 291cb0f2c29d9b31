"""Datasets as tensors: CIFAR-10/100, scikit-learn's digits, labelled arrays, and extra data.

The training set is kept whole in memory (and on the training device) as uint8 N x C x H x W
(CIFAR) or float32 in [0, 1] (digits, whose pixels are sixteenths); :func:`to_float` turns a
batch into float32 in [0, 1]. No DataLoader: the fastest CIFAR trainers index resident
tensors, and so do we. Extra data, and an ``arrays`` training set, can be far larger than
memory: they are read memory-mapped and streamed into each batch (``data/arrays.py``,
``data/stream.py``). CIFAR files are parsed as data, never unpickled as code (``data/cifar.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustscale.errors import RobustscaleError

if TYPE_CHECKING:
    from robustscale.data.arrays import ImageSource

__all__ = ["DatasetInfo", "DATASETS", "read_split", "load_synthetic", "split_holdout", "to_float"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_flip: bool  # whether random crop + flip suits the images (not for digits)


DATASETS = {
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True
    ),
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3051,), (0.3786,), False),
}


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """What the model needs to know of ``name``'s images; ``arrays`` reads it from ``data_dir``."""
    if name == "arrays":
        from robustscale.data.arraysets import arrays_info

        if data_dir is None:
            raise RobustscaleError(
                "dataset='arrays' needs data_dir: a folder holding train/ and test/ arrays"
            )
        return arrays_info(Path(data_dir))
    if name not in DATASETS:
        raise RobustscaleError(
            f"dataset={name!r} is not known; allowed: {', '.join(DATASETS)}, arrays"
        )
    return DATASETS[name]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A batch as float32 in [0, 1] (uint8 images are divided by 255)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def read_split(
    name: str, split: str = "train", data_dir: str | Path = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of one split, as CPU tensors (images N x C x H x W, labels int64)."""
    if split not in ("train", "test"):
        raise RobustscaleError(f"split={split!r} is not known; allowed: train, test")
    info = dataset_info(name, data_dir)
    if name == "digits":
        return _digits(split)
    if name == "arrays":
        from robustscale.data.arraysets import open_split

        src = open_split(Path(data_dir), split, info)
        x = torch.from_numpy(src.gather(np.arange(len(src))).transpose(0, 3, 1, 2).copy())
        return x, torch.from_numpy(src.labels)
    return _cifar(info, split, Path(data_dir))


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    # A fixed, stratified 80/20 split: the same examples in every run and on every machine.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_s, y_s = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return torch.from_numpy(np.ascontiguousarray(x_s)), torch.from_numpy(y_s)


def _cifar(info: DatasetInfo, split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from robustscale.data.cifar import RELEASES, read_cifar

    release = RELEASES[info.name]
    folder = data_dir / release["folder"]
    if not all((folder / f).is_file() for f, _ in release["train"] + release["test"]):
        pretty = "CIFAR-10" if info.name == "cifar10" else "CIFAR-100"
        raise RobustscaleError(
            f"{pretty} not found in {str(folder)!r}: put the python version of {pretty} there "
            f'(on a machine with internet: python -c "import torchvision; '
            f'torchvision.datasets.{release["torchvision"]}({str(data_dir)!r}, download=True)"), '
            "or set data_dir"
        )
    # the files are parsed as data, never unpickled as code (robustscale/data/cifar.py)
    images, labels = read_cifar(folder, release[split], release["label_key"])
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise RobustscaleError(
            f"{info.name} labels in {str(folder)!r} must be in [0, {info.num_classes})"
        )
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def split_holdout(
    x: torch.Tensor, y: torch.Tensor, n: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Hold out ``n`` seeded-random examples: returns ((x_rest, y_rest), (x_held, y_held))."""
    if n >= len(x):
        raise RobustscaleError(
            f"val_size={n} leaves no training data; allowed: fewer than {len(x)}"
        )
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    perm = torch.randperm(len(x), generator=g)
    held, rest = perm[:n].sort().values, perm[n:].sort().values
    return (x[rest], y[rest]), (x[held], y[held])


def check_synthetic_exists(path: str | Path) -> None:
    """A recipe's ``synthetic_data`` must be an existing ``.npz`` or folder on this machine;
    checked when a run starts or a sweep is expanded, never by the Recipe itself."""
    p = Path(path)
    if not ((p.suffix == ".npz" and p.is_file()) or p.is_dir()):
        raise RobustscaleError(
            f"synthetic_data={str(path)!r} is not an existing .npz file or folder; allowed: "
            "null, a path to an .npz with 'image' (uint8 NxHxWxC) and 'label', or a folder of "
            "image.npy + label.npy"
        )


def load_synthetic(path: str | Path, info: DatasetInfo) -> ImageSource:
    """Extra data for ``info``'s images: an ``.npz`` (held in memory), a folder with ``image.npy``
    and ``label.npy`` or a folder of shards (memory-mapped); see ``robustscale/data/arrays.py``."""
    from robustscale.data.arrays import check_source, open_source

    source = open_source(path)
    check_source(source, "synthetic_data", info.shape, info.num_classes, info.name)
    return source
