"""The Slurm options of a sweep, validated as values before any of them reaches ``sbatch``.

submitit writes every option as an ``#SBATCH --key=value`` line of a bash script. A value is
therefore checked to be what its option can hold (names, integers, finite numbers); a newline,
a space or a shell metacharacter in it could add a line or an option to the script, so none is
allowed. ``additional`` (extra sbatch options) must be a mapping of option name to a plain
value: ``{constraint: a100, exclusive: true, begin: now+1hour}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from robustscale.errors import RobustscaleError

# Slurm names (partitions, accounts, QoS; comma-separated lists of them).
NAME = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
# A value of an extra sbatch option: node lists (node[1-4]), times (now+1hour, 2024-01-01T10:00),
# features (a100|h100 is refused: '|' is a shell metacharacter), paths without spaces.
VALUE = re.compile(r"[A-Za-z0-9_.,:=+/@%\[\]-]+")
OPTION = re.compile(r"[a-z][a-z0-9_-]*")
# Options the launcher sets itself (array throttle, log paths, signal, job name) or that would
# change what the job runs.
RESERVED = frozenset(
    {
        "array",
        "output",
        "error",
        "open_mode",
        "signal",
        "job_name",
        "wrap",
        "chdir",
        "parsable",
        "input",
        "export_file",
        "get_user_env",
    }
)


@dataclass
class SlurmOptions:
    """Everything the Slurm launcher passes to sbatch, plus the leases of the jobs' runs."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 1440
    gpus_per_run: int = 1  # 0: a CPU job with no GPU request
    cpus_per_task: int | None = None  # also the job's torch intra-op threads
    mem_gb: int | None = None
    array_parallelism: int = 64
    lease_timeout: float = 900.0
    heartbeat: float = 60.0
    # requeues after a time-out per job (submitit's max_num_timeout; its default is 3)
    max_timeouts: int = 1000
    # seconds before the time limit that Slurm sends USR2 (checkpoint + requeue); default 90,
    # at most half the time limit (a signal due before the job starts would requeue it for ever)
    signal_delay_s: int | None = None
    additional: dict[str, Any] | None = None  # extra sbatch options (slurm_additional_parameters)

    @classmethod
    def from_sources(cls, sweep_file: dict[str, Any], flags: dict[str, Any]) -> SlurmOptions:
        """The sweep file's ``slurm:`` section, overridden by command-line flags, validated."""
        known = {f.name for f in fields(cls)}
        merged = {**sweep_file, **flags}
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise RobustscaleError(
                f"unknown slurm option {unknown[0]!r}; allowed: {', '.join(sorted(known))}"
            )
        out = cls(**merged)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise a one-line RobustscaleError naming the first option that is not a valid value."""
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not NAME.fullmatch(value)):
                raise RobustscaleError(
                    f"slurm option {key}={value!r}; allowed: a Slurm name (letters, digits, "
                    "_ . + -; several separated by commas), no spaces or newlines"
                )
        _integer("time_min", self.time_min, 1)
        _integer("gpus_per_run", self.gpus_per_run, 0)
        _integer("array_parallelism", self.array_parallelism, 1)
        _integer("max_timeouts", self.max_timeouts, 0)
        for key in ("cpus_per_task", "mem_gb", "signal_delay_s"):
            if getattr(self, key) is not None:
                _integer(key, getattr(self, key), 1)
        if self.signal_delay_s is not None and self.signal_delay_s >= self.time_min * 60:
            raise RobustscaleError(
                f"slurm option signal_delay_s={self.signal_delay_s}; allowed: fewer seconds than "
                f"the time limit ({self.time_min * 60} s)"
            )
        check_leases(self.lease_timeout, self.heartbeat)
        self.additional = additional_options(self.additional)

    def executor_parameters(self, name: str) -> dict[str, Any]:
        """submitit's executor parameters (``--gpus-per-run 0``: no GPU request at all)."""
        p: dict[str, Any] = {
            "name": name,
            "timeout_min": self.time_min,
            "tasks_per_node": max(1, self.gpus_per_run),
            "nodes": 1,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s or min(90, self.time_min * 30),
        }
        if self.gpus_per_run:
            p["gpus_per_node"] = self.gpus_per_run
        for key, value in (
            ("cpus_per_task", self.cpus_per_task),
            ("mem_gb", self.mem_gb),
            ("slurm_partition", self.partition),
            ("slurm_account", self.account),
            ("slurm_qos", self.qos),
            ("slurm_additional_parameters", self.additional),
        ):
            if value is not None:
                p[key] = value
        return p


def _integer(key: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RobustscaleError(f"slurm option {key}={value!r}; allowed: an integer >= {low}")


MIN_HEARTBEAT = 0.1  # seconds; below this the ledger is rewritten many times a second per launcher
MIN_LEASE = 2.0  # seconds; a busy machine can delay a heartbeat by a second
LEASE_PER_HEARTBEAT = 3  # a lease outlives two missed heartbeats


def check_leases(lease_timeout: Any, heartbeat: Any, *, flags: bool = False) -> None:
    """``lease_timeout >= max(2 s, 3 x heartbeat)``, ``heartbeat >= 0.1 s``, both finite.

    A lease that expires before it is renewed (``--lease-timeout -1``, ``0``, ``nan``, or a
    heartbeat as long as the lease) is stale the moment it is taken, so two launchers on one
    folder take the run from each other at every look, for ever."""
    names = ("--lease-timeout", "--heartbeat") if flags else ("lease_timeout", "heartbeat")
    for name, value, low in zip(names, (lease_timeout, heartbeat), (MIN_LEASE, MIN_HEARTBEAT)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < low
        ):
            raise RobustscaleError(
                f"{name}={value!r}; allowed: a finite number of seconds >= {low:g}"
            )
    if lease_timeout < LEASE_PER_HEARTBEAT * heartbeat:
        raise RobustscaleError(
            f"{names[0]}={lease_timeout!r} with {names[1]}={heartbeat!r}; allowed: a lease "
            f"timeout at least {LEASE_PER_HEARTBEAT}x the heartbeat (a lease renewed less "
            "often is taken over while its holder is alive)"
        )


def additional_options(additional: Any) -> dict[str, Any] | None:
    """Validate ``additional``: option names (``constraint``, ``exclusive``) mapped to plain
    values; ``true`` is a bare flag, ``false`` or null leaves the option out."""
    if additional is None:
        return None
    if not isinstance(additional, dict):
        raise RobustscaleError(
            f"slurm option additional={additional!r}; allowed: a mapping of sbatch option "
            "to value, e.g. {constraint: a100, exclusive: true}"
        )
    out: dict[str, Any] = {}
    for key, value in additional.items():
        name = str(key).replace("-", "_")
        if not isinstance(key, str) or not OPTION.fullmatch(key):
            raise RobustscaleError(
                f"slurm additional option {key!r}; allowed: an sbatch option name "
                "(lower-case letters, digits, - and _)"
            )
        if name in RESERVED:
            raise RobustscaleError(
                f"slurm additional option {key!r} is set by the launcher; allowed: any other "
                f"sbatch option (reserved: {', '.join(sorted(RESERVED))})"
            )
        if value is None or value is False:
            continue
        if value is True:
            out[name] = True
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            or isinstance(value, float)
            and math.isfinite(value)
        ):
            out[name] = value
        elif isinstance(value, str) and VALUE.fullmatch(value):
            out[name] = value
        else:
            raise RobustscaleError(
                f"slurm additional option {key}={value!r}; allowed: true, a number, or text of "
                "letters, digits and _ . , : = + / @ % [ ] - (no spaces, quotes, newlines or "
                "shell characters)"
            )
    return out or None


__all__ = ["MIN_HEARTBEAT", "MIN_LEASE", "SlurmOptions", "additional_options", "check_leases"]
