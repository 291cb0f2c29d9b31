"""The joint law of robust error in model size and data: L(N, D) = E + A / N^alpha + B / D^beta.

L is robust error in percent (100 - AutoAttack accuracy; 100 - PGD-40 accuracy when AutoAttack
is missing), N the parameters, D the training examples seen. Fitted as Hoffmann et al.
(Chinchilla, approach 3) did: Huber loss (delta 1e-3) between log L and
``logsumexp(a - alpha log N, b - beta log D, e)`` with A = e^a, B = e^b, E = e^e, minimised by
L-BFGS from the best starts of a grid. E is the irreducible robust error: 100 - E is the robust
accuracy that no amount of parameters or data reaches under this law.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustscale.errors import RobustscaleError, first_line

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
MIN_RUNS = 8
NAMES = ["E", "A", "alpha", "B", "beta"]
# grid of starts (a, b, e, alpha, beta); the objective is evaluated on all of it at once and
# L-BFGS runs from the best few, which finds the same optimum as running from every start
GRID = {"a": np.arange(0.0, 26.0, 5.0), "b": np.arange(0.0, 26.0, 5.0), "e": np.array([1.0, 2.0, 3.0, 4.0]),
        "alpha": np.array([0.1, 0.3, 0.6, 1.0, 1.5]), "beta": np.array([0.1, 0.3, 0.6, 1.0, 1.5])}
BOUNDS = [(-20.0, 80.0), (-20.0, 80.0), (-20.0, math.log(100.0)), (1e-3, 3.0), (1e-3, 3.0)]


@dataclass
class JointLaw:
    """A fitted L(N, D) with bootstrap draws of (E, A, alpha, B, beta)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_runs: int
    r2_heldout: float | None = None
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 5)))

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.E, self.A, self.alpha, self.B, self.beta])

    def error(self, N: Any, D: Any) -> np.ndarray:
        """Predicted robust error (percent) at N parameters and D examples."""
        return law_error(self.theta, N, D)

    def optimum(self, flops: Any, k: float) -> tuple[np.ndarray, np.ndarray]:
        """N*, D* minimising L under ``k * N * D = flops``."""
        return optimum(self.theta, flops, k)

    def ci(self, level: float = 0.95) -> dict[str, list[float] | None]:
        if len(self.boot) == 0:
            return {n: None for n in NAMES}
        q = (1 - level) / 2 * 100
        return {n: [float(v) for v in np.percentile(self.boot[:, i], [q, 100 - q])] for i, n in enumerate(NAMES)}

    def to_dict(self) -> dict[str, Any]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta,
                "ci": self.ci(), "r2_heldout": self.r2_heldout, "n_runs": self.n_runs,
                "asymptote_acc": 100.0 - self.E, "n_boot": len(self.boot),
                "frontier_exponents": {"a": self.beta / (self.alpha + self.beta),
                                       "b": self.alpha / (self.alpha + self.beta)}}


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


def _objective(p: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray) -> tuple[float, np.ndarray]:
    a, b, e, alpha, beta = p
    terms = np.stack([a - alpha * lN, b - beta * lD, np.full_like(lN, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    s = w.sum(axis=0)
    r = top + np.log(s) - lL
    w /= s
    hub = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    g = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
    grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                     -(g * w[0] * lN).sum(), -(g * w[1] * lD).sum()])
    # scaled to order 1 (mean |r| / delta) so that L-BFGS's relative tolerances mean something
    scale = 1.0 / (len(lN) * HUBER_DELTA)
    return float(hub.sum()) * scale, grad * scale


def _grid_starts(lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, n_best: int) -> np.ndarray:
    """The ``n_best`` grid points of lowest objective (evaluated on up to 1,000 runs)."""
    if len(lN) > 1000:
        pick = np.random.default_rng(0).choice(len(lN), 1000, replace=False)
        lN, lD, lL = lN[pick], lD[pick], lL[pick]
    mesh = np.stack(np.meshgrid(*GRID.values(), indexing="ij"), -1).reshape(-1, 5)
    a, b, e, al, be = (mesh[:, i : i + 1] for i in range(5))
    pred = np.logaddexp(np.logaddexp(a - al * lN, b - be * lD), e)
    r = np.abs(pred - lL)
    loss = np.where(r <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)).sum(axis=1)
    return mesh[np.argsort(loss)[:n_best]]


def _minimise(starts: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, strict: bool = True) -> np.ndarray:
    from scipy.optimize import minimize

    # bootstrap refits start at the optimum and need less polish (measured: 3x faster, same spread)
    options = {"maxiter": 500, "ftol": 1e-15 if strict else 1e-12, "gtol": 1e-10 if strict else 1e-8}
    best, best_val = None, math.inf
    for p0 in starts:
        res = minimize(_objective, p0, args=(lN, lD, lL), jac=True, method="L-BFGS-B", bounds=BOUNDS,
                       options=options)
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    assert best is not None
    return best


def _theta(p: np.ndarray) -> np.ndarray:
    a, b, e, alpha, beta = p
    return np.array([math.exp(e), math.exp(a), alpha, math.exp(b), beta])


def fit_joint(N: Any, D: Any, L: Any, seed: int = 0, n_boot: int = 100, n_starts: int = 8,
              heldout: float = 0.3, max_runs: int | None = 2000) -> JointLaw:
    """See :func:`_fit_joint`; runs with BLAS on one thread.

    L-BFGS-B makes a few tiny BLAS calls per step; with OpenBLAS's thread pool on a busy machine
    each call waits for idle threads (measured: 1.2 s instead of 0.015 s per fit on 2 loaded cores).
    """
    import scipy.optimize  # noqa: F401  (loaded before the limit, so that its OpenBLAS is limited too)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_joint(N, D, L, seed, n_boot, n_starts, heldout, max_runs)


def _fit_joint(N: Any, D: Any, L: Any, seed: int, n_boot: int, n_starts: int, heldout: float,
               max_runs: int | None) -> JointLaw:
    """Fit L(N, D) on all runs, score it on a held-out split, and bootstrap its coefficients.

    ``r2_heldout`` is the R² of L (percent robust error) on a seeded ``heldout`` fraction of the
    runs, with the law refitted on the rest. Bootstrap refits start from the full fit. Zoos larger
    than ``max_runs`` are fitted on a seeded random subset of that size: each L-BFGS step costs
    O(runs) and a 10,000-run zoo would otherwise take most of a minute.
    """
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(L) & (N > 0) & (D > 0) & (L > 0)
    if max_runs is not None and ok.sum() > max_runs:
        keep = np.random.default_rng(seed).choice(np.flatnonzero(ok), max_runs, replace=False)
        ok = np.zeros_like(ok)
        ok[keep] = True
    lN, lD, lL = np.log(N[ok]), np.log(D[ok]), np.log(L[ok])
    n = len(lL)
    if n < MIN_RUNS or len(np.unique(lN)) < 2 or len(np.unique(lD)) < 2:
        raise RobustscaleError(f"the joint law L(N, D) needs at least {MIN_RUNS} runs with at least 2 model "
                               f"sizes and 2 data amounts; have {n} runs, {len(np.unique(lN))} sizes, "
                               f"{len(np.unique(lD))} data amounts")
    starts = _grid_starts(lN, lD, lL, n_starts)
    p = _minimise(starts, lN, lD, lL)
    law = JointLaw(*_theta(p), n_runs=n)
    rng = np.random.default_rng(seed)
    test = rng.permutation(n)[: max(1, round(heldout * n))]
    train = np.setdiff1d(np.arange(n), test)
    p_train = _minimise(np.vstack([p, starts[:2]]), lN[train], lD[train], lL[train])
    pred = law_error(_theta(p_train), N[ok][test], D[ok][test])
    true = L[ok][test]
    ss = float(((true - true.mean()) ** 2).sum())
    law.r2_heldout = 1 - float(((true - pred) ** 2).sum()) / ss if ss > 0 else None
    from robustscale.progress import bar

    # each resample is a full L-BFGS fit: the slow part of a joint fit
    with bar(n_boot, "joint law bootstrap", unit="fit") as shown:
        draws = []
        for idx in (rng.integers(0, n, n) for _ in range(n_boot)):
            fit = _minimise(p[None, :], *(x[idx] for x in (lN, lD, lL)), strict=False)
            draws.append(_theta(fit))
            shown.update(1)
    law.boot = np.array(draws) if draws else np.empty((0, 5))
    return law


def robust_error(df: Any) -> np.ndarray:
    """100 - AutoAttack accuracy, or 100 - PGD-40 accuracy where AutoAttack is missing."""
    aa = df["autoattack_acc"].to_numpy(float, na_value=np.nan)
    pgd = df["pgd40_acc"].to_numpy(float, na_value=np.nan)
    return 100.0 - np.where(np.isfinite(aa), aa, pgd)


def joint_runs(df: Any, threshold: float = 10.0, loss: str | None = None, attack_steps: int | None = None) -> Any:
    """Adversarial, not collapsed runs with params, examples_seen and a robust accuracy.

    ``loss`` and ``attack_steps`` narrow the runs to one configuration.
    """
    err = robust_error(df)
    keep = (df["loss"].astype("string").fillna("") != "standard").to_numpy(bool) & np.isfinite(err)
    keep &= (100.0 - np.nan_to_num(err, nan=0.0)) > threshold
    for col in ("params", "examples_seen"):
        keep &= (df[col].to_numpy(float, na_value=np.nan) > 0)
    if loss is not None:
        keep &= (df["loss"].astype("string") == loss).fillna(False).to_numpy(bool)
    if attack_steps is not None:
        keep &= (df["attack_steps"] == attack_steps).fillna(False).to_numpy(bool)
    return df[keep].reset_index(drop=True)


def flops_per_param_example(df: Any, loss: str | None = None, attack_steps: int | None = None) -> tuple[float, str]:
    """The zoo's own k = median train_flops / (params * examples_seen): for the given loss and
    steps, else all runs. A cross-check of :func:`cost_flops_per_param_example`, and the fallback
    where the cost module cannot count the zoo's model (another lab's architecture)."""
    ratio = (df["train_flops"].to_numpy(float, na_value=np.nan)
             / (df["params"].to_numpy(float, na_value=np.nan) * df["examples_seen"].to_numpy(float, na_value=np.nan)))
    valid = np.isfinite(ratio) & (ratio > 0)
    sel = valid.copy()
    if loss is not None:
        sel &= (df["loss"].astype("string") == loss).fillna(False).to_numpy(bool)
    if attack_steps is not None:
        sel &= (df["attack_steps"] == attack_steps).fillna(False).to_numpy(bool)
    if sel.any():
        return float(np.median(ratio[sel])), f"zoo median of {int(sel.sum())} runs" + (
            f" with loss={loss}" if loss else "") + (f", attack_steps={attack_steps}" if attack_steps else "")
    if not valid.any():
        raise RobustscaleError("no zoo run has train_flops, params and examples_seen; cannot derive FLOPs per "
                               "parameter per example")
    return float(np.median(ratio[valid])), f"zoo median of all {int(valid.sum())} runs (none matched the configuration)"


@functools.lru_cache(maxsize=512)
def cost_flops_per_example(dataset: str, model: str, loss: str, attack_steps: int,
                           activation: str = "relu") -> tuple[float, int]:
    """(training FLOPs per example, trainable parameters) of ``model`` trained with ``loss`` and
    ``attack_steps`` on ``dataset``, measured by the cost module (``robustscale.cost``) on a meta
    model, as the engine counts them. Raises :class:`RobustscaleError` when it cannot be counted
    (a model timm does not know, one that does not run at the dataset's image size, ...)."""
    try:
        from robustscale.cost.forecast import recipe_params, recipe_step_flops
        from robustscale.recipe import Recipe
    except ImportError as exc:
        raise RobustscaleError(f"the cost module is not available ({exc})") from None
    what = f"{model} on {dataset} ({loss}, {attack_steps} attack steps)"
    try:
        recipe = Recipe(dataset=dataset, model=model, activation=activation, loss=loss,
                        attack_steps=int(attack_steps) if loss != "standard" else 0)
        per_example, params = float(recipe_step_flops(recipe).train), int(recipe_params(recipe))
    except RobustscaleError as exc:
        raise RobustscaleError(f"cannot count the FLOPs of {what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a timm model that does not run at this image size, ...
        raise RobustscaleError(f"cannot count the FLOPs of {what}: {type(exc).__name__}: {first_line(exc)}") from None
    if not (per_example > 0 and params > 0):
        raise RobustscaleError(f"cannot count the FLOPs of {what}: {per_example:g} FLOPs, {params} parameters")
    return per_example, params


def cost_flops_per_param_example(dataset: str, model: str, loss: str, attack_steps: int,
                                 activation: str = "relu") -> float:
    """k from the cost module: measured training FLOPs per example / trainable parameters."""
    per_example, params = cost_flops_per_example(dataset, model, loss, attack_steps, activation)
    return per_example / params


def _mode(series: Any) -> Any:
    values = series.dropna()
    return values.mode().iloc[0] if len(values) else None


def choose_k(df: Any, runs: Any, loss: str | None = None, attack_steps: int | None = None) -> dict[str, Any]:
    """k (FLOPs per parameter per example) for C = k N D, from the cost module's measured FLOPs for
    the chosen loss and attack steps (the fitted runs' most common ones where not given) on the
    runs' most common dataset, model and activation; the zoo's own median beside it as a
    cross-check, and in its place where the cost module cannot count that model.

    Returns ``k``, ``k_source``, ``k_zoo``, ``k_zoo_source`` (None when the zoo has no FLOPs)
    and ``reference`` (the configuration k was measured for).
    """
    try:
        k_zoo, zoo_source = flops_per_param_example(df, loss, attack_steps)
    except RobustscaleError as exc:
        k_zoo, zoo_source = None, str(exc)
    ref = {"dataset": _mode(runs["dataset"]), "model": _mode(runs["model"]),
           "loss": loss if loss is not None else _mode(runs["loss"]),
           "attack_steps": attack_steps if attack_steps is not None else _mode(runs["attack_steps"]),
           "activation": _mode(runs["activation"]) or "relu"}
    out = {"k_zoo": k_zoo, "k_zoo_source": zoo_source, "reference": ref}
    try:
        if any(ref[key] is None for key in ("dataset", "model", "loss", "attack_steps")):
            raise RobustscaleError("the runs do not name their dataset, model, loss and attack steps")
        k = cost_flops_per_param_example(str(ref["dataset"]), str(ref["model"]), str(ref["loss"]),
                                         int(ref["attack_steps"]), str(ref["activation"]))
    except RobustscaleError as exc:
        if k_zoo is None:
            raise RobustscaleError(f"{exc}; and {zoo_source}") from None
        log.info("k from the zoo: %s", exc)
        return {**out, "k": k_zoo, "k_source": f"{zoo_source}; the cost module could not count it: {exc}"}
    source = (f"robustscale.cost: measured training FLOPs per example of {ref['model']} on {ref['dataset']}, "
              f"{ref['loss']}" + (f"-{int(ref['attack_steps'])}" if ref["loss"] != "standard" else "")
              + " / parameters")
    return {**out, "k": k, "k_source": source}
