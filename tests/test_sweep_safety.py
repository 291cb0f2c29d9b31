"""Untrusted sweep input stays inside its folder (issue 21): names in paths, folder permissions,
ledger states this version does not know, and leases that cannot livelock."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny

from robustscale.cli import main
from robustscale.sweep import load_sweep
from robustscale.sweep.launch import prepare
from robustscale.sweep.ledger import Ledger


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_spec(folder: Path, **spec) -> Path:
    recipe = tiny(attack_steps=1, val_attack_steps=2, val_size=64, epochs=1).to_dict()
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": recipe, "axes": {"seed": [0]}, **spec}))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustscale: error:"), err
    return err[0]


def nothing_escaped(root: Path) -> None:
    names = [p.name for p in root.rglob("*")]
    assert not any(
        n in ("pwn", "escape", "x") or n.endswith(".yaml") and n != "sweep.yaml" for n in names
    ), names


@pytest.mark.parametrize(
    "model", ["../../../../escape/pwn", "/tmp/escape/pwn", "a/b", "..", ".hidden"]
)
@pytest.mark.parametrize("where", ["base", "axes", "--set"])
def test_a_model_name_that_is_a_path_is_refused_before_anything_is_written(
    tmp_path, capsys, model, where
):
    box = tmp_path / "box"
    box.mkdir()
    recipe = tiny(epochs=1).to_dict()
    spec = {"name": "t", "base": recipe, "axes": {"seed": [0]}}
    extra: list[str] = []
    if where == "base":
        spec["base"] = {**recipe, "model": model}
    elif where == "axes":
        spec["axes"] = {"model": ["wrn10_1", model]}
    else:
        extra = ["--set", f"model={model}"]
    (box / "sweep.yaml").write_text(yaml.safe_dump(spec))
    out = box / "a" / "b" / "out"
    err = one_line_error(capsys, ["sweep", str(box / "sweep.yaml"), "--out", str(out), *extra])
    assert "model" in err and "cannot be used in a file name" in err
    assert not (box / "a").exists()
    nothing_escaped(box)


@pytest.mark.parametrize("name", ["../escape", "/tmp/x", "a/b", "two\nlines", ".."])
def test_a_sweep_name_that_is_a_path_is_refused(tmp_path, capsys, name):
    spec = write_spec(tmp_path, name=name)
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(tmp_path / "out")])
    assert "sweep name" in err and not (tmp_path / "out").exists()


def test_train_refuses_a_model_path_too(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny(epochs=1).to_yaml())
    err = one_line_error(
        capsys, ["train", str(recipe), "--out", str(tmp_path / "runs"), "--set", "model=../../x"]
    )
    assert "model" in err and not (tmp_path / "runs").exists()


def test_writes_that_resolve_outside_the_sweep_folder_are_refused(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "recipes").symlink_to(elsewhere)  # a planted link: recipes/ would land outside --out
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(out)])
    assert (
        "outside" in err and not any(elsewhere.iterdir()) and not (out / "ledger.sqlite").exists()
    )


def test_a_sweep_folder_anyone_may_write_is_refused_and_a_group_writable_one_warned(
    tmp_path, capsys, caplog
):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(out)])
    assert "writable by every user" in err and "chmod go-w" in err and not any(out.iterdir())
    out.chmod(0o775)
    with caplog.at_level(logging.WARNING):
        prepare(load_sweep(spec), out)
    assert "writable by its group" in caplog.text
    out.chmod(0o755)
    (out / "slurm").mkdir(mode=0o700)
    (out / "slurm").chmod(0o777)
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(out), "--backend", "slurm"])
    assert "slurm" in err and "writable by every user" in err


def test_a_ledger_state_this_version_does_not_know_is_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    prepare(load_sweep(spec), out)
    with sqlite3.connect(out / "ledger.sqlite") as con:
        con.execute("UPDATE runs SET state = 'paused'")
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(out)])
    assert "'paused'" in err and "allowed: pending, running, done, failed" in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lease-timeout", "-1"], "--lease-timeout=-1.0"),
        (["--lease-timeout", "0"], "--lease-timeout=0.0"),
        (["--lease-timeout", "nan"], "--lease-timeout=nan"),
        (["--heartbeat", "0"], "--heartbeat=0.0"),
        (["--heartbeat", "inf"], "--heartbeat=inf"),
        (["--lease-timeout", "10", "--heartbeat", "5"], "at least 3x"),
        (["--backend", "slurm", "--lease-timeout", "1"], "--lease-timeout=1.0"),
    ],
)
def test_lease_flags_that_could_livelock_are_one_line_and_write_nothing(
    tmp_path, capsys, flags, words
):
    spec = write_spec(tmp_path)
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(tmp_path / "out"), *flags])
    assert words in err and not (tmp_path / "out").exists()


def test_two_launchers_at_the_smallest_allowed_leases_train_each_run_once(tmp_path):
    spec = tmp_path / "sweep.yaml"
    recipe = tiny(attack_steps=1, val_attack_steps=2, val_size=64, epochs=1).to_dict()
    spec.write_text(yaml.safe_dump({"name": "t", "base": recipe, "axes": {"seed": [0, 1, 2]}}))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "robustscale",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--heartbeat",
        "0.1",
        "--lease-timeout",
        "2",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = Ledger(out / "ledger.sqlite").rows()
    assert {r["state"] for r in rows} == {"done"} and {r["attempts"] for r in rows} == {1}, rows
    for r in rows:
        assert (out / "logs" / f"{r['run_id']}.log").read_text().count("=== attempt") == 1
    assert not any("stale" in o or "lease lost" in o for o in outputs)
