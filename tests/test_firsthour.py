"""A new user's first hour: thread defaults, progress output, zoo duplicates, the selection-metric
rename, train_fraction, small-data messages, train --final-eval's output."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny, write_cifar10
from zoo_factory import make_run

from robustscale.errors import RobustscaleError
from robustscale.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]


def _cli(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "robustscale", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd or REPO,
        timeout=600,
    )


def _fast(**kw) -> dict:
    """A standard digits run of a second: 5% of the training data, one epoch."""
    base = dict(
        loss="standard",
        attack_steps=0,
        epochs=1,
        train_fraction=0.2,
        val_size=16,
        val_attack_steps=1,
        batch_size=32,
    )
    return {**base, **kw}


def _recipe_file(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(tiny(**_fast(**kw)).to_yaml())
    return path


# ---- threads -------------------------------------------------------------------------------


def test_default_threads_are_the_usable_physical_cores_and_one_when_several_run():
    from robustscale.threads import default_threads, physical_cores, usable_cpus

    assert 1 <= physical_cores() <= len(usable_cpus())
    assert default_threads(1) == physical_cores()
    assert default_threads(3) == 1
    assert physical_cores({0}) == 1


def test_threads_are_recorded_and_a_rerun_under_another_count_warns(tmp_path):
    recipe = _recipe_file(tmp_path)
    run = tmp_path / "run"
    first = _cli(
        "train", str(recipe), "--run-dir", str(run), "--no-progress", env={"OMP_NUM_THREADS": "2"}
    )
    assert first.returncode == 0, first.stderr
    status = json.loads((run / "status.json").read_text())
    assert (
        status["threads"] == 2 and status["val_attack_steps"] == 1 and "best_val_pgd_acc" in status
    )
    same = _cli(
        "train", str(recipe), "--run-dir", str(run), "--no-progress", env={"OMP_NUM_THREADS": "2"}
    )
    assert same.returncode == 0 and "CPU thread(s)" not in same.stderr
    other = _cli(
        "train", str(recipe), "--run-dir", str(run), "--no-progress", env={"OMP_NUM_THREADS": "1"}
    )
    assert other.returncode == 0
    assert "trained with 2 CPU thread(s) and is run again with 1" in other.stderr
    # killed after its last checkpoint, before "done": the resume says so too
    status["state"] = "running"
    (run / "status.json").write_text(json.dumps(status))
    resumed = _cli(
        "train", str(recipe), "--run-dir", str(run), "--no-progress", env={"OMP_NUM_THREADS": "1"}
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "trained with 2 CPU thread(s) and is resumed with 1" in resumed.stderr


# ---- progress ------------------------------------------------------------------------------


def _pty_run(args: list[str]) -> str:
    """Run the CLI with stderr (and stdout) on a pseudo-terminal of 120 columns; return the
    output."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "robustscale", *args],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    from robustscale import train

    return train(tiny(**_fast()), out_root=tmp_path_factory.mktemp("runs"), progress=False)


def test_progress_bar_on_a_terminal_and_none_with_quiet(small_run):
    shown = _pty_run(["eval", str(small_run), "--attack", "pgd", "--n", "40"])
    assert "PGD-40" in shown and "40/40" in shown and "img/s" in shown  # tqdm's bar
    quiet = _pty_run(["--quiet", "eval", str(small_run), "--attack", "pgd", "--n", "40"])
    assert "img/s" not in quiet and "40/40" not in quiet and "imgs in" not in quiet
    assert "PGD-40" in quiet  # the result table is still printed


def test_without_a_terminal_each_stage_logs_one_line(small_run):
    out = _cli("eval", str(small_run), "--attack", "pgd", "--n", "40")
    assert out.returncode == 0
    assert "PGD-40: 40 imgs in" in out.stderr and "\r" not in out.stderr
    quiet = _cli("-q", "eval", str(small_run), "--attack", "pgd", "--n", "40")
    assert "imgs in" not in quiet.stderr


def test_autoattack_reports_each_attack_and_examples_left(small_run):
    import logging

    from robustscale.evaluate import evaluate_run

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = _Keep(logging.INFO)
    logger = logging.getLogger("robustscale")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        evaluate_run(small_run, attack="autoattack", n=12, batch_size=12)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    lines = [r for r in records if r.startswith("AutoAttack apgd-ce:")]
    assert lines and "of 12 examples robust" in lines[0]


# ---- zoo duplicates ------------------------------------------------------------------------


def test_duplicate_run_id_keeps_the_copy_with_autoattack_and_says_so(tmp_path):
    from robustscale.zoo import gather_zoo

    a = make_run(tmp_path / "a", "r1", autoattack=None)  # sorted first: the one the old code kept
    b = make_run(tmp_path / "b", "r1", autoattack=47.5)
    df, skipped = gather_zoo(tmp_path)
    assert len(df) == 1 and df["autoattack_acc"].iloc[0] == 47.5
    assert len(skipped) == 1 and skipped[0].path == str(a)
    assert str(b) in skipped[0].reason and "AutoAttack" in skipped[0].reason


def test_identical_duplicates_are_merged_silently(tmp_path):
    from robustscale.zoo import gather_zoo

    make_run(tmp_path / "a", "r1")
    make_run(tmp_path / "b", "r1")
    df, skipped = gather_zoo(tmp_path)
    assert len(df) == 1 and skipped == []


def test_old_status_name_is_still_read(tmp_path):
    from robustscale.runs import RunDir, read_status
    from robustscale.zoo import gather_zoo

    run = make_run(tmp_path, "r1", pgd40=41.0)
    status = json.loads((run / "status.json").read_text())
    status["best_val_pgd40_acc"] = status.pop("best_val_pgd_acc")  # as files before the rename say
    (run / "status.json").write_text(json.dumps(status))
    assert RunDir(run).read_status().best_val_pgd_acc == 41.0
    assert read_status(run)["best_val_pgd_acc"] == 41.0
    df, _ = gather_zoo(tmp_path)
    assert df["pgd40_acc"].iloc[0] == 41.0


# ---- recipes, data, messages ---------------------------------------------------------------


def test_train_fraction_keeps_fixed_nested_subsets_and_is_part_of_the_run_id():
    import torch

    from robustscale.train.setup import train_subset

    x, y = torch.arange(100).float()[:, None], torch.arange(100)
    a, b = train_subset(x, y, 25), train_subset(x, y, 50)
    assert len(a[0]) == 25 and set(a[1].tolist()) <= set(b[1].tolist())
    assert torch.equal(train_subset(x, y, 25)[1], a[1])
    assert Recipe(train_fraction=0.5).run_id != Recipe().run_id
    assert Recipe(train_fraction=1.0).run_id == Recipe().run_id  # old run ids are kept
    with pytest.raises(RobustscaleError, match=r"train_fraction=0.0 is out of range"):
        Recipe(train_fraction=0.0)


def test_train_fraction_reaches_training_and_the_forecast(small_run):
    from robustscale.cost.forecast import forecast_recipe
    from robustscale.runs import read_recipe

    recipe = read_recipe(small_run)
    cost = json.loads((small_run / "cost.json").read_text())
    assert cost["examples_seen"] == forecast_recipe(recipe)["examples_per_epoch"] * recipe.epochs
    assert cost["examples_seen"] <= 0.2 * (1437 - 16)


def test_small_cifar_set_says_every_misfit_at_once(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=50, n_test=20)
    recipe = REPO / "recipes" / "cifar10-wrn28_10-pgd10-100ep.yaml"
    out = _cli(
        "train",
        str(recipe),
        "--set",
        f"data_dir={data}",
        "--set",
        "model=wrn10_1",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert (
        len(err) == 1
        and "val_size=" in err[0]
        and "batch_size=" in err[0]
        and "values that fit" in err[0]
    )
    fits = [w for w in err[0].split() if "=" in w and w[0].isalpha()][-2:]
    again = _cli(
        "train",
        str(recipe),
        "--set",
        f"data_dir={data}",
        "--set",
        "model=wrn10_1",
        "--set",
        "epochs=1",
        "--set",
        "attack_steps=1",
        "--set",
        "val_attack_steps=1",
        "--set",
        fits[0],
        "--set",
        fits[1],
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert again.returncode == 0, again.stderr


def test_cifar_file_with_wrong_keys_names_the_file_and_the_keys(tmp_path):
    from robustscale.data import read_split

    folder = write_cifar10(tmp_path, n_train=10, n_test=5) / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({"images": [], "targets": []}, fh)
    with pytest.raises(
        RobustscaleError, match=r"data_batch_2.*'images', 'targets'.*expected.*'data' and 'labels'"
    ):
        read_split("cifar10", "train", tmp_path)


def test_train_final_eval_prints_the_evaluation(tmp_path):
    recipe = _recipe_file(tmp_path)
    out = _cli(
        "train",
        str(recipe),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--final-eval",
        "pgd",
    )
    assert out.returncode == 0, out.stderr
    assert "PGD-40" in out.stdout and "clean" in out.stdout and "wrote " in out.stdout
