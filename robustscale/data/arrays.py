"""Labelled uint8 image sets too large for memory: ``.npy`` files read row by row from disk.

A set is one of
* a folder holding ``image.npy`` (uint8 N x H x W x C) and ``label.npy`` (N integers): the
  memory-mappable layout (``numpy.load(..., mmap_mode="r")`` opens it too);
* a folder of shards ``image-00000.npy`` / ``label-00000.npy``, ... seen as one set;
* an ``.npz`` with ``image`` and ``label`` (the format Gowal et al. and Wang et al. release),
  which is held in memory; ``robustscale data convert`` turns it into the first layout.

Labels are loaded whole (8 bytes an image); images never are: :meth:`ImageSource.gather`
reads the rows a batch needs with ``pread`` straight into the caller's (pinned) buffer, one
read per run of consecutive rows. The files stay in the kernel's page cache, which is shared,
reclaimable and not this process's memory. A memory map was tried first and dropped: on this
kernel (6.x, large page-cache folios) one shuffled batch of 450 CIFAR images mapped ~260 MB of
a 300 MB file into the process (RSS), because each fault maps the whole folio around the row.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from robustscale.errors import RobustscaleError

__all__ = [
    "ImageSource",
    "InMemorySource",
    "DiskSource",
    "SubsetSource",
    "open_source",
    "check_source",
]

_SHARD = re.compile(r"^image-(\d+)\.npy$")


class ImageSource:
    """N labelled uint8 images (N x H x W x C) that batches are gathered from by index."""

    path: Path
    labels: np.ndarray  # int64, N
    image_shape: tuple[int, int, int]  # H, W, C

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.image_shape))

    def gather(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The images at ``idx`` (k x H x W x C uint8), written into ``out`` when given."""
        raise NotImplementedError

    def chunks(self, size: int):
        """Consecutive (images, labels) blocks of at most ``size`` images: one pass over the set."""
        for lo in range(0, len(self), size):
            idx = np.arange(lo, min(lo + size, len(self)))
            yield self.gather(idx), self.labels[idx]


class InMemorySource(ImageSource):
    """Images held in memory (an ``.npz``, or arrays made in Python)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, path: Path | str = "<memory>"):
        self.path, self.images = Path(path), images
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.image_shape = tuple(images.shape[1:])

    def gather(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.take(self.images, idx, axis=0, out=out)


class DiskSource(ImageSource):
    """One or more ``image*.npy`` shards on disk, seen as one set; rows are read when gathered."""

    def __init__(self, path: Path, shards: list[tuple[Path, Path]]):
        self.path = path
        self.files: list[Path] = []
        self.offsets: list[int] = []
        self.fds: list[int] = []
        sizes, labels, first = [], [], None
        for image_file, label_file in shards:
            shape, dtype, offset = _npy_layout(image_file)
            if dtype != np.uint8 or len(shape) != 4:
                raise RobustscaleError(
                    f"{str(image_file)!r} holds {dtype} {tuple(shape)}; expected "
                    "uint8 images N x H x W x C"
                )
            if first is not None and tuple(shape[1:]) != first:
                raise RobustscaleError(
                    f"shard {str(image_file)!r} has images {tuple(shape[1:])}; expected "
                    f"{first} like {str(shards[0][0])!r}"
                )
            first = tuple(shape[1:])
            labels.append(_read_labels(label_file, shape[0]))
            self.files.append(image_file)
            self.offsets.append(offset)
            sizes.append(shape[0])
        self.image_shape = first
        self.labels = np.concatenate(labels)
        self.starts = np.cumsum([0] + sizes)
        self.row = int(np.prod(first))
        for f in self.files:
            try:
                self.fds.append(os.open(f, os.O_RDONLY))
            except OSError as exc:
                raise RobustscaleError(f"cannot read {str(f)!r}: {exc.strerror}") from None

    def gather(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if out is None:
            out = np.empty((len(idx), *self.image_shape), np.uint8)
        if not len(idx):
            return out
        flat = out.reshape(len(idx), self.row)  # a view: ``out`` is C-contiguous
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[shard]
        # one read per run of consecutive rows (a whole chunk in a sequential pass, mostly one
        # row in a shuffled batch)
        cut = np.flatnonzero((np.diff(local) != 1) | (np.diff(shard) != 0)) + 1
        for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(idx)].tolist()):
            s = int(shard[a])
            self._read(s, self.offsets[s] + int(local[a]) * self.row, flat[a:b])
        return out

    def _read(self, s: int, offset: int, into: np.ndarray) -> None:
        view, done = memoryview(into).cast("B"), 0
        while done < len(view):
            n = os.preadv(self.fds[s], [view[done:]], offset + done)
            if n <= 0:
                raise RobustscaleError(
                    f"{str(self.files[s])!r} ended early (was it truncated while in use?)"
                )
            done += n

    def __del__(self) -> None:
        for fd in getattr(self, "fds", []):
            try:
                os.close(fd)
            except OSError:
                pass


class SubsetSource(ImageSource):
    """The images of ``source`` at ``indices``, in that order (a held-out split of a mapped set)."""

    def __init__(self, source: ImageSource, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.path, self.image_shape = source.path, source.image_shape
        self.labels = source.labels[self.indices]

    def gather(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.source.gather(self.indices[idx], out=out)


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"npy format version {version} is not supported")
    except ValueError as exc:
        raise RobustscaleError(
            f"{str(path)!r} is not a readable .npy file ({exc}); expected an array "
            "saved with numpy.save"
        ) from None


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file; a truncated or foreign file is one line."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _npy_header(f, path)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise RobustscaleError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if dtype.hasobject or fortran:
        raise RobustscaleError(
            f"{str(path)!r} holds {'objects' if dtype.hasobject else 'a Fortran-order'} "
            "array; expected a plain C-order numeric array"
        )
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if size < need:
        raise RobustscaleError(
            f"{str(path)!r} is truncated: {size} bytes, expected {need} for {dtype} {tuple(shape)}"
        )
    return tuple(shape), dtype, offset


def _read_labels(path: Path, n: int) -> np.ndarray:
    if not path.is_file():
        raise RobustscaleError(f"{str(path)!r} is missing; expected {n} labels beside the images")
    shape, dtype, offset = _npy_layout(path)
    if len(shape) != 1 or shape[0] != n or dtype.kind not in "iu":
        raise RobustscaleError(
            f"{str(path)!r} holds {dtype} {tuple(shape)}; expected {n} integer labels"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        return np.fromfile(f, dtype=dtype, count=n).astype(np.int64)


def _shards(folder: Path) -> list[tuple[Path, Path]]:
    if (folder / "image.npy").is_file():
        return [(folder / "image.npy", folder / "label.npy")]
    shards = sorted((m.group(1), p) for p in folder.iterdir() if (m := _SHARD.match(p.name)))
    if not shards:
        raise RobustscaleError(
            f"{str(folder)!r} holds no image.npy (nor image-00000.npy shards); expected "
            "image.npy (uint8 N x H x W x C) and label.npy"
        )
    return [(p, folder / f"label-{k}.npy") for k, p in shards]


def _npz(path: Path) -> InMemorySource:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "image" not in f or "label" not in f:
                raise RobustscaleError(
                    f"{str(path)!r} has arrays {sorted(f.files)}; expected 'image' and 'label'"
                )
            images, labels = f["image"], f["label"]
    except (OSError, ValueError, EOFError) as exc:
        raise RobustscaleError(f"{str(path)!r} is not a readable .npz: {exc}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise RobustscaleError(
            f"{str(path)!r} has images {images.dtype} {tuple(images.shape)}; expected uint8 "
            "N x H x W x C"
        )
    if images.ndim == 3:  # one channel stored without its axis
        images = images[..., None]
    integral = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)
    )
    if labels.ndim != 1 or len(labels) != len(images) or not integral:
        raise RobustscaleError(
            f"{str(path)!r} has labels {labels.dtype} {tuple(labels.shape)}; expected "
            f"{len(images)} integers"
        )
    return InMemorySource(images, labels, path)


def open_source(path: str | Path) -> ImageSource:
    """The image set at ``path``: an ``.npz`` (in memory), a folder or shards (on disk)."""
    path = Path(path)
    if path.is_dir():
        return DiskSource(path, _shards(path))
    if path.suffix == ".npz" and path.is_file():
        return _npz(path)
    raise RobustscaleError(
        f"{str(path)!r} is neither an .npz file nor a folder; expected an .npz with 'image' "
        "and 'label', or a folder holding image.npy and label.npy"
    )


def check_source(
    source: ImageSource, what: str, shape: tuple[int, int, int], num_classes: int, dataset: str
) -> None:
    """Refuse a set whose images do not fit ``shape`` (C, H, W) or labels leave [0, num_classes)."""
    c, h, w = shape
    if source.image_shape != (h, w, c):
        raise RobustscaleError(
            f"{what} {str(source.path)!r} has images {source.image_shape}; expected uint8 "
            f"N x {h} x {w} x {c} for {dataset}"
        )
    lab = source.labels
    if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
        bad = int(lab.min()) if lab.min() < 0 else int(lab.max())
        raise RobustscaleError(
            f"{what} {str(source.path)!r} has label {bad}; expected labels in "
            f"[0, {num_classes}) for {dataset}"
        )
