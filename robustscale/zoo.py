"""Run directories -> one zoo table, and the reading and checking of zoo tables from anywhere.

The zoo table (``docs/zoo-schema.md``) is a public interface: another lab's table with the
same columns must analyse exactly like ours. :data:`ZOO_COLUMNS` is the one place in the code
that lists those columns; everything else (analysis, tests, docs checks) reads it from here.

Gathering follows ``docs/run-directory.md``: only runs whose ``status.json`` says ``done`` are
rows; unfinished and broken runs are returned with a reason and left out. Missing values are
empty cells (NaN / <NA>), never 0.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from robustscale.errors import RobustscaleError, first_line

if TYPE_CHECKING:  # pandas is imported lazily so that the CLI's --help stays fast
    import pandas as pd

log = logging.getLogger(__name__)

# (column, kind): kind is one of str, int, bool, float, pct (a float in percent 0-100).
ZOO_COLUMNS: list[tuple[str, str]] = [
    ("run_id", "str"),
    ("dataset", "str"),
    ("model", "str"),
    ("params", "int"),
    ("activation", "str"),
    ("loss", "str"),
    ("attack_steps", "int"),
    ("epochs", "int"),
    ("ema", "bool"),
    ("synthetic_data", "bool"),
    ("synthetic_fraction", "float"),
    ("examples_seen", "int"),
    ("synthetic_size", "int"),
    ("eps", "float"),
    ("seed", "int"),
    ("train_flops", "float"),
    ("device_hours", "float"),
    ("energy_kwh", "float"),
    ("electricity_cost_usd", "float"),
    ("co2_kg", "float"),
    ("clean_acc", "pct"),
    ("pgd40_acc", "pct"),
    ("autoattack_acc", "pct"),
]
COLUMN_NAMES: list[str] = [name for name, _ in ZOO_COLUMNS]
ACCURACY_COLUMNS: list[str] = [name for name, kind in ZOO_COLUMNS if kind == "pct"]
NONNEGATIVE_COLUMNS: list[str] = [
    "params", "attack_steps", "epochs", "examples_seen", "synthetic_size", "train_flops",
    "device_hours", "energy_kwh", "electricity_cost_usd", "co2_kg",
]


@dataclass(frozen=True)
class SkippedRun:
    """A run directory that is not in the zoo, and why."""

    path: str
    reason: str


class _Skip(Exception):
    """Internal: this run directory cannot be a row (message = the reason)."""


# ---- reading one run directory ------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _Skip(f"missing {path.name}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Skip(f"unreadable {path.name}: {first_line(exc)}")
    if not isinstance(data, dict):
        raise _Skip(f"unreadable {path.name}: not a JSON object")
    return data


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _Skip("missing recipe.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _Skip(f"unreadable recipe.yaml: {first_line(exc)}")
    if not isinstance(data, dict):
        raise _Skip("unreadable recipe.yaml: not a mapping")
    return data


def _number(value: Any) -> float | None:
    """A float from a JSON/YAML value; None (missing) for null, NaN, bools and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and "/" in value:  # eps as "8/255"
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


# Test-split sizes, for eval JSONs written before evaluations recorded ``split_size``.
_TEST_SPLIT_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 360}


def _eval_results(run_dir: Path, eps: float | None, dataset: Any = None) -> dict[str, dict[str, Any]]:
    """Final evaluations of the ``best`` checkpoint at the recipe's eps on the whole test split,
    keyed by attack name; an ``autoattack`` entry is the ``standard`` version only.

    What counts is read from each file's contents, not its name, so files written before the
    names carried version and subset (docs/evaluation.md) are judged the same way: the whole
    split is ``n == split_size``, or, for a file without ``split_size``, ``n`` equal to the
    dataset's test-split size. Subset, other-version and custom-subset evaluations are skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    eval_dir = run_dir / "eval"
    if not eval_dir.is_dir():
        return out
    for path in sorted(eval_dir.glob("*.json")):
        data = _read_json(path)  # a corrupt evaluation makes the whole run unreliable
        if data.get("checkpoint", "best") != "best" or data.get("split", "test") != "test":
            continue
        file_eps = _number(data.get("eps"))
        if eps is not None and (file_eps is None or abs(file_eps - eps) > 1e-6):
            continue
        attack = str(data.get("attack"))
        if attack == "autoattack" and data.get("version") != "standard":
            log.debug("%s: AutoAttack version %r is not the zoo's (standard)", path, data.get("version"))
            continue
        if not _whole_split(data, dataset):
            log.debug("%s: n=%r is not the whole test split; not the zoo's number", path, data.get("n"))
            continue
        out.setdefault(attack, data)
    return out


def _whole_split(data: dict[str, Any], dataset: Any) -> bool:
    n = data.get("n")
    size = data.get("split_size")
    if size is None:  # written before evaluations recorded it
        size = _TEST_SPLIT_SIZES.get(str(dataset))
    return isinstance(n, int) and not isinstance(n, bool) and isinstance(size, int) and n == size


def _best_epoch_clean_acc(run_dir: Path, best_epoch: Any) -> float | None:
    path = run_dir / "metrics.csv"
    if best_epoch is None or not path.is_file():
        return None
    import csv

    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if str(row.get("epoch", "")).strip() == str(best_epoch):
                    return _number(row.get("val_clean_acc") or None)
    except (OSError, csv.Error):
        return None
    return None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One zoo row (a dict keyed by :data:`COLUMN_NAMES`) from a finished run directory.

    Raises ``ValueError`` with the reason when the run is unfinished or broken.
    """
    run_dir = Path(run_dir)
    try:
        return _read_run(run_dir)
    except _Skip as exc:
        raise ValueError(str(exc)) from None


def _read_run(run_dir: Path) -> dict[str, Any]:
    status = _read_json(run_dir / "status.json")
    state = status.get("state")
    if state != "done":
        detail = f": {status['reason']}" if status.get("reason") else ""
        progress = f" (epoch {status.get('epoch')}/{status.get('epochs')})" if state == "running" else ""
        raise _Skip(f"unfinished: state {state!r}{progress}{detail}")
    recipe = _read_recipe(run_dir / "recipe.yaml")
    cost = _read_json(run_dir / "cost.json")
    eps = _number(recipe.get("eps"))
    evals = _eval_results(run_dir, eps, recipe.get("dataset"))
    synthetic = recipe.get("synthetic_data") is not None
    row: dict[str, Any] = {
        "run_id": status.get("run_id") or run_dir.name,
        "dataset": recipe.get("dataset"),
        "model": recipe.get("model"),
        "params": _number(cost.get("params")),
        "activation": recipe.get("activation"),
        "loss": recipe.get("loss"),
        "attack_steps": _number(recipe.get("attack_steps")),
        "epochs": _number(recipe.get("epochs")),
        "ema": recipe.get("ema_decay") is not None,  # the Recipe's defaults are null: no EMA, no extra data
        "synthetic_data": synthetic,
        "synthetic_fraction": _number(recipe.get("synthetic_fraction", 0.0)) if synthetic else 0.0,
        "examples_seen": _number(cost.get("examples_seen")),
        "synthetic_size": _number(cost.get("synthetic_size")) if synthetic else 0,
        "eps": eps,
        "seed": _number(recipe.get("seed")),
    }
    for key in ("train_flops", "device_hours", "energy_kwh", "electricity_cost_usd", "co2_kg"):
        row[key] = _number(cost.get(key))
    aa, pgd = evals.get("autoattack", {}), evals.get("pgd", {})
    # the selection metric (PGD-val_attack_steps on the held-out examples); old files' name too
    row["pgd40_acc"] = _number(status.get("best_val_pgd_acc", status.get("best_val_pgd40_acc")))
    row["autoattack_acc"] = _number(aa.get("robust_acc"))
    clean = _number(aa.get("clean_acc"))
    if clean is None:
        clean = _number(pgd.get("clean_acc"))
    if clean is None:
        clean = _best_epoch_clean_acc(run_dir, status.get("best_epoch"))
    row["clean_acc"] = clean
    return {name: row.get(name) for name in COLUMN_NAMES}


def _run_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that look like run directories."""
    marks = {p.parent for name in ("status.json", "recipe.yaml", "cost.json") for p in root.rglob(name)}
    # an eval/ folder is part of a run, not a run of its own
    return sorted(d for d in marks if d.name != "eval" and "checkpoints" not in d.parts)


def gather_zoo(root: str | Path) -> tuple["pd.DataFrame", list[SkippedRun]]:
    """Every finished run directory under ``root`` as one zoo table, plus the runs left out.

    Unfinished (state != done) and broken (missing or unreadable files) runs are returned as
    :class:`SkippedRun` with the reason (and logged at debug level; the CLI prints them). One run
    id in two folders is resolved by content: the copy with more results (AutoAttack first) is
    the row, the other is returned as skipped with a reason naming the kept path; two copies
    with the same row are merged silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise RobustscaleError(f"zoo folder {str(root)!r} does not exist or is not a folder")
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedRun] = []
    where: dict[str, tuple[int, Path]] = {}  # run_id -> (index in rows, run directory)
    for run_dir in _run_dirs(root):
        try:
            row = _read_run(run_dir)
        except _Skip as exc:
            skipped.append(SkippedRun(str(run_dir), str(exc)))
            log.debug("left out %s: %s", run_dir, exc)
            continue
        if row["run_id"] not in where:
            where[row["run_id"]] = (len(rows), run_dir)
            rows.append(row)
            continue
        i, first = where[row["run_id"]]
        kept, dropped, why = _resolve_duplicate(rows[i], first, row, run_dir)
        if kept is None:  # the same results twice: merged silently
            continue
        rows[i], where[row["run_id"]] = (row, (i, run_dir)) if kept == run_dir else (rows[i], (i, first))
        skipped.append(SkippedRun(str(dropped), f"duplicate run_id {row['run_id']!r}: kept {str(kept)!r} ({why})"))
    log.info("zoo: %d finished runs, %d left out, from %s", len(rows), len(skipped), root)
    return to_frame(rows), skipped


def _results(row: dict[str, Any]) -> int:
    """How many of a row's result cells are filled (AutoAttack counted twice: it is the zoo's number)."""
    filled = sum(row.get(k) is not None for k in COLUMN_NAMES)
    return filled + (row.get("autoattack_acc") is not None)


def _resolve_duplicate(a: dict[str, Any], a_dir: Path, b: dict[str, Any],
                       b_dir: Path) -> tuple[Path | None, Path | None, str]:
    """Which of two finished copies of one run id to keep: (kept, dropped, why), or (None, None, "")
    when their rows are the same. The copy with more results wins (AutoAttack first); on a tie,
    the first found (sorted paths) is kept."""
    if all(_same(a.get(k), b.get(k)) for k in COLUMN_NAMES):
        return None, None, ""
    sa, sb = _results(a), _results(b)
    if (b.get("autoattack_acc") is not None) > (a.get("autoattack_acc") is not None) or (
            (a.get("autoattack_acc") is None) == (b.get("autoattack_acc") is None) and sb > sa):
        return b_dir, a_dir, _why(b, a)
    return a_dir, b_dir, _why(a, b) if sa != sb else "same number of results; first found kept"


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
    return x == y


def _why(kept: dict[str, Any], dropped: dict[str, Any]) -> str:
    if kept.get("autoattack_acc") is not None and dropped.get("autoattack_acc") is None:
        return "it has the AutoAttack result"
    more = [k for k in COLUMN_NAMES if kept.get(k) is not None and dropped.get(k) is None]
    return f"it has {', '.join(more)}" if more else "more results"


# ---- tables: types, reading, writing, checking -------------------------------------------


def to_frame(rows: list[dict[str, Any]]) -> "pd.DataFrame":
    """Rows (dicts) as a zoo DataFrame with the schema's columns, in order, and typed."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMN_NAMES) if rows else pd.DataFrame(columns=COLUMN_NAMES)
    return coerce_types(df, source="runs")


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
               "1.0": True, "0.0": False}


def _to_bool(series: "pd.Series", name: str, source: str) -> "pd.Series":
    import pandas as pd

    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return pd.NA
        if isinstance(v, bool):
            return v
        word = str(v).strip().lower()
        if word == "":
            return pd.NA
        if word not in _BOOL_WORDS:
            raise RobustscaleError(f"zoo {source}: column {name!r} has value {v!r}; allowed: true/false (or empty)")
        return _BOOL_WORDS[word]

    return pd.array([one(v) for v in series.tolist()], dtype="boolean")


def coerce_types(df: "pd.DataFrame", source: str = "table") -> "pd.DataFrame":
    """Give the schema columns their types: nullable ints/bools, floats, strings (extras kept)."""
    import pandas as pd

    df = df.copy()
    for name, kind in ZOO_COLUMNS:
        if name not in df.columns:
            continue
        col = df[name]
        if kind == "str":
            df[name] = col.astype("string")
        elif kind == "bool":
            df[name] = _to_bool(col, name, source)
        else:
            num = pd.to_numeric(col.replace("", None) if col.dtype == object else col, errors="coerce")
            bad = num.isna() & col.notna() & (col.astype("string").str.strip() != "")
            if bad.any():
                value = col[bad].iloc[0]
                raise RobustscaleError(f"zoo {source}: column {name!r} has non-numeric value {value!r}; "
                                       f"allowed: a number or an empty cell")
            if kind == "int":
                frac = num.notna() & (num != num.round())
                if frac.any():
                    raise RobustscaleError(f"zoo {source}: column {name!r} has non-integer value "
                                           f"{num[frac].iloc[0]!r}; allowed: an integer or an empty cell")
                df[name] = num.round().astype("Int64")
            else:
                df[name] = num.astype("float64")
    return df


def validate_zoo(df: "pd.DataFrame", source: str = "table") -> None:
    """Check a typed zoo table; raise :class:`RobustscaleError` with one line on the first problem.

    Checked: every schema column present, accuracies in percent (a table whose accuracies are
    all within 0-1 was written as fractions), accuracies within 0-100, no negative FLOPs or
    costs, unique run ids.
    """
    missing = [c for c in COLUMN_NAMES if c not in df.columns]
    if missing:
        raise RobustscaleError(f"zoo {source} lacks column(s) {', '.join(missing)}; "
                               f"a zoo table needs all of: {', '.join(COLUMN_NAMES)} (see docs/zoo-schema.md)")
    for name in ACCURACY_COLUMNS:
        col = df[name].dropna()
        if len(col) and col.max() <= 1.0 and col.max() > 0:
            raise RobustscaleError(f"zoo {source}: column {name!r} looks like fractions (all values within 0-1, "
                                   f"max {col.max():g}); accuracies must be percent 0-100, e.g. 52.3 not 0.523")
        if len(col) and (col.min() < 0 or col.max() > 100):
            value = col[(col < 0) | (col > 100)].iloc[0]
            raise RobustscaleError(f"zoo {source}: column {name!r} has {value:g}; allowed: percent 0-100")
    for name in NONNEGATIVE_COLUMNS:
        col = df[name]
        neg = col.notna() & (col < 0)
        if neg.any():
            run = df.loc[neg, "run_id"].iloc[0]
            raise RobustscaleError(f"zoo {source}: column {name!r} is negative ({col[neg].iloc[0]:g}) "
                                   f"for run {run!r}; allowed: a number >= 0 (FLOPs in FLOPs, not log)")
    dup = df["run_id"].dropna().duplicated()
    if dup.any():
        raise RobustscaleError(f"zoo {source}: run_id {df['run_id'].dropna()[dup].iloc[0]!r} appears twice; "
                               "run ids must be unique")


def read_zoo(path: str | Path) -> "pd.DataFrame":
    """Read and check a zoo table (CSV or Parquet, ours or anyone's); extra columns are kept."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise RobustscaleError(f"zoo table {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path, keep_default_na=True, na_values=[""], dtype=str)
        else:
            raise RobustscaleError(f"zoo table {str(path)!r} has suffix {suffix!r}; allowed: .csv or .parquet")
    except RobustscaleError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise RobustscaleError(f"zoo table {str(path)!r} could not be read: {first_line(exc)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in COLUMN_NAMES if c not in df.columns]
    if missing:  # checked before typing so that the missing column is the one line reported
        validate_zoo(df, source=path.name)
    df = coerce_types(df, source=path.name)
    validate_zoo(df, source=path.name)
    return df


def write_zoo(df: "pd.DataFrame", path: str | Path) -> Path:
    """Write a zoo table as CSV (empty cells for missing values) or Parquet, by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise RobustscaleError(f"output {str(path)!r} has suffix {suffix!r}; allowed: .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False, na_rep="")
    tmp.replace(path)
    return path
