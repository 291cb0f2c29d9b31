"""What the joint law is fitted on: which runs, which L, which D, and which recipe family.

- **L**: ``pgd40_loss`` (mean robust cross-entropy on the PGD-40 test examples), as Bartoldson
  et al. fit a continuous robust loss; where no run has it, robust error in percent
  (100 - AutoAttack accuracy, 100 - PGD-40 accuracy where AutoAttack is missing). A zoo with the
  loss for only some runs is fitted on those runs, and says how many.
- **D**: unique examples (``unique_synthetic_seen`` + the distinct real examples,
  ``unique_real_seen``, or the whole real training split where a run does not record it) where
  every fitted run records ``unique_synthetic_seen``; examples processed (``examples_seen``)
  otherwise.
- **Family**: the recipe keys other than N and D (:data:`FAMILY_KEYS`). Runs that differ in
  loss, attack steps, EMA or activation do not lie on one L(N, D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FAMILY_KEYS = ("dataset", "loss", "attack_steps", "ema", "activation")
LOSS_COLUMN = "pgd40_loss"
UNIQUE_COLUMN = "unique_synthetic_seen"
UNIQUE_REAL_COLUMN = "unique_real_seen"


def robust_error(df: Any) -> np.ndarray:
    """100 - AutoAttack accuracy, or 100 - PGD-40 accuracy where AutoAttack is missing."""
    aa = df["autoattack_acc"].to_numpy(float, na_value=np.nan)
    pgd = df["pgd40_acc"].to_numpy(float, na_value=np.nan)
    return 100.0 - np.where(np.isfinite(aa), aa, pgd)


def _matches(df: Any, key: str, value: Any) -> np.ndarray:
    col = df[key]
    if isinstance(value, str):
        return (col.astype("string") == value).fillna(False).to_numpy(bool)
    return (col == value).fillna(False).to_numpy(bool)


def joint_runs(df: Any, threshold: float = 10.0, family: dict[str, Any] | None = None) -> Any:
    """Adversarial, not collapsed runs with params, examples_seen and a robust accuracy;
    ``family`` (recipe key -> value, e.g. ``{"loss": "trades"}``) narrows them."""
    err = robust_error(df)
    keep = (df["loss"].astype("string").fillna("") != "standard").to_numpy(bool) & np.isfinite(err)
    keep &= (100.0 - np.nan_to_num(err, nan=0.0)) > threshold
    for col in ("params", "examples_seen"):
        keep &= df[col].to_numpy(float, na_value=np.nan) > 0
    for key, value in (family or {}).items():
        if value is not None:
            keep &= _matches(df, key, value)
    return df[keep].reset_index(drop=True)


def family_of(row: Any) -> dict[str, Any]:
    """The family (values of :data:`FAMILY_KEYS`) of one run row, as plain Python values."""
    out: dict[str, Any] = {}
    for key in FAMILY_KEYS:
        v = row[key]
        out[key] = (
            None
            if v is None or (isinstance(v, float) and np.isnan(v))
            else (v.item() if hasattr(v, "item") else v)
        )
    return out


def family_name(family: dict[str, Any]) -> str:
    """``loss=trades, attack_steps=10, ema=True, activation=relu`` (the dataset left out)."""
    return ", ".join(f"{k}={family[k]}" for k in FAMILY_KEYS if k in family and k != "dataset")


def families(runs: Any) -> list[tuple[dict[str, Any], Any]]:
    """(family, its runs) for every family among ``runs``, largest first."""
    keys = [k for k in FAMILY_KEYS if k in runs.columns]
    groups = []
    for _, part in runs.groupby(keys, dropna=False, sort=False):
        groups.append((family_of(part.iloc[0]), part.reset_index(drop=True)))
    return sorted(groups, key=lambda g: (-len(g[1]), family_name(g[0])))


@dataclass
class LawInputs:
    """N, D and L of the runs a law is fitted on, and what each one means."""

    runs: Any  # the runs with a value of L
    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    metric: str  # "pgd40_loss" or "robust_error"
    d_kind: str  # "unique" or "processed"
    notes: list[str]


def _real_splits(datasets: Any) -> np.ndarray:
    """The train-split size of each run's dataset (NaN for one robustscale does not know)."""
    from robustscale.recipe import TRAIN_SPLIT_SIZES

    # a dict lookup per distinct name: pandas' string-dtype map took 3.5 ms a family
    names, where = np.unique(datasets.astype(str).to_numpy(), return_inverse=True)
    sizes = np.array([TRAIN_SPLIT_SIZES.get(n, np.nan) for n in names], dtype=float)
    return sizes[where.reshape(-1)]


def law_inputs(runs: Any) -> LawInputs:
    """L, N and D for ``runs`` (see the module docstring), with sentences saying which."""
    notes: list[str] = []
    loss = (
        runs[LOSS_COLUMN].to_numpy(float, na_value=np.nan)
        if LOSS_COLUMN in runs
        else np.full(len(runs), np.nan)
    )
    has_loss = np.isfinite(loss) & (loss > 0)
    if has_loss.any():
        metric = LOSS_COLUMN
        if not has_loss.all():
            notes.append(
                f"L is pgd40_loss, known for {int(has_loss.sum())} of {len(runs)} runs; the law is "
                f"fitted on those {int(has_loss.sum())}"
            )
        else:
            notes.append(
                "L is pgd40_loss (robust cross-entropy on PGD-40 examples) for all "
                f"{len(runs)} runs"
            )
        runs = runs[has_loss].reset_index(drop=True)
        L = loss[has_loss]
    else:
        metric = "robust_error"
        L = robust_error(runs)
        notes.append(
            "L is robust error in percent (100 - AutoAttack accuracy, PGD-40 where AutoAttack is "
            "missing): no run has pgd40_loss"
        )
    N = runs["params"].to_numpy(float, na_value=np.nan)
    processed = runs["examples_seen"].to_numpy(float, na_value=np.nan)
    D, d_kind = processed, "processed"
    if UNIQUE_COLUMN in runs:
        unique_syn = runs[UNIQUE_COLUMN].to_numpy(float, na_value=np.nan)
        no_syn = ~runs["synthetic_data"].fillna(False).to_numpy(bool)
        unique_syn = np.where(no_syn & ~np.isfinite(unique_syn), 0.0, unique_syn)
        frac = runs["synthetic_fraction"].to_numpy(float, na_value=0.0)
        real_seen = processed * (1.0 - np.where(no_syn, 0.0, frac))
        real = np.minimum(_real_splits(runs["dataset"]), real_seen)
        recorded = (
            runs[UNIQUE_REAL_COLUMN].to_numpy(float, na_value=np.nan)
            if UNIQUE_REAL_COLUMN in runs
            else np.full(len(runs), np.nan)
        )
        known_real = np.isfinite(recorded) & (recorded > 0)
        real = np.where(known_real, recorded, real)
        unique = unique_syn + real
        if len(runs) and np.isfinite(unique).all():
            D, d_kind = unique, "unique"
    if d_kind == "unique":
        n_known = int(known_real.sum())
        if n_known == len(runs):
            real_text = "the distinct real examples each run trained on (unique_real_seen)"
        elif n_known:
            real_text = (
                f"the distinct real examples (unique_real_seen) for {n_known} of {len(runs)} "
                "runs, the whole real training split for the others"
            )
        else:
            real_text = "the real training split"
        notes.append(f"D is unique examples: unique_synthetic_seen + {real_text}")
    else:
        notes.append(
            "D is examples processed (examples_seen, repeats counted): the zoo does not record "
            "unique_synthetic_seen for every run"
        )
    return LawInputs(runs=runs, N=N, D=D, L=L, metric=metric, d_kind=d_kind, notes=notes)


@dataclass
class AccuracyMap:
    """Robust accuracy (percent) from the law's L: identity on robust error, else a separate
    least-squares line ``acc = intercept + slope * loss`` (Bartoldson et al.'s loss-to-accuracy
    regression) fitted on the runs that have both."""

    metric: str
    slope: float = -1.0
    intercept: float = 100.0
    r2: float | None = None
    n_runs: int = 0

    def accuracy(self, L: Any) -> np.ndarray:
        """Robust accuracy at L (clipped to 0-100)."""
        return np.clip(self.intercept + self.slope * np.asarray(L, float), 0.0, 100.0)

    def level(self, acc: float) -> float:
        """The L at which the map gives ``acc``."""
        return (acc - self.intercept) / self.slope

    def to_dict(self) -> dict[str, Any]:
        if self.metric == "robust_error":
            return {"metric": self.metric, "accuracy": "100 - L"}
        return {
            "metric": self.metric,
            "accuracy": "intercept + slope * L",
            "slope": self.slope,
            "intercept": self.intercept,
            "r2": self.r2,
            "n_runs": self.n_runs,
        }


def accuracy_map(inputs: LawInputs) -> AccuracyMap:
    """The map from L to robust accuracy for ``inputs`` (see :class:`AccuracyMap`)."""
    if inputs.metric == "robust_error":
        return AccuracyMap(metric="robust_error")
    acc = 100.0 - robust_error(inputs.runs)
    ok = np.isfinite(acc) & np.isfinite(inputs.L)
    if ok.sum() < 2 or np.ptp(inputs.L[ok]) == 0:
        return AccuracyMap(
            metric=inputs.metric, slope=float("nan"), intercept=float("nan"), n_runs=int(ok.sum())
        )
    slope, intercept = np.polyfit(inputs.L[ok], acc[ok], 1)
    pred = intercept + slope * inputs.L[ok]
    ss = float(((acc[ok] - acc[ok].mean()) ** 2).sum())
    r2 = 1 - float(((acc[ok] - pred) ** 2).sum()) / ss if ss > 0 else None
    return AccuracyMap(
        metric=inputs.metric,
        slope=float(slope),
        intercept=float(intercept),
        r2=r2,
        n_runs=int(ok.sum()),
    )
