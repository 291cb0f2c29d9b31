"""Hand-made run directories and generated zoo tables for the zoo and analysis tests.

Run directories follow docs/run-directory.md by hand (no training engine involved); zoo
tables are drawn from known laws so that fits can be checked against the truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from robustscale.zoo import COLUMN_NAMES

MODELS = {
    "wrn10_1": 77_850,
    "wrn16_1": 175_994,
    "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474,
    "wrn34_20": 184_537_114,
    "wrn70_16": 266_796_314,
}


def make_run(
    root: Path,
    run_id: str,
    *,
    state: str = "done",
    model: str = "wrn28_10",
    loss: str = "pgd",
    attack_steps: int = 10,
    epochs: int = 100,
    ema_decay: float | None = None,
    synthetic_data: str | None = None,
    synthetic_fraction: float = 0.0,
    eps: Any = "8/255",
    autoattack: float | None = 50.0,
    aa_clean: float | None = 85.0,
    pgd40: float | None = 53.0,
    flops: float = 1e18,
    energy_kwh: float | None = 10.0,
    skip: tuple[str, ...] = (),
) -> Path:
    """Write one run directory; ``skip`` names files to leave out (e.g. ``("cost.json",)``)."""
    d = root / run_id
    (d / "eval").mkdir(parents=True, exist_ok=True)
    recipe = {
        "dataset": "cifar10",
        "model": model,
        "activation": "relu",
        "loss": loss,
        "attack_steps": attack_steps,
        "epochs": epochs,
        "ema_decay": ema_decay,
        "synthetic_data": synthetic_data,
        "synthetic_fraction": synthetic_fraction,
        "eps": eps,
        "seed": 0,
        "batch_size": 128,
    }
    status = {
        "run_id": run_id,
        "state": state,
        "reason": "CUDA out of memory" if state == "failed" else None,
        "epoch": epochs if state == "done" else 3,
        "epochs": epochs,
        "best_epoch": 2,
        "best_val_pgd_acc": pgd40,
        "updated": "2025-01-01T00:00:00Z",
        "host": "h",
        "pid": 1,
    }
    cost = {
        "params": MODELS.get(model, 1000),
        "train_flops": flops,
        "examples_seen": epochs * 50_000,
        "device_hours": 2.0,
        "energy_kwh": energy_kwh,
        "electricity_cost_usd": None if energy_kwh is None else energy_kwh * 0.12,
        "co2_kg": None if energy_kwh is None else energy_kwh * 0.5663,
        "synthetic_size": 1_000_000 if synthetic_data else None,
    }
    files = {
        "recipe.yaml": yaml.safe_dump(recipe),
        "status.json": json.dumps(status),
        "cost.json": json.dumps(cost),
    }
    if autoattack is not None:
        files["eval/autoattack-8-255.json"] = json.dumps(
            {
                "attack": "autoattack",
                "eps": 8 / 255,
                "norm": "Linf",
                "n": 10_000,
                "version": "standard",
                "clean_acc": aa_clean,
                "robust_acc": autoattack,
                "per_attack": None,
                "checkpoint": "best",
                "split": "test",
            }
        )
    files["metrics.csv"] = "epoch,val_clean_acc,val_pgd_acc\n1,70.0,40.0\n2,81.5,53.0\n"
    for name, text in files.items():
        if name not in skip:
            (d / name).write_text(text)
    return d


def power_law_zoo(
    n: int = 400,
    alpha: float = 0.05,
    C: float = 5.0,
    noise: float = 0.02,
    seed: int = 0,
    with_collapsed: int = 0,
) -> pd.DataFrame:
    """A zoo whose envelope follows autoattack = C * FLOPs^alpha (runs fall below it by noise).

    The best run per log bin sits on the law times a small multiplicative noise; the others lie
    up to 30% below it. Costs follow kWh = 1e-16 * FLOPs^0.95 exactly times small noise.
    """
    rng = np.random.default_rng(seed)
    flops = 10 ** rng.uniform(15, 20, n)
    law = C * flops**alpha
    acc = law * np.exp(noise * rng.standard_normal(n)) * (1 - 0.3 * rng.random(n) ** 2)
    df = _features(rng, n)
    df["train_flops"] = flops
    df["autoattack_acc"] = np.clip(acc, 0, 100)
    df["pgd40_acc"] = np.clip(acc + 3, 0, 100)
    df["clean_acc"] = np.clip(acc + 30, 0, 100)
    kwh = 1e-16 * flops**0.95 * np.exp(0.01 * rng.standard_normal(n))
    df["energy_kwh"] = kwh
    df["device_hours"] = kwh / 0.5
    df["electricity_cost_usd"] = kwh * 0.12
    df["co2_kg"] = kwh * 0.5663
    if with_collapsed:
        df.loc[: with_collapsed - 1, "autoattack_acc"] = rng.uniform(0, 9.5, with_collapsed)
    return df.reindex(columns=COLUMN_NAMES)  # optional columns it does not set stay empty


def _features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    names = list(MODELS)
    models = rng.choice(names, n)
    synthetic = rng.random(n) < 0.5
    epochs = rng.choice([100, 400], n)
    return pd.DataFrame(
        {
            "run_id": [f"run{i:05d}" for i in range(n)],
            "dataset": "cifar10",
            "model": models,
            "params": [MODELS[m] for m in models],
            "activation": rng.choice(["relu", "gelu"], n),
            "loss": rng.choice(["pgd", "trades"], n),
            "attack_steps": rng.choice([1, 2, 5, 7, 10], n),
            "epochs": epochs,
            "ema": rng.random(n) < 0.5,
            "synthetic_data": synthetic,
            "synthetic_fraction": np.where(synthetic, 0.7, 0.0),
            "examples_seen": epochs * 50_000,
            "synthetic_size": np.where(synthetic, 1_000_000, 0),
            "eps": 8 / 255,
            "seed": 0,
        }
    )


def planted_zoo(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A zoo where AutoAttack accuracy depends strongly on attack_steps and weakly on synthetic
    data."""
    rng = np.random.default_rng(seed)
    df = _features(rng, n)
    steps = df["attack_steps"].to_numpy()
    acc = 20 + 4 * steps + 1.0 * df["synthetic_data"].to_numpy() + rng.normal(0, 0.5, n)
    df["autoattack_acc"] = acc
    df["pgd40_acc"] = acc + 2
    df["clean_acc"] = acc + 30
    df["train_flops"] = 10 ** rng.uniform(16, 19, n)
    df["energy_kwh"] = df["train_flops"] * 1e-17
    df["device_hours"] = df["energy_kwh"] * 2
    df["electricity_cost_usd"] = df["energy_kwh"] * 0.12
    df["co2_kg"] = df["energy_kwh"] * 0.5663
    return df.reindex(columns=COLUMN_NAMES)  # optional columns it does not set stay empty


JOINT_THETA = (35.0, 1000.0, 0.35, 2000.0, 0.30)  # E, A, alpha, B, beta: robust error in percent
JOINT_K = 66.0  # FLOPs per parameter per example (PGD-10: 11 forward-backward passes x 6)


def joint_zoo(
    n: int = 300, noise: float = 0.01, seed: int = 0, theta=JOINT_THETA, k: float = JOINT_K
) -> pd.DataFrame:
    """A zoo whose robust error follows L(N, D) = E + A/N^alpha + B/D^beta times lognormal noise."""
    rng = np.random.default_rng(seed)
    E, A, alpha, B, beta = theta
    N = np.round(10 ** rng.uniform(5, 8.5, n))
    D = np.round(10 ** rng.uniform(6.5, 8.5, n))
    err = (E + A / N**alpha + B / D**beta) * np.exp(noise * rng.standard_normal(n))
    df = _features(rng, n)
    synthetic = rng.random(n) < 0.5
    # one recipe family (loss, steps, EMA, activation): the runs of one law
    df = df.assign(
        params=N.astype(int),
        examples_seen=D.astype(int),
        loss="pgd",
        attack_steps=10,
        activation="relu",
        ema=False,
        epochs=np.maximum(1, np.round(D / 50_000)).astype(int),
        synthetic_data=synthetic,
        synthetic_fraction=np.where(synthetic, 0.7, 0.0),
        synthetic_size=np.where(synthetic, 1_000_000, 0),
    )
    df["train_flops"] = k * N * D
    df["autoattack_acc"] = 100 - err
    df["pgd40_acc"] = 100 - err + 2
    df["clean_acc"] = np.minimum(100, 100 - err + 30)
    df["energy_kwh"] = 1e-16 * df["train_flops"]
    df["device_hours"] = df["energy_kwh"] * 2
    df["electricity_cost_usd"] = df["energy_kwh"] * 0.12
    df["co2_kg"] = df["energy_kwh"] * 0.5663
    return df.reindex(columns=COLUMN_NAMES)  # optional columns it does not set stay empty
