"""Sweep files: a base recipe plus axes (grid product) and zipped axes, expanded into recipes.

A sweep file (docs/sweeps.md) is YAML::

    name: paper-cifar10            # optional; default: the file name
    base: ../cifar10-wrn28_10-pgd.yaml   # a recipe file (relative to this file) or a mapping
    set: {dataset: cifar10}        # optional keys applied on top of base
    axes:                          # every combination of these values
      model: [wrn28_10, wrn34_10]
    zip:                           # each group is one axis whose keys vary together
      - {attack_steps: [1, 2], step_size: [10/255, 2/255]}
    slurm: {partition: gpu, time_min: 1440, gpus_per_run: 1, array_parallelism: 32}

The order of runs is the product of the axes in file order, then the zip groups in file
order (the last one varies fastest). Keys given on the command line (``--set``) apply last.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError
from robustscale.files import check_component, read_yaml_mapping
from robustscale.recipe import Recipe, format_eps

TOP_KEYS = ("name", "base", "set", "axes", "zip", "slurm", "local")


@dataclass
class SweepRun:
    """One run of a sweep: its validated recipe and the values that vary across the sweep."""

    index: int
    recipe: Recipe
    varying: dict[str, Any]
    unchecked_files: list[str] = field(default_factory=list)  # paths not checked (dry runs only)

    @property
    def run_id(self) -> str:
        return self.recipe.run_id

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_show(k, v)}" for k, v in self.varying.items())


@dataclass
class Sweep:
    name: str
    path: Path | None
    runs: list[SweepRun]
    slurm: dict[str, Any]
    local: dict[str, Any]

    @property
    def unchecked_files(self) -> list[str]:
        return sorted({p for r in self.runs for p in r.unchecked_files})


def load_sweep(
    path: str | Path, overrides: dict[str, Any] | None = None, check_files: bool = True
) -> Sweep:
    """Read and expand a sweep file. ``check_files=False`` (dry runs) validates every recipe but
    accepts a ``synthetic_data`` file that does not exist on this machine."""
    path = Path(path)
    spec = read_yaml_mapping(path, "sweep file")
    if not spec:  # an empty file is a mistake, not a sweep of one default recipe
        raise RobustscaleError(
            f"sweep file {str(path)!r} is empty; a sweep must be a mapping with keys "
            f"{', '.join(TOP_KEYS)}"
        )
    return expand(
        spec,
        base_dir=path.parent,
        name=path.stem,
        overrides=overrides,
        check_files=check_files,
        path=path,
    )


def expand(
    spec: Any,
    *,
    base_dir: Path = Path("."),
    name: str = "sweep",
    overrides: dict[str, Any] | None = None,
    check_files: bool = True,
    path: Path | None = None,
) -> Sweep:
    """Expand a parsed sweep mapping into validated runs with distinct run ids."""
    if not isinstance(spec, dict):
        raise RobustscaleError(f"a sweep must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = [k for k in spec if k not in TOP_KEYS]
    if unknown:
        raise RobustscaleError(f"unknown sweep key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    name = str(spec.get("name") or name)
    try:  # the name reaches file names and Slurm job names
        check_component(name, "sweep name")
    except RobustscaleError as exc:
        raise RobustscaleError(f"{exc}; set name: in the sweep file") from None
    base = {**_base(spec.get("base"), base_dir), **_mapping(spec.get("set"), "set")}
    factors = _factors(spec)
    varying_keys = [k for f in factors if len(f) > 1 for k in f[0]]
    runs: list[SweepRun] = []
    seen: dict[str, int] = {}
    for i, combo in enumerate(itertools.product(*factors)):
        values = {k: v for part in combo for k, v in part.items()}
        data = {**base, **values, **(overrides or {})}
        label = " ".join(f"{k}={values[k]}" for k in varying_keys)
        try:
            recipe, unchecked = _validate(data, check_files)
        except RobustscaleError as exc:
            raise RobustscaleError(
                f"sweep {name!r}, run {i + 1} ({label or 'base'}): {exc}"
            ) from None
        varying = {k: getattr(recipe, k) for k in varying_keys}
        run = SweepRun(i, recipe, varying, unchecked)
        if run.run_id in seen:
            other = runs[seen[run.run_id]]
            raise RobustscaleError(
                f"sweep {name!r}: runs {other.index + 1} ({other.label}) and {i + 1} "
                f"({run.label}) are the same "
                f"recipe (run id {run.run_id}); vary keys that change the result"
            )
        seen[run.run_id] = i
        runs.append(run)
    return Sweep(
        name, path, runs, _mapping(spec.get("slurm"), "slurm"), _mapping(spec.get("local"), "local")
    )


def _validate(data: dict[str, Any], check_files: bool) -> tuple[Recipe, list[str]]:
    """The run's recipe, and the files it names that are not on this machine (allowed only in
    a dry run, which lists them; a real sweep stops on the first, before anything is written)."""
    from robustscale.data import check_synthetic_exists

    recipe = Recipe.from_dict(data, site_defaults=True)
    if recipe.synthetic_data is None:
        return recipe, []
    try:
        check_synthetic_exists(recipe.synthetic_data)
    except RobustscaleError:
        if check_files:
            raise
        return recipe, [recipe.synthetic_data]
    return recipe, []


def _base(base: Any, base_dir: Path) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, dict):
        return dict(base)
    if isinstance(base, str):
        path = (base_dir / base) if not Path(base).is_absolute() else Path(base)
        if not path.is_file():
            raise RobustscaleError(
                f"sweep base recipe {str(path)!r} does not exist (base is "
                "relative to the sweep file)"
            )
        return read_yaml_mapping(path, "sweep base recipe")
    raise RobustscaleError(
        f"sweep base={base!r} is not allowed; give a recipe file path or a mapping of keys"
    )


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RobustscaleError(
            f"sweep {key}: must be a mapping of key: value, got {type(value).__name__}"
        )
    return dict(value)


def _factors(spec: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """One list of partial assignments per axis (and per zip group)."""
    factors: list[list[dict[str, Any]]] = []
    used: set[str] = set()
    for key, values in _mapping(spec.get("axes"), "axes").items():
        factors.append([{key: v} for v in _values(key, values)])
        used = _claim(used, [key])
    zips = spec.get("zip") or []
    if not isinstance(zips, list):
        raise RobustscaleError(
            "sweep zip: must be a list of groups, each a mapping of key: [values]"
        )
    for n, group in enumerate(zips, start=1):
        group = _mapping(group, f"zip group {n}")
        if not group:
            raise RobustscaleError(
                f"sweep zip group {n} is empty; give keys with equal-length value lists"
            )
        lists = {k: _values(k, v) for k, v in group.items()}
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) != 1:
            raise RobustscaleError(
                f"sweep zip group {n} has value lists of different lengths {lengths}; "
                "allowed: equal lengths (values at the same position go together)"
            )
        width = next(iter(lengths.values()))
        factors.append([{k: lists[k][i] for k in lists} for i in range(width)])
        used = _claim(used, list(group))
    return factors


def _values(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise RobustscaleError(
            f"sweep axis {key!r} must be a non-empty list of values, got {values!r}"
        )
    return values


def _claim(used: set[str], keys: list[str]) -> set[str]:
    for k in keys:
        if k in used:
            raise RobustscaleError(
                f"sweep key {k!r} appears in more than one axis or zip group; allowed: once"
            )
    return used | set(keys)


def _show(key: str, value: Any) -> str:
    if key in ("eps", "step_size") and isinstance(value, float):
        return format_eps(value)
    return str(value)


def forecast_flops(runs: list[SweepRun]) -> list[float | None] | None:
    """Forecast total training FLOPs of each run (None when ``robustscale.cost`` has no forecast).

    FLOPs per example are measured once per (model, loss, ...) at 1 and 2 attack steps and
    extended linearly (each PGD step adds one forward and one input-gradient backward), so a
    320-run grid needs tens of measurements, not hundreds.
    """
    try:
        from robustscale.cost.forecast import forecast_batch_plan, recipe_step_flops
    except ImportError:
        return None

    cache: dict[tuple, tuple[float, float]] = {}
    out: list[float | None] = []
    for run in runs:
        r = run.recipe
        key = (r.dataset, r.model, r.activation, r.drop_rate, r.loss, r.trades_beta, r.batch_size)
        if (
            key not in cache
        ):  # validation FLOPs are not training FLOPs: count them with 1 step (cheap)
            k1 = recipe_step_flops(
                r.model_copy(update={"attack_steps": 1, "val_attack_steps": 1})
            ).train
            k2 = (
                recipe_step_flops(
                    r.model_copy(update={"attack_steps": 2, "val_attack_steps": 1})
                ).train
                if r.adversarial
                else k1
            )
            cache[key] = (k1, k2 - k1)
        k1, per_step = cache[key]
        per_example = k1 + per_step * (r.attack_steps - 1) if r.adversarial else k1
        plan = forecast_batch_plan(r)
        out.append(per_example * plan.examples_per_epoch * r.epochs)
    return out
