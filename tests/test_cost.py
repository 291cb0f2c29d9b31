"""Cost: FLOP counting against analytic formulas and the paper's numbers, energy meters with
fake NVML / RAPL / power traces, the accounting arithmetic, the recipe forecast and the CLI."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustscale.cost import StepFlops, bill, forward_flops, measure_step_flops, open_meter
from robustscale.cost.energy import EstimatedMeter, RaplMeter, SamplingMeter
from robustscale.cost.forecast import calibrate, forecast_recipe, recipe_step_flops
from robustscale.data.batches import BatchPlan
from robustscale.models import build_model, count_params
from robustscale.recipe import Recipe

EPS, STEP = 8 / 255, 2 / 255


@pytest.fixture(autouse=True)
def _no_site_config(tmp_path_factory, monkeypatch):
    """No robustscale.toml of the machine running the tests changes the paper's constants here."""
    empty = tmp_path_factory.mktemp("config") / "robustscale.toml"
    empty.write_text("")
    monkeypatch.setenv("ROBUSTSCALE_CONFIG", str(empty))


def _wrn(name: str = "wrn10_1", meta: bool = True) -> nn.Module:
    with torch.device("meta" if meta else "cpu"):
        return build_model(name, 10, 3, [0.5] * 3, [0.25] * 3)


def _step(model: nn.Module, loss: str, k: int, exact: bool = True, val_steps: int = 2):
    return measure_step_flops(
        model,
        loss,
        (3, 32, 32),
        10,
        eps=EPS,
        step_size=STEP,
        attack_steps=k,
        trades_beta=6.0,
        val_steps=val_steps,
        exact=exact,
    )


_WRN10 = _wrn()


@functools.cache
def _counted(loss: str, k: int):
    """Full (exact) counts on one shared meta wrn10_1, cached across tests."""
    return _step(_WRN10, loss, k)


def _stem_flops(model: nn.Module) -> int:
    """Forward FLOPs of the stem conv: its input gradient is the one the update step skips."""
    stem = model.net.stem
    return 2 * stem.in_channels * stem.out_channels * 9 * 32 * 32


# ---- FLOPs ----------------------------------------------------------------------------------


def test_linear_flops_match_formula():
    assert forward_flops(nn.Linear(64, 10), (64,)) == 2 * 64 * 10


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4)])
def test_conv2d_flops_match_formula(stride, groups):
    conv = nn.Conv2d(8, 16, kernel_size=3, stride=stride, padding=1, groups=groups)
    h_out = (20 + 2 - 3) // stride + 1
    expected = 2 * (8 // groups) * 16 * 3 * 3 * h_out * h_out
    assert forward_flops(conv, (8, 20, 20)) == expected


@pytest.mark.parametrize(
    "name,params_m,gflops", [("wrn28_10", 36.5, 10.5), ("wrn70_16", 266.8, 77.6)]
)
def test_wrn_params_and_forward_flops_match_paper(name, params_m, gflops):
    assert count_params(name) / 1e6 == pytest.approx(params_m, rel=0.02)
    assert forward_flops(_wrn(name), (3, 32, 32)) / 1e9 == pytest.approx(gflops, rel=0.02)


def test_training_flops_exact_relations():
    """Measured: an attack step = forward + input-gradient backward = exactly 2F; the update's
    backward skips only the stem's input gradient (s). Paper: every backward = 2x its forward."""
    f = forward_flops(_WRN10, (3, 32, 32))
    s = _stem_flops(_WRN10)
    for k in (1, 2, 3, 5):
        pgd, trades = _counted("pgd", k), _counted("trades", k)
        assert pgd.forward == f
        assert pgd.train == (2 * k + 3) * f - s  # attack + update, no clean forward
        assert trades.train == (2 * k + 7) * f - 2 * s  # clean target + attack + two updates
        # TRADES adds the no-grad clean target (1F) and a clean forward + backward (3F - s)
        assert trades.train - pgd.train == 4 * f - s
        assert pgd.train_paper == (3 * k + 3) * f
        assert trades.train_paper == (3 * k + 7) * f
        assert trades.train_paper - pgd.train_paper == 4 * f
    std = _counted("standard", 0)
    assert std.train == 3 * f - s and std.train_paper == 3 * f


def test_training_flops_linear_in_attack_steps():
    f = forward_flops(_WRN10, (3, 32, 32))
    for loss in ("pgd", "trades"):
        counts = [_counted(loss, k) for k in (1, 2, 3, 4, 5)]
        assert np.diff([c.train for c in counts]).tolist() == [2 * f] * 4
        assert np.diff([c.train_paper for c in counts]).tolist() == [3 * f] * 4


def test_step_extension_equals_full_count():
    """The default counts 1 and 2 iterations and extends linearly; it must equal counting all K."""
    for loss in ("standard", "pgd", "trades"):
        full = _step(_WRN10, loss, 5, exact=True, val_steps=6)
        fast = _step(_WRN10, loss, 5, exact=False, val_steps=6)
        assert fast == full


def test_validation_flops_are_pgd40_in_eval_mode():
    f = forward_flops(_WRN10, (3, 32, 32))
    v = _step(_WRN10, "pgd", 10, exact=False, val_steps=40).val
    assert v == 82 * f  # clean forward + 40 x (forward + input gradient) + final forward


def test_measure_step_flops_leaves_model_untouched():
    torch.manual_seed(0)
    model = _wrn(meta=False)
    model.train()
    model(torch.rand(4, 3, 32, 32)).sum().backward()  # real grads and BN statistics to protect
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for mode in (True, False):
        model.train(mode)
        _step(model, "trades", 3)
        assert model.training is mode
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)
    assert next(model.parameters()).device.type == "cpu"


def test_step_flops_ignore_batch_size():
    model = _WRN10
    a = measure_step_flops(
        model,
        "pgd",
        (3, 32, 32),
        10,
        eps=EPS,
        step_size=STEP,
        attack_steps=3,
        trades_beta=6.0,
        batch_size=2,
    )
    b = measure_step_flops(
        model,
        "pgd",
        (3, 32, 32),
        10,
        eps=EPS,
        step_size=STEP,
        attack_steps=3,
        trades_beta=6.0,
        batch_size=128,
    )
    assert a == b


# ---- accounting -----------------------------------------------------------------------------


def test_bill_uses_paper_constants():
    b = bill(3.6e6, pue=1.58, usd_per_kwh=0.12, gco2_per_kwh=566.3)  # 1 kWh at the device
    assert b["energy_kwh"] == pytest.approx(1.58)
    assert b["electricity_cost_usd"] == pytest.approx(1.58 * 0.12)
    assert b["co2_kg"] == pytest.approx(1.58 * 0.5663)
    assert bill(7.2e6) == pytest.approx(
        {"energy_kwh": 3.16, "electricity_cost_usd": 0.3792, "co2_kg": 1.789508}
    )


def test_bill_custom_constants_and_unmeasured():
    b = bill(1.8e6, pue=1.0, usd_per_kwh=0.3, gco2_per_kwh=100.0)
    assert b == pytest.approx({"energy_kwh": 0.5, "electricity_cost_usd": 0.15, "co2_kg": 0.05})
    assert bill(None, pue=1.58, usd_per_kwh=0.12, gco2_per_kwh=566.3) == {
        "energy_kwh": None,
        "electricity_cost_usd": None,
        "co2_kg": None,
    }
    assert bill(0.0)["energy_kwh"] == 0.0  # a measured zero stays a number


# ---- energy meters --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_sampling_meter_integrates_fake_trace():
    clock = FakeClock()
    trace = lambda: 100.0 + 10.0 * clock.t  # a ramp: the trapezoid rule is exact  # noqa: E731
    meter = SamplingMeter(trace, 0.1, ["fake"], clock=clock, start=False)
    for _ in range(10):
        clock.t += 1.0
        meter.sample()
    assert meter.read_joules() == pytest.approx(100 * 10 + 0.5 * 10 * 10**2)  # 1500 J
    # uneven intervals and a step change
    clock2 = FakeClock()
    watts = {"p": 200.0}
    m2 = SamplingMeter(lambda: watts["p"], 0.1, ["a", "b"], clock=clock2, start=False)
    clock2.t = 0.5
    m2.sample()
    watts["p"] = 0.0
    clock2.t = 2.5
    m2.close()  # the close reading is included: 200*0.5 + (200+0)/2*2
    assert m2.read_joules() == pytest.approx(300.0)
    assert m2.num_devices == 2 and m2.measured and m2.source == "nvml-power"


def test_sampling_meter_thread_and_failed_reading():
    calls = {"n": 0}

    def power() -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("transient")
        return 50.0

    t0 = time.monotonic()
    with SamplingMeter(power, 0.01, ["fake"]) as meter:
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    assert meter.samples > 5
    assert meter.read_joules() == pytest.approx(50.0 * elapsed, rel=0.2)
    assert meter.read_joules() == meter.read_joules()  # frozen after close


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """The slice of pynvml the meter uses; energy in mJ, power in mW."""

    def __init__(self, n: int = 2, energy: bool = True, power_mw: float = 300_000.0):
        self.n, self.energy, self.power_mw = n, energy, power_mw
        self.counters = [1_000_000 * (i + 1) for i in range(n)]
        self.shutdown = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        if i >= self.n:
            raise FakeNVMLError("invalid index")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.split("-")[-1])

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3" if h == 0 else "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise FakeNVMLError("Not Supported")
        return self.counters[h]

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw


def test_nvml_energy_counter(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML(n=2)
    meter = open_meter("cuda", nvml=nvml)
    assert meter.source == "nvml-energy" and meter.measured and meter.num_devices == 2
    assert meter.device_names == ["NVIDIA H100 80GB HBM3"] * 2
    assert meter.read_joules() == 0.0
    nvml.counters[0] += 1500  # mJ
    nvml.counters[1] += 2500
    assert meter.read_joules() == pytest.approx(4.0)
    meter.close()
    nvml.counters[0] += 10_000
    assert meter.read_joules() == pytest.approx(4.0) and nvml.shutdown


def test_nvml_respects_cuda_visible_devices(monkeypatch):
    nvml = FakeNVML(n=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-fake-3")
    meter = open_meter(torch.device("cuda", 0), nvml=nvml)
    nvml.counters[2] += 1000
    nvml.counters[3] += 1000
    nvml.counters[0] += 99_000  # not visible: not counted
    assert meter.num_devices == 2 and meter.read_joules() == pytest.approx(2.0)
    meter.close()


def test_nvml_meters_only_chosen_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    nvml = FakeNVML(n=4)
    meter = open_meter("cuda:1", nvml=nvml, devices=[1])  # torch's cuda:1 is physical GPU 3
    nvml.counters[3] += 2000
    nvml.counters[1] += 5000
    assert meter.num_devices == 1 and meter.read_joules() == pytest.approx(2.0)
    meter.close()
    assert open_meter("cuda", nvml=None, devices=[0], power_watts=10.0).num_devices == 1


def test_nvml_power_fallback(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML(n=2, energy=False, power_mw=150_000.0)
    t0 = time.monotonic()
    with open_meter("cuda", nvml=nvml, interval=0.01) as meter:
        assert meter.source == "nvml-power" and meter.measured
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    assert meter.read_joules() == pytest.approx(300.0 * elapsed, rel=0.25)  # 2 x 150 W
    assert nvml.shutdown


def test_no_nvml_no_rapl_is_unmeasured(tmp_path):
    for meter in (open_meter("cuda", nvml=None), open_meter("cpu", rapl_root=tmp_path)):
        with meter:
            assert meter.source == "none" and not meter.measured
            assert meter.read_joules() is None
        assert meter.read_joules() is None
    broken = FakeNVML()
    broken.nvmlInit = lambda: (_ for _ in ()).throw(FakeNVMLError("Driver Not Loaded"))
    assert open_meter("cuda", nvml=broken).source == "none"


def test_estimated_only_when_asked(tmp_path):
    meter = open_meter("cpu", rapl_root=tmp_path, power_watts=65.0)
    assert isinstance(meter, EstimatedMeter) and meter.source == "estimated" and not meter.measured
    assert meter.num_devices == 1
    time.sleep(0.05)
    before = meter.elapsed()
    joules = meter.read_joules()
    after = meter.elapsed()
    assert (
        65.0 * before <= joules <= 65.0 * after and joules >= 65.0 * 0.05
    )  # watts x seconds, growing
    meter.close()
    frozen = meter.read_joules()
    time.sleep(0.02)
    assert meter.read_joules() == frozen >= joules  # stops at close
    # no NVML: power_watts x time x the devices asked for
    gpus = open_meter("cuda", nvml=None, devices=[0, 1], power_watts=100.0)
    assert gpus.source == "estimated" and gpus.num_devices == 2
    before = gpus.elapsed()
    joules = gpus.read_joules()
    assert 200.0 * before <= joules <= 200.0 * gpus.elapsed()
    # without power_watts the same meters are "none": energy unknown, not estimated
    assert open_meter("cpu", rapl_root=tmp_path).read_joules() is None
    assert open_meter("cuda", nvml=None, devices=[0, 1]).read_joules() is None
    clock = FakeClock()
    est = EstimatedMeter(250.0, ["gpu0", "gpu1"], clock=clock)
    clock.t = 10.0
    assert est.read_joules() == pytest.approx(250.0 * 10.0 * 2)
    # a measurement wins over a configured power
    assert open_meter("cuda", nvml=FakeNVML(), power_watts=100.0).source == "nvml-energy"


def _rapl_zone(root: Path, name: str, label: str, energy: int, max_range: int) -> Path:
    z = root / name
    z.mkdir()
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z


def test_rapl_packages_and_wrap(tmp_path):
    p0 = _rapl_zone(tmp_path, "intel-rapl:0", "package-0", 900_000, 1_000_000)
    _rapl_zone(tmp_path, "intel-rapl:0:0", "core", 5, 1_000_000)  # inside package-0
    _rapl_zone(tmp_path, "intel-rapl:1", "psys", 5, 1_000_000)  # platform: would double count
    meter = open_meter("cpu", rapl_root=tmp_path)
    assert isinstance(meter, RaplMeter) and meter.source == "rapl" and meter.num_devices == 1
    (p0 / "energy_uj").write_text("950000\n")
    assert meter.read_joules() == pytest.approx(0.05)
    (p0 / "energy_uj").write_text("100000\n")  # wrapped past 1e6
    assert meter.read_joules() == pytest.approx(0.05 + 0.15)
    meter.close()


# ---- forecast and CLI -----------------------------------------------------------------------


def test_forecast_arithmetic_cifar():
    r = Recipe(
        dataset="cifar10",
        model="wrn28_10",
        loss="pgd",
        attack_steps=10,
        epochs=100,
        batch_size=128,
        val_size=512,
    )
    fc = forecast_recipe(r, throughput=1000.0, power_watts=500.0)
    f = fc["forward_flops"]
    assert fc["params"] == count_params("wrn28_10")
    assert fc["examples_per_epoch"] == (50_000 - 512) // 128 * 128 == 49_408
    s = 2 * 3 * 16 * 9 * 32 * 32  # the stem convolution's forward (no input gradient needed)
    assert fc["train_flops_per_example"] == 23 * f - s  # (2K + 3)F - s at K = 10
    assert fc["paper_convention"]["train_flops_per_example"] == 33 * f  # (3K + 3)F
    assert fc["train_flops_per_epoch"] == fc["train_flops_per_example"] * 49_408
    assert fc["train_flops_total"] == fc["train_flops_per_epoch"] * 100
    assert fc["paper_convention"]["train_flops_total"] == 33 * f * 49_408 * 100
    # validation (PGD-40 on 512 examples: 82F each) plus PGD-AT's clean-accuracy forward on
    # every 10th of the 386 batches (steps 0, 10, ..., 380: 39 batches of 128)
    assert fc["monitor_flops_per_epoch"] == 39 * 128 * f
    assert fc["val_flops_per_epoch"] == 82 * f * 512 + 39 * 128 * f
    fo = fc["forecast"]
    train_s = 49_408 * 100 / 1000.0
    val_s = (82 * f * 512 + 39 * 128 * f) * 100 / fc["train_flops_per_example"] / 1000.0
    assert fo["device_hours"] == pytest.approx((train_s + val_s) / 3600)
    assert fo["energy_kwh"] == pytest.approx(500.0 * (train_s + val_s) / 3.6e6 * 1.58)
    assert fo["energy_estimated"] is True
    assert forecast_recipe(r, throughput=1000.0)["forecast"]["energy_kwh"] is None
    sf = recipe_step_flops(r)  # the sweep forecast reads .train from this
    assert isinstance(sf, StepFlops) and sf.train == fc["train_flops_per_example"]


def test_forecast_counts_synthetic_examples(tmp_path):
    npz = tmp_path / "syn.npz"
    np.savez(npz, image=np.zeros((10, 8, 8, 1), np.uint8), label=np.zeros(10, np.int64))
    r = Recipe(
        dataset="digits",
        model="wrn10_1",
        loss="trades",
        attack_steps=2,
        epochs=3,
        batch_size=128,
        val_size=256,
        synthetic_data=str(npz),
        synthetic_fraction=0.5,
    )
    fc = forecast_recipe(r)
    plan = BatchPlan(1437 - 256, 10, 128, 0.5, 0)
    assert fc["examples_per_epoch"] == plan.examples_per_epoch == 18 * 128  # 64 real + 64 synthetic
    assert fc["train_flops_total"] == fc["train_flops_per_example"] * 18 * 128 * 3
    assert fc["epochs"] == 3 and "forecast" not in fc


def test_calibrate_runs_on_cpu():
    r = Recipe(
        dataset="digits", model="wrn10_1", loss="pgd", attack_steps=1, batch_size=16, device="cpu"
    )
    cal = calibrate(r, steps=1, warmup=0)
    assert cal["throughput_examples_per_s"] > 0 and cal["batch_size"] == 16
    assert (cal["power_watts"] is None) == (cal["energy_source"] == "none")


def test_cli_model_json(capsys):
    from robustscale.cli import main

    assert main(["flops", "wrn28_10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 36_479_194
    assert out["forward_flops"] / 1e9 == pytest.approx(10.5, rel=0.02)
    assert main(["flops", "wrn10_1", "--dataset", "digits"]) == 0
    assert "params" in capsys.readouterr().out


def test_cli_recipe_json_and_forecast(tmp_path, capsys):
    from robustscale.cli import main
    from robustscale.commands.flops import _fl

    path = tmp_path / "r.yaml"
    path.write_text("dataset: digits\nmodel: wrn10_1\nloss: pgd\nattack_steps: 3\nepochs: 2\n")
    recipe = Recipe.from_yaml(path, ["epochs=4"])
    assert main(["flops", str(path), "--set", "epochs=4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = forecast_recipe(recipe)
    assert out == json.loads(
        json.dumps(expected)
    )  # the CLI prints the library's numbers, all of them
    f = out["forward_flops"]
    assert out["epochs"] == 4 and out["examples_per_epoch"] == (1437 - 256) // 128 * 128
    assert (
        out["train_flops_total"] == out["train_flops_per_example"] * out["examples_per_epoch"] * 4
    )
    assert out["paper_convention"]["train_flops_per_example"] == (3 * 3 + 3) * f  # PGD-3: (3K + 3)F

    assert (
        main(
            [
                "flops",
                str(path),
                "--set",
                "epochs=4",
                "--throughput",
                "100",
                "--power-watts",
                "200",
                "--json",
            ]
        )
        == 0
    )
    fc = json.loads(capsys.readouterr().out)["forecast"]
    assert fc == pytest.approx(
        forecast_recipe(recipe, throughput=100.0, power_watts=200.0)["forecast"]
    )
    seconds = (
        out["examples_per_epoch"] * 4 + out["val_flops_total"] / out["train_flops_per_example"]
    ) / 100.0
    assert fc["device_hours"] == pytest.approx(seconds / 3600)
    assert fc["energy_kwh"] == pytest.approx(200.0 * seconds / 3.6e6 * 1.58)
    assert fc["electricity_cost_usd"] == pytest.approx(fc["energy_kwh"] * 0.12)
    assert fc["co2_kg"] == pytest.approx(fc["energy_kwh"] * 566.3 / 1000)
    assert fc["energy_estimated"] is True and fc["power_source"] == "given"

    assert (
        main(
            ["flops", str(path), "--set", "epochs=4", "--throughput", "100", "--power-watts", "200"]
        )
        == 0
    )
    lines = {line.strip().split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert (
        f"{_fl(out['train_flops_total'])} (paper "
        f"{_fl(out['paper_convention']['train_flops_total'])})" in lines["total training"]
    )
    assert f"{fc['device_hours']:.4g} (train" in lines["device-hours"]
    assert lines["power"].endswith("200.0 W (estimated)")
    assert f"{fc['energy_kwh']:.4g} kWh (PUE 1.58)" in lines["energy"]
    assert f"${fc['electricity_cost_usd']:.4g} (at $0.12/kWh)" in lines["electricity"]
    assert f"{fc['co2_kg']:.4g} kg (at 566.3 g/kWh)" in lines["CO2"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from robustscale.cli import main

    assert main(["flops", str(tmp_path / "missing.yaml")]) == 2
    assert main(["flops", "not_a_model"]) == 2
    assert main(["flops", "wrn10_1", "--throughput", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("robustscale: error:") for line in err)


# ---- robustscale.toml [cost] ----------------------------------------------------------------


def test_toml_cost_defaults_and_precedence(tmp_path, monkeypatch, capsys):
    from robustscale.cli import main

    monkeypatch.delenv("ROBUSTSCALE_CONFIG")
    monkeypatch.chdir(tmp_path)
    paper = Recipe()
    assert (paper.pue, paper.usd_per_kwh, paper.gco2_per_kwh, paper.power_watts) == (
        1.58,
        0.12,
        566.3,
        None,
    )
    (tmp_path / "robustscale.toml").write_text(
        "[cost]\npue = 1.1\nusd_per_kwh = 0.3\ngco2_per_kwh = 50\npower_watts "
        "= 200\n\n[other]\nx = 1\n"
    )
    # Recipe() itself does no I/O: only a loader that asks for the site's defaults reads the file
    assert Recipe().pue == 1.58
    r = Recipe.from_dict({}, site_defaults=True)
    assert (r.pue, r.usd_per_kwh, r.gco2_per_kwh, r.power_watts) == (1.1, 0.3, 50.0, 200.0)
    assert r.run_id == paper.run_id  # cost constants never change what a run computes
    # the recipe and --set win over the file
    site_pue = Recipe.from_dict({"pue": 1.3}, site_defaults=True)
    assert site_pue.pue == 1.3 and site_pue.usd_per_kwh == 0.3
    assert r.with_overrides(["usd_per_kwh=0.5"]).usd_per_kwh == 0.5
    path = tmp_path / "r.yaml"
    path.write_text("dataset: digits\nloss: pgd\nattack_steps: 2\ngco2_per_kwh: 400\n")
    site = Recipe.from_yaml(path, site_defaults=True)
    assert site.gco2_per_kwh == 400.0 and site.pue == 1.1
    assert Recipe.from_yaml(path, ["pue=2"], site_defaults=True).pue == 2.0
    # the CLI forecast uses them: power from the file (an estimate), the file's prices
    assert main(["flops", str(path), "--throughput", "100", "--json"]) == 0
    fc = json.loads(capsys.readouterr().out)["forecast"]
    assert fc["power_watts"] == 200.0 and fc["energy_estimated"] is True
    assert (fc["pue"], fc["usd_per_kwh"], fc["gco2_per_kwh"]) == (1.1, 0.3, 400.0)
    assert fc["energy_kwh"] == pytest.approx(200.0 * fc["device_hours"] * 3600 / 3.6e6 * 1.1)
    assert fc["electricity_cost_usd"] == pytest.approx(fc["energy_kwh"] * 0.3)
    # ROBUSTSCALE_CONFIG names another file, which then replaces ./robustscale.toml
    other = tmp_path / "site" / "costs.toml"
    other.parent.mkdir()
    other.write_text("[cost]\nusd_per_kwh = 0.05\n")
    monkeypatch.setenv("ROBUSTSCALE_CONFIG", str(other))
    r = Recipe.from_dict({}, site_defaults=True)
    assert (r.pue, r.usd_per_kwh, r.power_watts) == (1.58, 0.05, None)
    other.write_text("[cost]\nusd_per_kwh = 0.07\n# changed\n")  # re-read when the file changes
    assert Recipe.from_dict({}, site_defaults=True).usd_per_kwh == 0.07


@pytest.mark.parametrize(
    "text,words",
    [
        (
            "[cost]\npue = 1.2\nprice = 0.1\n",
            ["unknown key 'price' in [cost]", "allowed keys: pue, usd_per_kwh"],
        ),
        ("[cost]\npue = 0.5\n", ["[cost] pue = 0.5", "allowed: a number >= 1"]),
        ("[cost]\nusd_per_kwh = -1\n", ["usd_per_kwh = -1", "allowed: a number >= 0"]),
        ("[cost]\ngco2_per_kwh = 'a lot'\n", ["gco2_per_kwh = 'a lot'", "allowed: a number >= 0"]),
        ("[cost]\npower_watts = true\n", ["power_watts = True", "allowed: a number > 0"]),
        ("[cost]\npower_watts = 0\n", ["power_watts = 0", "allowed: a number > 0"]),
        ("[cost]\npue = nan\n", ["pue = nan", "allowed: a number >= 1"]),
        ("cost = 3\n", ["'cost' must be a table"]),
        ("[cost\npue = 1\n", ["is not valid TOML"]),
    ],
)
def test_toml_bad_cost_table_is_one_line_error(tmp_path, monkeypatch, capsys, text, words):
    from robustscale.cli import main
    from robustscale.errors import RobustscaleError

    monkeypatch.delenv("ROBUSTSCALE_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "robustscale.toml").write_text(text)
    with pytest.raises(RobustscaleError) as info:
        Recipe.from_dict({}, site_defaults=True)
    msg = str(info.value)
    assert "robustscale.toml" in msg and "\n" not in msg
    assert all(w in msg for w in words), msg
    (tmp_path / "r.yaml").write_text("dataset: digits\n")
    assert main(["flops", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("robustscale: error:") and "robustscale.toml" in err[0]
    )


def test_toml_config_env_must_exist(tmp_path, monkeypatch):
    from robustscale.errors import RobustscaleError

    monkeypatch.setenv("ROBUSTSCALE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(
        RobustscaleError, match="ROBUSTSCALE_CONFIG=.*missing.toml.* is not an existing file"
    ):
        Recipe.from_dict({}, site_defaults=True)


# ---- a run where nothing can be metered ------------------------------------------------------


def test_training_without_nvml_or_rapl_records_unknown_energy(tmp_path, monkeypatch):
    """No NVML and no readable RAPL: the run finishes, and energy, cost and CO2 are null (unknown),
    never 0; the constants come from robustscale.toml."""
    from conftest import tiny

    from robustscale import train
    from robustscale.cost import energy
    from robustscale.files import read_csv_rows

    monkeypatch.setattr(energy, "_import_nvml", lambda: None)
    empty = tmp_path / "powercap"
    empty.mkdir()
    monkeypatch.setattr(energy, "RAPL_ROOT", str(empty))
    cfg = tmp_path / "robustscale.toml"
    cfg.write_text("[cost]\npue = 1.25\nusd_per_kwh = 0.2\n")
    monkeypatch.setenv("ROBUSTSCALE_CONFIG", str(cfg))
    # the site's constants reach a recipe through the loaders (as `robustscale train` loads one)
    keys = tiny(epochs=2, attack_steps=1, val_attack_steps=1, val_size=32).to_dict()
    cost_keys = ("pue", "usd_per_kwh", "gco2_per_kwh", "power_watts")
    recipe = Recipe.from_dict(
        {k: v for k, v in keys.items() if k not in cost_keys}, site_defaults=True
    )
    run = train(recipe, out_root=tmp_path / "runs", progress=False)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    cost = json.loads((run / "cost.json").read_text())
    assert cost["energy_source"] == "none" and cost["energy_measured"] is False
    assert (
        cost["energy_kwh"] is None
        and cost["electricity_cost_usd"] is None
        and cost["co2_kg"] is None
    )
    assert cost["device_seconds"] > 0 and cost["train_flops"] > 0  # time and FLOPs are still known
    assert (cost["pue"], cost["usd_per_kwh"], cost["gco2_per_kwh"]) == (1.25, 0.2, 566.3)
    rows = read_csv_rows(run / "metrics.csv")
    assert len(rows) == 2 and all(r["epoch_energy_kwh"] == "" for r in rows)
    assert all(float(r["epoch_flops"]) > 0 and float(r["seconds"]) > 0 for r in rows)
