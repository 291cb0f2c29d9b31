"""``robustscale data convert|info``: image sets into the memory-mapped layout, and what they hold.

Converting reads the source chunk by chunk (an ``.npz`` member is decompressed as a stream),
so peak memory does not depend on N, and writes into a hidden ``.<name>.partial-<pid>``
folder beside the destination that is renamed into place only when every file is complete
and synced: a killed convert leaves no folder that looks like a finished set.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from robustscale.data.arrays import _npy_header, open_source
from robustscale.errors import RobustscaleError

__all__ = ["convert", "describe"]

CHUNK = 16384  # images per read: 50 MB of CIFAR-sized images


@contextmanager
def _npz_images(path: Path) -> Iterator[tuple[tuple[int, ...], Iterator[np.ndarray], np.ndarray]]:
    """(image shape, chunks of images, labels) of an ``.npz``, its images read as a stream."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise RobustscaleError(
            f"{str(path)!r} is not a readable .npz ({exc}); expected an .npz with 'image' "
            "and 'label'"
        ) from None
    with zf:
        names = set(zf.namelist())
        if "image.npy" not in names or "label.npy" not in names:
            raise RobustscaleError(
                f"{str(path)!r} has arrays {sorted(n[:-4] for n in names)}; expected 'image' "
                "and 'label'"
            )
        with np.load(path, allow_pickle=False) as f:
            try:
                labels = f["label"]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise RobustscaleError(
                    f"{str(path)!r}: its 'label' array is unreadable ({exc})"
                ) from None
        with zf.open("image.npy") as stream:
            shape, fortran, dtype = _npy_header(stream, path)
            if dtype != np.uint8 or fortran or len(shape) not in (3, 4):
                raise RobustscaleError(
                    f"{str(path)!r} has images {dtype} {tuple(shape)}; expected uint8 "
                    "N x H x W x C (C order)"
                )
            shape = tuple(shape) if len(shape) == 4 else (*shape, 1)
            row = int(np.prod(shape[1:]))

            def chunks() -> Iterator[np.ndarray]:
                for lo in range(0, shape[0], CHUNK):
                    k = min(CHUNK, shape[0] - lo)
                    try:
                        raw = stream.read(k * row)
                    except (OSError, zipfile.BadZipFile, EOFError) as exc:
                        raise RobustscaleError(
                            f"{str(path)!r}: its images are unreadable ({exc})"
                        ) from None
                    if len(raw) != k * row:
                        raise RobustscaleError(
                            f"{str(path)!r} is truncated: image {lo + len(raw) // row} of "
                            f"{shape[0]} ends early"
                        )
                    yield np.frombuffer(raw, np.uint8).reshape(k, *shape[1:])

            yield shape, chunks(), labels


@contextmanager
def _images(path: Path) -> Iterator[tuple[tuple[int, ...], Iterator[np.ndarray], np.ndarray]]:
    if path.suffix == ".npz" and path.is_file():
        with _npz_images(path) as got:
            yield got
        return
    src = open_source(path)
    yield (len(src), *src.image_shape), (images for images, _ in src.chunks(CHUNK)), src.labels


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    integral = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)
    )
    if labels.ndim != 1 or len(labels) != n or not integral or (len(labels) and labels.min() < 0):
        raise RobustscaleError(
            f"{str(path)!r} has labels {labels.dtype} {tuple(labels.shape)}; expected {n} "
            "integers >= 0"
        )
    return labels.astype(np.int64)


def _write_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    np.lib.format.write_array_header_1_0(f, header)


def convert(
    src: str | Path, dst: str | Path, *, shard_size: int | None = None, progress: bool = True
) -> Path:
    """Write the image set at ``src`` (.npz, folder, shards) as ``dst/image.npy`` + ``label.npy``,
    or as shards of ``shard_size`` images; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise RobustscaleError(
            f"{str(dst)!r} already exists; expected a new folder to write the set into"
        )
    if shard_size is not None and shard_size < 1:
        raise RobustscaleError(f"--shard-size={shard_size}; allowed: an integer >= 1")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        with _images(src) as (shape, chunks, labels):
            labels = _check_labels(labels, shape[0], src)
            _write_set(tmp, shape, chunks, labels, shard_size or max(shape[0], 1), progress, src)
        os.replace(tmp, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RobustscaleError(f"cannot write {str(dst)!r}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write_set(
    folder: Path,
    shape: tuple[int, ...],
    chunks: Iterator[np.ndarray],
    labels: np.ndarray,
    shard_size: int,
    progress: bool,
    src: Path,
) -> None:
    from tqdm import tqdm

    n, single = shape[0], shard_size >= shape[0]
    bar = tqdm(
        total=n, unit="img", unit_scale=True, desc=f"convert {src.name}", disable=not progress
    )
    files, f, left, shard = [], None, 0, 0
    try:
        for block in chunks:
            while len(block):
                if left == 0:  # open the next shard
                    if f is not None:
                        files.append(f)
                    k = min(shard_size, n - shard * shard_size)
                    name = "image.npy" if single else f"image-{shard:05d}.npy"
                    f = open(folder / name, "wb")
                    _write_header(f, (k, *shape[1:]), np.uint8)
                    left, shard = k, shard + 1
                take = block[:left]
                f.write(np.ascontiguousarray(take).tobytes())
                block, left = block[left:], left - len(take)
                bar.update(len(take))
        if f is not None:
            files.append(f)
        for k, lo in enumerate(range(0, max(n, 1), shard_size)):
            name = "label.npy" if single else f"label-{k:05d}.npy"
            np.save(folder / name, labels[lo : lo + shard_size])
        if n == 0:  # an empty set is still a set (np.save writes its header)
            np.save(folder / "image.npy", np.zeros(shape, np.uint8))
        for fh in files:
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in files + ([f] if f is not None and f not in files else []):
            fh.close()
        bar.close()


def describe(path: str | Path) -> dict[str, Any]:
    """N, image shape, label histogram and bytes of the image set at ``path`` (images not read)."""
    path = Path(path)
    with _images(path) as (shape, _, labels):
        labels = _check_labels(labels, shape[0], path)
    size = (
        sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".npy")
        if path.is_dir()
        else path.stat().st_size
    )
    hist = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    return {
        "path": str(path),
        "n": int(shape[0]),
        "image_shape": list(shape[1:]),
        "dtype": "uint8",
        "labels": {int(k): int(v) for k, v in enumerate(hist) if v},
        "image_bytes": int(np.prod(shape)),
        "bytes_on_disk": int(size),
        "layout": "npz (in memory)" if path.is_file() else "memory-mapped",
    }
