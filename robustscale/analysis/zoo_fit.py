"""Every fit of one zoo, no files written: run groups, envelope laws, predictor, joint laws.

Order of work: check the table; set aside standard-training runs, runs without AutoAttack and
collapsed runs (``groups``); fit the predictor and the envelope laws on the rest; fit the
joint law per recipe family. ``analyze`` draws and writes what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from robustscale.analysis.groups import COLLAPSE_THRESHOLD, column, envelope_laws, split_runs
from robustscale.analysis.joint.frontier import FamilyFits, fit_families, headline, joint_summary
from robustscale.analysis.predictor import Predictor, fit_predictor
from robustscale.analysis.scaling import N_BINS, PowerLaw, fit_envelope_laws
from robustscale.errors import RobustscaleError
from robustscale.zoo import coerce_types, validate_zoo


@dataclass
class Analysis:
    """Everything fitted from one zoo: the run groups, the laws and the predictor."""

    zoo: Any
    kept: Any  # adversarial runs with AutoAttack above the collapse threshold
    collapsed: Any
    standard: Any
    no_autoattack: Any
    envelope: Any  # the envelope rows of ``kept``
    laws: dict[str, PowerLaw | str]
    standard_envelope: Any = None
    standard_law: PowerLaw | str | None = None
    predictor: Predictor | str | None = None
    collapse_threshold: float = COLLAPSE_THRESHOLD
    families: FamilyFits | None = None  # the joint law per recipe family, when fitted
    joint: dict[str, Any] | None = None  # fits.json's joint section (an "error" when not fitted)

    @property
    def joint_fit(self) -> Any:
        """The headline family's :class:`~robustscale.analysis.joint.frontier.JointFit`, or None."""
        return headline(self.families) if self.families is not None else None


def fit_zoo(
    df: Any,
    seed: int = 0,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
    n_boot: int = 1000,
    n_splits: int = 10,
    with_predictor: bool = True,
) -> Analysis:
    """Check a zoo table and fit its envelope laws and predictor (no files written)."""
    df = coerce_types(df, source="table")
    validate_zoo(df)
    groups = split_runs(df, collapse_threshold)
    kept = groups["kept"].reset_index(drop=True)
    if len(kept) < 2:
        raise RobustscaleError(
            f"the zoo has {len(kept)} usable runs (adversarial, with AutoAttack above "
            f"{collapse_threshold:g}% and positive train_flops); the analysis needs at least 2"
        )
    idx, laws = envelope_laws(kept, n_boot, seed)
    out = Analysis(
        zoo=df,
        kept=kept,
        collapsed=groups["collapsed"],
        standard=groups["standard"],
        no_autoattack=groups["no_autoattack"],
        envelope=kept.iloc[idx],
        laws=laws,
        collapse_threshold=collapse_threshold,
    )
    _fit_standard(out, n_boot, seed)
    return with_fitted_predictor(out, seed, n_splits) if with_predictor else out


def with_fitted_predictor(a: Analysis, seed: int = 0, n_splits: int = 10) -> Analysis:
    """``a`` with the predictor fitted on its kept runs (a "not fitted: ..." reason when the
    runs cannot carry one)."""
    try:
        predictor: Predictor | str = fit_predictor(a.kept, seed=seed, n_splits=n_splits)
    except RobustscaleError as exc:
        predictor = f"not fitted: {exc}"
    return replace(a, predictor=predictor)


def with_joint(a: Analysis, seed: int = 0) -> Analysis:
    """``a`` with the joint law per recipe family and its fits.json section (which says why not
    when no law can be fitted)."""
    try:
        families = fit_families(a.zoo, a.collapse_threshold, seed=seed)
        return replace(a, families=families, joint=joint_summary(families))
    except RobustscaleError as exc:
        return replace(a, joint={"error": str(exc), "identifiable": False, "reasons": [str(exc)]})


def _fit_standard(out: Analysis, n_boot: int, seed: int) -> None:
    """Standard training's clean-accuracy law, to set its growth rate beside the robust one."""
    std = out.standard
    std = std[std["clean_acc"].notna() & (std["train_flops"].fillna(0) > 0)].reset_index(drop=True)
    if len(std) < 2:
        return
    idx, laws = fit_envelope_laws(
        column(std, "train_flops"), column(std, "clean_acc"), {}, N_BINS, n_boot, seed
    )
    out.standard_envelope, out.standard_law = std.iloc[idx], laws["accuracy"]
