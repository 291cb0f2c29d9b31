"""The DeepMind WideResNet and RobustBench checkpoints in and out, against reference
implementations of RobustBench's DMWideResNet and WideResNet (tests/robustbench_reference.py)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from robustbench_reference import (
    RefDMWideResNet,
    RefSwish,
    RefWideResNet,
    randomise,
    ref_normalize_model,
)
from torch import nn

import robustscale
from robustscale import RobustscaleError
from robustscale.cli import main
from robustscale.models import DM_WRN_VARIANTS, count_params

ACT = {"silu": RefSwish, "relu": nn.ReLU, "gelu": nn.GELU}

# RobustBench's published architectures (CIFAR-10: 10 classes, 3 channels).
DM_PARAMS = {
    "dm_wrn28_10": 36_479_194,
    "dm_wrn70_16": 266_796_506,
    "dm_wrn94_16": 365_915_610,
    "dm_wrn82_8": 79_125_466,
}


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name,expected", DM_PARAMS.items())
def test_dm_parameter_counts_are_robustbench_s(name, expected):
    assert count_params(name, 10, 3, "silu") == expected  # built on the meta device


@pytest.mark.parametrize("name", sorted(DM_WRN_VARIANTS))
def test_dm_state_dict_keys_and_shapes_are_robustbench_s(name):
    depth, width = DM_WRN_VARIANTS[name]
    with torch.device("meta"):
        ours = timm.create_model(name).state_dict()
        ref = RefDMWideResNet(depth=depth, width=width).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)
    assert "layer.1.block.0.shortcut.weight" in ours and "mean" not in ours


def test_dm_models_are_timm_models_with_swish_by_default():
    net = timm.create_model("dm_wrn10_1", num_classes=7, in_chans=1)
    assert net(torch.rand(2, 1, 8, 8)).shape == (
        2,
        7,
    )  # global pooling: digits' 8x8 images work too
    assert any(isinstance(m, nn.SiLU) for m in net.modules())
    assert {"dm_wrn28_10", "dm_wrn70_16", "dm_wrn106_16"} <= set(timm.list_models("dm_wrn*"))


@pytest.mark.parametrize("act", ["silu", "relu", "gelu"])
def test_a_robustbench_dm_state_dict_gives_the_same_logits(tmp_path, act):
    ref = randomise(RefDMWideResNet(depth=16, width=1, activation_fn=ACT[act]))
    path = _save(tmp_path, ref.state_dict())
    model = robustscale.load(path, model="dm_wrn16_1", activation=act)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _x()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_a_robustbench_classic_wrn_state_dict_gives_the_same_logits(tmp_path):
    ref = randomise(RefWideResNet(depth=16, widen_factor=1), seed=3)
    state = ref.state_dict()
    state.update(
        {
            f"sub_block1.{k.removeprefix('block1.')}": v
            for k, v in state.items()
            if k.startswith("block1.")
        }
    )  # TRADES-era checkpoints carry this unused group
    path = _save(tmp_path, {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    model = robustscale.load(path, model="wrn16_1")
    x = _x()
    with torch.no_grad():
        assert (
            model(x) - ref(x)
        ).abs().max().item() <= 1e-5  # no normalisation, as RobustBench's WideResNet
    assert model.mean.abs().max() == 0 and (model.std == 1).all()
    with pytest.raises(RobustscaleError, match="wrn10_1.*WideResNet\\(depth=10, widen_factor=1\\)"):
        robustscale.load(path, model="wrn10_1")  # depth 16 is not wrn10_1: one line


@pytest.mark.parametrize(
    "container,prefix",
    [("model_state_dict", "module.0."), ("model", "model."), (None, "module."), ("state_dict", "")],
)
def test_prefixed_and_nested_dm_checkpoints_load(tmp_path, container, prefix):
    ref = randomise(RefDMWideResNet(depth=10, width=1, activation_fn=RefSwish), seed=2)
    state = {f"{prefix}{k}": v for k, v in ref.state_dict().items()}
    obj = {container: state, "epoch": 400} if container else state
    model = robustscale.load(_save(tmp_path, obj), model="dm_wrn10_1")
    x = _x()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_normaliser_keys_are_dropped_and_their_normalisation_applied(tmp_path, caplog):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # not RobustBench's CIFAR statistics
    net = randomise(RefWideResNet(depth=10, widen_factor=1), seed=4)
    wrapped = ref_normalize_model(net, mean, std).eval()  # timm-adv-training's layout too
    assert {"normalize.mean", "normalize.std", "model.conv1.weight"} <= set(wrapped.state_dict())
    with caplog.at_level("INFO", logger="robustscale.models.robustbench"):
        model = robustscale.load(_save(tmp_path, {"model": wrapped.state_dict()}), model="wrn10_1")
    x = _x()
    with torch.no_grad():
        assert (model(x) - wrapped(x)).abs().max().item() <= 1e-5
    assert "normalize.mean" in caplog.text and "RobustBench" in caplog.text  # says it differs

    # an older DMWideResNet saved its mean/std buffers: they are taken, not reported as unexpected
    ref = randomise(RefDMWideResNet(depth=10, width=1, activation_fn=RefSwish), seed=5)
    state = {**ref.state_dict(), "mean": ref.mean, "std": ref.std}
    model = robustscale.load(_save(tmp_path, state, "old.pt"), model="dm_wrn10_1")
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path):
    deeper = _save(tmp_path, randomise(RefDMWideResNet(depth=16, width=1)).state_dict())
    with pytest.raises(RobustscaleError) as err:
        robustscale.load(deeper, model="dm_wrn10_1")
    msg = str(err.value)
    assert "\n" not in msg and "dm_wrn10_1" in msg and "DMWideResNet(depth=10, width=1)" in msg
    assert "first unexpected key 'layer.0.block.1." in msg
    classic = _save(
        tmp_path, randomise(RefWideResNet(depth=10, widen_factor=1)).state_dict(), "c.pt"
    )
    with pytest.raises(
        RobustscaleError, match="first missing key 'init_conv.weight'.*first unexpected key"
    ):
        robustscale.load(classic, model="dm_wrn10_1")
    with pytest.raises(RobustscaleError, match="needs model=NAME"):
        robustscale.load(classic)


def _write_cifar(tmp_path):
    from conftest import write_cifar10

    return write_cifar10(tmp_path / "data", n_train=40, n_test=10)


def test_eval_cli_on_robustbench_files_and_bad_input_is_one_line(tmp_path, capsys):
    data = _write_cifar(tmp_path)
    good = _save(
        tmp_path,
        {
            "model_state_dict": {
                f"module.0.{k}": v
                for k, v in randomise(RefDMWideResNet(depth=10, width=1)).state_dict().items()
            }
        },
    )
    common = ["--dataset", "cifar10", "--data-dir", str(data), "--steps", "2", "--n", "4"]
    assert main(["eval", str(good), "--model", "dm_wrn10_1", *common, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and (tmp_path / "eval" / "pgd-8-255-n4.json").is_file()

    other = tmp_path / "other"
    other.mkdir()
    text = other / "notes.pt"
    text.write_text("not a checkpoint")
    listed = _save(other, [1, 2, 3], "list.pt")
    deeper = _save(other, randomise(RefDMWideResNet(depth=16, width=1)).state_dict(), "deeper.pt")
    cases = [
        (text, "dm_wrn10_1", "corrupt or unsafe"),
        (listed, "dm_wrn10_1", "no state dict of tensors"),
        (deeper, "dm_wrn10_1", "does not fit model='dm_wrn10_1'"),
        (other / "missing.pt", "dm_wrn10_1", "does not exist"),
        (deeper, "dm_wrn_nope", "dm_wrn_nope"),
    ]
    for path, model, says in cases:
        assert main(["eval", str(path), "--model", model, *common]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (other / "eval").exists()


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory):
    """Two tiny CIFAR-10 runs: a DeepMind WRN with Swish and EMA, and a classic ReLU WRN."""
    from conftest import tiny, write_cifar10

    root = tmp_path_factory.mktemp("rb")
    data = write_cifar10(root / "data", n_train=40, n_test=10)
    base = {
        "dataset": "cifar10",
        "data_dir": str(data),
        "eps": 8 / 255,
        "step_size": 2 / 255,
        "attack_steps": 1,
        "val_attack_steps": 1,
        "epochs": 1,
        "batch_size": 20,
        "val_size": 10,
    }
    dm = robustscale.train(
        tiny(model="dm_wrn10_1", activation="silu", ema_decay=0.9, **base),
        out_root=root / "runs",
        progress=False,
    )
    wrn = robustscale.train(tiny(model="wrn10_1", **base), out_root=root / "runs", progress=False)
    return dm, wrn


def test_export_of_a_dm_run_loads_strictly_into_robustbench_s_model(cifar_runs, tmp_path, capsys):
    from robustscale.evaluate import evaluate_run
    from robustscale.files import atomic_write_json

    dm, _ = cifar_runs
    evaluate_run(dm, attack="pgd", steps=1)
    out = tmp_path / "export"
    assert (
        main(
            [
                "export",
                str(dm),
                "--format",
                "robustbench",
                "-o",
                str(out),
                "--name",
                "Me2026Dm_10_1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    line = (
        "DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=Swish, "
        "mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))"
    )
    assert line in printed
    state = torch.load(out / "Me2026Dm_10_1.pt", weights_only=True)
    ref = RefDMWideResNet(depth=10, width=1, activation_fn=RefSwish).eval()
    ref.load_state_dict(state, strict=True)
    best = torch.load(dm / "checkpoints" / "best.pt", weights_only=True)["model"]  # EMA weights
    assert all(torch.equal(state[k], best[f"net.{k}"]) for k in state)
    x = _x()
    with torch.no_grad():
        assert (robustscale.load(dm)(x) - ref(x)).abs().max().item() <= 1e-5
    info = json.loads((out / "Me2026Dm_10_1.json").read_text())
    pgd = json.loads((dm / "eval" / "pgd-8-255.json").read_text())
    assert (
        info["architecture"] == "WideResNet-10-1"
        and info["eps"] == "8/255"
        and info["dataset"] == "cifar10"
    )
    assert (
        info["clean_acc"] == f"{pgd['clean_acc']:.2f}"
        and info["autoattack_acc"] == info["reported"] == ""
    )
    assert info["additional_data"] is False and info["number_forward_passes"] == 1
    assert info["authors"] == info["venue"] == "" and "EMA 0.9" in info["footnote"]
    # with the standard AutoAttack result of the whole test split: two-decimal strings
    aa = {
        **pgd,
        "attack": "autoattack",
        "version": "standard",
        "clean_acc": 30.0,
        "robust_acc": 12.345,
    }
    atomic_write_json(dm / "eval" / "autoattack-8-255.json", aa)
    from robustscale.export import model_info

    info = model_info(dm, name="x")
    assert (info["clean_acc"], info["autoattack_acc"], info["reported"]) == (
        "30.00",
        "12.35",
        "12.35",
    )


def test_export_of_a_classic_wrn_run_loads_into_robustbench_s_wideresnet(cifar_runs, tmp_path):
    from robustscale.export import export_robustbench

    _, wrn = cifar_runs
    res = export_robustbench(wrn, tmp_path, name="Me_wrn")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    net = "WideResNet(depth=10, widen_factor=1, num_classes=10)"
    assert res["constructor"] == f"normalize_model({net}, mean={mean}, std={std})"
    # RobustBench's WideResNet does not normalise; the printed entry wraps it, and the export's
    # keys (normalize.mean, normalize.std, model.*) load strictly into that wrapper
    ref = ref_normalize_model(RefWideResNet(depth=10, widen_factor=1), mean, std).eval()
    exported = torch.load(tmp_path / "Me_wrn.pt", weights_only=True)
    ref.load_state_dict(exported, strict=True)
    model = robustscale.load(wrn)
    x = _x()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5
        # and the export comes back in through the loader, normalisation included
        back = robustscale.load(tmp_path / "Me_wrn.pt", model="wrn10_1")
        assert (back(x) - model(x)).abs().max().item() <= 1e-5


def test_export_bad_input_is_one_line_and_writes_nothing(
    cifar_runs, standard_run, tmp_path, capsys
):
    dm, _ = cifar_runs
    out = tmp_path / "out"
    cases = [
        ([str(standard_run)], "no RobustBench leaderboard"),
        ([str(dm), "--format", "onnx"], "onnx"),
        ([str(dm), "--name", "../escape"], "name='../escape'"),
        ([str(tmp_path / "none")], "does not exist"),
    ]
    for args, says in cases:
        assert main(["export", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["export", str(dm)])  # no -o
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_flops_work_for_the_dm_models(capsys):
    from robustscale.cost.flops import forward_flops, measure_step_flops
    from robustscale.models import build_model

    def mk(name):
        return build_model(name, 10, 3, [0.5] * 3, [0.25] * 3, activation="silu")

    # the same convolutions as the classic WRN: "SAME" padding changes no output size
    assert forward_flops(mk("dm_wrn16_1"), (3, 32, 32)) == forward_flops(mk("wrn16_1"), (3, 32, 32))
    step = measure_step_flops(
        mk("dm_wrn10_1"),
        "trades",
        (3, 32, 32),
        10,
        eps=8 / 255,
        step_size=2 / 255,
        attack_steps=2,
        trades_beta=6.0,
        val_steps=2,
    )
    assert step.train > step.forward > 0
    assert main(["flops", "dm_wrn28_10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == DM_PARAMS["dm_wrn28_10"]
    assert abs(out["forward_flops"] - 10.49e9) / 10.49e9 < 0.01


def test_dm_grad_checkpointing_gives_the_same_gradients_and_bn_statistics():
    from robustscale.models import build_model

    plain, ckpt = (
        build_model("dm_wrn10_1", 10, 3, [0.5] * 3, [0.25] * 3, activation="silu") for _ in range(2)
    )
    ckpt.load_state_dict(plain.state_dict())
    ckpt.net.set_grad_checkpointing(True)
    x, y = _x(4), torch.arange(4)
    for model in (plain, ckpt):
        nn.functional.cross_entropy(model.train()(x), y).backward()
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(plain.buffers(), ckpt.buffers()):
        torch.testing.assert_close(
            a, b
        )  # running statistics updated once, as without checkpointing


def _wrn_macs(depth: int, width: int, classes: int = 10) -> int:
    """Multiply-adds of one 32x32 forward of a CIFAR WideResNet, counted by hand."""
    n, ch = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
    macs = 3 * 16 * 9 * 32 * 32
    for g, side in enumerate((32, 16, 8)):
        cin, cout, area = ch[g], ch[g + 1], side * side
        macs += (cin * cout * 9 + cout * cout * 9 + (cin * cout if cin != cout else 0)) * area
        macs += (n - 1) * 2 * cout * cout * 9 * area
    return macs + ch[3] * classes


@pytest.mark.parametrize("name", sorted(DM_WRN_VARIANTS))
def test_every_dm_model_has_the_wrn_flop_count(name):
    from robustscale.cost.flops import forward_flops
    from robustscale.models import build_model

    with torch.device("meta"):  # no weights allocated, even for dm_wrn106_16
        model = build_model(name, 10, 3, [0.5] * 3, [0.25] * 3, activation="silu")
    # 2 FLOPs per multiply-add; "SAME" padding changes no output size, so no count either
    assert forward_flops(model, (3, 32, 32)) == 2 * _wrn_macs(*DM_WRN_VARIANTS[name])
