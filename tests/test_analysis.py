"""The predictor, the report and figures, `robustscale analyze` and `robustscale predict`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from zoo_factory import JOINT_THETA, joint_zoo, planted_zoo, power_law_zoo

from robustscale.analysis import analyze_zoo, fit_predictor
from robustscale.analysis.predictor import _model, predict_rows, unique_rows
from robustscale.cli import main
from robustscale.errors import RobustscaleError
from robustscale.zoo import write_zoo

FIGURES = ["1a", "1b", "1c", "2", "3a", "3b", "3c"]
JOINT_FIGURES = ["4a", "4b", "4c"]


def test_predictor_learns_a_planted_dependence_and_ranks_it_first():
    p = fit_predictor(planted_zoo(n=600), seed=0, n_splits=3)
    assert p.r2 > 0.95 and p.mae < 1.5
    assert max(p.importance, key=p.importance.get) == "attack_steps"
    assert max(p.permutation_importance, key=p.permutation_importance.get) == "attack_steps"
    assert p.r2_mean > 0.95 and p.r2_std < 0.05
    assert p.n_test == 180 and p.n_train == 420
    # a new recipe's prediction follows the planted law 20 + 4*steps (+1 with synthetic data)
    row = {
        "params": 36_479_194,
        "synthetic_data": 0.0,
        "activation": "relu",
        "loss": "pgd",
        "attack_steps": 10.0,
        "ema": 0.0,
        "examples_seen": 100 * 50_000,
    }
    import pandas as pd

    pred = p.predict(pd.DataFrame([row]))
    assert pred["mean"][0] == pytest.approx(60, abs=1.5)
    assert pred["low"][0] < pred["mean"][0] < pred["high"][0]


def test_predictor_sees_the_amount_of_data_and_falls_back_without_it():
    df = planted_zoo(n=300)
    # accuracy rising with the examples a run processed, which the paper's six cannot see
    df["examples_seen"] = np.random.default_rng(1).choice([1, 2, 4], len(df)) * 5_000_000
    df["autoattack_acc"] = 20 + 5 * np.log2(df["examples_seen"] / 5_000_000) + df["attack_steps"]
    seven = fit_predictor(df, n_splits=2)
    assert seven.features[-1] == "examples_seen" and seven.r2 > 0.95
    foreign = df.assign(examples_seen=np.nan)  # a zoo made elsewhere that did not record it
    six = fit_predictor(foreign, n_splits=2)
    assert "examples_seen" not in six.features and six.r2 < 0.8
    row = foreign.iloc[[0]]
    assert np.isfinite(six.predict(row)["mean"]).all()


def test_unique_rows_is_numpys_unique_of_rows():
    rng = np.random.default_rng(0)
    for n, d in [(1, 1), (7, 3), (500, 7), (2000, 2)]:
        X = rng.integers(0, 3, (n, d)).astype(float) * np.array([1e7, 1, -2, 0.5, 3, 1, 1])[:d]
        rows, inverse = np.unique(X, axis=0, return_inverse=True)
        mine_rows, mine_inverse = unique_rows(X)
        assert np.array_equal(mine_rows, rows) and np.array_equal(mine_inverse, inverse.ravel())
        assert np.array_equal(mine_rows[mine_inverse], X)


def test_predicting_distinct_rows_gives_every_rows_prediction_bit_for_bit():
    df = planted_zoo(n=300)
    X = df[["params", "attack_steps", "epochs"]].to_numpy(float)
    model = _model(0).fit(X, df["autoattack_acc"].to_numpy(float))
    assert np.array_equal(predict_rows(model, X), model.predict(X))


def test_predictor_refuses_an_infinite_value_in_one_line():
    df = planted_zoo(n=60)
    df["attack_steps"] = df["attack_steps"].astype(float)
    df.loc[7, "attack_steps"] = np.inf
    with pytest.raises(RobustscaleError, match="'attack_steps' has an infinite value"):
        fit_predictor(df, n_splits=1)


def test_report_and_every_figure_are_produced(tmp_path):
    df = power_law_zoo(n=300, with_collapsed=4)
    df.loc[4:30, "loss"] = (
        "standard"  # standard training: fitted on clean accuracy, beside the robust law
    )
    fits = analyze_zoo(
        df, tmp_path / "rep", target_acc=40.0, n_boot=200, n_splits=3, vector=("svg", "pdf")
    )
    rep = tmp_path / "rep"
    html = (rep / "report.html").read_text()
    for name in FIGURES:
        png = rep / "figures" / fits["figures"][name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        for fmt in ("svg", "pdf"):  # the report links each vector copy
            assert f'href="figures/{png.stem}.{fmt}">{fmt.upper()}</a>' in html
    assert fits["vector_formats"] == ["svg", "pdf"]
    assert html.count("data:image/png;base64,") >= len(FIGURES)
    assert "Collapsed runs (4)" in html and "run00000" in html and "standard training" in html
    assert "Compute-optimal robustness" in html
    saved = json.loads((rep / "fits.json").read_text())
    assert saved["n_runs"] == 300 and sorted(saved["collapsed_runs"]) == [
        f"run{i:05d}" for i in range(4)
    ]
    for law in ("accuracy", "electricity", "co2"):
        assert set(saved["scaling"][law]) >= {"alpha", "C", "r2", "alpha_ci", "C_ci", "n_bins"}
    assert saved["scaling"]["standard_accuracy"]["alpha"] is not None
    assert set(saved["predictor"]) >= {"r2", "mae", "importance", "permutation_importance"}
    assert saved["target"]["flops"] > 0 and saved["target"]["kwh"] > 0
    # accuracy here follows FLOPs alone, in recipe families of a handful of runs: no joint law,
    # the target answered by the envelope law, and no joint-law figure drawn as if it were a finding
    assert saved["joint"]["identifiable"] is False and saved["target"]["law"] == "envelope"
    assert "not identifiable" in saved["target"]["joint_note"]
    assert not set(JOINT_FIGURES) & set(saved["figures"])


def test_figures_are_png_only_unless_a_vector_format_is_asked_for(tmp_path):
    fits = analyze_zoo(power_law_zoo(n=120), tmp_path / "rep", n_boot=20, n_splits=2, joint=False)
    written = sorted(p.suffix for p in (tmp_path / "rep" / "figures").iterdir())
    assert written == [".png"] * len(fits["figures"]) and fits["vector_formats"] == []
    html = (tmp_path / "rep" / "report.html").read_text()
    assert ".svg" not in html and ".pdf" not in html  # no link to a file that is not there


def test_an_unknown_vector_format_is_one_line_naming_the_allowed_ones(tmp_path, capsys):
    allowed = "vector format 'eps' is not known; allowed: svg, pdf"
    with pytest.raises(RobustscaleError, match=allowed):
        analyze_zoo(power_law_zoo(n=60), tmp_path / "rep", vector=("svg", "eps"))
    assert not (tmp_path / "rep").exists()  # refused before any fit or file
    zoo = tmp_path / "zoo.csv"
    write_zoo(power_law_zoo(n=60), zoo)
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(zoo), "-o", str(tmp_path / "r2"), "--vector", "eps"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'eps' (choose from 'svg', 'pdf')" in capsys.readouterr().err
    # the CLI spells its choices out (it imports no analysis code to parse): the same formats
    from robustscale.analysis.report import VECTOR_FORMATS
    from robustscale.cli import build_parser

    analyze = build_parser()._subparsers._group_actions[0].choices["analyze"]
    [action] = [a for a in analyze._actions if a.dest == "vector"]
    assert tuple(action.choices) == VECTOR_FORMATS


def test_joint_figures_drawn_for_an_identifiable_law(tmp_path):
    fits = analyze_zoo(joint_zoo(n=200, seed=3), tmp_path / "rep", n_boot=100, n_splits=2)
    joint = fits["joint"]
    assert joint["identifiable"] is True and joint["reasons"] == [] and joint["at_bounds"] == []
    assert joint["heldout_r2"] > 0.9 and joint["L"] == "robust_error" and joint["D"] == "processed"
    assert joint["law"]["alpha"] == pytest.approx(JOINT_THETA[2], abs=0.03)
    opt = joint["optimum"]
    assert len(opt["C"]) == len(opt["N_star"]) == len(opt["D_star"]) == 10 and isinstance(
        opt["extrapolated"], bool
    )
    for c, n, d in zip(opt["C"], opt["N_star"], opt["D_star"]):
        assert n * d * joint["k_flops_per_param_example"] == pytest.approx(c, rel=1e-6)
    for name in JOINT_FIGURES:
        assert (tmp_path / "rep" / "figures" / fits["figures"][name]).stat().st_size > 1000
    assert "4d" not in fits["figures"]
    assert "Not identifiable" not in (tmp_path / "rep" / "report.html").read_text()


def test_not_identifiable_law_gets_a_paragraph_and_the_coverage_figure_only(tmp_path):
    df = joint_zoo(n=200, seed=3)
    df["params"] = np.where(np.arange(len(df)) % 2 == 0, 1_000_000, 30_000_000)  # two model sizes
    fits = analyze_zoo(df, tmp_path / "rep", n_boot=50, n_splits=2)
    joint = fits["joint"]
    assert joint["identifiable"] is False and any(
        "only 2 distinct model sizes" in r for r in joint["reasons"]
    )
    assert "4d" in fits["figures"] and not set(JOINT_FIGURES) & set(fits["figures"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "Not identifiable" in html
        and "only 2 distinct model sizes" in html
        and "plan</code> refuses" in html
    )


def _zoo_file(tmp_path, df, name="zoo.csv"):
    path = tmp_path / name
    write_zoo(df, path)
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.drop(columns=["autoattack_acc"]), "lacks column(s) autoattack_acc"),
        (lambda d: d.assign(autoattack_acc=d["autoattack_acc"] / 100), "fractions"),
        (
            lambda d: d.assign(train_flops=np.where(d.index == 5, -1e18, d["train_flops"])),
            "negative",
        ),
    ],
)
def test_bad_zoo_gives_one_clear_line(tmp_path, capsys, change, words):
    path = tmp_path / "bad.csv"
    change(power_law_zoo(n=30)).to_csv(path, index=False)
    assert main(["analyze", str(path), "-o", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "rep").exists()


def test_cli_analyze_prints_the_law_and_writes_the_report(tmp_path, capsys):
    path = _zoo_file(tmp_path, power_law_zoo(n=200), "zoo.parquet")
    assert (
        main(
            ["analyze", str(path), "-o", str(tmp_path / "rep"), "--target-acc", "45", "--seed", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy = " in out and "predictor: R2" in out and "target 45% AutoAttack" in out
    assert (tmp_path / "rep" / "report.html").is_file()


def test_cli_analyze_on_a_zoo_too_small_for_intervals(tmp_path, capsys):
    """A first small sweep (here 3 runs in 2 FLOPs bins): a law without a bootstrap interval, no
    predictor; it must report that, not crash (it did, formatting a missing interval)."""
    zoo = power_law_zoo(n=200)
    flops = zoo["train_flops"].sort_values()
    small = zoo.loc[[flops.index[0], flops.index[1], flops.index[-1]]]
    path = _zoo_file(tmp_path, small, "zoo.csv")
    assert main(["analyze", str(path), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "no CI" in out and "predictor: R2" not in out
    assert (tmp_path / "rep" / "report.html").is_file()


def _recipe(tmp_path, **overrides):
    recipe = {
        "dataset": "cifar10",
        "model": "wrn28_10",
        "activation": "relu",
        "loss": "pgd",
        "attack_steps": 10,
        "epochs": 100,
        "ema_decay": None,
        "synthetic_data": None,
        "synthetic_fraction": 0.0,
        "eps": "8/255",
    }
    recipe.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_predict_without_flops_forecast(tmp_path, capsys, monkeypatch):
    import robustscale.cost

    def missing(name):
        raise AttributeError(name)

    monkeypatch.setattr(
        robustscale.cost, "__getattr__", missing
    )  # a cost module without forecast_recipe
    zoo = _zoo_file(tmp_path, planted_zoo(n=300))
    assert main(["predict", str(_recipe(tmp_path)), "--zoo", str(zoo), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["autoattack_acc"] == pytest.approx(60, abs=2)
    assert out["autoattack_acc_ci"][0] < 60 < out["autoattack_acc_ci"][1]
    assert out["flops"] is None and "FLOPs forecast unavailable" in out["flops_source"]


def test_cli_predict_with_flops_forecast(tmp_path, capsys, monkeypatch):
    import robustscale.cost

    monkeypatch.setattr(
        robustscale.cost,
        "forecast_recipe",
        lambda recipe: {"train_flops_total": 1e18},
        raising=False,
    )
    zoo = _zoo_file(tmp_path, planted_zoo(n=300))  # energy_kwh = 1e-17 x FLOPs
    assert main(["predict", str(_recipe(tmp_path, attack_steps=2)), "--zoo", str(zoo)]) == 0
    out = capsys.readouterr().out
    predicted = float(re.search(r"predicted AutoAttack accuracy: ([0-9.]+)%", out).group(1))
    assert predicted == pytest.approx(28, abs=1.5)
    assert "forecast FLOPs: 1e+18" in out and "kWh: 10 " in out


def test_cli_predict_unknown_activation_is_one_line(tmp_path, capsys):
    zoo = _zoo_file(tmp_path, planted_zoo(n=100))
    assert main(["predict", str(_recipe(tmp_path, activation="swish")), "--zoo", str(zoo)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "swish" in err and "relu" in err


def test_cli_predict_reads_the_recipe_as_train_does(tmp_path, capsys):
    zoo = _zoo_file(tmp_path, planted_zoo(n=100))
    path = _recipe(tmp_path, attack_steps=2)
    recipe = yaml.safe_load(path.read_text())
    del recipe["dataset"]  # train's default is digits, not cifar10
    path.write_text(yaml.safe_dump(recipe))
    assert main(["predict", str(path), "--zoo", str(zoo), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recipe"]["dataset"] == "digits"
    assert any("trains on digits" in w for w in out["warnings"])
    from robustscale.cost.forecast import forecast_recipe
    from robustscale.recipe import Recipe

    expected = forecast_recipe(Recipe.from_dict(recipe))[
        "train_flops_total"
    ]  # digits: 1,437 - 256 images
    assert out["flops"] == pytest.approx(expected)
    from robustscale.models import count_params

    assert out["features"]["params"] == count_params("wrn28_10", 10, 1)  # digits: one input channel


def test_cli_predict_bad_recipe_key_is_one_line_before_the_zoo_is_read(tmp_path, capsys):
    path = _recipe(tmp_path, epoch=10)  # 'epochs' misspelt
    assert main(["predict", str(path), "--zoo", str(tmp_path / "absent.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown recipe key 'epoch'" in err


def test_figure_1a_plots_every_run(tmp_path):
    from robustscale.analysis import fit_zoo
    from robustscale.analysis.figures import fig_1a_layers

    df = power_law_zoo(n=200, with_collapsed=3)
    df.loc[10:29, "loss"] = "standard"
    df.loc[30:34, "autoattack_acc"] = np.nan  # adversarial runs evaluated with PGD-40 only
    df.loc[35, "train_flops"] = np.nan  # cannot be placed on the compute axis
    a = fit_zoo(df, n_boot=50, with_predictor=False)
    layers, missing = fig_1a_layers(a.kept, a.collapsed, a.standard, a.no_autoattack)
    by_label = {layer["label"]: len(layer["x"]) for layer in layers}
    assert sum(by_label.values()) == 199 and missing == 1
    assert by_label["standard training, AutoAttack"] == 20 and by_label["collapsed"] == 3
    assert by_label["adversarial, PGD-40 (no AutoAttack)"] == 5
    for layer in layers:
        assert np.isfinite(np.asarray(layer["y"], float)).all()


def test_report_says_why_when_the_joint_law_cannot_be_fitted(tmp_path):
    df = power_law_zoo(n=60).assign(
        model="wrn28_10",
        params=36_479_194,
        loss="pgd",
        attack_steps=10,
        ema=False,
        activation="relu",
    )  # one family, one model size
    fits = analyze_zoo(df, tmp_path / "rep", n_boot=100, n_splits=2)
    assert "2 model sizes" in fits["joint"]["error"]
    assert "4a" not in fits["figures"]
    assert "Not fitted: the joint law" in (tmp_path / "rep" / "report.html").read_text()


def test_analysis_layers_point_down_and_nothing_imports_the_orchestrator():
    import ast
    from pathlib import Path

    import robustscale.analysis as pkg

    root = Path(pkg.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = "robustscale." + ".".join(path.relative_to(root.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("robustscale.analysis")
            ):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("robustscale.analysis")}
        edges[name] = found
    assert not [m for m, deps in edges.items() if "robustscale.analysis.analyze" in deps]
    assert "robustscale.analysis.analyze" in edges

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join(stack + [node])}"
        for dep in edges.get(node, ()):
            visit(dep, stack + [node])

    for module in edges:
        visit(module, [])
