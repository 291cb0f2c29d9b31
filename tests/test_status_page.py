"""`robustscale status DIR --html`: the live sweep page's numbers come from the ledger and the
runs' files; --watch stops once every run is settled; bad flags are one line."""

from __future__ import annotations

import json

from conftest import tiny

from robustscale import train
from robustscale.cli import main
from robustscale.sweep.launch import prepare
from robustscale.sweep.spec import expand, forecast_flops
from robustscale.sweep.status_page import page_data


def _sweep(tmp_path, seeds):
    sweep = expand(
        {
            "name": "page",
            "base": tiny(epochs=1, power_watts=40.0).to_dict(),
            "axes": {"seed": seeds},
        }
    )
    folder, ledger = prepare(sweep, tmp_path / "sweep", wal=False)
    return sweep, folder, ledger


def test_page_numbers_come_from_the_ledger_and_the_run_files(tmp_path):
    sweep, folder, ledger = _sweep(tmp_path, [0, 1])
    claim = ledger.claim([r.run_id for r in sweep.runs], max_attempts=3, lease_timeout=300)
    run = train(sweep.runs[0].recipe, run_dir=folder.run_dir(claim.run_id), progress=False)
    ledger.finish(claim, ok=True)
    data = page_data(folder.root)
    cost = json.loads((run / "cost.json").read_text())
    status = json.loads((run / "status.json").read_text())
    assert data["name"] == "page" and data["counts"] == {
        "pending": 1,
        "running": 0,
        "done": 1,
        "failed": 0,
    }
    assert data["spent_flops"] == cost["train_flops"] and data["spent_kwh"] == cost["energy_kwh"]
    assert data["forecast_flops"] == sum(forecast_flops(sweep.runs))
    assert data["best"]["run_id"] == claim.run_id
    assert data["best"]["best_val_pgd_acc"] == status["best_val_pgd_acc"]
    assert data["forecast_kwh"] == cost["energy_kwh"] / cost["train_flops"] * data["forecast_flops"]


def test_watch_stops_when_every_run_is_settled(tmp_path, capsys):
    sweep, folder, ledger = _sweep(tmp_path, [0])
    claim = ledger.claim([sweep.runs[0].run_id], max_attempts=1, lease_timeout=300)
    ledger.finish(claim, ok=False, error="boom")
    out = tmp_path / "page.html"
    assert main(["status", str(folder.root), "--html", str(out), "--watch", "--refresh", "1"]) == 0
    assert "every run is settled: 1 failed" in capsys.readouterr().out
    assert "boom" in out.read_text() and "content='1'" in out.read_text()


def test_bad_page_flags_are_one_line(tmp_path, capsys):
    _, folder, _ = _sweep(tmp_path, [0])
    for args in (["--watch"], ["--html", "--refresh", "0"]):
        assert main(["status", str(folder.root), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("--html" in err or "--refresh=0" in err)
    assert not (folder.root / "status.html").exists()
