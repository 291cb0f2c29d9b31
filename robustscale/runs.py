"""The run directory (docs/run-directory.md): its paths, its readers, and ``load``.

Later stages read a run only through these files; ``load(run_dir)`` gives back the trained
classifier as an ``nn.Module`` in eval mode taking [0, 1] images, ready for any attack library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustscale.errors import RobustscaleError, first_line
from robustscale.files import read_json
from robustscale.recipe import Recipe


@dataclass(frozen=True)
class RunDir:
    path: Path

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


def read_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run was trained with."""
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise RobustscaleError(f"run directory {str(run.path)!r} does not exist")
    if not run.recipe.is_file():
        raise RobustscaleError(f"{str(run.path)!r} is not a run directory (no recipe.yaml)")
    return Recipe.from_yaml(run.recipe)


# The selection metric is PGD with the recipe's ``val_attack_steps`` (5 or 10 in the digits
# recipes, 40 in the paper's), so its names say "pgd", not "pgd40"; files written before the
# rename are read under the new names.
STATUS_RENAMES = {"best_val_pgd40_acc": "best_val_pgd_acc"}
METRIC_RENAMES = {"val_pgd40_acc": "val_pgd_acc"}


def renamed(record: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """``record`` with old key names replaced by their new ones (a new name already there wins)."""
    if not any(old in record for old in renames):
        return record
    out = {renames.get(k, k): v for k, v in record.items() if k not in renames or renames[k] not in record}
    return out


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict (old key names read under the new ones), or None when absent."""
    path = RunDir(Path(run_dir)).status
    return renamed(read_json(path), STATUS_RENAMES) if path.exists() else None


def model_from_state(recipe: Recipe, state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the recipe's model and load weights into it (eval mode, [0, 1] inputs)."""
    from robustscale.data import dataset_info
    from robustscale.models import build_model

    info = dataset_info(recipe.dataset)
    model = build_model(recipe.model, info.num_classes, info.shape[0], info.mean, info.std,
                        recipe.activation, recipe.drop_rate, img_size=info.shape[1:])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise RobustscaleError(f"checkpoint weights do not fit model={recipe.model!r}: {first_line(exc)}") from None
    return model.to(device).eval()


def load(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> nn.Module:
    """The trained classifier of a run: ``checkpoint`` is ``best`` (selected epoch; EMA weights
    when EMA was on) or ``last``. Eval mode, parameters frozen, inputs in [0, 1]."""
    from robustscale.train.checkpoint import load_checkpoint

    recipe = read_recipe(run_dir)
    state = load_checkpoint(RunDir(Path(run_dir)).checkpoint(checkpoint))
    weights = state["model"] if checkpoint == "best" or state.get("ema") is None else state["ema"]
    model = model_from_state(recipe, weights, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
