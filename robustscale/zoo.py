"""Run directories -> one zoo table, and the reading and checking of zoo tables from anywhere.

The zoo table (``docs/zoo-schema.md``) is a public interface: another lab's table with the
same columns must analyse exactly like ours. :data:`ZOO_COLUMNS` is the one place in the code
that lists those columns; everything else (analysis, tests, docs checks) reads it from here.

Gathering follows ``docs/run-directory.md`` and reads every file through
:class:`robustscale.runs.RunDir`: only runs whose ``status.json`` says ``done`` are rows;
unfinished and damaged runs are returned with a reason and left out. Missing values are empty
cells (NaN / <NA>), never 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustscale.errors import RobustscaleError, first_line
from robustscale.recipe import TEST_SPLIT_SIZES
from robustscale.runs import MISSING, EvalResult, RunDir, RunFileError

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
    ("unique_synthetic_seen", "int"),
    ("unique_real_seen", "int"),
    ("pgd40_loss", "float"),
]
# columns a table made elsewhere (or before they were recorded) may lack (zoo_schema.md:
# optional); read as empty
OPTIONAL_COLUMNS: list[str] = ["unique_synthetic_seen", "unique_real_seen", "pgd40_loss"]
COLUMN_NAMES: list[str] = [name for name, _ in ZOO_COLUMNS]
REQUIRED_COLUMNS: list[str] = [name for name in COLUMN_NAMES if name not in OPTIONAL_COLUMNS]
ACCURACY_COLUMNS: list[str] = [name for name, kind in ZOO_COLUMNS if kind == "pct"]
NONNEGATIVE_COLUMNS: list[str] = [
    "params",
    "attack_steps",
    "epochs",
    "examples_seen",
    "synthetic_size",
    "train_flops",
    "device_hours",
    "energy_kwh",
    "electricity_cost_usd",
    "co2_kg",
    "unique_synthetic_seen",
    "unique_real_seen",
]


@dataclass(frozen=True)
class SkippedRun:
    """A run directory that is not in the zoo, and why. ``damaged`` runs (a file missing or
    unreadable, a best checkpoint missing or truncated) are listed apart from unfinished ones."""

    path: str
    reason: str
    damaged: bool = False


class _Skip(Exception):
    """Internal: this run directory cannot be a row (message = the reason)."""

    def __init__(self, reason: str, damaged: bool = False):
        super().__init__(reason)
        self.damaged = damaged


# ---- one run directory -> one row (the files are read through robustscale.runs) --------------


def _zoo_evals(run: RunDir, eps: float | None, dataset: str | None) -> dict[str, EvalResult]:
    """Final evaluations of the ``best`` checkpoint at the recipe's eps on the whole test split,
    keyed by attack name; an ``autoattack`` entry is the ``standard`` version only.

    What counts is read from each file's contents, not its name, so files written before the
    names carried version and subset (docs/evaluation.md) are judged the same way: the whole
    split is ``n == split_size``, or, for a file without ``split_size``, ``n`` equal to the
    dataset's test-split size. Subset, other-version and custom-subset evaluations are skipped.
    """
    out: dict[str, EvalResult] = {}
    for path, result in run.read_evals():  # a corrupt evaluation makes the whole run unreliable
        if result.checkpoint != "best" or result.split != "test":
            continue
        if eps is not None and abs(result.eps - eps) > 1e-6:
            continue
        if result.attack == "autoattack" and result.version != "standard":
            log.debug("%s: AutoAttack version %r is not the zoo's (standard)", path, result.version)
            continue
        size = (
            result.split_size
            if result.split_size is not None
            else TEST_SPLIT_SIZES.get(str(dataset))
        )
        if result.n != size:
            log.debug("%s: n=%r is not the whole test split; not the zoo's number", path, result.n)
            continue
        out.setdefault(result.attack, result)
    return out


def _best_epoch_clean_acc(run: RunDir, best_epoch: int | None) -> float | None:
    if best_epoch is None:
        return None
    for row in run.read_metrics():
        if row.epoch == best_epoch:
            return row.val_clean_acc
    return None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One zoo row (a dict keyed by :data:`COLUMN_NAMES`) from a finished run directory.

    Raises ``ValueError`` with the reason when the run is unfinished or broken.
    """
    try:
        return _read_run(RunDir(Path(run_dir)))
    except _Skip as exc:
        raise ValueError(str(exc)) from None


def _read_run(run: RunDir) -> dict[str, Any]:
    try:
        return _row(run)
    except RunFileError as exc:
        raise _Skip(exc.reason, damaged=True) from None


def _row(run: RunDir) -> dict[str, Any]:
    """The zoo row: typed records of the run directory mapped to the schema's columns."""
    status = run.read_status()
    if status is None:
        raise RunFileError(run.status, MISSING)
    if status.state != "done":
        detail = f": {status.reason}" if status.reason else ""
        progress = f" (epoch {status.epoch}/{status.epochs})" if status.state == "running" else ""
        raise _Skip(f"unfinished: state {status.state!r}{progress}{detail}")
    recipe = run.read_recipe_record()
    cost = run.read_cost()
    damage = run.damage()
    if damage:
        raise _Skip(damage, damaged=True)
    evals = _zoo_evals(run, recipe.eps, recipe.dataset)
    aa, pgd = evals.get("autoattack"), evals.get("pgd")
    clean = aa.clean_acc if aa is not None else None
    if clean is None and pgd is not None:
        clean = pgd.clean_acc
    if clean is None:
        clean = _best_epoch_clean_acc(run, status.best_epoch)
    row: dict[str, Any] = {
        "run_id": status.run_id or run.path.name,
        "dataset": recipe.dataset,
        "model": recipe.model,
        "params": cost.params,
        "activation": recipe.activation,
        "loss": recipe.loss,
        "attack_steps": recipe.attack_steps,
        "epochs": recipe.epochs,
        "ema": recipe.ema,
        "synthetic_data": recipe.synthetic_data,
        "synthetic_fraction": recipe.synthetic_fraction,
        "examples_seen": cost.examples_seen,
        "synthetic_size": cost.synthetic_size if recipe.synthetic_data else 0,
        # runs trained before it was counted have no value: empty, never a guess
        "unique_synthetic_seen": cost.unique_synthetic_seen if recipe.synthetic_data else 0,
        "unique_real_seen": cost.unique_real_seen,
        "eps": recipe.eps,
        "seed": recipe.seed,
        "train_flops": cost.train_flops,
        "device_hours": cost.device_hours,
        "energy_kwh": cost.energy_kwh,
        "electricity_cost_usd": cost.electricity_cost_usd,
        "co2_kg": cost.co2_kg,
        "clean_acc": clean,
        "pgd40_acc": status.best_val_pgd_acc,
        "autoattack_acc": aa.robust_acc if aa is not None else None,
    }
    # robust cross-entropy of the final PGD-40 evaluation (absent in evaluations before it was
    # recorded)
    row["pgd40_loss"] = pgd.robust_ce_loss if pgd is not None and pgd.steps == 40 else None
    return {name: row.get(name) for name in COLUMN_NAMES}


def _run_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that look like run directories."""
    marks = {
        p.parent for name in ("status.json", "recipe.yaml", "cost.json") for p in root.rglob(name)
    }
    # an eval/ folder is part of a run, not a run of its own
    return sorted(d for d in marks if d.name != "eval" and "checkpoints" not in d.parts)


def gather_zoo(root: str | Path) -> tuple[pd.DataFrame, list[SkippedRun]]:
    """Every finished run directory under ``root`` as one zoo table, plus the runs left out.

    Unfinished (state != done) runs and damaged ones (a missing or unreadable file, a missing or
    truncated best checkpoint) are returned as :class:`SkippedRun` with the reason (and logged
    at debug level; the CLI prints them, the damaged ones in their own section).
    """
    root = Path(root)
    if not root.is_dir():
        raise RobustscaleError(f"zoo folder {str(root)!r} does not exist or is not a folder")
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedRun] = []
    where: dict[str, tuple[int, Path]] = {}  # run_id -> (index in rows, run directory)
    for run_dir in _run_dirs(root):
        try:
            row = _read_run(RunDir(run_dir))
        except _Skip as exc:
            skipped.append(SkippedRun(str(run_dir), str(exc), damaged=exc.damaged))
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
        rows[i], where[row["run_id"]] = (
            (row, (i, run_dir)) if kept == run_dir else (rows[i], (i, first))
        )
        skipped.append(
            SkippedRun(
                str(dropped), f"duplicate run_id {row['run_id']!r}: kept {str(kept)!r} ({why})"
            )
        )
    log.info("zoo: %d finished runs, %d left out, from %s", len(rows), len(skipped), root)
    return to_frame(rows), skipped


def _results(row: dict[str, Any]) -> int:
    """How many of a row's result cells are filled (AutoAttack counted twice: it is the zoo's
    number)."""
    filled = sum(row.get(k) is not None for k in COLUMN_NAMES)
    return filled + (row.get("autoattack_acc") is not None)


def _resolve_duplicate(
    a: dict[str, Any], a_dir: Path, b: dict[str, Any], b_dir: Path
) -> tuple[Path | None, Path | None, str]:
    """Which of two finished copies of one run id to keep: (kept, dropped, why), or (None, None, "")
    when their rows are the same. The copy with more results wins (AutoAttack first); on a tie,
    the first found (sorted paths) is kept."""
    if all(_same(a.get(k), b.get(k)) for k in COLUMN_NAMES):
        return None, None, ""
    sa, sb = _results(a), _results(b)
    if (b.get("autoattack_acc") is not None) > (a.get("autoattack_acc") is not None) or (
        (a.get("autoattack_acc") is None) == (b.get("autoattack_acc") is None) and sb > sa
    ):
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


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts) as a zoo DataFrame with the schema's columns, in order, and typed."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMN_NAMES) if rows else pd.DataFrame(columns=COLUMN_NAMES)
    return coerce_types(df, source="runs")


_BOOL_WORDS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "1.0": True,
    "0.0": False,
}


def _to_bool(series: pd.Series, name: str, source: str) -> pd.Series:
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
            raise RobustscaleError(
                f"zoo {source}: column {name!r} has value {v!r}; allowed: true/false (or empty)"
            )
        return _BOOL_WORDS[word]

    return pd.array([one(v) for v in series.tolist()], dtype="boolean")


def coerce_types(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Give the schema columns their types: nullable ints/bools, floats, strings (extras kept)."""
    import pandas as pd

    df = df.copy()
    for name in OPTIONAL_COLUMNS:
        if name not in df.columns:
            df[name] = None
    for name, kind in ZOO_COLUMNS:
        if name not in df.columns:
            continue
        col = df[name]
        if kind == "str":
            df[name] = col.astype("string")
        elif kind == "bool":
            df[name] = _to_bool(col, name, source)
        else:
            num = pd.to_numeric(
                col.replace("", None) if col.dtype == object else col, errors="coerce"
            )
            # a cell that became NaN without being empty; the column is read as text only
            # when some cell did not parse (reading every numeric column as text was 0.24 of
            # the 1.1 s of fit_zoo on a 10,000-run zoo)
            bad = num.isna() & col.notna()
            if bad.any():
                bad &= col.astype("string").str.strip() != ""
            if bad.any():
                value = col[bad].iloc[0]
                raise RobustscaleError(
                    f"zoo {source}: {_where(df, bad)} column {name!r} has non-numeric "
                    f"value {value!r}; allowed: a number or an empty cell"
                )
            num = num.astype("float64")
            infinite = num.abs() == math.inf  # NaN (an empty cell) compares unequal
            if infinite.any():
                raise RobustscaleError(
                    f"zoo {source}: {_where(df, infinite)} column {name!r} has "
                    f"{col[infinite].iloc[0]!r}, not a finite number; allowed: a finite "
                    "number or an empty cell"
                )
            if kind == "int":
                huge = num.notna() & (num.abs() >= 2.0**63)
                if huge.any():
                    raise RobustscaleError(
                        f"zoo {source}: {_where(df, huge)} column {name!r} has "
                        f"{num[huge].iloc[0]:g}, too large for an integer count"
                    )
                frac = num.notna() & (num != num.round())
                if frac.any():
                    raise RobustscaleError(
                        f"zoo {source}: column {name!r} has non-integer value "
                        f"{num[frac].iloc[0]!r}; allowed: an integer or an empty cell"
                    )
                df[name] = num.round().astype("Int64")
            else:
                df[name] = num.astype("float64")
    return df


def _where(df: pd.DataFrame, mask: pd.Series) -> str:
    """``row N (run 'x')`` of the first True in ``mask``: N counts data rows from 1, as in the
    file."""
    pos = int(mask.to_numpy().nonzero()[0][0])
    run = df["run_id"].iloc[pos] if "run_id" in df.columns else None
    return f"row {pos + 1}" + (f" (run {run!r})" if isinstance(run, str) else "")


# Above this a value is no training run's FLOPs (the paper's costliest run is ~4e19; all the
# compute ever spent on machine learning is far below 1e30): a typo or a unit slip.
MAX_TRAIN_FLOPS = 1e30
POSITIVE_COLUMNS = ("params", "train_flops")


def validate_zoo(df: pd.DataFrame, source: str = "table") -> None:
    """Check a typed zoo table; raise :class:`RobustscaleError` with one line on the first problem.

    Checked: every schema column present, accuracies in percent (a table whose accuracies are
    all within 0-1 was written as fractions), accuracies within 0-100, no negative FLOPs or
    costs, unique run ids.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RobustscaleError(
            f"zoo {source} lacks column(s) {', '.join(missing)}; "
            f"a zoo table needs all of: {', '.join(REQUIRED_COLUMNS)} (see docs/zoo-schema.md)"
        )
    for name in ACCURACY_COLUMNS:
        col = df[name].dropna()
        if len(col) and col.max() <= 1.0 and col.max() > 0:
            raise RobustscaleError(
                f"zoo {source}: column {name!r} looks like fractions (all values within 0-1, "
                f"max {col.max():g}); accuracies must be percent 0-100, e.g. 52.3 not 0.523"
            )
        if len(col) and (col.min() < 0 or col.max() > 100):
            value = col[(col < 0) | (col > 100)].iloc[0]
            raise RobustscaleError(
                f"zoo {source}: column {name!r} has {value:g}; allowed: percent 0-100"
            )
    for name in NONNEGATIVE_COLUMNS:
        col = df[name]
        neg = col.notna() & (col < 0)
        if neg.any():
            run = df.loc[neg, "run_id"].iloc[0]
            raise RobustscaleError(
                f"zoo {source}: column {name!r} is negative ({col[neg].iloc[0]:g}) "
                f"for run {run!r}; allowed: a number >= 0 (FLOPs in FLOPs, not log)"
            )
    for name in POSITIVE_COLUMNS:
        col = df[name]
        bad = col.notna() & (col <= 0)
        if bad.any():
            raise RobustscaleError(
                f"zoo {source}: {_where(df, bad)} column {name!r} is {col[bad].iloc[0]:g}; "
                "allowed: a number > 0 (or an empty cell)"
            )
    big = df["train_flops"].notna() & (df["train_flops"] >= MAX_TRAIN_FLOPS)
    if big.any():
        raise RobustscaleError(
            f"zoo {source}: {_where(df, big)} column 'train_flops' is "
            f"{df['train_flops'][big].iloc[0]:g}; allowed: below {MAX_TRAIN_FLOPS:g} "
            "(FLOPs of one training run, not a log or a sum of zoos)"
        )
    dup = df["run_id"].dropna().duplicated()
    if dup.any():
        raise RobustscaleError(
            f"zoo {source}: run_id {df['run_id'].dropna()[dup].iloc[0]!r} appears twice; "
            "run ids must be unique"
        )


def _check_csv_rows(path: Path) -> None:
    """Every row has the header's number of cells: a torn last line (a truncated copy) or a
    damaged row is one line naming the row, not a partial value read as a number."""
    import csv
    import io

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RobustscaleError(
            f"zoo table {str(path)!r} is not UTF-8 text; it is damaged or not a CSV file"
        ) from None
    except OSError as exc:
        raise RobustscaleError(
            f"cannot read zoo table {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise RobustscaleError(
            f"zoo table {str(path)!r} is not valid CSV: {first_line(exc)}"
        ) from None
    if not rows:
        raise RobustscaleError(
            f"zoo table {str(path)!r} is empty; a zoo table needs a header row "
            "with the columns of zoo_schema.md"
        )
    width = len(rows[0])
    for i, row in enumerate(rows[1:], start=1):
        if row and len(row) != width:
            torn = (
                " (the file ends mid-row: truncated)"
                if i == len(rows) - 1 and not text.endswith("\n")
                else ""
            )
            raise RobustscaleError(
                f"zoo table {str(path)!r}: row {i} has {len(row)} cells, the header "
                f"{width}{torn}; restore the file or remove the row"
            )


def read_zoo(path: str | Path) -> pd.DataFrame:
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
            _check_csv_rows(path)
            df = pd.read_csv(path, keep_default_na=True, na_values=[""], dtype=str)
        else:
            raise RobustscaleError(
                f"zoo table {str(path)!r} has suffix {suffix!r}; allowed: .csv or .parquet"
            )
    except RobustscaleError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise RobustscaleError(
            f"zoo table {str(path)!r} could not be read: {first_line(exc)}"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    for name in OPTIONAL_COLUMNS:
        if name not in df.columns:
            df[name] = None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:  # checked before typing so that the missing column is the one line reported
        validate_zoo(df, source=path.name)
    df = coerce_types(df, source=path.name)
    validate_zoo(df, source=path.name)
    return df


def check_zoo_output(path: str | Path) -> Path:
    """Refuse an output table name without a .csv/.parquet suffix (before any work)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise RobustscaleError(
            f"output {str(path)!r} has suffix {suffix!r}; allowed: .csv or .parquet"
        )
    return path


def write_zoo(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a zoo table as CSV (empty cells for missing values) or Parquet, by suffix, atomically
    (a full or read-only disk is one line and leaves no temporary file)."""
    from robustscale.files import atomic_open, check_output_file

    path = check_zoo_output(check_output_file(path, "zoo table"))
    if path.suffix.lower() == ".parquet":
        with atomic_open(path, "wb") as f:
            df.to_parquet(f, index=False)
    else:
        with atomic_open(path, "w") as f:
            df.to_csv(f, index=False, na_rep="")
    return path
