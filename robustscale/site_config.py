"""Site defaults for the cost constants: the ``[cost]`` table of a ``robustscale.toml``.

The file is ``$ROBUSTSCALE_CONFIG`` when that is set (it must then exist), else
``./robustscale.toml`` in the current directory when there is one. Its ``[cost]`` table may set
``pue``, ``usd_per_kwh``, ``gco2_per_kwh`` and ``power_watts``; a recipe key (or ``--set``)
still wins over it. Other tables are left to other parts of robustscale. A syntax error, an
unknown key in ``[cost]`` or a bad value is a one-line :class:`RobustscaleError` naming the
file, the key and what is allowed. Example::

    [cost]
    pue = 1.1            # this data centre
    usd_per_kwh = 0.30
    gco2_per_kwh = 50.0  # hydro
    power_watts = 700    # only used when no meter can measure (labelled "estimated")
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["CONFIG_ENV", "CONFIG_FILE", "COST_KEYS", "config_path", "cost_defaults"]

CONFIG_ENV = "ROBUSTSCALE_CONFIG"
CONFIG_FILE = "robustscale.toml"

# key -> (test, what is allowed); the same ranges as the recipe's.
COST_KEYS: dict[str, tuple[Any, str]] = {
    "pue": (lambda v: v >= 1, "a number >= 1"),
    "usd_per_kwh": (lambda v: v >= 0, "a number >= 0"),
    "gco2_per_kwh": (lambda v: v >= 0, "a number >= 0"),
    "power_watts": (lambda v: v > 0, "a number > 0"),
}

_cache: dict[tuple[str, int, int], dict[str, float]] = {}


def config_path() -> Path | None:
    """The config file in force: ``$ROBUSTSCALE_CONFIG``, else ``./robustscale.toml`` if it
    exists."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise RobustscaleError(
                f"{CONFIG_ENV}={env!r} is not an existing file; allowed: a path to a TOML "
                f"file such as {CONFIG_FILE}, or unset"
            )
        return path
    path = Path(CONFIG_FILE)
    return path if path.is_file() else None


def cost_defaults() -> dict[str, float]:
    """The validated ``[cost]`` values of the config file in force ({} without one).

    Read again whenever the file changes (keyed by path, size and modification time)."""
    path = config_path()
    if path is None:
        return {}
    try:
        st = path.stat()
    except OSError as exc:
        raise RobustscaleError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _cache:
        _cache.clear()
        _cache[key] = _read(path)
    return dict(_cache[key])


def _read(path: Path) -> dict[str, float]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RobustscaleError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RobustscaleError(f"{str(path)!r} is not valid TOML: {exc}") from None
    table = data.get("cost", {})
    if not isinstance(table, dict):
        raise RobustscaleError(
            f"{str(path)!r}: 'cost' must be a table ([cost]), not {type(table).__name__}"
        )
    allowed = ", ".join(COST_KEYS)
    out: dict[str, float] = {}
    for k, v in table.items():
        if k not in COST_KEYS:
            raise RobustscaleError(
                f"{str(path)!r}: unknown key {k!r} in [cost]; allowed keys: {allowed}"
            )
        ok, what = COST_KEYS[k]
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or math.isnan(v)
            or math.isinf(v)
            or not ok(v)
        ):
            raise RobustscaleError(
                f"{str(path)!r}: [cost] {k} = {v!r} is not allowed; allowed: {what}"
            )
        out[k] = float(v)
    return out
