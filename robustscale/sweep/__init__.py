"""Sweeps: recipe grids (``spec``), the SQLite ledger of run states (``ledger``), and the
launchers that work through it, on this machine (``launch``) or on Slurm (``slurm``).

docs/sweeps.md describes the sweep file, the ledger and the launchers.
"""

from robustscale.sweep.spec import Sweep, SweepRun, expand, load_sweep

__all__ = ["Sweep", "SweepRun", "expand", "load_sweep"]
