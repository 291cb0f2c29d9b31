"""The Recipe: every knob of a training run, validated, YAML in and out, with a stable run id.

A recipe is flat (one level of keys) so that `--set key=value` overrides and sweep axes
address keys by their plain names. Validation happens before any work: an unknown key, a
wrong type or an out-of-range value raises :class:`RobustscaleError` with one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from robustscale.errors import RobustscaleError
from robustscale.site_config import cost_defaults

# Settings that never change what a run computes: they are left out of the run id and may
# differ when a run directory is resumed.
NON_RESULT_KEYS = frozenset(
    {
        "data_dir",
        "device",
        "checkpoint_every_steps",
        "grad_checkpointing",  # recomputes blocks in backward: same numbers, less memory
        "pue",
        "usd_per_kwh",
        "gco2_per_kwh",
        "power_watts",
        "power_sample_interval",
        "trackers",
    }
)

# Result keys added after run ids were first handed out, with the default that means "as before":
# left out of the id at that default, so existing run directories keep their ids.
_LATER_KEYS = {"train_fraction": 1.0, "sync_bn": False}

# Experiment trackers a run can log to (robustscale/trackers/; each an optional extra).
TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")
# Split sizes of the built-in datasets (digits: the fixed 80/20 split of sklearn's 1797 images),
# here rather than beside the loaders so that analysis and ``status`` know them without torch.
TRAIN_SPLIT_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1437}
TEST_SPLIT_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 360}

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_fraction(value: Any, key: str = "value") -> float:
    """Read a number given as a float, an int or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise RobustscaleError(
            f"{key}={value!r} is not a number; give a float or a fraction such as 8/255"
        )
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise RobustscaleError(f"{key}={value!r} divides by zero")
            return float(m.group(1)) / den
        try:
            return float(value)
        except ValueError:
            pass
    raise RobustscaleError(
        f"{key}={value!r} is not a number; give a float or a fraction such as 8/255"
    )


def format_eps(eps: float) -> str:
    """Human form of an L-inf radius: ``8/255`` when it is a whole number of 255ths."""
    frac = Fraction(eps).limit_denominator(1000)
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{int(round(k))}/255"
    if abs(float(frac) - eps) < 1e-9 and frac.denominator <= 1000:
        return str(float(eps))
    return f"{eps:g}"


class Recipe(BaseModel):
    """Every knob of one training run. Defaults give a small, fast digits run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # data
    dataset: Literal["cifar10", "cifar100", "digits", "arrays"] = "digits"
    data_dir: str = "data"
    synthetic_data: str | None = None
    synthetic_fraction: float = 0.0
    augment: bool = True  # random crop (4 px) + horizontal flip; CIFAR only
    val_size: int = 256
    val_source: Literal["train", "test"] = "train"
    # the first (seeded-random) fraction of the training examples, after the validation
    # hold-out: the "how much unique data" axis of a study (digits-study.yaml)
    train_fraction: float = 1.0
    # model
    model: str = "wrn10_1"
    activation: Literal["relu", "gelu", "silu"] = "relu"
    drop_rate: float = 0.0
    # objective and threat model
    loss: Literal["standard", "pgd", "trades"] = "pgd"
    trades_beta: float = 6.0
    eps: float = 8 / 255
    step_size: float = 2 / 255
    attack_steps: int = 10
    val_attack_steps: int = 40
    # optimisation
    epochs: int = 10
    warmup_epochs: int = 0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step"] = "cosine"
    ema_decay: float | None = None
    seed: int = 0
    # execution
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    # DDP on CUDA: BatchNorm statistics over the global batch, not each process's slice
    sync_bn: bool = False
    grad_checkpointing: bool = False  # activation checkpointing (WRN-70-16 TRADES at large batches)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_steps: int | None = None
    # accounting (the paper's constants)
    pue: float = 1.58
    usd_per_kwh: float = 0.12
    gco2_per_kwh: float = 566.3
    power_watts: float | None = None  # only for an explicitly *estimated* energy
    power_sample_interval: float = 0.1
    # where researchers watch the run (not a result: left out of the run id)
    trackers: list[str] = []

    def __init__(self, **data: Any):
        # No I/O here: a Recipe is a pure function of its keys. The site's robustscale.toml
        # [cost] table is applied by the loaders that ask for it (site_defaults=True).
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise RobustscaleError(_one_line(exc, data)) from None

    @field_validator("eps", "step_size", mode="before")
    @classmethod
    def _fraction(cls, v: Any, info: Any) -> float:
        return parse_fraction(v, info.field_name)

    @field_validator("trackers", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> list[str]:
        return check_tracker_names(v)

    @field_validator("model", mode="after")
    @classmethod
    def _model_name(cls, v: str) -> str:
        # The model name is part of the run id, hence of file names (runs/<run_id>/, recipes/...).
        from robustscale.files import check_component

        return check_component(v, "model")

    @model_validator(mode="after")
    def _ranges(self) -> Recipe:
        checks = [
            ("eps", self.eps, 0 <= self.eps <= 1, "a number in [0, 1] (input units)"),
            ("step_size", self.step_size, self.step_size > 0, "a number > 0"),
            (
                "synthetic_fraction",
                self.synthetic_fraction,
                0 <= self.synthetic_fraction < 1,
                "a number in [0, 1)",
            ),
            ("epochs", self.epochs, self.epochs >= 1, "an integer >= 1"),
            (
                "warmup_epochs",
                self.warmup_epochs,
                0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
                f"an integer in [0, epochs={self.epochs})",
            ),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("trades_beta", self.trades_beta, self.trades_beta >= 0, "a number >= 0"),
            ("val_size", self.val_size, self.val_size >= 0, "an integer >= 0"),
            (
                "train_fraction",
                self.train_fraction,
                0 < self.train_fraction <= 1,
                "a number in (0, 1]",
            ),
            (
                "val_attack_steps",
                self.val_attack_steps,
                self.val_attack_steps >= 1,
                "an integer >= 1",
            ),
            ("drop_rate", self.drop_rate, 0 <= self.drop_rate < 1, "a number in [0, 1)"),
            ("pue", self.pue, self.pue >= 1, "a number >= 1"),
            ("usd_per_kwh", self.usd_per_kwh, self.usd_per_kwh >= 0, "a number >= 0"),
            ("gco2_per_kwh", self.gco2_per_kwh, self.gco2_per_kwh >= 0, "a number >= 0"),
            (
                "power_sample_interval",
                self.power_sample_interval,
                self.power_sample_interval > 0,
                "a number > 0",
            ),
        ]
        if self.loss != "standard":
            checks.append(
                (
                    "attack_steps",
                    self.attack_steps,
                    self.attack_steps >= 1,
                    f"an integer >= 1 with loss={self.loss}",
                )
            )
        else:
            checks.append(
                ("attack_steps", self.attack_steps, self.attack_steps >= 0, "an integer >= 0")
            )
        if self.ema_decay is not None:
            checks.append(
                (
                    "ema_decay",
                    self.ema_decay,
                    0 < self.ema_decay < 1,
                    "null (no EMA) or a number in (0, 1)",
                )
            )
        if self.checkpoint_every_steps is not None:
            checks.append(
                (
                    "checkpoint_every_steps",
                    self.checkpoint_every_steps,
                    self.checkpoint_every_steps >= 1,
                    "null or an integer >= 1",
                )
            )
        if self.power_watts is not None:
            checks.append(
                ("power_watts", self.power_watts, self.power_watts > 0, "null or a number > 0")
            )
        checks.append(("seed", self.seed, 0 <= self.seed < 2**63, "an integer from 0 to 2**63 - 1"))
        for key, value, ok, allowed in checks:
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{key}={value!r} is out of range; allowed: {allowed}")
        if self.synthetic_data is None and self.synthetic_fraction > 0:
            raise ValueError(
                f"synthetic_fraction={self.synthetic_fraction!r} needs synthetic_data (a path to "
                "an .npz); allowed: 0 when synthetic_data is null"
            )
        # Whether synthetic_data exists is checked when a run starts (or a sweep is expanded),
        # not here: a recipe is a pure value, valid on a machine that does not hold the file.
        if self.synthetic_data is not None:
            if self.synthetic_fraction <= 0:
                raise ValueError(
                    "synthetic_fraction=0.0 with synthetic_data set; allowed: a number in (0, 1)"
                )
        return self

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], site_defaults: bool = False) -> Recipe:
        """Validate a plain dict; raise RobustscaleError with one line on any problem.

        ``site_defaults=True`` fills the cost constants the dict does not give from the site's
        robustscale.toml ``[cost]`` table (robustscale/site_config.py); the CLI's loaders ask
        for it, a resolved recipe.yaml of a run never needs it."""
        if not isinstance(data, dict):
            raise RobustscaleError(
                f"a recipe must be a mapping of key: value, got {type(data).__name__}"
            )
        return cls(**(_with_cost_defaults(data) if site_defaults else data))

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[str] | None = None, site_defaults: bool = False
    ) -> Recipe:
        """Load a YAML recipe file, apply ``key=value`` overrides, validate (``site_defaults``:
        as :meth:`from_dict`)."""
        from robustscale.files import read_yaml_mapping

        data = read_yaml_mapping(path, "recipe file")
        data.update(parse_overrides(overrides or []))
        return cls.from_dict(data, site_defaults=site_defaults)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Recipe:
        """A new recipe with ``key=value`` strings (or a dict) applied, validated."""
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        return Recipe.from_dict({**self.to_dict(), **extra})

    # ---- output -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def result_dict(self) -> dict[str, Any]:
        """The keys that change what the run computes (everything but NON_RESULT_KEYS). Keys added
        after runs were made are left out at their default, so those runs keep their ids."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in NON_RESULT_KEYS and not (k in _LATER_KEYS and v == _LATER_KEYS[k])
        }

    def train_subset_size(self, n: int) -> int:
        """Training examples kept of ``n`` (after the validation hold-out) at ``train_fraction``."""
        return n if self.train_fraction >= 1 else max(1, round(self.train_fraction * n))

    @property
    def adversarial(self) -> bool:
        return self.loss != "standard"

    @property
    def run_id(self) -> str:
        """Stable id: a readable prefix and a hash of every result-changing key (seed included)."""
        blob = json.dumps(self.result_dict(), sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        steps = f"{self.attack_steps}" if self.adversarial else ""
        return (
            f"{self.dataset}-{self.model}-{self.loss}{steps}-e{self.epochs}-s{self.seed}-{digest}"
        )

    def diff(
        self, other: Recipe, ignore: frozenset[str] = NON_RESULT_KEYS
    ) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ between two recipes (ignoring ``ignore``)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def check_tracker_names(names: Any) -> list[str]:
    """The ``trackers`` value as a list of known names, each once (``null`` or a comma-separated
    string also accepted); raises ValueError naming the bad entry and what is allowed."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)):
        raise ValueError(
            f"trackers={names!r} is not a list; allowed: a list of {', '.join(TRACKER_NAMES)}"
        )
    out: list[str] = []
    for name in names:
        if name not in TRACKER_NAMES:
            raise ValueError(
                f"trackers: {name!r} is not a known tracker; allowed: {', '.join(TRACKER_NAMES)}"
            )
        if name not in out:
            out.append(name)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``null``, ``true``, ``0.1``,
    ``8/255``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RobustscaleError(
                f"override {item!r} is not key=value (for example --set epochs=5)"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RobustscaleError(f"override {item!r} has an empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def _one_line(exc: ValidationError, data: dict[str, Any]) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        allowed = ", ".join(Recipe.model_fields)
        return f"unknown recipe key {loc!r} (value {err.get('input')!r}); allowed keys: {allowed}"
    if err.get("type") == "literal_error":
        return f"{loc}={data.get(loc)!r} is not allowed; {msg[0].lower() + msg[1:]}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if err.get("type") == "value_error" and "ctx" in err and "error" in err["ctx"]:
        return str(err["ctx"]["error"])
    if loc:
        return f"{loc}={data.get(loc)!r} is invalid: {msg}"
    return msg


# ---- site defaults for the cost constants (robustscale.toml [cost]; robustscale/site_config.py)


def _with_cost_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the cost keys it does not give taken from robustscale.toml's [cost] table:
    the recipe (and --set) wins, the file beats the paper's defaults."""
    defaults = cost_defaults()
    missing = {k: v for k, v in defaults.items() if k not in data}
    return {**data, **missing} if missing else data
