"""CIFAR-10/100 python batches read as data, never as code.

The python version of CIFAR is a set of pickles, and unpickling runs whatever a file asks for.
torchvision guards against that with the official md5 of each file; small subsets in the same
format (the tests', a user's) cannot have it. So each file is checked: the official bytes
(md5 of the release) are unpickled as torchvision would; any other file goes through
:class:`DataUnpickler`, which admits dicts, lists, str/bytes, ints and numpy uint8 arrays
only and refuses every other global, so a crafted ``data_batch_1`` cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.errors import RobustscaleError

__all__ = ["DataUnpickler", "RELEASES", "load_cifar_batch", "read_cifar"]

# The official python releases: folder, (file, md5) of each split, label key; the same
# constants torchvision's CIFAR10/CIFAR100 carry (not imported: torchvision takes seconds to load).
RELEASES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "torchvision": "CIFAR10",
        "label_key": "labels",
        "train": [
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "torchvision": "CIFAR100",
        "label_key": "fine_labels",
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
    },
}

# the numpy pieces a pickled ndarray is rebuilt from (numpy 1 and numpy 2 module names)
_ARRAY_REBUILDERS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_ALLOWED_DTYPES = {np.dtype(np.uint8), np.dtype(np.int8)}  # int8: the placeholder _reconstruct uses


def _checked_dtype(spec: Any, *args: Any) -> np.dtype:
    dt = np.dtype(spec)
    if dt not in _ALLOWED_DTYPES:
        raise pickle.UnpicklingError(f"an array of dtype {dt} (only uint8 images are allowed)")
    return dt


def _checked_rebuild(fn: Any) -> Any:
    def rebuild(*args: Any) -> Any:
        cls = args[0]
        if isinstance(cls, type) and cls is not np.ndarray:
            raise pickle.UnpicklingError(f"an array of class {cls.__name__}")
        return fn(*args)

    return rebuild


class DataUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR batches: plain containers and numpy uint8 arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_REBUILDERS:
            return _checked_rebuild(getattr(__import__(module, fromlist=[name]), name))
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _checked_dtype
        if (module, name) == (
            "_codecs",
            "encode",
        ):  # how protocol-2 pickles from Python 3 hold bytes
            import codecs

            return lambda text, encoding="utf-8": codecs.encode(str(text), str(encoding))
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which is not data")


def _plain(obj: Any, depth: int = 0) -> None:
    """Refuse anything but dicts of str keys, lists, str/bytes, ints and uint8 arrays."""
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8:
            raise pickle.UnpicklingError(
                f"an array of dtype {obj.dtype} (only uint8 images are allowed)"
            )
    elif isinstance(obj, dict) and depth < 4:
        for k, v in obj.items():
            _plain(k, depth + 1)
            _plain(v, depth + 1)
    elif isinstance(obj, list) and depth < 4:
        for v in obj:
            _plain(v, depth + 1)
    elif not isinstance(obj, (str, bytes, int)):
        raise pickle.UnpicklingError(f"a {type(obj).__name__}, which is not CIFAR data")


def load_cifar_batch(path: Path, official_md5: str | None) -> dict[str, Any]:
    """One CIFAR python batch as a dict; a file that is not plain data is one error line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RobustscaleError(f"cannot read CIFAR file {str(path)!r}: {exc.strerror}") from None
    trusted = official_md5 is not None and hashlib.md5(raw).hexdigest() == official_md5
    try:
        if trusted:  # the release's own bytes, as torchvision reads them
            entry = pickle.loads(raw, encoding="latin1")
        else:
            entry = DataUnpickler(io.BytesIO(raw), encoding="latin1").load()
            _plain(entry)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a foreign file is the user's file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RobustscaleError(
            f"CIFAR file {str(path)!r} is not a CIFAR python batch ({msg}); expected a pickled "
            "dict "
            "of 'data' (uint8 N x 3072) and labels"
        ) from None
    if not isinstance(entry, dict):
        raise RobustscaleError(
            f"CIFAR file {str(path)!r} holds a {type(entry).__name__}; expected a dict "
            "of 'data' (uint8 N x 3072) and labels"
        )
    return entry


def read_cifar(
    folder: Path, files: list[tuple[str, str]], label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N x 3 x 32 x 32) and labels (int64) of the batches ``files`` in ``folder``."""
    images, labels = [], []
    for name, md5 in files:
        path = folder / name
        entry = load_cifar_batch(path, md5)
        data = entry.get("data")
        lab = entry.get(label_key, entry.get("labels"))
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            raise RobustscaleError(
                f"CIFAR file {str(path)!r} has no 'data' of uint8 N x 3072 (its keys: "
                f"{sorted(map(str, entry))}); expected the python version of CIFAR, with keys "
                f"'data' and {label_key!r}"
            )
        if (
            not isinstance(lab, list)
            or len(lab) != len(data)
            or not all(isinstance(v, int) for v in lab)
        ):
            raise RobustscaleError(
                f"CIFAR file {str(path)!r} has no {label_key!r} list of {len(data)} ints (its "
                f"keys: {sorted(map(str, entry))}); expected keys 'data' and {label_key!r}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(lab, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
