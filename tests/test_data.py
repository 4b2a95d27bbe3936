from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from maxmargin.data import BatchStream, augment, load_dataset
from maxmargin.data.formats import IDX_IMAGES, IDX_LABELS, read_idx
from maxmargin.errors import UserError


def write_idx(path, arr: np.ndarray, magic: int, gz: bool = False) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def make_idx_dataset(root, n_train=30, n_test=10, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x, IDX_IMAGES, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y, IDX_LABELS, gz)
        parts[prefix] = (x, y)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_roundtrip_and_validation_split(tmp_path, gz):
    parts = make_idx_dataset(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path, val_size=5)
    xtr, ytr = parts["train"]
    assert ds.shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.val.x[:, 0], torch.from_numpy(xtr[:5]))
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(xtr[5:]))
    assert torch.equal(ds.train.y, torch.from_numpy(ytr[5:].astype(np.int64)))
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(parts["t10k"][0]))
    assert ds.train.x.dtype == torch.uint8
    assert 0.0 <= float(ds.train.images().min()) and float(ds.train.images().max()) <= 1.0


def test_idx_errors_name_the_file(tmp_path):
    make_idx_dataset(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-100])                       # truncated
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(b"\x00\x00\x08\x01" + good[4:])      # label magic on an image file
    with pytest.raises(UserError, match="magic"):
        read_idx(images, IDX_IMAGES)
    images.write_bytes(good)
    write_idx(labels, np.full(30, 12, dtype=np.uint8), IDX_LABELS)
    with pytest.raises(UserError, match="label 12"):
        load_dataset("mnist", tmp_path)
    labels.unlink()
    with pytest.raises(UserError, match="missing .*train-labels"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")


def write_cifar(root, n_per=4, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, classes, n_per).tolist()}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
        batches[name] = d
    return batches


def test_cifar10_python_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, val_size=3)
    assert ds.shape == (3, 32, 32) and len(ds.train) + len(ds.val) == 20 and len(ds.test) == 4
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32)
    assert torch.equal(ds.val.x[0], torch.from_numpy(first))
    assert ds.val.y[0] == batches["data_batch_1"][b"labels"][0]


def test_cifar_corrupt_and_malicious_files_are_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    (root / "test_batch").unlink()
    write_cifar(root)
    (root / "test_batch").unlink()
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


def test_bundled_digits_split_is_class_balanced():
    ds = load_dataset("digits", val_size=1000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7000, 1000, 2000)
    for split in (ds.val, ds.test):
        counts = torch.bincount(split.y, minlength=10).float() / len(split)
        assert float(counts.min()) > 0.06 and float(counts.max()) < 0.14


def test_batch_stream_deterministic_disjoint_shards_and_epochs():
    s = BatchStream(n=103, batch_size=10, seed=3)
    again = BatchStream(n=103, batch_size=10, seed=3)
    assert torch.equal(s.indices(17), again.indices(17))
    r0, r1 = s.indices(5, rank=0, world=2), s.indices(5, rank=1, world=2)
    assert set(r0.tolist()).isdisjoint(r1.tolist())
    assert sorted(torch.cat([r0, r1]).tolist()) == sorted(s.indices(5).tolist())
    # the first 10 batches cover epoch 0 once (the 11th straddles the epoch boundary)
    seen = torch.cat([s.indices(i) for i in range(10)])
    assert len(set(seen.tolist())) == 100
    assert not torch.equal(s.indices(0), BatchStream(103, 10, seed=4).indices(0))


def test_augment_is_a_crop_of_the_reflect_padded_image_maybe_flipped():
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(6):   # a test may loop; the library may not
        candidates = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, x) or not torch.equal(augment(x, g, pad=2), x)
