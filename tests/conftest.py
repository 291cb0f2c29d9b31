"""Shared tiny fixtures: digits recipes, trained digits runs, CIFAR-10 files written on disk.

Digits (scikit-learn's bundled handwritten digits, 8x8) at eps = 0.2 is where robustness is
tested on a CPU: a standard model loses almost all accuracy to PGD there, an adversarially
trained one keeps about half.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

# One intra-op thread, here and in every subprocess a test starts: the test models are tiny, and on
# a 2-core machine with anything else running, two spinning OpenMP threads made a 2-epoch digits
# run 7x slower (tests/test_train.py::test_ema_weights_are_validated_and_saved: 34 s vs 4.7 s).
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from robustscale import Recipe, train  # noqa: E402

torch.set_num_threads(1)

DIGITS_EPS = 0.2


def tiny(**overrides) -> Recipe:
    """A digits recipe that trains in a second or two on a CPU."""
    base = dict(
        dataset="digits",
        model="wrn10_1",
        loss="pgd",
        eps=DIGITS_EPS,
        step_size=DIGITS_EPS / 4,
        attack_steps=3,
        val_attack_steps=5,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_size=128,
        seed=0,
    )
    base.update(overrides)
    return Recipe(**base)


@pytest.fixture
def tiny_recipe():
    return tiny


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory) -> Path:
    """A standard-trained digits wrn10_1 (about 97% clean accuracy, ~1% PGD accuracy at eps 0.2)."""
    out = tmp_path_factory.mktemp("runs")
    return train(
        tiny(loss="standard", attack_steps=0, epochs=6, val_attack_steps=10),
        out_root=out,
        progress=False,
    )


@pytest.fixture(scope="session")
def adversarial_run(tmp_path_factory) -> Path:
    """A PGD-AT digits wrn10_1 (about 97% clean, ~50% PGD accuracy at eps 0.2)."""
    out = tmp_path_factory.mktemp("runs")
    return train(
        tiny(loss="pgd", attack_steps=5, epochs=10, val_attack_steps=10),
        out_root=out,
        progress=False,
    )


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write a small CIFAR-10 in its own on-disk format (python pickles of uint8 rows) under
    root."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(per, start=1):
        _batch(folder / f"data_batch_{i}", rng, n, f"training batch {i} of 5")
    _batch(folder / "test_batch", rng, n_test, "testing batch 1 of 1")
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per[0], "num_vis": 3072}, f)
    return root


def _batch(path: Path, rng: np.random.Generator, n: int, label: str) -> None:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump(
            {
                "batch_label": label,
                "labels": labels,
                "data": data,
                "filenames": [f"img_{i}.png" for i in range(n)],
            },
            f,
        )


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")
