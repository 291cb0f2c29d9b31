"""Robust evaluation: the numbers (ordering, agreement with pyautoattack, determinism), resume of a
killed AutoAttack run, the sanity checks, the library API and the CLI's errors.

AutoAttack runs on the first N digits test examples with batch size 32, so the adversarial
model's APGD-T works on two batches and a kill can land between them. One torch thread: on a
shared 2-core machine two threads oversubscribe and AutoAttack runs 20x slower.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_EPS
from torch import nn

import robustscale
from robustscale.cli import main
from robustscale.evaluate import (
    eval_filename,
    evaluate,
    evaluate_run,
    result_filename,
    run_warnings,
    state_filename,
)
from robustscale.files import read_json
from robustscale.runs import load, read_recipe

N = 100
BS = 32
DIGITS_TEST = 360  # examples in the digits test split
STATE = ".autoattack-51-255-n100-best.state"  # eps 0.2 is exactly 51/255
AA_N = "autoattack-51-255-n100.json"  # a subset evaluation: never the zoo's number


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _copy(run: Path, tmp_path_factory) -> Path:
    """A private copy of a session run: eval files written here do not leak into other tests."""
    return Path(shutil.copytree(run, tmp_path_factory.mktemp("eval") / run.name))


@pytest.fixture(scope="module")
def adv(adversarial_run, tmp_path_factory) -> Path:
    return _copy(adversarial_run, tmp_path_factory)


@pytest.fixture(scope="module")
def aa_adv(adv) -> dict:
    # on the CPU, as test_numbers_equal_pyautoattack_called_directly's direct call: exact equality
    return evaluate_run(adv, attack="autoattack", n=N, batch_size=BS, device="cpu")


@pytest.fixture(scope="module")
def pgd_adv(adv, aa_adv) -> dict:
    return evaluate_run(adv, attack="pgd", n=N, steps=40)


def test_autoattack_below_pgd40_below_clean(adv, aa_adv, pgd_adv):
    assert aa_adv["clean_acc"] == pgd_adv["clean_acc"] > 90
    assert 20 < aa_adv["robust_acc"] <= pgd_adv["robust_acc"] <= pgd_adv["clean_acc"]
    assert list(aa_adv["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    after = list(aa_adv["per_attack"].values())
    assert after == sorted(after, reverse=True) and after[-1] == aa_adv["robust_acc"]
    assert aa_adv["warnings"] == [] and pgd_adv["warnings"] == []
    for result in (aa_adv, pgd_adv):
        on_disk = read_json(adv / "eval" / result_filename(result))
        assert on_disk == result and result["n"] == N and result["split_size"] == DIGITS_TEST
        assert {
            "attack",
            "eps",
            "n",
            "split_size",
            "clean_acc",
            "robust_acc",
            "per_attack",
            "seconds",
            "checkpoint",
            "version",
            "norm",
            "steps",
            "restarts",
            "seed",
            "split",
            "warnings",
        } <= set(on_disk)
    assert (adv / "eval" / AA_N).is_file() and (adv / "eval" / "pgd-51-255-n100.json").is_file()
    assert not (
        adv / "eval" / "autoattack-51-255.json"
    ).exists()  # the zoo's name: whole split only
    assert (
        pgd_adv["step_size"] == pytest.approx(DIGITS_EPS / 4)
        and pgd_adv["step_size_rule"] == "eps/4"
    )
    assert not (adv / "eval" / STATE).exists()  # a finished run leaves no state behind


def test_standard_model_autoattack_near_zero(standard_run, tmp_path_factory):
    run = _copy(standard_run, tmp_path_factory)
    r = evaluate_run(run, attack="autoattack", n=N, batch_size=BS)
    assert r["clean_acc"] > 90 and r["robust_acc"] <= 3
    assert not any("gradient masking" in w for w in r["warnings"])


@pytest.fixture(scope="module")
def plain_aa(adv) -> torch.Tensor:
    """pyautoattack called directly on aa_adv's examples: its per-example verdicts."""
    from pyautoattack import AutoAttack

    model = load(adv, "best")
    x, y = robustscale.load_split(adv, n=N)
    _, y_adv = AutoAttack(
        model, eps=DIGITS_EPS, norm="Linf", version="standard", seed=0
    ).run_standard_evaluation(x, y, batch_size=BS)
    return y_adv == y


def test_numbers_equal_pyautoattack_called_directly(adv, aa_adv, plain_aa):
    model = load(adv, "best")
    x, y = robustscale.load_split(adv, n=N)
    assert 100.0 * plain_aa.sum().item() / N == aa_adv["robust_acc"]
    assert 100.0 * (model(x).argmax(1) == y).sum().item() / N == aa_adv["clean_acc"]


def test_same_seed_same_numbers(adversarial_run, monkeypatch):
    model = load(adversarial_run)
    x, y = robustscale.load_split(adversarial_run, n=N)
    a = evaluate(model, x, y, attack="pgd", eps=DIGITS_EPS, steps=10, restarts=2, seed=3)
    b = evaluate(model, x, y, attack="pgd", eps=DIGITS_EPS, steps=10, restarts=2, seed=3)
    assert (a["clean_acc"], a["robust_acc"]) == (b["clean_acc"], b["robust_acc"])

    # AutoAttack standard, all four attacks, Square's random search included. The seed must reach
    # every attack: each reseeds torch with it (an ignored seed would be time.time()).
    from pyautoattack.square import SquareAttack

    seeds, square_calls, manual_seed, square_perturb = (
        [],
        [],
        torch.random.manual_seed,
        SquareAttack.perturb,
    )

    def record_seed(seed):
        seeds.append(seed)
        return manual_seed(seed)

    def record_square(self, x_, y_=None):
        square_calls.append(len(x_))
        return square_perturb(self, x_, y_)

    monkeypatch.setattr(torch.random, "manual_seed", record_seed)
    monkeypatch.setattr(SquareAttack, "perturb", record_square)
    rng = torch.random.get_rng_state()
    x, y = x[:24], y[:24]
    kw = {"attack": "autoattack", "eps": DIGITS_EPS, "batch_size": BS, "device": "cpu"}
    runs = []
    for _ in range(2):
        seeds.clear(), square_calls.clear()
        runs.append(evaluate(model, x, y, seed=3, **kw))
        assert seeds and set(seeds) == {3}, set(seeds)
        assert sum(square_calls) > 0, "no example reached Square: its randomness is untested"
    c, d = runs
    assert c["version"] == "standard" and list(c["per_attack"]) == [
        "apgd-ce",
        "apgd-t",
        "fab-t",
        "square",
    ]
    assert c["per_attack"]["square"] > 0  # examples survived Square's whole random search
    for key in ("clean_acc", "robust_acc", "per_attack", "warnings"):
        assert c[key] == d[key], key
    # another seed (APGD-CE alone, to stay fast): recorded and passed on; only the random attack may
    # move, the clean pass cannot
    seeds.clear()
    e = evaluate(model, x, y, seed=4, attacks=["apgd-ce"], **kw)
    assert (
        set(seeds) == {4} and (c["seed"], e["seed"]) == (3, 4) and e["clean_acc"] == c["clean_acc"]
    )
    assert torch.equal(
        rng, torch.random.get_rng_state()
    )  # AutoAttack's reseeding does not leak out


def test_killed_autoattack_resumes_with_the_same_result(adv, aa_adv, tmp_path_factory):
    """A real kill: SIGKILL the CLI once APGD-CE is done and APGD-T has written partial progress
    (or, failing that, once two attacks are done); the rerun resumes and matches the uninterrupted
    run."""
    run = _copy(adv, tmp_path_factory)
    shutil.rmtree(run / "eval")
    state, snap = run / "eval" / STATE, run / "eval" / (STATE + ".progress.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "robustscale",
        "eval",
        str(run),
        "--attack",
        "autoattack",
        "--n",
        str(N),
        "--batch-size",
        str(BS),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial, deadline = False, time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done = _read(snap, "done") or []
            flags = _read(state, "_robust_flags")
            partial = len(done) == 1 and flags is not None and sum(flags) < done[0][1]
            if partial or len(done) >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (run / "eval" / AA_N).exists() and state.exists()
    resumed = evaluate_run(run, attack="autoattack", n=N, batch_size=BS)
    assert (
        resumed["resumed_after"]
        and resumed["resumed_after"] == list(aa_adv["per_attack"])[: len(resumed["resumed_after"])]
    )
    for key in ("clean_acc", "robust_acc", "per_attack"):
        assert resumed[key] == aa_adv[key], (key, partial)
    assert not state.exists()


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_batches_in_parallel_processes_give_the_library_verdicts(adv, aa_adv, plain_aa):
    """workers=2: each attack's batches run side by side in forked processes; every example's
    verdict and each attack's accuracy equal those of the library called directly, and the work
    was done in the workers."""
    from robustscale.attacks.autoattack import run_autoattack

    model = load(adv, "best")
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = robustscale.load_split(adv, n=N)
    before = _children_cpu_seconds()
    out = run_autoattack(model, x, y, eps=DIGITS_EPS, batch_size=BS, workers=2, progress=False)
    assert _children_cpu_seconds() - before > 1.0  # the attacks ran in the worker processes
    assert torch.equal(out.robust, plain_aa) and 0 < int(plain_aa.sum()) < N
    assert out.per_attack == aa_adv["per_attack"] and out.clean_acc == aa_adv["clean_acc"]
    assert out.robust_acc == aa_adv["robust_acc"]


def test_pipeline_cuts_the_librarys_batches_whatever_order_they_finish_in():
    """_Pipeline forms each attack's batches from the examples still robust after the previous
    attack, as the library's loop does, while batches finish in any order (random outcomes,
    random completion order, batch sizes that do and do not divide the counts)."""
    import random

    from robustscale.attacks.autoattack import _Pipeline

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        n, bs, n_attacks = rng.randint(1, 60), rng.randint(1, 9), rng.randint(1, 4)
        flags = torch.rand(n, generator=gen) < rng.random()
        keeps = [torch.rand(n, generator=gen) < rng.random() for _ in range(n_attacks)]
        expected, still = [], flags.clone()
        for keep in keeps:  # the library: consecutive batches of the examples still robust
            robust = still.nonzero().flatten()
            expected.append([b.tolist() for b in robust.split(bs)] if len(robust) else [])
            still &= keep
        line = _Pipeline(flags, [f"attack{i}" for i in range(n_attacks)], bs)
        handed, running = [0] * n_attacks, []
        while True:
            while line.finished < n_attacks and line.done(line.finished):
                line.finished += 1
            if line.finished == n_attacks:
                break
            for a in range(line.finished, n_attacks):
                running += [(a, j) for j in range(handed[a], len(line.formed[a]))]
                handed[a] = len(line.formed[a])
            assert running, "no batch to run before the last attack is done"
            a, j = running.pop(rng.randrange(len(running)))
            index = line.formed[a][j]
            line.record(a, index, keeps[a][index])
        assert [[b.tolist() for b in line.formed[a]] for a in range(n_attacks)] == expected
        assert torch.equal(line.out[-1], still)


def test_parallel_evaluation_killed_after_an_attack_resumes_with_the_same_result(
    adv, aa_adv, tmp_path, monkeypatch
):
    """The parallel path snapshots each attack boundary: an evaluation that dies after APGD-CE
    resumes with APGD-T (again in two workers) and ends with the uninterrupted numbers (APGD-CE
    and APGD-T alone, to stay fast: the same batches and seeds as the standard run's first two)."""
    from robustscale.attacks import autoattack

    model = load(adv, "best")
    x, y = robustscale.load_split(adv, n=N)
    record = autoattack._Snapshots.record

    def dies_after_apgd_ce(self, attack, flags):
        record(self, attack, flags)
        if attack == "apgd-ce":
            raise KeyboardInterrupt

    monkeypatch.setattr(autoattack._Snapshots, "record", dies_after_apgd_ce)
    state = tmp_path / "aa.state"
    kw = dict(
        attack="autoattack",
        attacks=["apgd-ce", "apgd-t"],
        eps=DIGITS_EPS,
        batch_size=BS,
        device="cpu",
        state_path=state,
        workers=2,
        progress=False,
    )
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, **kw)
    monkeypatch.undo()
    resumed = evaluate(model, x, y, **kw)
    assert resumed["resumed_after"] == ["apgd-ce"] and resumed["workers"] == 2
    assert resumed["clean_acc"] == aa_adv["clean_acc"]
    assert resumed["per_attack"] == {a: aa_adv["per_attack"][a] for a in ("apgd-ce", "apgd-t")}
    assert aa_adv["workers"] == 1  # one torch thread here: one process by default
    assert not state.exists()


def _read(path: Path, key: str):
    try:
        return read_json(path).get(key)
    except robustscale.RobustscaleError:  # absent, or caught half-written by the library
        return None


def test_state_of_another_evaluation_is_not_reused(adversarial_run, tmp_path):
    model = load(adversarial_run)
    x, y = robustscale.load_split(adversarial_run, n=40)
    state = tmp_path / "aa.state"
    kw = dict(attack="autoattack", eps=DIGITS_EPS, attacks=["apgd-ce"], state_path=state)
    first = evaluate(model, x, y, seed=1, **kw)
    (tmp_path / "aa.state.progress.json").write_text('{"key": "other", "done": [["apgd-ce", 0]]}')
    again = evaluate(model, x, y, seed=1, **kw)
    assert again["resumed_after"] == [] and again["robust_acc"] == first["robust_acc"]


def test_evaluate_restores_the_model(adversarial_run):
    model = load(adversarial_run).train()
    for p in model.parameters():
        p.requires_grad_(True)
    x, y = robustscale.load_split(adversarial_run, n=20)
    evaluate(model, x, y, attack="pgd", eps=DIGITS_EPS, steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_load_split_is_the_evaluated_examples(adversarial_run):
    x, y = robustscale.load_split(adversarial_run, n=50)
    xd, yd = robustscale.load_split("digits")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= x.min() and x.max() <= 1
    assert len(yd) == 360 and torch.equal(x, xd[:50]) and torch.equal(y, yd[:50])
    with pytest.raises(robustscale.RobustscaleError, match="n=361"):
        robustscale.load_split("digits", n=361)


def test_l2_pgd(adversarial_run, tmp_path_factory):
    run = _copy(adversarial_run, tmp_path_factory)
    r = evaluate_run(run, attack="pgd", norm="l2", eps=0.5, steps=10, n=50)
    assert r["attack"] == "pgd-l2" and r["step_size"] == pytest.approx(2.5 * 0.5 / 10)
    assert r["robust_acc"] <= r["clean_acc"] and (run / "eval" / "pgd-l2-0.5-n50.json").is_file()


class _Rounded(nn.Module):
    """Input quantisation: zero gradients everywhere, the classic source of false robustness."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 2) / 2)


def test_gradient_masking_on_a_standard_model_is_flagged(standard_run, tmp_path):
    model = _Rounded(load(standard_run))
    x, y = robustscale.load_split(standard_run, n=N)
    r = evaluate(model, x, y, attack="pgd", eps=DIGITS_EPS, steps=10)
    warnings = run_warnings(r, read_recipe(standard_run), tmp_path)
    assert any("gradient masking" in w for w in warnings), (r, warnings)


def test_softmax_output_is_flagged(standard_run):
    model = nn.Sequential(load(standard_run), nn.Softmax(dim=1))
    x, y = robustscale.load_split(standard_run, n=20)
    r = evaluate(model, x, y, attack="pgd", eps=DIGITS_EPS, steps=2)
    assert any("probability distribution" in w for w in r["warnings"])


def test_pgd_below_autoattack_is_flagged(standard_run, tmp_path):
    pgd = {
        "attack": "pgd",
        "eps": DIGITS_EPS,
        "n": N,
        "split_size": DIGITS_TEST,
        "checkpoint": "best",
        "split": "test",
        "steps": 40,
        "clean_acc": 97.0,
        "robust_acc": 5.0,
    }
    aa = {**pgd, "attack": "autoattack", "version": "standard", "robust_acc": 9.0}
    assert result_filename(aa) == AA_N
    robustscale.files.atomic_write_json(tmp_path / AA_N, aa)
    warnings = run_warnings(pgd, read_recipe(standard_run), tmp_path)
    assert any("below AutoAttack" in w for w in warnings)
    robustscale.files.atomic_write_json(
        tmp_path / AA_N, {**aa, "n": 50}
    )  # other examples: not comparable
    assert not any(
        "below AutoAttack" in w for w in run_warnings(pgd, read_recipe(standard_run), tmp_path)
    )


def test_cli_checkpoint_file_and_json(standard_run, tmp_path, capsys):
    ckpt = tmp_path / "weights.pt"
    shutil.copy(standard_run / "checkpoints" / "best.pt", ckpt)
    rc = main(
        [
            "eval",
            str(ckpt),
            "--model",
            "wrn10_1",
            "--dataset",
            "digits",
            "--eps",
            "0.2",
            "--n",
            "30",
            "--steps",
            "5",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == str(ckpt) and out["n"] == 30 and out["clean_acc"] > 80
    assert read_json(tmp_path / "eval" / "pgd-51-255-n30.json") == out


@pytest.mark.parametrize(
    "args, says",
    [
        (["eval", "{missing}"], "does not exist"),
        (["eval", "{run}", "--eps", "8/25x"], "eps='8/25x'"),
        (["eval", "{run}", "--n", "1000"], "n=1000"),
        (["eval", "{run}", "--n", "abc"], "--n"),
        (["eval", "{run}", "--attack", "fgsm"], "attack='fgsm'"),
        (["eval", "{run}", "--attack", "autoattack", "--norm", "l2"], "norm='l2'"),
        (["eval", "{run}", "--checkpoint", "middle"], "checkpoint='middle'"),
        (["eval", "{ckpt}"], "--model"),
        (["eval", "{run}", "--attack", "autoattack", "--workers", "0"], "workers=0"),
    ],
)
def test_cli_bad_input_is_one_line(adversarial_run, tmp_path, capsys, args, says):
    fill = {
        "missing": str(tmp_path / "no-run"),
        "run": str(adversarial_run),
        "ckpt": str(adversarial_run / "checkpoints" / "best.pt"),
    }
    rc = _cli([a.format(**fill) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (a non-integer --n)
        return exc.code


def test_train_final_eval_writes_the_zoo_file(tmp_path):
    from conftest import tiny

    from robustscale import zoo

    run = robustscale.train(
        tiny(loss="standard", attack_steps=0, epochs=1, val_size=0),
        out_root=tmp_path,
        progress=False,
        final_eval="autoattack",
    )
    result = read_json(run / "eval" / "autoattack-51-255.json")
    assert result["checkpoint"] == "best" and result["n"] == result["split_size"] == DIGITS_TEST
    assert result["version"] == "standard" and result["robust_acc"] <= result["clean_acc"]
    row = zoo.read_run(run)
    assert (row["autoattack_acc"], row["clean_acc"]) == (result["robust_acc"], result["clean_acc"])

    # a subset and another version go to their own files and never become the zoo's number
    sub = evaluate_run(run, attack="autoattack", n=30, batch_size=BS)
    evaluate_run(run, attack="autoattack", n=30, version="rand", batch_size=BS)
    assert (run / "eval" / "autoattack-51-255-n30.json").is_file()
    assert (run / "eval" / "autoattack-51-255-rand-n30.json").is_file()
    assert read_json(run / "eval" / "autoattack-51-255.json") == result and zoo.read_run(run) == row
    # a subset JSON under the zoo's name, as written before names carried n and version: judged by
    # its contents (n against the digits test split), so it is not the zoo's number
    legacy = {k: v for k, v in sub.items() if k != "split_size"}
    robustscale.files.atomic_write_json(
        run / "eval" / "autoattack-51-255.json", {**legacy, "robust_acc": 0.5}
    )
    assert row["clean_acc"] is not None and zoo.read_run(run)["autoattack_acc"] is None
    robustscale.files.atomic_write_json(
        run / "eval" / "autoattack-51-255.json", {**legacy, "n": DIGITS_TEST, "robust_acc": 0.5}
    )
    assert zoo.read_run(run)["autoattack_acc"] == 0.5
    robustscale.files.atomic_write_json(
        run / "eval" / "autoattack-51-255.json",
        {**legacy, "n": DIGITS_TEST, "version": "rand", "robust_acc": 0.5},
    )
    assert zoo.read_run(run)["autoattack_acc"] is None


def test_last_checkpoint_evaluation_never_overwrites_the_best_one(tmp_path, adversarial_run):
    run = tmp_path / "run"
    shutil.copytree(adversarial_run, run)
    best = evaluate_run(run, attack="pgd", checkpoint="best", steps=2)
    last = evaluate_run(run, attack="pgd", checkpoint="last", steps=2)
    assert best["n"] == last["n"] == DIGITS_TEST
    assert read_json(run / "eval" / eval_filename("pgd", DIGITS_EPS))["checkpoint"] == "best"
    assert (
        read_json(run / "eval" / eval_filename("pgd", DIGITS_EPS, "last"))["checkpoint"] == "last"
    )


def test_file_names_keep_apart_what_the_zoo_must_not_mix():
    eps = 8 / 255
    assert eval_filename("autoattack", eps) == "autoattack-8-255.json"
    assert eval_filename("autoattack", eps, n=10_000, split_size=10_000) == "autoattack-8-255.json"
    assert (
        eval_filename("autoattack", eps, n=1000, split_size=10_000) == "autoattack-8-255-n1000.json"
    )
    assert eval_filename("autoattack", eps, version="rand") == "autoattack-8-255-rand.json"
    assert (
        eval_filename("autoattack", eps, "last", version="plus", n=5, split_size=9)
        == "autoattack-8-255-plus-n5-last.json"
    )
    assert (
        eval_filename("autoattack", eps, version="custom:apgd-ce+fab-t")
        == "autoattack-8-255-custom-apgd-ce-fab-t.json"
    )
    assert eval_filename("pgd", eps, version=None, n=20, split_size=20) == "pgd-8-255.json"
    # state files: one per checkpoint, version and subset, so concurrent evaluations never share one
    names = {
        state_filename(eps, ckpt, version=v, n=n, split_size=10_000)
        for ckpt in ("best", "last", "/w/weights.pt")
        for v in ("standard", "rand")
        for n in (None, 100)
    }
    assert (
        len(names) == 12
        and ".autoattack-8-255-last.state" in names
        and ".autoattack-8-255-weights.state" in names
    )


def test_autoattack_channels_last_option_reaches_the_model_and_leaves_it_as_it_was():
    # run_autoattack(channels_last=True) calls the model through _Fast: the attacks' batches reach
    # the convolutions channels_last, the logits are the model's (to rounding), and the caller's
    # weights keep their layout (benchmarks/eval.py compares the verdicts on every example)
    from robustscale.attacks.autoattack import _Fast
    from robustscale.models import build_model

    torch.manual_seed(0)
    model = build_model("wrn10_1", 10, 3, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(4, 3, 16, 16)
    layouts = []
    hook = model.net.blocks[0].register_forward_pre_hook(
        lambda m, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        ref, fast = model(x), _Fast(model, channels_last=True, compile=False)(x)
    hook.remove()
    assert layouts == [False, True]
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())
