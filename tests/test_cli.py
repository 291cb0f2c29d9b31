"""The CLI's start-up: `--help` and the light commands never import torch."""

from __future__ import annotations

import subprocess
import sys


def _imports_after(code: str) -> set[str]:
    """The heavy libraries imported once ``code`` has run in a fresh interpreter."""
    probe = (
        code + "\nimport sys\nprint('HEAVY:', *(m for m in ('torch', 'sklearn', 'pandas') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    heavy = [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")]
    return set(heavy[-1].split()[1:])


def test_help_never_imports_torch():
    heavy = _imports_after("import robustscale.cli as c\nc.build_parser().format_help()")
    assert heavy == set(), f"robustscale --help imports {sorted(heavy)}"


def test_package_import_is_light_and_train_evaluate_stay_callable():
    assert _imports_after("import robustscale") == set()
    import robustscale
    from robustscale import evaluate, train

    assert callable(train) and callable(evaluate) and robustscale.train is train
    assert train.train.__module__ == "robustscale.train.engine"


def test_status_never_imports_torch(tmp_path):
    code = (
        "from robustscale.sweep.ledger import Ledger\n"
        f"Ledger({str(tmp_path / 'ledger.sqlite')!r})"
        ".add_runs([('digits-wrn10_1-pgd3-x', 0, 'x')])\n"
        "from robustscale.cli import main\n"
        f"assert main(['status', {str(tmp_path)!r}]) == 0\n"
    )
    assert _imports_after(code) == set(), "robustscale status imports torch"
