"""Writing files so that a kill at any instant leaves either the old or the new version.

Whole files are written to a temporary file in the same folder, flushed, fsynced and renamed
over the target (rename is atomic within a filesystem). ``metrics.csv`` grows by whole rows:
each row is written with one ``write`` call, flushed and fsynced, and a torn last line left
by a kill mid-write is dropped on the next read. Disk-full and permission errors become
:class:`RobustscaleError` naming the path.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError, first_line


def fs_error(path: Path, exc: OSError) -> RobustscaleError:
    """One line naming the path, the cause (its errno name) and what to do."""
    cause = errno.errorcode.get(exc.errno or 0, "")
    why = f"{exc.strerror or exc}" + (f" ({cause})" if cause else "")
    if exc.errno == errno.ENOSPC:
        return RobustscaleError(
            f"no space left on the device while writing {str(path)!r} (ENOSPC); "
            "the previous version is kept; free space and run the command again"
        )
    if exc.errno in (errno.EDQUOT, errno.EFBIG):
        return RobustscaleError(
            f"cannot write {str(path)!r}: {why}; the previous version is kept; "
            "free space (or raise the limit) and run the command again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RobustscaleError(
            f"cannot write {str(path)!r}: {why}; choose a writable output folder"
        )
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return RobustscaleError(
            f"cannot write {str(path)!r}: {why}; give a file path whose parent is a folder"
        )
    return RobustscaleError(f"cannot write {str(path)!r}: {why}")


_fs_error = fs_error


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file to write: refused (one line) when it is a folder or its parent is a file,
    before any work is done; the parent folder need not exist yet."""
    path = Path(path)
    if path.is_dir():
        raise RobustscaleError(
            f"{what} {str(path)!r} is a folder; give a file path such as "
            f"{str(path / 'out')!r} plus a suffix"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RobustscaleError(
                    f"{what} {str(path)!r}: {str(parent)!r} is a file, not a folder"
                )
            break
    return path


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as a folder to write into: refused (one line) when it, or a parent, is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise RobustscaleError(
                    f"{what} {str(path)!r}: {str(p)!r} is a file, not a folder; give a folder"
                )
            break
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _fs_error(path, exc) from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_files(*moves: tuple[Path, Path]) -> None:
    """Rename each (src, dst) in order, then make the renames durable (one fsync per folder)."""
    try:
        for src, dst in moves:
            os.replace(src, dst)
    except OSError as exc:
        raise _fs_error(Path(dst), exc) from None
    for folder in {Path(dst).parent for _, dst in moves}:
        _fsync_dir(folder)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON (NaN/inf written as null, so every file is valid JSON), atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False, default=str) + "\n")


def atomic_save(path: str | Path, write: Callable[[io.IOBase], None]) -> None:
    """Binary variant: ``write(file)`` fills the temporary file (e.g. ``torch.save(obj, f)``)."""
    with atomic_open(path, "wb") as f:
        write(f)


def read_json(path: str | Path) -> Any:
    """A JSON file's value; missing, unreadable, undecodable or invalid JSON is one line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RobustscaleError(f"{str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustscaleError(f"{str(path)!r} is not valid JSON: {first_line(exc)}") from None
    except OSError as exc:
        raise RobustscaleError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def read_yaml_mapping(path: str | Path, what: str = "recipe file") -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping); a missing file, invalid
    YAML or another top-level type is one line naming ``what`` and the path."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RobustscaleError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise RobustscaleError(
            f"{what} {str(path)!r} is not UTF-8 text ({first_line(exc)}); "
            "it is damaged or not a YAML file"
        ) from None
    except OSError as exc:
        raise RobustscaleError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise RobustscaleError(f"{what} {str(path)!r} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RobustscaleError(f"{what} {str(path)!r} must hold a mapping of key: value")
    return data


def append_csv_row(path: str | Path, columns: list[str], row: dict[str, Any]) -> None:
    """Append one row (header first if the file is new) with a single write, then fsync."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    size = 0
    try:
        size = path.stat().st_size if path.exists() else 0
        if size == 0:
            writer.writeheader()
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        with open(path, "a") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):  # no part-row for the next append to continue
            os.truncate(path, size)
        raise _fs_error(path, exc) from None


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest exact form: a re-read value is bit-identical
    return v


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`append_csv_row`; a torn final line (no newline) is
    ignored."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))


def rewrite_csv(path: str | Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace a CSV atomically with ``rows`` (used to drop rows past a resumed checkpoint)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: _csv_value(row.get(k)) if not isinstance(row.get(k), str) else row.get(k)
                for k in columns
            }
        )
    atomic_write_text(path, buf.getvalue())


# One path component built from a user value (a run id, a sweep or model name): letters,
# digits and _ . - ; not starting with '.', so never '..', a hidden file, a '/' or an absolute path.
_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")


def check_component(value: Any, what: str) -> str:
    """``value`` when it is one safe path component, else a one-line RobustscaleError."""
    if not isinstance(value, str) or not _COMPONENT.fullmatch(value):
        raise RobustscaleError(
            f"{what} {value!r} cannot be used in a file name; allowed: letters, "
            "digits and _ . - (at most 200, not starting with '.'; no '/', '..' "
            "or absolute paths)"
        )
    return value


def contained(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, when it lies inside ``root`` (links followed); else a RobustscaleError."""
    base, target = Path(root).resolve(), Path(path).resolve()
    if target != base and base not in target.parents:
        raise RobustscaleError(
            f"{str(path)!r} resolves to {str(target)!r}, outside {str(base)!r}; "
            "refusing to write there"
        )
    return target
