"""The joint law of a robust loss in model size and data: L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as Bartoldson et al. (ICML 2024) and Hoffmann et al. (Chinchilla, approach 3) fit it:
Huber loss (delta 1e-3) between log L and ``logsumexp(a - alpha log N, b - beta log D, e)``
with A = e^a, B = e^b, E = e^e, minimised by L-BFGS-B from the best starts of a grid, keeping
the best. The whole grid of starts is scored in one numpy expression; L-BFGS-B then runs from
its best few.

A law is only worth drawing when the zoo pins it down: :func:`assess` says when it does not
(too few distinct N or D, a coefficient at a bound, a poor held-out R², a bootstrap interval
spanning orders of magnitude), in sentences a report can print.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustscale.errors import RobustscaleError

HUBER_DELTA = 1e-3
MIN_RUNS = 8
MIN_DISTINCT = (
    3  # distinct N and D values below which A/N^alpha (or B/D^beta) and E cannot be told apart
)
MIN_HELDOUT_R2 = 0.3
MAX_CI_RATIO = 100.0  # a bootstrap interval wider than two orders of magnitude pins nothing down
AT_BOUND = 0.01  # a coefficient within 1% of its bound's range from a bound is "at the bound"
NAMES = ["E", "A", "alpha", "B", "beta"]
# internal parameters (a, b, e, alpha, beta) and the coefficient each one is
PARAM_NAMES = ["A", "B", "E", "alpha", "beta"]
# grid of starts (a, b, e, alpha, beta); the objective is evaluated on all of it at once and
# L-BFGS runs from the best few, which finds the same optimum as running from every start
GRID = {
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
    "e": np.array([-2.0, 0.0, 1.0, 2.0, 3.0, 4.0]),
    "alpha": np.array([0.1, 0.3, 0.6, 1.0, 1.5]),
    "beta": np.array([0.1, 0.3, 0.6, 1.0, 1.5]),
}
BOUNDS = [(-20.0, 80.0), (-20.0, 80.0), (-20.0, math.log(100.0)), (1e-3, 3.0), (1e-3, 3.0)]


@dataclass
class JointLaw:
    """A fitted L(N, D) with bootstrap draws of (E, A, alpha, B, beta) and its identifiability."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_runs: int
    r2_heldout: float | None = None
    at_bounds: list[str] = field(default_factory=list)
    n_sizes: int = 0  # distinct N
    n_data: int = 0  # distinct D
    N_range: tuple[float, float] = (math.nan, math.nan)
    D_range: tuple[float, float] = (math.nan, math.nan)
    scatter: float = math.nan  # median |L - law| of the fitted runs
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 5)))

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.E, self.A, self.alpha, self.B, self.beta])

    def error(self, N: Any, D: Any) -> np.ndarray:
        """The law's L at N parameters and D examples."""
        return law_error(self.theta, N, D)

    def optimum(self, flops: Any, k: float) -> tuple[np.ndarray, np.ndarray]:
        """N*, D* minimising L under ``k * N * D = flops``."""
        return optimum(self.theta, flops, k)

    def ci(self, level: float = 0.95) -> dict[str, list[float] | None]:
        if len(self.boot) == 0:
            return {n: None for n in NAMES}
        q = (1 - level) / 2 * 100
        return {
            n: [float(v) for v in np.percentile(self.boot[:, i], [q, 100 - q])]
            for i, n in enumerate(NAMES)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "E": self.E,
            "A": self.A,
            "alpha": self.alpha,
            "B": self.B,
            "beta": self.beta,
            "ci": self.ci(),
            "r2_heldout": self.r2_heldout,
            "n_runs": self.n_runs,
            "at_bounds": list(self.at_bounds),
            "n_boot": len(self.boot),
            "frontier_exponents": {
                "a": self.beta / (self.alpha + self.beta),
                "b": self.alpha / (self.alpha + self.beta),
            },
        }


def law_error(theta: np.ndarray, N: Any, D: Any) -> np.ndarray:
    """E + A / N^alpha + B / D^beta for theta = (E, A, alpha, B, beta)."""
    E, A, alpha, B, beta = theta
    return E + A / np.asarray(N, float) ** alpha + B / np.asarray(D, float) ** beta


def optimum(theta: np.ndarray, flops: Any, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Analytic minimiser of L on N * D = flops / k: N* = G (flops/k)^(beta/(alpha+beta))."""
    _, A, alpha, B, beta = theta
    m = np.asarray(flops, float) / k
    g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = g * m ** (beta / (alpha + beta))
    return n_opt, m / n_opt


def _huber(r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def _objective(
    p: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, w: np.ndarray
) -> tuple[float, np.ndarray]:
    """Weighted Huber loss of one problem, scaled by 1 / (weight x delta) to be of order 1 (so
    that L-BFGS's relative tolerances mean something), and its gradient."""
    a, b, e, alpha, beta = p
    terms = np.stack([a - alpha * lN, b - beta * lD, np.full_like(lN, e)])
    top = terms.max(axis=0)
    ex = np.exp(terms - top)
    s = ex.sum(axis=0)
    r = top + np.log(s) - lL
    ex /= s
    scale = 1.0 / (w.sum() * HUBER_DELTA)
    g = np.clip(r, -HUBER_DELTA, HUBER_DELTA) * w
    grad = np.array(
        [
            (g * ex[0]).sum(),
            (g * ex[1]).sum(),
            (g * ex[2]).sum(),
            -(g * ex[0] * lN).sum(),
            -(g * ex[1] * lD).sum(),
        ]
    )
    return float((_huber(r) * w).sum()) * scale, grad * scale


def _problem_losses(
    p: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """The objective of many parameter rows at once (the grid of starts: numpy, no loop)."""
    a, b, e, alpha, beta = (p[:, i : i + 1] for i in range(5))
    pred = np.logaddexp(np.logaddexp(a - alpha * lN, b - beta * lD), e)
    return (_huber(pred - lL) * w).sum(axis=1) / (w.sum(axis=1) * HUBER_DELTA)


def minimise_many(
    starts: np.ndarray,
    lN: np.ndarray,
    lD: np.ndarray,
    lL: np.ndarray,
    w: np.ndarray | None = None,
    strict: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS-B for m problems, one per row of ``starts`` (data m x n, or 1 x n shared).

    Returns the fitted parameters (m x 5) and each problem's final loss. (Solving them as one
    stacked separable problem was measured 5-15x slower: L-BFGS then needs the iterations of
    the slowest problem for all of them.)
    """
    from scipy.optimize import minimize

    m = len(starts)
    lN, lD, lL = (
        np.broadcast_to(np.atleast_2d(x), (m, np.atleast_2d(x).shape[1])) for x in (lN, lD, lL)
    )
    w = np.ones(lN.shape) if w is None else np.broadcast_to(np.atleast_2d(w), lN.shape)
    # bootstrap refits start at the optimum and need less polish (measured: 3x faster, same spread)
    options = {
        "maxiter": 500,
        "ftol": 1e-15 if strict else 1e-12,
        "gtol": 1e-10 if strict else 1e-8,
    }
    out, losses = np.empty((m, 5)), np.empty(m)
    for i in range(m):
        res = minimize(
            _objective,
            starts[i],
            args=(lN[i], lD[i], lL[i], w[i]),
            jac=True,
            method="L-BFGS-B",
            bounds=BOUNDS,
            options=options,
        )
        out[i], losses[i] = res.x, res.fun
    return out, losses


def _grid_starts(lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, n_best: int) -> np.ndarray:
    """The ``n_best`` grid points of lowest objective (evaluated on up to 500 runs at once)."""
    if len(lN) > 500:
        pick = np.random.default_rng(0).choice(len(lN), 500, replace=False)
        lN, lD, lL = lN[pick], lD[pick], lL[pick]
    mesh = np.stack(np.meshgrid(*GRID.values(), indexing="ij"), -1).reshape(-1, 5)
    loss = _problem_losses(mesh, lN[None, :], lD[None, :], lL[None, :], np.ones((1, len(lN))))
    return mesh[np.argsort(loss)[:n_best]]


def _theta(p: np.ndarray) -> np.ndarray:
    """(E, A, alpha, B, beta) from internal (a, b, e, alpha, beta); rows of p if 2-D."""
    p = np.atleast_2d(p)
    out = np.column_stack([np.exp(p[:, 2]), np.exp(p[:, 0]), p[:, 3], np.exp(p[:, 1]), p[:, 4]])
    return out[0] if out.shape[0] == 1 else out


def _at_bounds(p: np.ndarray) -> list[str]:
    names = []
    for value, (lo, hi), name in zip(p, BOUNDS, PARAM_NAMES):
        if min(value - lo, hi - value) <= AT_BOUND * (hi - lo):
            names.append(name)
    return sorted(names, key=NAMES.index)


def _r2(true: np.ndarray, pred: np.ndarray) -> float | None:
    ss = float(((true - true.mean()) ** 2).sum())
    return 1 - float(((true - pred) ** 2).sum()) / ss if ss > 0 else None


def fit_joint(
    N: Any,
    D: Any,
    L: Any,
    seed: int = 0,
    n_boot: int = 50,
    n_starts: int = 8,
    heldout: float = 0.3,
    n_splits: int = 5,
    max_runs: int | None = 2000,
    boot_only_if_identifiable: bool = False,
) -> JointLaw:
    """See :func:`_fit_joint`; runs with BLAS on one thread (:func:`one_blas_thread`)."""
    with one_blas_thread():
        return _fit_joint(
            N, D, L, seed, n_boot, n_starts, heldout, n_splits, max_runs, boot_only_if_identifiable
        )


_LIMITED = threading.local()  # set while one_blas_thread() holds the limit in this thread


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block; re-entrant, so a loop over many fits sets the limit
    once (threadpoolctl finds the loaded libraries anew each time: 5 ms, as long as a fit).

    L-BFGS-B makes a few tiny BLAS calls per step; with OpenBLAS's thread pool on a busy machine
    each call waits for idle threads (measured: 1.2 s instead of 0.015 s per fit on 2 loaded cores).
    """
    if getattr(_LIMITED, "on", False):
        yield
        return
    import scipy.optimize  # noqa: F401  (loaded before the limit, so its OpenBLAS is limited too)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        _LIMITED.on = True
        try:
            yield
        finally:
            _LIMITED.on = False


def _fit_joint(
    N: Any,
    D: Any,
    L: Any,
    seed: int,
    n_boot: int,
    n_starts: int,
    heldout: float,
    n_splits: int,
    max_runs: int | None,
    boot_only_if_identifiable: bool,
) -> JointLaw:
    """Fit L(N, D) on all runs, score it on held-out splits, and bootstrap its coefficients.

    ``r2_heldout`` is the mean R² of L on ``n_splits`` seeded ``heldout`` fractions of the runs,
    the law refitted on the rest each time. Bootstrap refits start from the full fit. Zoos larger
    than ``max_runs`` are fitted on a seeded random subset of that size (each L-BFGS step costs
    O(runs)). With ``boot_only_if_identifiable`` the bootstrap is skipped for a law that
    :func:`assess` already rejects without it (a zoo of many recipe families stays fast).
    Raises :class:`RobustscaleError` when no law can be fitted at all (fewer than
    :data:`MIN_RUNS` runs, or a single N or D value); a law that can be fitted but is not
    pinned down is returned and judged by :func:`assess`.
    """
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(L) & (N > 0) & (D > 0) & (L > 0)
    if max_runs is not None and ok.sum() > max_runs:
        keep = np.random.default_rng(seed).choice(np.flatnonzero(ok), max_runs, replace=False)
        ok = np.zeros_like(ok)
        ok[keep] = True
    lN, lD, lL = np.log(N[ok]), np.log(D[ok]), np.log(L[ok])
    n, sizes, data = len(lL), len(np.unique(lN)), len(np.unique(lD))
    if n < MIN_RUNS or sizes < 2 or data < 2:
        raise RobustscaleError(
            f"the joint law L(N, D) needs at least {MIN_RUNS} runs with at least 2 model "
            f"sizes and 2 data amounts; have {n} runs, {sizes} sizes, {data} data amounts"
        )
    starts = _grid_starts(lN, lD, lL, n_starts)
    fits, losses = minimise_many(starts, lN, lD, lL)
    p = fits[int(np.argmin(losses))]
    law = JointLaw(
        *_theta(p),
        n_runs=n,
        at_bounds=_at_bounds(p),
        n_sizes=sizes,
        n_data=data,
        N_range=(float(N[ok].min()), float(N[ok].max())),
        D_range=(float(D[ok].min()), float(D[ok].max())),
    )
    law.scatter = float(np.median(np.abs(L[ok] - law.error(N[ok], D[ok]))))
    rng = np.random.default_rng(seed)
    n_test = max(1, round(heldout * n))
    tests = [rng.permutation(n)[:n_test] for _ in range(max(1, n_splits))]
    w = np.ones((len(tests), n))
    for row, test in zip(w, tests):
        row[test] = 0.0
    split_fits, _ = minimise_many(np.repeat(p[None, :], len(tests), 0), lN, lD, lL, w=w)
    r2s = [
        _r2(L[ok][t], law_error(_theta(q), N[ok][t], D[ok][t])) for q, t in zip(split_fits, tests)
    ]
    r2s = [r for r in r2s if r is not None]
    law.r2_heldout = float(np.mean(r2s)) if r2s else None
    if n_boot > 0 and not (boot_only_if_identifiable and assess(law)):
        idx = rng.integers(0, n, (n_boot, n))
        boot, _ = minimise_many(
            np.repeat(p[None, :], n_boot, 0), lN[idx], lD[idx], lL[idx], strict=False
        )
        law.boot = np.atleast_2d(_theta(boot))
    return law


def _boot_at_bounds(boot: np.ndarray) -> list[str]:
    """Coefficients whose bootstrap 95% interval reaches within 1% of a bound (internal scale)."""
    if len(boot) < 2:
        return []
    E, A, alpha, B, beta = boot.T
    internal = np.column_stack([np.log(A), np.log(B), np.log(E), alpha, beta])
    lo_q, hi_q = np.percentile(internal, [2.5, 97.5], axis=0)
    names = [
        n
        for n, lo_v, hi_v, (lo, hi) in zip(PARAM_NAMES, lo_q, hi_q, BOUNDS)
        if min(lo_v - lo, hi - hi_v) <= AT_BOUND * (hi - lo)
    ]
    return sorted(names, key=NAMES.index)


def assess(law: JointLaw) -> list[str]:
    """Why the zoo does not pin ``law`` down, as sentences (empty: identifiable)."""
    reasons = []
    for count, what, term in (
        (law.n_sizes, "model sizes (N)", "A/N^alpha"),
        (law.n_data, "data amounts (D)", "B/D^beta"),
    ):
        if count < MIN_DISTINCT:
            reasons.append(
                f"the runs have only {count} distinct {what}; at least {MIN_DISTINCT} are needed "
                f"to tell {term} from the irreducible E"
            )
    if law.at_bounds:
        reasons.append(
            f"{', '.join(law.at_bounds)} ended at a bound of the fit (the data do not constrain "
            f"{'it' if len(law.at_bounds) == 1 else 'them'})"
        )
    for name, coef, expo, (lo, hi) in (
        ("N", law.A, law.alpha, law.N_range),
        ("D", law.B, law.beta, law.D_range),
    ):
        span = coef / lo**expo - coef / hi**expo  # how much the term moves L across the runs
        if span < law.scatter:
            reasons.append(
                f"the {name} term changes L by {span:.3g} across the runs' {name} "
                f"({lo:.3g}-{hi:.3g}), less than the runs' scatter around the law "
                f"({law.scatter:.3g}): "
                f"the zoo shows no effect of {name} to fit"
            )
    edge = _boot_at_bounds(law.boot)
    if edge:
        reasons.append(f"bootstrap 95% intervals of {', '.join(edge)} reach a bound of the fit")
    if law.r2_heldout is None or law.r2_heldout < MIN_HELDOUT_R2:
        r2 = "undefined" if law.r2_heldout is None else f"{law.r2_heldout:.2f}"
        reasons.append(
            f"held-out R² is {r2} (mean over repeated splits; at least {MIN_HELDOUT_R2:g} "
            "needed): "
            "the law does not predict runs it was not fitted on"
        )
    wide = []
    for name, ci in law.ci().items():
        if ci is not None and (ci[0] <= 0 or ci[1] / ci[0] > MAX_CI_RATIO):
            wide.append(f"{name} [{ci[0]:.3g}, {ci[1]:.3g}]")
    if wide:
        reasons.append("bootstrap 95% intervals span orders of magnitude: " + "; ".join(wide))
    return reasons
