"""Data: the CIFAR-10 loader on files in CIFAR-10's own format, digits, exact synthetic mixing,
augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustscale import RobustscaleError
from robustscale.data import DATASETS, load_synthetic, read_split, split_holdout
from robustscale.data.batches import BatchPlan, BatchStream, random_crop_flip, seeded_generator


def test_cifar10_loader_reads_files_in_the_official_format(cifar10_dir):
    x, y = read_split("cifar10", "train", cifar10_dir)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10
    xt, _ = read_split("cifar10", "test", cifar10_dir)
    assert xt.shape == (20, 3, 32, 32)
    # the pixels are the rows written to disk, reshaped channel-first as CIFAR-10 stores them
    import pickle

    with open(cifar10_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(x[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))


def test_missing_cifar_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(RobustscaleError) as exc:
        read_split("cifar10", "train", tmp_path / "nowhere")
    msg = str(exc.value)
    assert "cifar-10-batches-py" in msg and "download=True" in msg and "\n" not in msg


def test_digits_is_real_and_fixed():
    x, y = read_split("digits", "train")
    x2, y2 = read_split("digits", "train")
    xt, _ = read_split("digits", "test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert len(torch.unique(y)) == 10


def test_holdout_is_disjoint_and_fixed():
    x, y = torch.arange(100).float().view(100, 1, 1, 1), torch.arange(100)
    (xr, yr), (xh, yh) = split_holdout(x, y, 10, seed=0)
    assert len(yh) == 10 and len(yr) == 90 and not set(yh.tolist()) & set(yr.tolist())
    assert torch.equal(split_holdout(x, y, 10, seed=0)[1][1], yh)


def _npz(tmp_path, n, value=255):
    path = tmp_path / "extra.npz"
    np.savez(path, image=np.full((n, 8, 8, 1), value, np.uint8), label=np.full(n, 7, np.int64))
    return path


@pytest.mark.parametrize("fraction,batch", [(0.7, 50), (0.5, 64), (0.3, 10)])
def test_synthetic_fraction_is_exact_in_every_batch(tmp_path, fraction, batch):
    n_real = 300
    real = (
        torch.zeros(n_real, 1, 8, 8),
        torch.zeros(n_real, dtype=torch.int64),
    )  # real images are all 0
    syn = load_synthetic(_npz(tmp_path, 1000), DATASETS["digits"])  # synthetic images are all 1
    plan = BatchPlan(n_real, len(syn), batch, fraction, seed=3)
    stream = BatchStream(plan, real, syn, augment=False, device=torch.device("cpu"))
    want = round(batch * fraction)
    steps = 0
    for _, xb, yb in stream.epoch(0):
        assert len(yb) == batch
        assert int((xb.flatten(1)[:, 0] == 1).sum()) == want
        assert int((yb == 7).sum()) == want
        steps += 1
    # an epoch is defined over the original data
    assert steps == n_real // (batch - want) == plan.steps_per_epoch


def test_epoch_order_is_a_function_of_seed_and_epoch():
    plan = BatchPlan(100, 0, 10, 0.0, seed=1)
    a, _ = plan.epoch_indices(0)
    b, _ = plan.epoch_indices(0)
    c, _ = plan.epoch_indices(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.flatten().tolist()) == list(range(100))


def test_bad_synthetic_file_is_one_line(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, image=np.zeros((3, 5, 5, 1), np.uint8), label=np.zeros(3))
    with pytest.raises(RobustscaleError, match="expected uint8 N x 8 x 8 x 1"):
        load_synthetic(path, DATASETS["digits"])
    np.savez(path, pictures=np.zeros((3, 8, 8, 1), np.uint8))
    with pytest.raises(RobustscaleError, match="'image' and 'label'"):
        load_synthetic(path, DATASETS["digits"])


def test_crop_flip_moves_pixels_without_changing_them():
    x = torch.rand(64, 3, 32, 32)
    out = random_crop_flip(x, 4, seeded_generator(0, 1))
    assert out.shape == x.shape
    # every output row is a (possibly flipped) shifted window of the zero-padded input
    for i in range(8):
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        found = any(
            torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1))
            for dy in range(9)
            for dx in range(9)
            for w in [padded[:, dy : dy + 32, dx : dx + 32]]
        )
        assert found
    assert not torch.equal(out, x)


class _Payload:
    """Unpickling this runs ``os.system``: what a hostile data_batch_1 would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_file_that_would_run_code_is_refused_without_running_it(cifar10_dir, tmp_path):
    import pickle

    marker = tmp_path / "PWNED"
    batch = cifar10_dir / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["labels"] = _Payload(marker)
    batch.write_bytes(pickle.dumps(entry))
    with pytest.raises(RobustscaleError) as exc:
        read_split("cifar10", "train", cifar10_dir)
    assert not marker.exists(), "the pickle's code ran"
    msg = str(exc.value)
    assert (
        "\n" not in msg and "data_batch_1" in msg and ("posix.system" in msg or "os.system" in msg)
    )
    # the same through the CLI path of a run: one line, no run directory
    from robustscale.cli import main

    recipe = tmp_path / "r.yaml"
    from conftest import tiny

    recipe.write_text(tiny(dataset="cifar10", data_dir=str(cifar10_dir), val_size=5).to_yaml())
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_cifar_arrays_of_other_dtypes_or_classes_are_refused(cifar10_dir):
    import pickle

    batch = cifar10_dir / "cifar-10-batches-py" / "test_batch"
    with open(batch, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["data"] = entry["data"].astype(object)  # an object array could smuggle anything
    batch.write_bytes(pickle.dumps(entry))
    with pytest.raises(RobustscaleError, match="test_batch.*dtype object"):
        read_split("cifar10", "test", cifar10_dir)


def test_official_cifar_bytes_are_trusted_by_their_md5(tmp_path, monkeypatch):
    import hashlib
    import pickle

    from robustscale.data import cifar

    path = tmp_path / "batch"
    path.write_bytes(
        pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [3], "note": {1, 2}})
    )
    with pytest.raises(RobustscaleError, match="a set, which is not CIFAR data"):
        cifar.load_cifar_batch(path, official_md5=None)
    official = hashlib.md5(path.read_bytes()).hexdigest()  # as if these were the release's bytes
    assert cifar.load_cifar_batch(path, official_md5=official)["note"] == {1, 2}
