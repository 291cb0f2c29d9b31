"""Extra data at scale: memory-mapped sets and shards stream the same batches as in-RAM ones, the
walk is without replacement across epochs and counted, convert/info, bad sets are one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from robustscale import RobustscaleError, train
from robustscale.data import DATASETS, load_synthetic
from robustscale.data.arrays import InMemorySource, open_source
from robustscale.data.batches import BatchPlan, BatchStream
from robustscale.data.convert import convert, describe

CPU = torch.device("cpu")


def _images(n: int, shape=(8, 8, 1), seed: int = 0, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(
        np.int64
    )


def _folder(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.mkdir(parents=True)
    np.save(path / "image.npy", images)
    np.save(path / "label.npy", labels)
    return path


def _batches(source, n_real=300, batch=50, fraction=0.6, epochs=3, augment=True):
    g = torch.Generator().manual_seed(1)
    real = (torch.rand(n_real, 1, 8, 8, generator=g), torch.randint(0, 10, (n_real,), generator=g))
    plan = BatchPlan(n_real, len(source), batch, fraction, seed=5)
    stream = BatchStream(plan, real, source, augment=augment, device=CPU)
    return [(xb, yb) for e in range(epochs) for _, xb, yb in stream.epoch(e)]


def test_mapped_shards_and_in_ram_sources_give_the_same_batches(tmp_path):
    images, labels = _images(700)
    ram = InMemorySource(images, labels)
    mapped = open_source(_folder(tmp_path / "one", images, labels))
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, lo in enumerate(range(0, 700, 250)):  # 250, 250, 200: shards of different lengths
        np.save(shards / f"image-{k:05d}.npy", images[lo : lo + 250])
        np.save(shards / f"label-{k:05d}.npy", labels[lo : lo + 250])
    sharded = open_source(shards)
    assert len(sharded) == 700 and np.array_equal(
        sharded.gather(np.array([699, 0, 251, 250])), images[[699, 0, 251, 250]]
    )
    want = _batches(ram)
    for other in (mapped, sharded):
        got = _batches(other)
        assert len(got) == len(want)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(want, got))
    # the synthetic rows really are the file's rows (no augmentation): the last 30 of each batch
    x, y = _batches(mapped, augment=False, epochs=1)[0]
    plan = BatchPlan(300, 700, 50, 0.6, seed=5)
    idx = plan.epoch_indices(0)[1][0].numpy()
    assert torch.equal(x[20:], torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(y[20:], torch.from_numpy(labels[idx]))


@pytest.mark.parametrize("n_syn", [100, 257, 5000])
def test_synthetic_walk_is_without_replacement_across_epochs_and_counted(n_syn):
    plan = BatchPlan(300, n_syn, 50, 0.6, seed=2)  # 30 extra images a step, 15 steps an epoch
    walk = torch.cat([plan.epoch_indices(e)[1].flatten() for e in range(6)])
    assert len(walk) == 6 * 15 * 30
    for c in range(0, len(walk) // n_syn):  # each full cycle is a permutation of all N
        assert sorted(walk[c * n_syn : (c + 1) * n_syn].tolist()) == list(range(n_syn))
    for steps in (1, 7, 15, 40, 90):
        assert plan.unique_synthetic_seen(steps) == len(set(walk[: steps * 30].tolist()))
    assert plan.unique_synthetic_seen(90) == min(n_syn, 90 * 30)
    # a pure function of (seed, position): a fresh plan (a resumed run) walks the same way
    assert torch.equal(
        BatchPlan(300, n_syn, 50, 0.6, seed=2).epoch_indices(4)[1], plan.epoch_indices(4)[1]
    )
    assert not torch.equal(
        BatchPlan(300, n_syn, 50, 0.6, seed=3).epoch_indices(0)[1], plan.epoch_indices(0)[1]
    )


def test_convert_round_trips_an_npz_and_a_failed_convert_leaves_nothing(tmp_path, monkeypatch):
    images, labels = _images(1234, (32, 32, 3))
    npz = tmp_path / "gen.npz"
    np.savez_compressed(npz, image=images, label=labels)
    monkeypatch.setattr("robustscale.data.convert.CHUNK", 100)  # many chunks, a partial last one
    out = convert(npz, tmp_path / "gen", progress=False)
    back = open_source(out)
    assert np.array_equal(back.gather(np.arange(1234)), images) and np.array_equal(
        back.labels, labels
    )
    shards = convert(out, tmp_path / "gen-shards", shard_size=500, progress=False)
    assert sorted(p.name for p in shards.iterdir())[:3] == [
        "image-00000.npy",
        "image-00001.npy",
        "image-00002.npy",
    ]
    assert np.array_equal(open_source(shards).gather(np.arange(1234)), images)
    info = describe(shards)
    assert info["n"] == 1234 and info["image_shape"] == [32, 32, 3]
    assert info["labels"] == {int(k): int(v) for k, v in enumerate(np.bincount(labels))}

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        "robustscale.data.convert.np.save", disk_full
    )  # dies after the images are written
    with pytest.raises(RobustscaleError, match="No space left"):
        convert(npz, tmp_path / "dead", progress=False)
    assert not (tmp_path / "dead").exists() and not list(tmp_path.glob(".dead*"))


def _cli(capsys, *args):
    """The CLI in this process: (exit status, stdout, stderr)."""
    from robustscale.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_data_info_and_convert_commands(tmp_path, capsys):
    images, labels = _images(300, (32, 32, 3))
    np.savez(tmp_path / "gen.npz", image=images, label=labels)
    rc, _, err = _cli(
        capsys, "data", "convert", str(tmp_path / "gen.npz"), str(tmp_path / "gen"), "--no-progress"
    )
    assert rc == 0, err
    rc, out, _ = _cli(capsys, "data", "info", str(tmp_path / "gen"))
    assert rc == 0 and "300 x 32 x 32 x 3 uint8" in out
    assert f"0: {int(np.bincount(labels)[0])}," in out.split("labels")[1]
    rc, _, err = _cli(capsys, "data", "convert", str(tmp_path / "gen.npz"), str(tmp_path / "gen"))
    assert rc == 2 and "already exists" in err and len(err.splitlines()) == 1


def _bad_sets(tmp: Path) -> dict[str, tuple[Path, str]]:
    img, lab = _images(50)
    cases = {}
    p = tmp / "nolabel"
    p.mkdir(parents=True)
    np.save(p / "image.npy", img)
    cases["missing label.npy"] = (p, "label.npy' is missing")
    cases["wrong shape"] = (
        _folder(tmp / "shape", *_images(50, (9, 9, 1))),
        "expected uint8 N x 8 x 8 x 1",
    )
    p = _folder(tmp / "dtype", img.astype(np.float32), lab)
    cases["wrong dtype"] = (p, "image.npy' holds float32")
    cases["label out of range"] = (
        _folder(tmp / "range", img, lab + 10),
        "expected labels in [0, 10)",
    )
    p = tmp / "shards"
    p.mkdir()
    np.save(p / "image-00000.npy", img)
    np.save(p / "label-00000.npy", lab)
    np.save(p / "image-00001.npy", _images(5, (8, 8, 3))[0])
    np.save(p / "label-00001.npy", lab[:5])
    cases["shards differ"] = (p, "image-00001.npy' has images (8, 8, 3); expected (8, 8, 1)")
    p = _folder(tmp / "trunc", img, lab)
    raw = (p / "image.npy").read_bytes()
    (p / "image.npy").write_bytes(raw[: len(raw) - 100])
    cases["truncated"] = (p, "image.npy' is truncated")
    p = _folder(tmp / "labels", img, lab[:40])
    cases["label count"] = (p, "label.npy' holds int64 (40,); expected 50 integer labels")
    return cases


def test_bad_sets_are_one_line_naming_the_file(tmp_path):
    for what, (path, words) in _bad_sets(tmp_path).items():
        with pytest.raises(RobustscaleError) as exc:
            load_synthetic(path, DATASETS["digits"])
        assert words in str(exc.value), what
        assert "\n" not in str(exc.value)


def test_bad_set_in_a_run_exits_2_with_one_line_and_no_run_directory(tmp_path, capsys):
    for what, (path, words) in _bad_sets(tmp_path / "sets").items():
        recipe = tmp_path / "r.yaml"
        recipe.write_text(tiny(synthetic_data=str(path), synthetic_fraction=0.5).to_yaml())
        out = tmp_path / "runs"
        rc, _, err = _cli(capsys, "train", str(recipe), "--out", str(out), "--no-progress")
        assert rc == 2, (what, err)
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() or not any(out.iterdir())


def test_empty_synthetic_set_is_refused(tmp_path):
    np.savez(
        tmp_path / "empty.npz", image=np.zeros((0, 8, 8, 1), np.uint8), label=np.zeros(0, np.int64)
    )
    with pytest.raises(RobustscaleError, match="holds no images"):
        train(
            tiny(synthetic_data=str(tmp_path / "empty.npz"), synthetic_fraction=0.5),
            out_root=tmp_path / "runs",
            progress=False,
        )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("world_size", [1, 2])
def test_unique_real_seen_is_the_union_of_the_epochs_draws(world_size):
    plan = BatchPlan(130, 0, 40, 0.0, seed=4, world_size=world_size)  # 3 steps, 10 left over
    for steps in (0, 1, 3, 4, 7, 30):
        drawn: set[int] = set()
        for e in range(-(-steps // 3)):
            ranks = [
                BatchPlan(130, 0, 40, 0.0, seed=4, rank=r, world_size=world_size).epoch_indices(e)
                for r in range(world_size)
            ]
            for r in ranks:
                drawn.update(r[0][: steps - 3 * e].flatten().tolist())
        assert plan.unique_real_seen(steps) == len(drawn)
    assert plan.unique_real_seen(1) == 40 and plan.unique_real_seen(3) == 120
    assert plan.unique_real_seen(30) == 130  # the dropped remainders differ by epoch


def test_unique_real_seen_counts_train_fraction_in_cost_json_and_the_zoo(tmp_path):
    from robustscale.zoo import gather_zoo

    recipe = tiny(epochs=2, batch_size=64, train_fraction=0.25, loss="standard", attack_steps=0)
    run = train(recipe, out_root=tmp_path / "runs", progress=False)
    cost = json.loads((run / "cost.json").read_text())
    kept = round(0.25 * 1309)  # a quarter of the 1309 training digits after the 128 held out
    steps = kept // 64
    assert cost["examples_seen"] == 2 * steps * 64
    assert steps * 64 < cost["unique_real_seen"] <= kept
    df, _ = gather_zoo(tmp_path / "runs")
    assert int(df["unique_real_seen"].iloc[0]) == cost["unique_real_seen"]


def test_unique_synthetic_seen_is_in_cost_json_and_the_zoo(tmp_path):
    from robustscale.zoo import gather_zoo

    images, labels = _images(500)
    folder = _folder(tmp_path / "syn", images, labels)
    recipe = tiny(
        synthetic_data=str(folder),
        synthetic_fraction=0.5,
        epochs=2,
        batch_size=128,
        loss="standard",
        attack_steps=0,
        val_attack_steps=1,
    )
    run = train(recipe, out_root=tmp_path / "runs", progress=False)
    cost = json.loads((run / "cost.json").read_text())
    steps = 2 * (1309 // 64)  # 1309 training digits after the 128 held out, 64 real a batch
    assert cost["examples_seen"] == steps * 128
    assert (
        cost["synthetic_size"] == 500
        and cost["unique_synthetic_seen"] == min(500, steps * 64) == 500
    )
    df, _ = gather_zoo(tmp_path / "runs")
    assert int(df["unique_synthetic_seen"].iloc[0]) == 500


def _kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _big_set(folder: Path, n: int) -> Path:
    """n CIFAR-sized images written chunk by chunk (never whole in memory)."""
    folder.mkdir(parents=True)
    with open(folder / "image.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (n, 32, 32, 3)}
        )
        for lo in range(0, n, 10_000):
            f.write(np.full((min(10_000, n - lo), 32, 32, 3), lo // 10_000, np.uint8).tobytes())
    np.save(folder / "label.npy", np.arange(n) % 10)
    return folder


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux peak-RSS reset")
def test_peak_memory_of_training_does_not_grow_with_the_extra_set(tmp_path):
    from conftest import write_cifar10

    data = write_cifar10(tmp_path / "data", n_train=100, n_test=20)
    big = _big_set(tmp_path / "big", 100_000)  # 307 MB of images, > 2x the bound below
    try:

        def run(syn: Path, name: str) -> None:
            recipe = tiny(
                dataset="cifar10",
                data_dir=str(data),
                synthetic_data=str(syn),
                synthetic_fraction=0.75,
                loss="standard",
                attack_steps=0,
                batch_size=64,
                epochs=1,
                val_size=0,
            )
            train(recipe, tmp_path / name, progress=False)

        run(
            _folder(tmp_path / "small", *_images(3000, (32, 32, 3))), "warm"
        )  # the same code, 3k images
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset this process's peak RSS (VmHWM) to its current RSS
        before = _kb("VmRSS")
        run(big, "big")
        grew_mb = (_kb("VmHWM") - before) / 1024
        print(f"peak RSS grew {grew_mb:.1f} MB")
        assert grew_mb < 120, (
            f"training with a 307 MB extra set raised peak RSS by {grew_mb:.0f} MB"
        )
    finally:
        import shutil

        shutil.rmtree(big)


def test_kill_and_resume_with_an_on_disk_set_equals_an_uninterrupted_run_from_ram(tmp_path, caplog):
    """SIGKILL mid-epoch, resume: bitwise the run that read the same images from an in-RAM .npz."""
    import signal
    import subprocess
    import sys
    import time

    from robustscale.train import checkpoint as ckpt

    # 437 real digits (1000 held out), 32 + 32 a batch: 13 steps and 416 extra images an epoch,
    # so the second epoch crosses the reshuffle at image 500
    images, labels = _images(500)
    npz = tmp_path / "syn.npz"
    np.savez(npz, image=images, label=labels)
    folder = _folder(tmp_path / "syn", images, labels)
    base = dict(
        epochs=2,
        batch_size=64,
        loss="standard",
        attack_steps=0,
        val_attack_steps=1,
        val_size=1000,
        checkpoint_every_steps=3,
        synthetic_fraction=0.5,
    )
    reference = train(tiny(synthetic_data=str(npz), **base), tmp_path / "reference", progress=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny(synthetic_data=str(folder), **base).to_yaml())
    cmd = [
        sys.executable,
        "-m",
        "robustscale",
        "train",
        str(recipe),
        "--run-dir",
        str(tmp_path / "killed"),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                progress = ckpt.load_checkpoint(last)["progress"]
            except Exception:  # noqa: BLE001 - being replaced right now; look again
                progress = {"epoch": 0, "step": 0}
            if progress["epoch"] == 1 and progress["step"] >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.load_checkpoint(last)["progress"]["epoch"] == 1  # killed in the second epoch
    caplog.set_level("INFO", logger="robustscale.train.engine")
    train(tiny(synthetic_data=str(folder), **base), tmp_path / "killed", progress=False)
    assert "resuming" in caplog.text and "epoch 2 step" in caplog.text
    for name in ("last.pt", "best.pt"):
        a = ckpt.load_checkpoint(reference / "checkpoints" / name)["model"]
        b = ckpt.load_checkpoint(tmp_path / "killed" / "checkpoints" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    cost = json.loads((tmp_path / "killed" / "cost.json").read_text())
    assert cost["unique_synthetic_seen"] == 500 and cost["examples_seen"] == 2 * 13 * 64


def test_arrays_dataset_trains_from_its_folders_with_stats_computed_once(tmp_path):
    from robustscale.data import dataset_info
    from robustscale.evaluate import load_split as run_examples
    from robustscale.runs import load

    data = tmp_path / "svhn-like"
    img, lab = _images(600, (16, 16, 3), seed=1, classes=5)
    _folder(data / "train", img, lab)
    _folder(data / "test", *_images(100, (16, 16, 3), seed=2, classes=5))
    recipe = tiny(
        dataset="arrays",
        data_dir=str(data),
        epochs=1,
        val_size=50,
        attack_steps=1,
        val_attack_steps=1,
    )
    run = train(recipe, out_root=tmp_path / "runs", progress=False)
    stored = json.loads((data / "dataset.json").read_text())
    assert (
        stored["num_classes"] == 5
        and stored["shape"] == [3, 16, 16]
        and stored["train_size"] == 600
    )
    want = img.reshape(-1, 3).astype(np.float64) / 255
    assert stored["mean"] == pytest.approx(want.mean(0).tolist(), abs=1e-6)
    assert stored["std"] == pytest.approx(want.std(0).tolist(), abs=1e-6)
    assert dataset_info("arrays", data).num_classes == 5
    x, y = run_examples(run, n=10)
    assert x.shape == (10, 3, 16, 16) and load(run)(x).shape == (10, 5)
    # a test split that does not match the training images is one line naming it
    (data / "test" / "image.npy").unlink()
    np.save(data / "test" / "image.npy", _images(100, (8, 8, 3))[0])
    with pytest.raises(RobustscaleError, match=r"test' .*expected uint8 N x 16 x 16 x 3"):
        run_examples(run, n=10)


def test_processes_of_a_ddp_run_stream_disjoint_halves_of_each_batch(tmp_path):
    images, labels = _images(400)
    source = open_source(_folder(tmp_path / "syn", images, labels))
    real = (torch.zeros(200, 1, 8, 8), torch.zeros(200, dtype=torch.int64))
    whole = BatchPlan(200, 400, 40, 0.5, seed=1)
    halves = [BatchPlan(200, 400, 40, 0.5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    streams = [BatchStream(p, real, source, augment=False, device=CPU) for p in halves]
    one = BatchStream(whole, real, source, augment=False, device=CPU)
    for (_, x, _y), (_, x0, y0), (_, x1, y1) in zip(
        one.epoch(1), streams[0].epoch(1), streams[1].epoch(1)
    ):
        assert len(y0) == len(y1) == 20

        def rows(t):
            return sorted(map(bytes, (t[len(t) // 2 :] * 255).to(torch.uint8).flatten(1).numpy()))

        assert rows(x) == sorted(rows(x0) + rows(x1))  # the extra halves make up the whole


def test_data_benchmark_child_measures_both_sources(tmp_path, monkeypatch):
    """Smoke run of benchmarks/data.py's measurement at a toy size (run by hand otherwise)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks.data
    from benchmarks.data import _write_set, child

    monkeypatch.setattr(benchmarks.data, "SHARD", 1000)
    _write_set(tmp_path / "set", 2500)  # three shards
    assert len(open_source(tmp_path / "set")) == 2500
    for mode in ("disk", "ram"):
        args = argparse.Namespace(
            mode=mode,
            set=str(tmp_path / "set"),
            steps=3,
            warmup=1,
            batch_size=32,
            fraction=0.5,
            device="cpu",
            threads=0,
            prefetch=2,
            cold=mode == "disk",
        )
        row = child(args)
        assert row["mode"] == mode and row["n"] == 2500 and row["images_per_s"] > 0
        assert row["peak_rss_mb"] >= row["rss_before_data_mb"] > 0
