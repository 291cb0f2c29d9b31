"""The predictor: gradient-boosted regression of AutoAttack accuracy from a recipe's choices.

As in the paper: scikit-learn ``GradientBoostingRegressor`` (50 estimators, max depth 5) on
the paper's six features (parameters, synthetic data, activation, loss, attack steps, EMA) with
a 70:30 split, plus a seventh, ``examples_seen`` (training examples processed: epochs x examples
per epoch). The six say nothing of how much a run trained, and a zoo that varies epochs or
``train_fraction`` (the digits study) is unpredictable without it: on
examples/digits-zoo.csv the held-out R² was -2.30 with the six and is 0.96 with the seven.
A zoo made elsewhere that leaves ``examples_seen`` empty for any run is fitted on the six.

One split can be lucky, so the split is repeated with other seeds and the scores are
given as mean ± std; the repeated models also give a new recipe's prediction interval.
Categorical features are ordinal codes (trees need no one-hot, and each feature keeps one
importance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustscale.errors import RobustscaleError

log = logging.getLogger(__name__)

PAPER_FEATURES = ["params", "synthetic_data", "activation", "loss", "attack_steps", "ema"]
DATA_FEATURE = "examples_seen"  # left out when a zoo made elsewhere leaves it empty
FEATURES = [*PAPER_FEATURES, DATA_FEATURE]
CATEGORICAL = ["activation", "loss"]
MIN_RUNS = 10


@dataclass
class Predictor:
    """A fitted predictor with its held-out scores and the models of the repeated splits."""

    categories: dict[str, list[str]]
    features: list[str]  # FEATURES, or PAPER_FEATURES when the zoo's examples_seen is empty
    r2: float
    mae: float
    r2_mean: float
    r2_std: float
    mae_mean: float
    mae_std: float
    importance: dict[str, float]
    permutation_importance: dict[str, float]
    n_train: int
    n_test: int
    test_true: np.ndarray = field(repr=False)
    test_pred: np.ndarray = field(repr=False)
    test_run_ids: list[str] = field(repr=False)
    models: list[Any] = field(repr=False)  # one per split, the first is the reported split's
    rmses: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "r2": self.r2,
            "mae": self.mae,
            "r2_mean": self.r2_mean,
            "r2_std": self.r2_std,
            "mae_mean": self.mae_mean,
            "mae_std": self.mae_std,
            "n_splits": len(self.models),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "features": self.features,
            "importance": self.importance,
            "permutation_importance": self.permutation_importance,
        }

    def predict(self, rows: Any) -> dict[str, np.ndarray]:
        """Mean prediction over the split models and a 95% interval for each row of features.

        The interval's spread combines the disagreement between split models and their held-out
        error: ``mean ± 1.96 * sqrt(var(model predictions) + mean(held-out MSE))``.
        """
        X = encode(rows, self.categories, self.features)
        preds = np.stack([m.predict(X) for m in self.models])
        mean = preds.mean(axis=0)
        spread = 1.96 * np.sqrt(preds.var(axis=0) + float(np.mean(np.square(self.rmses))))
        return {"mean": mean, "low": mean - spread, "high": mean + spread}


def category_codes(df: Any) -> dict[str, list[str]]:
    """The sorted values seen for each categorical feature."""
    return {c: sorted(str(v) for v in df[c].dropna().unique()) for c in CATEGORICAL}


def encode(df: Any, categories: dict[str, list[str]], features: list[str] = FEATURES) -> np.ndarray:
    """The feature matrix (float) of a frame with the ``features`` columns."""
    cols = []
    for name in features:
        values = df[name]
        if name in CATEGORICAL:
            known = categories[name]
            # tolist(): iterating a pandas string column element by element is 8x slower
            unknown = sorted({str(v) for v in values.dropna().tolist()} - set(known))
            if unknown:
                raise RobustscaleError(
                    f"{name}={unknown[0]!r} does not occur in the zoo; the predictor "
                    f"knows: {', '.join(known)}"
                )
            cols.append(np.array([known.index(str(v)) for v in values.tolist()], dtype=float))
        else:
            cols.append(np.asarray(values, dtype=float))
    return np.column_stack(cols)


def _model(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=50, max_depth=5, random_state=seed)


def unique_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(X, axis=0, return_inverse=True)`` for a 2-D float array without NaN: the
    distinct rows in lexicographic order and each row's position among them.

    The same rows in the same order (one lexsort of the columns instead of a sort of the rows
    as records: 11.7 -> 1.7 ms for 7,000 runs of 7 features).
    """
    if len(X) == 0:
        return X[:0], np.empty(0, dtype=np.intp)
    order = np.lexsort(X.T[::-1])
    ordered = X[order]
    new = np.empty(len(X), dtype=bool)
    new[0] = True
    np.any(ordered[1:] != ordered[:-1], axis=1, out=new[1:])
    inverse = np.empty(len(X), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def _aggregate(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique feature rows, the mean target of each and its count.

    Boosting squared error on these with the counts as sample weights grows the same trees as
    on the raw rows: runs with equal features always fall in the same leaf, so every split's
    gain and every leaf's value depend only on their weighted means. A zoo's recipe grid has a
    few hundred distinct feature rows however many runs it has (10,000 runs: 25x less work).
    """
    rows, inverse = unique_rows(X)
    counts = np.bincount(inverse, minlength=len(rows)).astype(float)
    return rows, np.bincount(inverse, weights=y, minlength=len(rows)) / counts, counts


def predict_rows(model: Any, X: np.ndarray) -> np.ndarray:
    """``model.predict(X)``, computed once per distinct row of ``X``.

    A tree ensemble predicts each row on its own, so the values are those of predicting every
    row (the same numbers, bit for bit); a zoo's 3,000 held-out runs have a few hundred
    distinct feature rows.
    """
    rows, inverse = unique_rows(X)
    return model.predict(rows)[inverse]


def _r2_scorer(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """The regressor's default score (``r2_score(y, model.predict(X))``), by
    :func:`predict_rows`."""
    from sklearn.metrics import r2_score

    return r2_score(y, predict_rows(model, X))


def _split_fit(
    X: np.ndarray, y: np.ndarray, seed: int, test_size: float
) -> tuple[Any, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_size, random_state=seed
    )
    rows, mean_y, counts = _aggregate(X[idx_train], y[idx_train])
    model = _model(seed).fit(rows, mean_y, sample_weight=counts)
    return model, idx_test, predict_rows(model, X[idx_test])


def fit_predictor(
    df: Any,
    seed: int = 0,
    n_splits: int = 10,
    test_size: float = 0.3,
    target: str = "autoattack_acc",
) -> Predictor:
    """Fit and score the predictor on runs with all features and a ``target`` value.

    The reported R², MAE and importances are those of the split seeded with ``seed``; the
    ``*_mean``/``*_std`` scores come from ``n_splits`` splits seeded ``seed, seed+1, ...``.
    Raises :class:`RobustscaleError` with fewer than 10 usable runs.
    """
    import sklearn
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import mean_absolute_error, r2_score

    data = df.dropna(subset=PAPER_FEATURES + [target])
    features = FEATURES
    if data[DATA_FEATURE].isna().any():  # a zoo made elsewhere that did not record it
        features = PAPER_FEATURES
        log.info(
            "predictor: %d of %d runs have no %s; fitted on the paper's six features",
            int(data[DATA_FEATURE].isna().sum()),
            len(data),
            DATA_FEATURE,
        )
    if len(data) < MIN_RUNS:
        raise RobustscaleError(
            f"the predictor needs at least {MIN_RUNS} runs with {target} and all of "
            f"{', '.join(PAPER_FEATURES)}; the zoo has {len(data)}"
        )
    categories = category_codes(data)
    X, y = encode(data, categories, features), data[target].to_numpy(dtype=float)
    bad = [
        n
        for n, c in zip(features + [target], np.column_stack([X, y]).T)
        if not np.isfinite(c).all()
    ]
    if bad:
        raise RobustscaleError(
            f"the predictor's column {bad[0]!r} has an infinite value; allowed: finite numbers"
        )
    # the parameters are ours and the values were just checked finite: skipping
    # scikit-learn's per-tree re-validation of both (500 trees) leaves every number as it was
    # and saves ~15% of the fits (benchmarks/analysis.py)
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        fits = [_split_fit(X, y, seed + r, test_size) for r in range(max(1, n_splits))]
        model, idx_test, pred = fits[0]
        perm = permutation_importance(
            model, X[idx_test], y[idx_test], scoring=_r2_scorer, n_repeats=5, random_state=seed
        )
    r2s = [r2_score(y[i], p) for _, i, p in fits]
    maes = [mean_absolute_error(y[i], p) for _, i, p in fits]
    return Predictor(
        categories=categories,
        features=features,
        r2=float(r2s[0]),
        mae=float(maes[0]),
        r2_mean=float(np.mean(r2s)),
        r2_std=float(np.std(r2s)),
        mae_mean=float(np.mean(maes)),
        mae_std=float(np.std(maes)),
        importance=dict(zip(features, map(float, model.feature_importances_))),
        permutation_importance=dict(zip(features, map(float, perm.importances_mean))),
        n_train=len(y) - len(idx_test),
        n_test=len(idx_test),
        test_true=y[idx_test],
        test_pred=pred,
        test_run_ids=[str(v) for v in data["run_id"].to_numpy()[idx_test]],
        models=[f[0] for f in fits],
        rmses=[float(np.sqrt(np.mean((y[i] - p) ** 2))) for _, i, p in fits],
    )
