"""`robustscale study` on a CI-sized grid, and the shipped digits zoo through
analyze/predict/plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "digits-zoo.csv"

# Two runs of one epoch on a fifth and two fifths of the digits training set: what the full
# study does (train, AutoAttack on the 360 test examples, zoo), in seconds rather than minutes.
CI_STUDY = """\
name: ci-study
base: {dataset: digits, model: wrn10_1, loss: pgd, eps: 0.2, attack_steps: 1, step_size: 0.25,
       epochs: 1, batch_size: 32, lr: 0.05, val_size: 16, val_attack_steps: 1}
axes:
  train_fraction: [0.2, 0.4]
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "robustscale", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


def test_ci_sized_study_trains_attacks_and_writes_the_zoo(tmp_path):
    from robustscale.zoo import read_zoo

    (tmp_path / "ci.yaml").write_text(CI_STUDY)
    out = _cli(
        "study", "ci.yaml", "--out", "sw", "-o", "zoo.csv", "--max-parallel", "2", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    zoo = read_zoo(tmp_path / "zoo.csv")
    assert len(zoo) == 2 and zoo["autoattack_acc"].notna().all()
    assert sorted(zoo["examples_seen"].tolist())[0] < sorted(zoo["examples_seen"].tolist())[1]
    # a fifth and two fifths of the 1,421 training digits left after the 16 held out (284 and
    # 568), of which one epoch of whole batches of 32 draws 256 and 544: the distinct real
    # examples the joint law's D counts
    kept = [round(0.2 * 1421), round(0.4 * 1421)]
    assert sorted(zoo["unique_real_seen"].tolist()) == [k // 32 * 32 for k in kept] == [256, 544]
    # PGD-40 after AutoAttack: the robust loss the joint law is fitted on
    assert (zoo["pgd40_loss"] > 0).all()
    about = (tmp_path / "zoo.csv.about.txt").read_text()
    assert (
        "command: robustscale study ci.yaml" in about and "machine: " in about and "2 runs" in about
    )
    assert "study: 2 runs in zoo.csv (2 with AutoAttack" in out.stdout
    assert "robustscale analyze zoo.csv" in out.stdout
    # no terminal: the sweep logs one line, each run's AutoAttack one line per attack
    assert "sweep ci-study: 2 runs in" in out.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "sw" / "logs").glob("*.log"))
    assert "AutoAttack apgd-ce:" in logs and "examples robust" in logs
    again = _cli(
        "study", "ci.yaml", "--out", "sw", "-o", "zoo.csv", cwd=tmp_path
    )  # nothing left to train
    assert again.returncode == 0 and "started" not in again.stderr
    table = _cli("study", "ci.yaml", "--out", "sw", "-o", "again.csv", "--no-train", cwd=tmp_path)
    assert table.returncode == 0 and read_zoo(tmp_path / "again.csv").equals(zoo)
    assert "trained nothing" in (tmp_path / "again.csv.about.txt").read_text()
    missing = _cli("study", "ci.yaml", "--out", "nowhere", "--no-train", cwd=tmp_path)
    assert (
        missing.returncode == 2
        and "holds no study" in missing.stderr
        and not (tmp_path / "nowhere").exists()
    )


@pytest.mark.skipif(
    not SHIPPED.is_file(), reason="examples/digits-zoo.csv not generated in this checkout"
)
def test_shipped_zoo_goes_through_analyze_predict_and_plan(tmp_path):
    import json

    from robustscale.zoo import read_zoo

    zoo = read_zoo(SHIPPED)
    # the whole study, with every column the laws read (examples/README.md)
    assert len(zoo) == 36 and zoo["autoattack_acc"].notna().all()
    assert zoo["pgd40_loss"].notna().all() and zoo["unique_real_seen"].nunique() == 3
    analyze = _cli("analyze", str(SHIPPED), "-o", "report", "--target-acc", "40", cwd=tmp_path)
    assert analyze.returncode == 0, analyze.stderr
    assert "accuracy = " in analyze.stdout and (tmp_path / "report" / "report.html").is_file()
    fits = json.loads((tmp_path / "report" / "fits.json").read_text())
    # the amount of data is what the digits study varies most: the predictor, which sees it
    # through examples_seen, predicts held-out runs, and ranks it first
    pred = fits["predictor"]
    assert pred["r2_mean"] > 0.5, pred
    assert max(pred["importance"], key=pred["importance"].get) == "examples_seen"
    assert fits["joint"]["L"] == "pgd40_loss" and fits["joint"]["D"] == "unique"
    assert "plan --method frontier" in analyze.stdout  # what to do about a loose joint law
    predict = _cli(
        "predict", str(REPO / "recipes" / "digits-trades.yaml"), "--zoo", str(SHIPPED), cwd=tmp_path
    )
    assert predict.returncode == 0, predict.stderr
    assert "predicted AutoAttack accuracy" in predict.stdout
    plan = _cli(
        "plan",
        "--budget",
        "1e13",
        "--zoo",
        str(SHIPPED),
        "--models",
        "wrn10_1,wrn16_1,wrn22_1",
        "-o",
        "planned.yaml",
        cwd=tmp_path,
    )
    # depth 10 to 22 at width 1 changes no digit's robustness here: no family shows an effect of
    # N, so no joint law is identifiable and plan refuses in one line with the reason (and
    # writes nothing) rather than planning from a degenerate law
    assert fits["joint"]["identifiable"] is False
    assert plan.returncode == 2 and len(plan.stderr.strip().splitlines()) == 1, plan.stderr
    assert "not identifiable" in plan.stderr and not (tmp_path / "planned.yaml").exists()
    assert "--method frontier" in plan.stderr
    # from the measured frontier instead: the best run's recipe near the budget, data scaled
    frontier = _cli(
        "plan", "--budget", "1e12", "--zoo", str(SHIPPED), "--method", "frontier",
        "-o", "planned.yaml", cwd=tmp_path,
    )  # fmt: skip
    assert frontier.returncode == 0, frontier.stderr
    assert "law: envelope" in frontier.stdout and "frontier run digits-" in frontier.stdout
    from robustscale.recipe import Recipe

    recipe = Recipe.from_yaml(tmp_path / "planned.yaml")
    assert recipe.dataset == "digits" and recipe.model in set(zoo["model"])
