"""The run directory (docs/run-directory.md): its typed records, its paths, its readers and writers.

This module is the contract between the stages. Every file of ``<output>/<run_id>/`` has one
frozen record here (:class:`Status`, :class:`MetricsRow`, :class:`CostRecord`,
:class:`EvalResult`; the recipe is :class:`robustscale.recipe.Recipe`, read leniently for the
zoo as :class:`RecipeRecord`) and one reader and one writer on :class:`RunDir`. The sweep
folder's layout is :class:`SweepFolder`. Later stages read a run only through these; the
tolerant reading of old or foreign files (keys added since, eps written as ``"8/255"``, eval
JSONs without ``split_size``) happens here and nowhere else.

Every reader turns a missing, undecodable, unparsable or wrongly shaped file into one
:class:`RunFileError` (a :class:`RobustscaleError`) naming the file, what is wrong and what to
do. ``load(run_dir)`` gives back the trained classifier as an ``nn.Module`` in eval mode taking
[0, 1] images, ready for any attack library.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustscale.errors import RobustscaleError, first_line
from robustscale.files import append_csv_row, atomic_write_json, rewrite_csv
from robustscale.recipe import Recipe, format_eps, parse_fraction

if TYPE_CHECKING:  # torch is imported where weights are loaded, so `status` stays light
    import torch
    from torch import nn

FIX = "restore it from a backup, or delete the run directory and train the run again"
MISSING = "does not exist"
RUN_STATES = ("running", "done", "failed")


class RunFileError(RobustscaleError):
    """A file of a run directory (or sweep folder) is missing or damaged: one line naming it,
    the problem and the fix; :attr:`reason` is the short form the zoo and status list."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX):
        self.path, self.problem = Path(path), " ".join(str(problem).split())
        super().__init__(f"{str(path)!r} {self.problem}; {fix}")

    @property
    def reason(self) -> str:
        if self.problem == MISSING:
            return f"missing {self.path.name}"
        return f"unreadable {self.path.name}: {self.problem}"


# ---- value checks shared by the records ---------------------------------------------------


def _num(
    data: Mapping[str, Any],
    key: str,
    path: Path,
    *,
    integer: bool = False,
    required: bool = False,
    minimum: float | None = 0.0,
) -> Any:
    """``data[key]`` as a finite number (None when null/absent unless ``required``)."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise RunFileError(path, f"has no {key!r} value")
        return None
    if isinstance(value, str):  # CSV cells, and "8/255" in hand-written files
        try:
            value = parse_fraction(value, key)
        except RobustscaleError:
            raise RunFileError(path, f"has {key}={value!r}, not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunFileError(path, f"has {key}={value!r}, not a number")
    if not math.isfinite(value):
        raise RunFileError(path, f"has {key}={value!r}, not a finite number")
    if minimum is not None and value < minimum:
        raise RunFileError(path, f"has {key}={value!r}, below {minimum:g}")
    if integer:
        if value != int(value):
            raise RunFileError(path, f"has {key}={value!r}, not an integer")
        return int(value)
    return float(value) if isinstance(value, float) else value


def _text(data: Mapping[str, Any], key: str, path: Path, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise RunFileError(path, f"has no {key!r} value")
        return None
    if not isinstance(value, str):
        raise RunFileError(path, f"has {key}={value!r}, not a string")
    return value


def _json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; any failure is one :class:`RunFileError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RunFileError(path, MISSING) from None
    except OSError as exc:
        raise RunFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise RunFileError(path, f"is empty (a {what} must hold a JSON object)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(path, "is not UTF-8 text (damaged)") from None
    except json.JSONDecodeError as exc:
        raise RunFileError(path, f"is not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise RunFileError(path, f"holds a JSON {type(data).__name__}, not the {what} object")
    return data


# ---- the records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """``status.json``: where the run is. ``epoch`` counts completed epochs."""

    run_id: str | None
    state: str
    reason: str | None = None
    epoch: int = 0
    epochs: int | None = None
    best_epoch: int | None = None
    best_val_pgd_acc: float | None = None  # PGD-val_attack_steps accuracy of the best epoch
    val_attack_steps: int | None = None
    updated: str | None = None
    host: str | None = None
    pid: int | None = None
    threads: int | None = None  # CPU intra-op threads the run trained with (None on a GPU)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> Status:
        state = data.get("state")
        if state not in RUN_STATES:
            raise RunFileError(path, f"has state={state!r}; allowed: {', '.join(RUN_STATES)}")
        return cls(
            run_id=_text(data, "run_id", path),
            state=state,
            reason=_text(data, "reason", path),
            epoch=_num(data, "epoch", path, integer=True) or 0,
            epochs=_num(data, "epochs", path, integer=True),
            best_epoch=_num(data, "best_epoch", path, integer=True),
            best_val_pgd_acc=_num(renamed(data, STATUS_RENAMES), "best_val_pgd_acc", path),
            val_attack_steps=_num(data, "val_attack_steps", path, integer=True),
            updated=_text(data, "updated", path),
            host=_text(data, "host", path),
            pid=_num(data, "pid", path, integer=True),
            threads=_num(data, "threads", path, integer=True),
        )


# The selection metric is PGD with the recipe's ``val_attack_steps`` (5 or 10 in the digits
# recipes, 40 in the paper's), so its names say "pgd", not "pgd40"; files written before the
# rename are read under the new names.
STATUS_RENAMES = {"best_val_pgd40_acc": "best_val_pgd_acc"}
METRIC_RENAMES = {"val_pgd40_acc": "val_pgd_acc"}


def renamed(record: Mapping[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """``record`` with old key names replaced by their new ones (a new name already there wins)."""
    return {
        renames.get(k, k): v
        for k, v in record.items()
        if k not in renames or renames[k] not in record
    }


@dataclass(frozen=True)
class MetricsRow:
    """One ``metrics.csv`` row (one finished epoch). The field order is the column order; this
    class is the one list of the columns (METRIC_COLUMNS is read from it)."""

    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_clean_acc: float | None = None
    train_robust_acc: float | None = None
    val_clean_acc: float | None = None
    val_pgd_acc: float | None = None
    epoch_flops: float | None = None
    val_flops: float | None = None
    epoch_energy_kwh: float | None = None
    seconds: float | None = None
    examples: int | None = None

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], path: Path, line: int) -> MetricsRow:
        row = renamed(dict(row), METRIC_RENAMES)  # columns written under an older name
        if None in row or any(row.get(k) is None for k in row):  # more or fewer cells than columns
            raise RunFileError(
                path,
                f"line {line} has {'more' if None in row else 'fewer'} cells than "
                "the header (a torn or damaged row)",
            )
        values: dict[str, Any] = {}
        try:
            for f in fields(cls):
                if f.name in row:  # a column added since the file was written stays empty
                    values[f.name] = _num(
                        row,
                        f.name,
                        path,
                        integer=f.name in ("epoch", "examples"),
                        required=f.name == "epoch",
                        minimum=None,
                    )
        except RunFileError as exc:
            raise RunFileError(path, f"line {line} {exc.problem.removeprefix('has ')}") from None
        if values.get("epoch") is None or values["epoch"] < 1:
            raise RunFileError(
                path, f"line {line} has epoch={row.get('epoch')!r}; allowed: an integer >= 1"
            )
        return cls(**values)


METRIC_COLUMNS: list[str] = [f.name for f in fields(MetricsRow)]

_COST_INTS = (
    "params",
    "examples_seen",
    "synthetic_size",
    "unique_synthetic_seen",
    "unique_real_seen",
    "num_devices",
)


@dataclass(frozen=True)
class CostRecord:
    """``cost.json``: running totals of what the run spent (docs/run-directory.md, "cost.json").
    Keys this version does not know are kept in ``extra`` and written back."""

    params: int | None = None
    forward_flops: float | None = None
    train_flops_per_example: float | None = None
    train_flops_paper_per_example: float | None = None
    val_flops_per_example: float | None = None
    train_flops: float | None = None
    train_flops_paper: float | None = None
    val_flops: float | None = None
    examples_seen: int | None = None
    synthetic_size: int | None = None
    unique_synthetic_seen: int | None = None  # distinct extra images trained on (data/batches.py)
    unique_real_seen: int | None = None  # distinct real training examples trained on (same file)
    device_seconds: float | None = None
    device_hours: float | None = None
    energy_kwh: float | None = None
    electricity_cost_usd: float | None = None
    co2_kg: float | None = None
    energy_measured: bool | None = None
    energy_source: str | None = None
    pue: float | None = None
    usd_per_kwh: float | None = None
    gco2_per_kwh: float | None = None
    devices: list[str] | None = None
    num_devices: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> CostRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for name in known - {"energy_measured", "energy_source", "devices"}:
            values[name] = _num(data, name, path, integer=name in _COST_INTS)
        measured = data.get("energy_measured")
        if measured is not None and not isinstance(measured, bool):
            raise RunFileError(path, f"has energy_measured={measured!r}, not true/false")
        devices = data.get("devices")
        if devices is not None and not (
            isinstance(devices, list) and all(isinstance(d, str) for d in devices)
        ):
            raise RunFileError(path, f"has devices={devices!r}, not a list of names")
        return cls(
            **values,
            energy_measured=measured,
            energy_source=_text(data, "energy_source", path),
            devices=devices,
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True, eq=False)
class EvalResult(Mapping):
    """One evaluation (``eval/<name>.json``). Read like the dict it is written as
    (``result["robust_acc"]``); keys this version does not know are kept in ``extra``."""

    attack: str
    eps: float
    norm: str | None
    n: int | None  # None only in hand-made files; such a result is never the zoo's number
    clean_acc: float | None
    robust_acc: float | None
    per_attack: dict[str, float] | None = None
    steps: int | None = None
    restarts: int | None = None
    step_size: float | None = None
    step_size_rule: str | None = None
    version: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    warnings: list[str] = field(default_factory=list)
    resumed_after: list[str] | None = None  # AutoAttack only: attacks done before a resume
    workers: int | None = None  # AutoAttack only: processes its batches ran in (1: the library's)
    seconds: float | None = None
    device: str | None = None
    checkpoint: str | None = None  # best | last | a checkpoint path; None from evaluate()
    split: str | None = None
    split_size: int | None = None
    run_id: str | None = None
    # PGD only: mean cross-entropy (nats) and CW margin at the PGD examples (the zoo's pgd40_loss)
    robust_ce_loss: float | None = None
    robust_cw_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for key in ("resumed_after", "workers"):  # AutoAttack only
            if out[key] is None:
                del out[key]
        for key in ("robust_ce_loss", "robust_cw_loss"):  # absent from AutoAttack and older files
            if out[key] is None:
                del out[key]
        for key in ("checkpoint", "split", "split_size", "run_id"):  # set by evaluate_run only
            if out[key] is None and self.checkpoint is None:
                del out[key]
        return {**out, **self.extra}

    def __getitem__(self, key: str) -> Any:
        data = self.to_json()
        if key in data:
            return data[key]
        if key in ("resumed_after", "workers"):
            return None
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def __eq__(self, other: object) -> bool:  # equal to its JSON dict, as read back from disk
        if isinstance(other, Mapping):
            return self.to_json() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # holds lists and dicts

    def replace(self, **changes: Any) -> EvalResult:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> EvalResult:
        known = {f.name for f in fields(cls)} - {"extra"}
        attack = _text(data, "attack", path, required=True)
        per_attack = data.get("per_attack")
        if per_attack is not None and not (
            isinstance(per_attack, dict)
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in per_attack.values()
            )
        ):
            raise RunFileError(
                path, f"has per_attack={per_attack!r}, not a mapping of attack: accuracy"
            )
        warnings = data.get("warnings") or []
        resumed = data.get("resumed_after")
        for key, value in (("warnings", warnings), ("resumed_after", resumed or [])):
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise RunFileError(path, f"has {key}={value!r}, not a list of strings")
        for key in ("clean_acc", "robust_acc"):
            acc = _num(data, key, path)
            if acc is not None and acc > 100:
                raise RunFileError(path, f"has {key}={acc!r}; allowed: percent 0-100")
        return cls(
            attack=attack,
            eps=_num(data, "eps", path, required=True),
            norm=_text(data, "norm", path),
            n=_num(data, "n", path, integer=True),
            clean_acc=_num(data, "clean_acc", path),
            robust_acc=_num(data, "robust_acc", path),
            per_attack=per_attack,
            steps=_num(data, "steps", path, integer=True),
            restarts=_num(data, "restarts", path, integer=True),
            step_size=_num(data, "step_size", path),
            step_size_rule=_text(data, "step_size_rule", path),
            version=_text(data, "version", path),
            seed=_num(data, "seed", path, integer=True),
            batch_size=_num(data, "batch_size", path, integer=True),
            warnings=list(warnings),
            resumed_after=resumed,
            workers=_num(data, "workers", path, integer=True),
            seconds=_num(data, "seconds", path),
            device=_text(data, "device", path),
            checkpoint=_text(data, "checkpoint", path) or "best",
            split=_text(data, "split", path) or "test",
            split_size=_num(data, "split_size", path, integer=True),
            run_id=_text(data, "run_id", path),
            robust_ce_loss=_num(data, "robust_ce_loss", path),
            robust_cw_loss=_num(data, "robust_cw_loss", path, minimum=None),  # < 0: still correct
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class RecipeRecord:
    """What the zoo needs of ``recipe.yaml``, read leniently: a hand-written or foreign recipe
    (keys missing, a synthetic-data path that is not on this machine) is still a row. Absent
    keys are None, never a default."""

    dataset: str | None
    model: str | None
    activation: str | None
    loss: str | None
    attack_steps: int | None
    epochs: int | None
    ema: bool
    synthetic_data: bool
    synthetic_fraction: float
    eps: float | None
    seed: int | None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], path: Path) -> RecipeRecord:
        synthetic = data.get("synthetic_data") is not None
        return cls(
            dataset=_text(data, "dataset", path),
            model=_text(data, "model", path),
            activation=_text(data, "activation", path),
            loss=_text(data, "loss", path),
            attack_steps=_num(data, "attack_steps", path, integer=True),
            epochs=_num(data, "epochs", path, integer=True),
            ema=data.get("ema_decay") is not None,  # the Recipe's defaults are null
            synthetic_data=synthetic,
            synthetic_fraction=(_num(data, "synthetic_fraction", path) or 0.0)
            if synthetic
            else 0.0,
            eps=_num(data, "eps", path),
            seed=_num(data, "seed", path, integer=True),
        )


# ---- file names of evaluations ----------------------------------------------------------------


def eval_filename(
    attack: str,
    eps: float,
    checkpoint: str | None = "best",
    *,
    version: str | None = None,
    n: int | None = None,
    split_size: int | None = None,
) -> str:
    """``<attack>-<eps>[-<version>][-n<N>][-last].json``.

    eps is ``8-255`` when a whole number of 255ths, else the decimal. ``-<version>`` appears for
    an AutoAttack version other than ``standard``; ``-n<N>`` when the evaluation covered only the
    first N of the split's ``split_size`` examples (n given and not the whole split); ``-last``
    for the ``last`` checkpoint. So ``autoattack-<eps>.json`` is only ever the standard version
    of the ``best`` checkpoint on the whole test split, the number the zoo reads, and subset,
    other-version and ``last`` evaluations never overwrite it."""
    parts = [attack, format_eps(eps).replace("/", "-")]
    if attack == "autoattack" and version not in (None, "standard"):
        parts.append(re.sub(r"[^A-Za-z0-9.]+", "-", str(version)).strip("-"))
    if n is not None and n != split_size:
        parts.append(f"n{n}")
    if checkpoint == "last":
        parts.append("last")
    return "-".join(parts) + ".json"


def result_filename(result: Mapping[str, Any]) -> str:
    """The ``eval/`` file name of an evaluation result."""
    return eval_filename(
        result["attack"],
        result["eps"],
        result.get("checkpoint") or "best",
        version=result.get("version"),
        n=result.get("n"),
        split_size=result.get("split_size"),
    )


def state_filename(
    eps: float,
    checkpoint: str,
    *,
    version: str = "standard",
    n: int | None = None,
    split_size: int | None = None,
) -> str:
    """``.autoattack-<eps>[-<version>][-n<N>]-<checkpoint>.state``: the AutoAttack state (and,
    beside it, ``<state>.progress.json``) of one evaluation. The checkpoint is ``best``, ``last``
    or a checkpoint file's stem, so evaluations of different checkpoints, versions or subsets can
    run at the same time in one ``eval/`` folder without overwriting each other's state."""
    base = eval_filename("autoattack", eps, "best", version=version, n=n, split_size=split_size)
    tag = checkpoint if checkpoint in ("best", "last") else Path(checkpoint).stem
    return f".{base.removesuffix('.json')}-{re.sub(r'[^A-Za-z0-9._]+', '-', tag)}.state"


# ---- the run directory ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """``<output>/<run_id>/``: every path of a run directory, and its one reader and writer per
    file."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def cost(self) -> Path:
        return self.path / "cost.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    def checkpoint(self, which: str) -> Path:
        if which not in ("best", "last"):
            raise RobustscaleError(f"checkpoint={which!r} is not known; allowed: best, last")
        return self.checkpoints / f"{which}.pt"

    # recipe.yaml

    def read_recipe(self) -> Recipe:
        """The recipe the run was trained with, validated."""
        if not self.path.is_dir():
            raise RobustscaleError(f"run directory {str(self.path)!r} does not exist")
        if not self.recipe.is_file():
            raise RobustscaleError(f"{str(self.path)!r} is not a run directory (no recipe.yaml)")
        try:
            self._check_recipe_whole()
            return Recipe.from_yaml(self.recipe)
        except RunFileError:
            raise
        except OSError as exc:
            raise RunFileError(self.recipe, f"cannot be read ({exc.strerror or exc})") from None
        except RobustscaleError as exc:
            if str(self.recipe) in str(exc):
                raise RunFileError(
                    self.recipe, str(exc).split(f"{str(self.recipe)!r}", 1)[-1].strip()
                ) from None
            raise RunFileError(self.recipe, f"holds an invalid recipe ({exc})") from None

    def _check_recipe_whole(self) -> None:
        """An empty recipe.yaml, or one whose last line is cut (a truncated file can still parse
        as YAML, with the later keys silently at their defaults), is damaged."""
        raw = self.recipe.read_bytes()
        if not raw.strip():
            raise RunFileError(self.recipe, "is empty (a recipe must hold key: value lines)")
        if not raw.endswith(b"\n"):  # the writer (a YAML dump) always ends its last line
            raise RunFileError(self.recipe, "is cut short (its last line is incomplete)")

    def read_recipe_record(self) -> RecipeRecord:
        """The recipe's zoo columns, read leniently (:class:`RecipeRecord`)."""
        from robustscale.files import read_yaml_mapping

        if not self.recipe.is_file():
            raise RunFileError(self.recipe, MISSING)
        try:
            self._check_recipe_whole()
        except OSError as exc:
            raise RunFileError(self.recipe, f"cannot be read ({exc.strerror or exc})") from None
        try:
            data = read_yaml_mapping(self.recipe, "recipe")
        except RobustscaleError as exc:
            raise RunFileError(
                self.recipe, str(exc).split(f"{str(self.recipe)!r}", 1)[-1].strip()
            ) from None
        if not data:
            raise RunFileError(self.recipe, "is empty (a recipe must hold key: value lines)")
        return RecipeRecord.from_mapping(data, self.recipe)

    # status.json

    def read_status(self) -> Status | None:
        """The run's status; None when the file does not exist (a run that never started)."""
        if not self.status.exists():
            return None
        return Status.from_json(_json_object(self.status, "status"), self.status)

    def write_status(self, status: Status) -> None:
        atomic_write_json(self.status, status.to_json())

    # metrics.csv

    def read_metrics(self) -> list[MetricsRow]:
        """Every complete row; a torn last line (no newline: a kill mid-append) is dropped."""
        path = self.metrics
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RunFileError(path, f"cannot be read ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RunFileError(path, "is not UTF-8 text (damaged)") from None
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        if not text.strip():
            return []
        try:
            reader = csv.DictReader(io.StringIO(text))
            header = reader.fieldnames or []
            if "epoch" not in header:
                raise RunFileError(
                    path, f"has no 'epoch' column (header {','.join(header)[:80]!r})"
                )
            rows = [MetricsRow.from_row(row, path, i + 2) for i, row in enumerate(reader)]
        except csv.Error as exc:
            raise RunFileError(path, f"is not valid CSV ({first_line(exc)})") from None
        return rows

    def append_metrics(self, row: MetricsRow) -> None:
        append_csv_row(self.metrics, METRIC_COLUMNS, row.to_row())

    def rewrite_metrics(self, rows: list[MetricsRow]) -> None:
        rewrite_csv(self.metrics, METRIC_COLUMNS, [r.to_row() for r in rows])

    # cost.json

    def read_cost(self) -> CostRecord:
        return CostRecord.from_json(_json_object(self.cost, "cost"), self.cost)

    def write_cost(self, cost: CostRecord) -> None:
        atomic_write_json(self.cost, cost.to_json())

    # eval/

    def eval_files(self) -> list[Path]:
        """The evaluation JSONs (hidden files are AutoAttack's state, not results)."""
        if not self.eval.is_dir():
            return []
        return sorted(p for p in self.eval.glob("*.json") if not p.name.startswith("."))

    def read_eval(self, path: str | Path) -> EvalResult:
        path = Path(path)
        return EvalResult.from_json(_json_object(path, "evaluation"), path)

    def read_evals(self) -> list[tuple[Path, EvalResult]]:
        return [(p, self.read_eval(p)) for p in self.eval_files()]

    def write_eval(self, result: EvalResult, folder: Path | None = None) -> Path:
        path = (folder or self.eval) / result_filename(result)
        atomic_write_json(path, result.to_json())
        return path

    # checkpoints/

    def damage(self, *, deep: bool = True) -> str | None:
        """Why a finished run cannot be trusted (its best checkpoint missing, truncated or not a
        robustscale checkpoint), or None. ``deep`` loads the checkpoint with its tensors
        memory-mapped (cheap even for a large file; imports torch); otherwise only the zip
        directory is read (for ``status``, which stays light). A run directory without a
        checkpoints/ folder is a record whose weights were not kept (an archive, another lab's
        results) and is not damaged."""
        from robustscale.checkpoint_io import checkpoint_problem, load_checkpoint

        if not self.checkpoints.is_dir():
            return None
        best = self.checkpoint("best")
        problem = checkpoint_problem(best)
        if problem is None and deep:
            try:
                load_checkpoint(best, mmap=True)
            except RobustscaleError:
                problem = "unreadable best.pt: damaged, or not a robustscale checkpoint"
        return problem.replace("best.pt", "checkpoints/best.pt", 1) if problem else None


@dataclass(frozen=True)
class SweepFolder:
    """``<out>/ledger.sqlite``, ``recipes/<run_id>.yaml``, ``runs/<run_id>/``,
    ``logs/<run_id>.log`` and (Slurm) ``slurm/``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    def recipe(self, run_id: str) -> Path:
        return self.root / "recipes" / f"{run_id}.yaml"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.run_dir(run_id))

    def log(self, run_id: str) -> Path:
        return self.root / "logs" / f"{run_id}.log"

    def read_recipe(self, run_id: str) -> Recipe:
        """``recipes/<run_id>.yaml`` as a validated Recipe; a damaged file is one line."""
        return Recipe.from_yaml(self.recipe(run_id))


# ---- module-level doors (kept for callers of the old API) --------------------------------------


def read_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run was trained with."""
    return RunDir(Path(run_dir)).read_recipe()


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status.json as a checked dict (the old API; :meth:`RunDir.read_status` gives
    the :class:`Status`), or None when it has none yet."""
    status = RunDir(Path(run_dir)).read_status()
    return status.to_json() if status is not None else None


def model_from_state(
    recipe: Recipe, state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the recipe's model and load weights into it (eval mode, [0, 1] inputs)."""
    from robustscale.data import dataset_info
    from robustscale.models import build_model_for

    model = build_model_for(recipe, dataset_info(recipe.dataset, recipe.data_dir))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise RobustscaleError(
            f"checkpoint weights do not fit model={recipe.model!r}: {first_line(exc)}"
        ) from None
    return model.to(device).eval()


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    *,
    model: str | None = None,
    dataset: str = "cifar10",
    activation: str | None = None,
) -> nn.Module:
    """The trained classifier of a run: ``checkpoint`` is ``best`` (selected epoch; EMA weights
    when EMA was on) or ``last``. Eval mode, parameters frozen, inputs in [0, 1].

    A checkpoint *file* trained elsewhere (a RobustBench or other published state dict) loads
    with ``model=NAME`` (and ``dataset``, ``activation``):
    robustscale.foreign_checkpoints.load_weights_file."""
    from robustscale.checkpoint_io import load_checkpoint

    if model is not None or Path(run_dir).is_file():
        from robustscale.foreign_checkpoints import load_weights_file

        if checkpoint != "best":
            raise RobustscaleError(
                f"checkpoint={checkpoint!r} applies to a run directory; a checkpoint "
                "file is loaded as it is"
            )
        return load_weights_file(
            run_dir, model=model, dataset=dataset, activation=activation, device=device
        )

    run = RunDir(Path(run_dir))
    recipe = run.read_recipe()
    state = load_checkpoint(run.checkpoint(checkpoint))
    weights = state["model"] if checkpoint == "best" or state.get("ema") is None else state["ema"]
    model = model_from_state(recipe, weights, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
