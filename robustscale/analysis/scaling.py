"""Power laws on the best-performance envelope: accuracy, electricity and CO2 against FLOPs.

The paper's procedure: split the FLOP range into 19 equal bins on a log scale, keep the best
run of each non-empty bin (the envelope: what the best recipe achieves at that compute), and fit
``y = C * FLOPs**alpha`` by least squares on log-log. Intervals come from a bootstrap over the
envelope points; the bootstrap draws are kept so that a target's cost can carry them through
(accuracy law -> FLOPs -> kWh / USD / CO2) pair by pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BINS = 19


@dataclass
class PowerLaw:
    """``y = C * x**alpha`` fitted in log-log, with bootstrap draws of (alpha, ln C).

    ``n_bins`` is the number of points fitted: the non-empty envelope bins with a usable y.
    """

    alpha: float
    C: float
    r2: float
    alpha_ci: tuple[float, float]
    C_ci: tuple[float, float]
    n_bins: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 2)))

    def predict(self, x: Any) -> np.ndarray:
        """The law's y at x."""
        return self.C * np.asarray(x, dtype=float) ** self.alpha

    def band(self, x: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the fitted line at x."""
        lx = np.log(np.asarray(x, dtype=float))
        if len(self.boot) == 0:
            y = self.predict(x)
            return y, y
        draws = self.boot[:, 1:2] + self.boot[:, 0:1] * lx[None, :]
        q = (1 - level) / 2 * 100
        return np.exp(np.percentile(draws, q, axis=0)), np.exp(
            np.percentile(draws, 100 - q, axis=0)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "C": self.C,
            "r2": self.r2,
            "alpha_ci": list(self.alpha_ci),
            "C_ci": list(self.C_ci),
            "n_bins": self.n_bins,
            "x_range": list(self.x_range),
            "y_range": list(self.y_range),
        }


def envelope_index(x: np.ndarray, score: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Positions of the best (highest ``score``) point in each non-empty log-spaced bin of ``x``.

    The bins split ``[min x, max x]`` into ``n_bins`` equal parts of log10(x); the maximum falls
    in the last bin. Returned in increasing bin order.
    """
    x = np.asarray(x, dtype=float)
    score = np.asarray(score, dtype=float)
    if len(x) == 0:
        return np.empty(0, dtype=int)
    bins = log_bins(x, n_bins)
    order = np.lexsort((-score, bins))  # by bin, then best score first
    sorted_bins = bins[order]
    first = np.r_[True, sorted_bins[1:] != sorted_bins[:-1]]
    return order[first]


def log_bins(x: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The bin (0..n_bins-1) of each x among ``n_bins`` equal bins of log10(x) over its range."""
    lx = np.log10(np.asarray(x, dtype=float))
    lo, hi = lx.min(), lx.max()
    if hi <= lo:
        return np.zeros(len(lx), dtype=int)
    return np.minimum(((lx - lo) / (hi - lo) * n_bins).astype(int), n_bins - 1)


def _ols(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(slope), float(intercept), r2


def _bootstrap(lx: np.ndarray, ly: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(alpha, ln C) for ``n_boot`` resamples of the points; degenerate resamples dropped."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(lx), size=(n_boot, len(lx)))
    bx, by = lx[idx], ly[idx]
    mx, my = bx.mean(axis=1, keepdims=True), by.mean(axis=1, keepdims=True)
    var = ((bx - mx) ** 2).sum(axis=1)
    cov = ((bx - mx) * (by - my)).sum(axis=1)
    ok = var > 1e-12 * max(1.0, float(np.abs(lx).max()) ** 2)
    slope = cov[ok] / var[ok]
    intercept = my[ok, 0] - slope * mx[ok, 0]
    return np.column_stack([slope, intercept])


def fit_power_law(
    x: Any, y: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> PowerLaw:
    """Least-squares fit of ``ln y = ln C + alpha ln x`` with bootstrap intervals.

    Points with non-positive or missing x or y are dropped (a log needs them positive).
    Raises ``ValueError`` when fewer than two distinct x remain.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        raise ValueError(
            f"needs at least 2 points with distinct positive x, has {len(np.unique(x))}"
        )
    lx, ly = np.log(x), np.log(y)
    alpha, ln_c, r2 = _ols(lx, ly)
    boot = _bootstrap(lx, ly, n_boot, seed) if len(x) >= 3 else np.empty((0, 2))
    q = (1 - level) / 2 * 100
    if len(boot):
        a_ci = tuple(float(v) for v in np.percentile(boot[:, 0], [q, 100 - q]))
        c_ci = tuple(float(v) for v in np.exp(np.percentile(boot[:, 1], [q, 100 - q])))
    else:
        a_ci, c_ci = (float("nan"), float("nan")), (float("nan"), float("nan"))
    return PowerLaw(
        alpha=alpha,
        C=math.exp(ln_c),
        r2=r2,
        alpha_ci=a_ci,
        C_ci=c_ci,  # type: ignore[arg-type]
        n_bins=len(x),
        x_range=(float(x.min()), float(x.max())),
        y_range=(float(y.min()), float(y.max())),
        boot=boot,
    )


def fit_envelope_laws(
    flops: np.ndarray,
    acc: np.ndarray,
    costs: dict[str, np.ndarray],
    n_bins: int = N_BINS,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, PowerLaw | str]]:
    """The envelope of (flops, acc) and the laws of acc and of each cost column on its runs.

    Returns the envelope positions and, per law name ("accuracy" and the keys of ``costs``),
    a :class:`PowerLaw` or the reason it could not be fitted.
    """
    idx = envelope_index(flops, acc, n_bins)
    laws: dict[str, PowerLaw | str] = {}
    for name, y in {"accuracy": acc, **costs}.items():
        try:
            laws[name] = fit_power_law(flops[idx], y[idx], n_boot=n_boot, seed=seed)
        except ValueError as exc:
            laws[name] = f"not fitted: {exc}"
    return idx, laws
