"""WideResNets in timm's registry: the paper's parameter counts, activations, the [0, 1] input
contract."""

from __future__ import annotations

import pytest
import timm
import torch

from robustscale import RobustscaleError
from robustscale.models import WRN_VARIANTS, build_model, count_params

# The paper's counts for CIFAR-10 (10 classes, 3 channels).
PAPER_PARAMS = {"wrn28_10": 36.5e6, "wrn34_10": 46.2e6, "wrn34_20": 184.5e6, "wrn70_16": 266.8e6}


@pytest.mark.parametrize("name,expected", PAPER_PARAMS.items())
def test_wrn_parameter_counts_match_the_paper(name, expected):
    assert abs(count_params(name, 10, 3) - expected) / expected < 0.01


@pytest.mark.parametrize("name", sorted(WRN_VARIANTS))
def test_every_registered_wrn_has_its_depth_and_width(name):
    # WRN-d-k: d - 4 3x3 convolutions in the blocks plus the stem's, and 64k features at the end
    depth, width = WRN_VARIANTS[name]
    with torch.device("meta"):
        model = build_model(name, 10, 3, [0.5] * 3, [0.5] * 3)
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert len(convs) == depth - 3 and head.in_features == 64 * width


def test_wrns_are_ordinary_timm_models():
    import robustscale.models  # noqa: F401  (registration)

    net = timm.create_model("wrn16_1", num_classes=7, in_chans=1)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 7)
    assert "wrn28_10" in timm.list_models("wrn*")


@pytest.mark.parametrize(
    "act,cls", [("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU), ("silu", torch.nn.SiLU)]
)
def test_activation_is_used(act, cls):
    model = build_model("wrn10_1", 10, 1, [0.5], [0.5], activation=act)
    kinds = {type(m) for m in model.modules()}
    assert cls in kinds and all(
        k not in kinds for k in {torch.nn.ReLU, torch.nn.GELU, torch.nn.SiLU} - {cls}
    )


def test_normalisation_is_inside_the_model():
    model = build_model("wrn10_1", 10, 1, [0.3], [0.4]).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), model.net((x - 0.3) / 0.4))


def test_any_timm_model_builds_for_the_dataset():
    model = build_model("resnet18", 10, 1, [0.3], [0.4], img_size=(32, 32))
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    # a ViT gets the image size for its patch grid and position embeddings, as timm users pass
    # img_size=32
    vit = build_model("vit_tiny_patch16_224", 10, 3, [0.5] * 3, [0.25] * 3, img_size=(32, 32))
    assert vit.net.patch_embed.grid_size == (2, 2) and vit(torch.rand(2, 3, 32, 32)).shape == (
        2,
        10,
    )


def test_a_timm_model_other_than_a_wrn_trains(tmp_path):
    import csv

    from conftest import tiny

    from robustscale import train

    run = train(
        tiny(model="test_efficientnet", epochs=2, attack_steps=1), out_root=tmp_path, progress=False
    )
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_clean_acc"]) > 30  # ten classes: chance is 10%


def test_a_model_that_cannot_take_the_images_is_one_line_and_writes_nothing(tmp_path, capsys):
    from conftest import tiny

    from robustscale.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny(model="test_vit").to_yaml())  # 16-pixel patches on 8x8 digits
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_vit" in err and "(1, 8, 8)" in err
    assert not (tmp_path / "run").exists()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(RobustscaleError, match="not_a_net"):
        build_model("not_a_net", 10, 3, [0] * 3, [1] * 3)
