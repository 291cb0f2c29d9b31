"""Datasets as tensors: CIFAR-10/100 through torchvision, scikit-learn's digits, and extra data.

Images are kept whole in memory (and on the training device) as uint8 N x C x H x W (CIFAR,
extra data) or float32 in [0, 1] (digits, whose pixels are sixteenths); :func:`to_float`
turns a batch into float32 in [0, 1]. No DataLoader: the fastest CIFAR trainers index
resident tensors, and so do we.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustscale.errors import RobustscaleError

__all__ = ["DatasetInfo", "DATASETS", "load_split", "load_synthetic", "split_holdout", "to_float"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_flip: bool  # whether random crop + flip suits the images (not for digits)


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3051,), (0.3786,), False),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise RobustscaleError(f"dataset={name!r} is not known; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A batch as float32 in [0, 1] (uint8 images are divided by 255)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def load_split(name: str, split: str = "train", data_dir: str | Path = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of one split, as CPU tensors (images N x C x H x W, labels int64)."""
    if split not in ("train", "test"):
        raise RobustscaleError(f"split={split!r} is not known; allowed: train, test")
    info = dataset_info(name)
    if name == "digits":
        return _digits(split)
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
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if info.name == "cifar10" else CIFAR100

    class _Local(base):  # type: ignore[misc, valid-type]
        # torchvision checks each file's md5 against the official release; with md5 None it only
        # requires the files to exist (and parse), so subsets in the same on-disk format load too.
        train_list = [[f, None] for f, _ in base.train_list]
        test_list = [[f, None] for f, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    folder = data_dir / base.base_folder
    if not _files_present(folder, base):
        pretty = "CIFAR-10" if info.name == "cifar10" else "CIFAR-100"
        raise RobustscaleError(
            f"{pretty} not found in {str(folder)!r}: put the python version of {pretty} there "
            f"(on a machine with internet: python -c \"import torchvision; "
            f"torchvision.datasets.{base.__name__}({str(data_dir)!r}, download=True)\"), or set data_dir"
        )
    try:
        ds = _Local(str(data_dir), train=(split == "train"), download=False)
    except KeyError:  # a file of another format: name it and the keys a CIFAR batch has
        raise RobustscaleError(_wrong_keys(folder, base, split)) from None
    except Exception as exc:  # a truncated or foreign file: one line, naming the folder
        raise RobustscaleError(f"could not read {info.name} from {str(folder)!r}: {exc}") from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # N x C x H x W uint8
    y = torch.tensor(ds.targets, dtype=torch.int64)
    return x, y


def _wrong_keys(folder: Path, base: type, split: str) -> str:
    """Which CIFAR file lacks the keys torchvision reads, with the keys it has and those expected."""
    import pickle

    label = "labels" if base.__name__ == "CIFAR10" else "fine_labels"
    wanted = [(f, ("data", label)) for f, _ in (base.train_list if split == "train" else base.test_list)]
    wanted.append((base.meta["filename"], (base.meta["key"],)))
    for name, keys in wanted:
        try:
            with open(folder / name, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")  # as torchvision reads it
        except Exception:  # noqa: BLE001 - unreadable files get the general message
            continue
        have = sorted(map(str, entry)) if isinstance(entry, dict) else f"a {type(entry).__name__}, not a dict"
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            return (f"{str(folder / name)!r} is not a CIFAR python-format file: it has keys {have}; "
                    f"expected a dict with {', '.join(repr(k) for k in keys)}")
    return f"could not read {base.__name__} from {str(folder)!r}: a file lacks the keys of the CIFAR python format"


def _files_present(folder: Path, base: type) -> bool:
    return all((folder / f).is_file() for f, _ in base.train_list + base.test_list)


def split_holdout(
    x: torch.Tensor, y: torch.Tensor, n: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Hold out ``n`` seeded-random examples: returns ((x_rest, y_rest), (x_held, y_held))."""
    if n >= len(x):
        raise RobustscaleError(f"val_size={n} leaves no training data; allowed: fewer than {len(x)}")
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    perm = torch.randperm(len(x), generator=g)
    held, rest = perm[:n].sort().values, perm[n:].sort().values
    return (x[rest], y[rest]), (x[held], y[held])


def load_synthetic(path: str | Path, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Extra data from an .npz with ``image`` (uint8 N x H x W x C) and ``label`` (N,)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "image" not in f or "label" not in f:
                raise RobustscaleError(
                    f"synthetic_data {str(path)!r} has arrays {sorted(f.files)}; needed: 'image' and 'label'"
                )
            images, labels = f["image"], f["label"]
    except (OSError, ValueError) as exc:
        raise RobustscaleError(f"synthetic_data {str(path)!r} is not a readable .npz: {exc}") from None
    c, h, w = info.shape
    if images.ndim == 3 and c == 1:
        images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != (h, w, c):
        raise RobustscaleError(
            f"synthetic_data {str(path)!r} has images {images.dtype} {tuple(images.shape)}; "
            f"needed: uint8 N x {h} x {w} x {c} for {info.name}"
        )
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) >= info.num_classes:
        raise RobustscaleError(
            f"synthetic_data {str(path)!r} labels must be {len(images)} integers in [0, {info.num_classes})"
        )
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if info.name == "digits":  # digits pixels live in [0, 1] floats; keep one dtype per run
        x = x.float().div_(255.0)
    return x, torch.from_numpy(labels)
