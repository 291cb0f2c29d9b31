"""The zoo: run directories -> table, and the checks on tables from anywhere."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from zoo_factory import make_run, power_law_zoo

from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.zoo import COLUMN_NAMES, gather_zoo, read_run, read_zoo, write_zoo


def _runs(root):
    make_run(root, "a", autoattack=51.2, aa_clean=86.0, flops=2e18)
    make_run(
        root,
        "b",
        model="wrn34_10",
        loss="trades",
        ema_decay=0.995,
        synthetic_data="/data/gen.npz",
        synthetic_fraction=0.7,
        autoattack=None,
        flops=3e18,
        energy_kwh=None,
    )
    make_run(root / "nested", "c", state="running")
    make_run(root, "d", state="failed")
    make_run(root, "e", skip=("cost.json",))
    bad = make_run(root, "f")
    (bad / "status.json").write_text("{not json")
    make_run(root, "g", skip=("recipe.yaml",))
    return root


def test_gather_keeps_finished_runs_and_reports_the_rest(tmp_path):
    df, skipped = gather_zoo(_runs(tmp_path))
    assert list(df.columns) == COLUMN_NAMES
    assert sorted(df["run_id"]) == ["a", "b"]
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in skipped)}
    assert set(reasons) == {"c", "d", "e", "f", "g"}
    assert "running" in reasons["c"] and "3/100" in reasons["c"]
    assert "failed" in reasons["d"] and "out of memory" in reasons["d"]
    assert reasons["e"] == "missing cost.json"
    assert "unreadable status.json" in reasons["f"]
    assert reasons["g"] == "missing recipe.yaml"


def test_row_values_follow_the_run_directory_contract(tmp_path):
    df, _ = gather_zoo(_runs(tmp_path))
    a = df.set_index("run_id").loc["a"]
    assert a["autoattack_acc"] == 51.2 and a["clean_acc"] == 86.0 and a["pgd40_acc"] == 53.0
    assert (
        a["train_flops"] == 2e18 and a["params"] == 36_479_194 and a["examples_seen"] == 5_000_000
    )
    assert (
        not a["ema"]
        and not a["synthetic_data"]
        and a["synthetic_fraction"] == 0
        and a["synthetic_size"] == 0
    )
    assert math.isclose(a["eps"], 8 / 255)
    b = df.set_index("run_id").loc["b"]
    assert (
        b["ema"]
        and b["synthetic_data"]
        and b["synthetic_fraction"] == 0.7
        and b["synthetic_size"] == 1_000_000
    )
    # no AutoAttack evaluation: empty, and clean accuracy falls back to the best epoch's metrics row
    assert pd.isna(b["autoattack_acc"]) and b["clean_acc"] == 81.5
    assert pd.isna(b["energy_kwh"]) and pd.isna(b["co2_kg"])


def test_missing_values_are_empty_cells_never_zero(tmp_path):
    df, _ = gather_zoo(_runs(tmp_path))
    out = write_zoo(df, tmp_path / "zoo.csv")
    line_b = [ln for ln in out.read_text().splitlines() if ln.startswith("b,")][0]
    cells = dict(zip(COLUMN_NAMES, line_b.split(",")))
    assert cells["autoattack_acc"] == "" and cells["energy_kwh"] == ""
    back = read_zoo(out)
    assert pd.isna(back.set_index("run_id").loc["b", "autoattack_acc"])
    assert back["params"].dtype.name == "Int64" and back["ema"].dtype.name == "boolean"


def test_read_run_raises_with_reason(tmp_path):
    d = make_run(tmp_path, "x", state="running")
    with pytest.raises(ValueError, match="unfinished"):
        read_run(d)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_external_table_round_trips_and_keeps_extra_columns(tmp_path, suffix):
    df = power_law_zoo(n=20)
    df["lab_note"] = "theirs"
    df.loc[3, "autoattack_acc"] = float("nan")
    path = tmp_path / f"ext{suffix}"
    write_zoo(df, path)
    back = read_zoo(path)
    assert len(back) == 20 and "lab_note" in back.columns and back["lab_note"].iloc[0] == "theirs"
    assert pd.isna(back.loc[3, "autoattack_acc"])
    assert back["autoattack_acc"].dropna().tolist() == pytest.approx(
        df["autoattack_acc"].dropna().tolist()
    )


def _bad(tmp_path, change):
    df = power_law_zoo(n=20)
    df = change(df)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.drop(columns=["train_flops"]), "lacks column(s) train_flops"),
        (lambda d: d.assign(autoattack_acc=d["autoattack_acc"] / 100), "fractions"),
        (lambda d: d.assign(train_flops=-d["train_flops"]), "negative"),
        (lambda d: d.assign(clean_acc=d["clean_acc"] + 200), "percent 0-100"),
        (lambda d: d.assign(params="many"), "non-numeric"),
    ],
)
def test_bad_tables_give_one_clear_line(tmp_path, change, words):
    path = _bad(tmp_path, change)
    with pytest.raises(RobustscaleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_zoo(path)


def test_cli_zoo_writes_table_and_lists_left_out_runs(tmp_path, capsys):
    root = _runs(tmp_path / "runs")
    out = tmp_path / "zoo.parquet"
    assert main(["zoo", str(root), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 runs" in captured.out and "5 left out" in captured.out
    assert "missing cost.json" in captured.err
    assert sorted(read_zoo(out)["run_id"]) == ["a", "b"]


def test_cli_zoo_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["zoo", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_cli_zoo_import_checks_external_table(tmp_path, capsys):
    bad = _bad(tmp_path, lambda d: d.assign(pgd40_acc=d["pgd40_acc"] / 100))
    assert main(["zoo", "--import", str(bad), "-o", str(tmp_path / "z.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pgd40_acc" in err and "fractions" in err


def test_only_the_best_checkpoint_at_the_recipe_eps_counts(tmp_path):
    import json

    d = make_run(tmp_path, "h", autoattack=None)
    (d / "eval" / "autoattack-4-255.json").write_text(
        json.dumps(
            {
                "attack": "autoattack",
                "eps": 4 / 255,
                "clean_acc": 90.0,
                "robust_acc": 70.0,
                "checkpoint": "best",
            }
        )
    )
    (d / "eval" / "autoattack-8-255.json").write_text(
        json.dumps(
            {
                "attack": "autoattack",
                "eps": 8 / 255,
                "clean_acc": 88.0,
                "robust_acc": 48.0,
                "checkpoint": "last",
            }
        )
    )
    (d / "eval" / "pgd-8-255.json").write_text(
        json.dumps(
            {
                "attack": "pgd",
                "eps": 8 / 255,
                "n": 10_000,
                "clean_acc": 84.2,
                "robust_acc": 52.0,
                "checkpoint": "best",
            }
        )
    )
    df, skipped = gather_zoo(tmp_path)
    row = df.set_index("run_id").loc["h"]
    assert not skipped and pd.isna(row["autoattack_acc"]) and row["clean_acc"] == 84.2


def test_only_a_standard_autoattack_on_the_whole_test_split_is_the_zoo_number(tmp_path):
    import json

    d = make_run(tmp_path, "s", autoattack=None)
    base = {
        "attack": "autoattack",
        "eps": 8 / 255,
        "version": "standard",
        "n": 10_000,
        "split_size": 10_000,
        "checkpoint": "best",
        "split": "test",
        "clean_acc": 90.0,
        "robust_acc": 60.0,
    }

    def write(name, **change):
        (d / "eval" / name).write_text(json.dumps({**base, **change}))

    def row():
        df, skipped = gather_zoo(tmp_path)
        assert not skipped
        return df.set_index("run_id").loc["s"]

    write("autoattack-8-255-n100.json", n=100)  # a subset
    write("autoattack-8-255-rand.json", version="rand")  # another version
    write("autoattack-8-255-custom-apgd-ce.json", version="custom:apgd-ce")
    write(
        "pgd-8-255-n100.json", attack="pgd", version=None, n=100
    )  # a subset's clean accuracy neither
    # files from before names carried n and version, under the zoo's name: judged by their contents
    write("autoattack-8-255.json", n=100, split_size=None)  # no split_size: n vs CIFAR-10's 10,000
    assert (
        pd.isna(row()["autoattack_acc"]) and row()["clean_acc"] == 81.5
    )  # the best epoch's metrics row
    write("autoattack-8-255.json", split_size=None, version=None)
    assert pd.isna(row()["autoattack_acc"])
    write(
        "autoattack-8-255.json", split_size=None, robust_acc=47.0
    )  # legacy, whole split, standard
    assert (row()["autoattack_acc"], row()["clean_acc"]) == (47.0, 90.0)
    write("autoattack-8-255.json", robust_acc=48.5, clean_acc=88.0)  # as written now
    assert (row()["autoattack_acc"], row()["clean_acc"]) == (48.5, 88.0)


def test_pgd40_loss_comes_from_the_final_pgd40_evaluation(tmp_path):
    import json

    d = make_run(tmp_path, "a")
    (d / "eval" / "pgd-8-255.json").write_text(
        json.dumps(
            {
                "attack": "pgd",
                "eps": 8 / 255,
                "n": 10_000,
                "steps": 40,
                "clean_acc": 84.2,
                "robust_acc": 52.0,
                "robust_ce_loss": 1.234,
                "robust_cw_loss": 0.5,
                "checkpoint": "best",
            }
        )
    )
    e = make_run(tmp_path, "b")  # an evaluation written before the loss was recorded
    (e / "eval" / "pgd-8-255.json").write_text(
        json.dumps(
            {
                "attack": "pgd",
                "eps": 8 / 255,
                "n": 10_000,
                "steps": 40,
                "clean_acc": 84.2,
                "robust_acc": 52.0,
                "checkpoint": "best",
            }
        )
    )
    df, _ = gather_zoo(tmp_path)
    rows = df.set_index("run_id")
    assert rows.loc["a", "pgd40_loss"] == pytest.approx(1.234) and pd.isna(
        rows.loc["b", "pgd40_loss"]
    )
    # a table made without the optional column still reads, the column empty
    path = write_zoo(df.drop(columns=["pgd40_loss"]), tmp_path / "z.csv")
    assert read_zoo(path)["pgd40_loss"].isna().all()
