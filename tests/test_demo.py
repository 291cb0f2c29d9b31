"""`robustscale demo`: both runs train, are evaluated, and the table shows what they cost."""

from __future__ import annotations

import pytest

from robustscale import demo
from robustscale.cli import main
from robustscale.cost import energy


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """The demo's recipes cut to one short epoch each, on a machine where nothing can be metered."""
    monkeypatch.setattr(
        demo,
        "DEMO_RECIPES",
        {
            name: dict(
                values,
                epochs=1,
                val_size=32,
                val_attack_steps=1,
                attack_steps=min(values["attack_steps"], 1),
            )
            for name, values in demo.DEMO_RECIPES.items()
        },
    )
    monkeypatch.setattr(energy, "_import_nvml", lambda: None)
    (tmp_path / "powercap").mkdir()
    monkeypatch.setattr(energy, "RAPL_ROOT", str(tmp_path / "powercap"))
    empty = tmp_path / "robustscale.toml"
    empty.write_text("")
    monkeypatch.setenv("ROBUSTSCALE_CONFIG", str(empty))
    return tmp_path / "demo"


def test_demo_prints_flops_hours_energy_cost_and_co2(small_demo, capsys):
    assert main(["demo", "--out", str(small_demo), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = lines[0]
    for column in (
        "clean %",
        "PGD-40 %",
        "train FLOPs",
        "device-h",
        "energy kWh",
        "cost USD",
        "CO2 kg",
    ):
        assert column in head, column
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"standard", "pgd-at"}
    for cells in rows.values():
        # model, clean, PGD-40, train s, FLOPs, device-h, kWh, USD, CO2, run directory
        assert len(cells) == 10
        assert (
            float(cells[4]) > 0 and float(cells[5]) > 0
        )  # FLOPs and device-hours are always known
        assert cells[6:9] == ["unmeasured"] * 3  # energy, dollars and CO2 unknown, not 0
        assert cells[9].startswith(str(small_demo))
    assert float(rows["pgd-at"][4]) > float(rows["standard"][4])  # adversarial training costs more
    assert "energy source: none" in lines[-1]


def test_demo_table_formats_measured_numbers():
    row = {
        "name": "pgd-at",
        "clean_acc": 95.6,
        "pgd40_acc": 51.1,
        "train_seconds": 9.1,
        "train_flops": 1.234e13,
        "device_hours": 0.0025,
        "energy_kwh": 1.2e-5,
        "electricity_cost_usd": 1.44e-6,
        "co2_kg": 6.8e-6,
        "energy_source": "rapl",
        "run_dir": "runs/demo/x",
    }
    cells = demo.format_table([row]).splitlines()[2].split()
    assert cells[4:9] == ["1.23e+13", "0.0025", "1.20e-05", "1.44e-06", "6.80e-06"]
