"""Fault injection: every file a command reads, damaged every way a disk or a user can, ends in
one line naming the file (exit 2), no traceback, and no other file changed.

For each file of the run directory, the sweep folder and the zoo, and each of {missing, empty,
truncated mid-record, random bytes, valid JSON/CSV/YAML of the wrong shape}, the commands that
read it run in-process through ``robustscale.cli.main`` on a fresh copy of one trained digits
run. ``zoo`` is the exception by design: it still writes the table of the healthy runs (exit 0)
and lists the damaged run, naming the file, in its "damaged runs" section.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny
from zoo_factory import power_law_zoo

from robustscale import train
from robustscale.cli import main
from robustscale.sweep.ledger import Ledger
from robustscale.zoo import write_zoo

FAULTS = ("missing", "empty", "truncated", "random", "shape")
WRONG_SHAPE = {".json": b"[1, 2, 3]\n", ".csv": b"a,b\n1,2\n", ".yaml": b"- 1\n- 2\n"}


def _damage(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "missing":
        path.unlink()
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "truncated":  # mid-record: no newline at the end, half the bytes gone
        cut = data[: max(1, len(data) // 2)]
        path.write_bytes(cut.rstrip(b"\n") if cut.endswith(b"\n") else cut)
    elif fault == "random":
        path.write_bytes(os.urandom(max(64, min(len(data), 4096))) + b"\xff\xfe")
    elif fault == "shape":
        if path.suffix == ".pt":
            import torch

            torch.save([1, 2, 3], path)
        else:
            path.write_bytes(WRONG_SHAPE[path.suffix])


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != skip
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One finished tiny digits run, with a PGD evaluation, and the recipe file it came from."""
    out = tmp_path_factory.mktemp("faults")
    recipe = tiny(epochs=2, attack_steps=2, val_attack_steps=2, val_size=64)
    recipe_file = out / "recipe.yaml"
    recipe_file.write_text(recipe.to_yaml())
    run = train(recipe, out_root=out / "runs", progress=False)
    assert main(["eval", str(run), "--attack", "pgd", "--steps", "2", "--n", "40"]) == 0
    assert main(["eval", str(run), "--attack", "pgd", "--steps", "2"]) == 0  # the zoo's whole split
    return run, recipe_file


def _commands(run: Path, recipe_file: Path, tmp: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", str(recipe_file), "--run-dir", str(run), "--no-progress"],
        "eval": ["eval", str(run), "--attack", "pgd", "--steps", "1", "--n", "20"],
        "zoo": ["zoo", str(run.parent), "-o", str(tmp / "zoo.csv")],
    }


# file -> (commands that read it, commands for which a *missing* file is legitimate)
RUN_FILES = {
    "recipe.yaml": (("train", "eval", "zoo"), ("train",)),  # train rewrites it (checkpoint checked)
    "status.json": (("train", "zoo"), ("train",)),  # a run killed before its first status
    "metrics.csv": (("train",), ()),
    "cost.json": (("zoo",), ()),
    "eval/pgd-51-255.json": (("zoo",), ("zoo",)),  # no evaluation: an empty cell
    "checkpoints/best.pt": (("eval", "zoo"), ()),
}
CASES = [
    (name, cmd, fault)
    for name, (cmds, ok_missing) in RUN_FILES.items()
    for cmd in cmds
    for fault in FAULTS
    if not (fault == "missing" and cmd in ok_missing)
]


def _one_line(err: str, name: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("robustscale: error")]
    assert len(lines) == 1, err
    assert Path(name).name in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name,command,fault", CASES, ids=[f"{n}-{c}-{f}" for n, c, f in CASES])
def test_damaged_run_file_is_one_line_and_nothing_else_changes(
    trained, tmp_path, capsys, name, command, fault
):
    src, recipe_file = trained
    run = tmp_path / "runs" / src.name
    shutil.copytree(src, run)
    if command == "train":  # a run to resume: the status says it is still running
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    target = run / name
    _damage(target, fault)
    before = _snapshot(tmp_path, target)
    capsys.readouterr()
    rc = main(_commands(run, recipe_file, tmp_path)[command])
    err = capsys.readouterr().err
    if command == "zoo":  # the table of healthy runs is written; the damaged run is listed apart
        assert rc == 0 and "Traceback" not in err
        assert "damaged runs" in err and Path(name).name in err.split("damaged runs", 1)[1], err
        assert (tmp_path / "zoo.csv").read_text().count("\n") == 1  # the header only
        before.pop("zoo.csv", None)
        after = _snapshot(tmp_path, target)
        after.pop("zoo.csv", None)
    else:
        assert rc == 2, err
        _one_line(err, name)
        after = _snapshot(tmp_path, target)
    assert after == before


def test_status_json_with_an_unknown_state_is_one_line(trained, tmp_path, capsys):
    src, recipe_file = trained
    run = tmp_path / src.name
    shutil.copytree(src, run)
    (run / "status.json").write_text(json.dumps({"state": "weird"}))
    assert main(["train", str(recipe_file), "--run-dir", str(run), "--no-progress"]) == 2
    assert "weird" in _one_line(capsys.readouterr().err, "status.json")


def test_metrics_epoch_that_is_text_during_resume_is_one_line(trained, tmp_path, capsys):
    src, recipe_file = trained
    run = tmp_path / src.name
    shutil.copytree(src, run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    text = (run / "metrics.csv").read_text().splitlines()
    text[1] = "one" + text[1][1:]
    (run / "metrics.csv").write_text("\n".join(text) + "\n")
    before = _snapshot(tmp_path, run / "metrics.csv")
    assert main(["train", str(recipe_file), "--run-dir", str(run), "--no-progress"]) == 2
    assert "line 2" in _one_line(capsys.readouterr().err, "metrics.csv")
    assert _snapshot(tmp_path, run / "metrics.csv") == before


@pytest.mark.parametrize("change", ["lr=0.2", "model=wrn16_1"])
def test_resume_compares_the_checkpoints_recipe_when_recipe_yaml_is_gone(
    trained, tmp_path, capsys, change
):
    src, recipe_file = trained
    run = tmp_path / src.name
    shutil.copytree(src, run)
    (run / "recipe.yaml").unlink()
    (run / "status.json").unlink()
    before = _snapshot(tmp_path, run / "recipe.yaml")
    rc = main(["train", str(recipe_file), "--set", change, "--run-dir", str(run), "--no-progress"])
    line = _one_line(capsys.readouterr().err, "last.pt")
    assert rc == 2 and "was trained with" in line and change.split("=")[0] in line
    assert not (run / "recipe.yaml").exists() and _snapshot(tmp_path, run / "recipe.yaml") == before


def test_stale_temporary_files_are_removed_when_a_run_starts(trained, tmp_path):
    src, recipe_file = trained
    run = tmp_path / src.name
    shutil.copytree(src, run)
    debris = [
        run / "checkpoints" / ".last.pt.next.k2j3.tmp",
        run / "checkpoints" / ".best.pt.x8f.tmp",
        run / "checkpoints" / ".last.pt.next",
        run / ".status.json.abc.tmp",
    ]
    for path in debris:
        path.write_bytes(b"partial")
    assert main(["train", str(recipe_file), "--run-dir", str(run), "--no-progress"]) == 0
    assert not any(p.exists() for p in debris)


# ---- the sweep folder's ledger ---------------------------------------------------------------


def _ledger(folder: Path) -> Path:
    ledger = Ledger(folder / "ledger.sqlite", wal=False)
    ledger.add_runs([("r1", 0, "a"), ("r2", 1, "b")])
    ledger.set_meta(name="s", lease_timeout=300.0)
    return ledger.path


@pytest.mark.parametrize("fault", [*FAULTS, "state", "dropped"])
def test_damaged_ledger_is_one_line_for_status(tmp_path, capsys, fault):
    import sqlite3

    path = _ledger(tmp_path)
    if fault == "state":
        with sqlite3.connect(path) as con:
            con.execute("UPDATE runs SET state = 'weird' WHERE run_id = 'r1'")
    elif fault == "dropped":
        with sqlite3.connect(path) as con:
            con.execute("DROP TABLE runs")
    elif fault == "shape":
        path.unlink()
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE other (x)")
    else:
        _damage(path, fault)
    before = _snapshot(tmp_path, Path("/nonexistent"))
    assert main(["status", str(tmp_path)]) == 2
    line = _one_line(
        capsys.readouterr().err, "ledger.sqlite" if fault != "missing" else tmp_path.name
    )
    if fault == "state":
        assert "weird" in line
    assert _snapshot(tmp_path, Path("/nonexistent")) == before  # status recreated nothing


# ---- zoo tables (what analyze and plan read) ---------------------------------------------------


ZOO_FAULTS = [*FAULTS, "inf", "huge", "zero_params", "epochs_fraction", "overflow"]


def _zoo_damage(path: Path, fault: str) -> None:
    if fault in FAULTS:
        _damage(path, fault)
        return
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    column, value = {
        "inf": ("train_flops", "inf"),
        "huge": ("train_flops", "1e308"),
        "zero_params": ("params", "0"),
        "epochs_fraction": ("epochs", "10.5"),
        "overflow": ("params", "1e400"),
    }[fault]
    cells = lines[3].split(",")
    cells[header.index(column)] = value
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("command", ["analyze", "plan"])
@pytest.mark.parametrize("fault", ZOO_FAULTS)
def test_damaged_zoo_table_is_one_line(tmp_path, capsys, command, fault):
    path = write_zoo(power_law_zoo(40), tmp_path / "zoo.csv")
    _zoo_damage(path, fault)
    before = _snapshot(tmp_path, path)
    argv = {
        "analyze": ["analyze", str(path), "-o", str(tmp_path / "report")],
        "plan": ["plan", "--zoo", str(path), "--budget", "1e18", "-o", str(tmp_path / "plan.yaml")],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err, "zoo.csv")
    if fault in ("inf", "huge", "zero_params", "overflow"):
        assert "row 3" in line
    assert _snapshot(tmp_path, path) == before


# ---- writes that fail -------------------------------------------------------------------------


_DISK_FULL = r"""
import hashlib, resource, signal, sys
from pathlib import Path
import torch
from robustscale.errors import RobustscaleError
from robustscale.files import atomic_write_json
from robustscale.train.checkpoint import save_checkpoint

run = Path(sys.argv[1])
best, result = run / "checkpoints" / "best.pt", run / "eval" / "pgd-51-255.json"
old = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (best, result)}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
for write in (lambda: save_checkpoint(best, {"model": {"w": torch.zeros(100_000)}}),
              lambda: atomic_write_json(result, {"warnings": ["x" * 50_000]})):
    try:
        write()
        print("WROTE")
    except RobustscaleError as exc:
        print("ERROR", exc)
debris = [p.name for p in run.rglob("*.tmp")]
intact = all(hashlib.sha256(p.read_bytes()).hexdigest() == h for p, h in old.items())
print("DEBRIS", debris, "INTACT", intact)
"""


def test_disk_full_write_is_one_line_and_keeps_the_previous_file(trained, tmp_path):
    src, _ = trained
    run = tmp_path / src.name
    shutil.copytree(src, run)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln]
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    assert len(errors) == 2, lines
    assert "best.pt" in errors[0] and "EFBIG" in errors[0]
    assert "pgd-51-255.json" in errors[1] and "EFBIG" in errors[1]
    assert lines[-1] == "DEBRIS [] INTACT True", lines


@pytest.mark.parametrize("command", ["zoo", "plan", "analyze"])
def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch, command):
    """EROFS from the writers of zoo -o, plan -o and analyze -o (faked at the temporary file
    the atomic writer makes: this machine cannot mount a read-only filesystem for a test)."""
    import errno
    import tempfile

    from zoo_factory import joint_zoo

    # plan writes only from an identifiable joint law: a zoo of one recipe family that has one
    zoo = joint_zoo(80) if command == "plan" else power_law_zoo(40)
    path = write_zoo(zoo, tmp_path / "zoo.csv")
    out = tmp_path / "out"
    out.mkdir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    argv = {
        "zoo": ["zoo", "--import", str(path), "-o", str(out / "z.csv")],
        "plan": ["plan", "--zoo", str(path), "--budget", "1e18", "-o", str(out / "plan.yaml")],
        "analyze": ["analyze", str(path), "-o", str(out / "report")],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err, "out")
    assert "EROFS" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temporary or partial file


@pytest.mark.parametrize(
    "argv,words",
    [
        (["analyze", "Z", "--seed", "-1"], "--seed"),
        (["analyze", "Z", "--collapse-threshold", "-5"], "--collapse-threshold"),
        (["plan", "--zoo", "Z", "--budget", "nan"], "--budget"),
        (["plan", "--zoo", "Z", "--budget", "inf"], "--budget"),
        (["plan", "--zoo", "Z", "--budget", "1e18", "-o", "DIR"], "is a folder"),
        (["analyze", "Z", "-o", "FILE"], "is a file"),
        (["zoo", "DIR", "-o", "DIR"], "is a folder"),
        (["train", "R", "--set", "seed=99999999999999999999999"], "seed"),
        (["train", "R", "--set", "step_size=.inf"], "step_size"),
        (["eval", "DIR", "--seed", "-3"], "--seed"),
    ],
)
def test_numeric_flags_and_output_paths_are_one_line(tmp_path, capsys, argv, words):
    zoo = write_zoo(power_law_zoo(20), tmp_path / "zoo.csv")
    (tmp_path / "file").write_text("x")
    (tmp_path / "recipe.yaml").write_text(tiny().to_yaml())
    names = {
        "Z": str(zoo),
        "DIR": str(tmp_path),
        "FILE": str(tmp_path / "file"),
        "R": str(tmp_path / "recipe.yaml"),
    }
    before = _snapshot(tmp_path, Path("/nonexistent"))
    assert main([names.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and words in err, err
    assert _snapshot(tmp_path, Path("/nonexistent")) == before


@pytest.mark.parametrize("damage", ["status", "best"])
def test_status_shows_damaged_runs(trained, tmp_path, capsys, damage):
    src, _ = trained
    _ledger(tmp_path)
    for run_id in ("r1", "r2"):
        shutil.copytree(src, tmp_path / "runs" / run_id)
    if damage == "status":
        (tmp_path / "runs" / "r1" / "status.json").write_bytes(b"\x00\xff garbage")
    else:
        best = tmp_path / "runs" / "r1" / "checkpoints" / "best.pt"
        best.write_bytes(best.read_bytes()[:1000])
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    r1 = [ln for ln in out.splitlines() if " r1 " in ln][0]
    r2 = [ln for ln in out.splitlines() if " r2 " in ln][0]
    assert "damaged" in r1 and ("status.json" if damage == "status" else "best.pt") in r1
    assert "damaged" not in r2
