"""The CLI's start-up: `--help` and the light commands never import torch."""

from __future__ import annotations

import subprocess
import sys


def _imports_after(code: str) -> set[str]:
    probe = (
        code + "\nimport sys\nprint(' '.join(m for m in ('torch', 'sklearn', "
        "'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_help_never_imports_torch():
    heavy = _imports_after("import robustscale.cli as c\nc.build_parser().format_help()")
    assert heavy == set(), f"robustscale --help imports {sorted(heavy)}"


def test_package_import_is_light_and_train_evaluate_stay_callable():
    assert _imports_after("import robustscale") == set()
    import robustscale
    from robustscale import evaluate, train

    assert callable(train) and callable(evaluate) and robustscale.train is train
    assert train.train.__module__ == "robustscale.train.engine"
