"""CIFAR python-release reader on tiny fake pickles in the official format."""
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from gradmask.data import load_dataset, read_cifar
from gradmask.data.cifar import read_cifar_batch

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng, n, label_key=b"labels", n_classes=10, extra=None):
    d = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(x) for x in rng.integers(0, n_classes, n)],
        b"filenames": [b"x.png"] * n,
    }
    d.update(extra or {})
    return d


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    rel = tmp_path / "cifar-10-batches-py"
    rel.mkdir()
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _batch(rng, 4 + i)
    batches["test_batch"] = _batch(rng, 6)
    for k, v in batches.items():
        _dump(rel / k, v)
    _dump(rel / "batches.meta", {b"label_names": [n.encode() for n in C10_NAMES], b"num_vis": 3072})
    return tmp_path, batches


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    rel = tmp_path / "cifar-100-python"
    rel.mkdir()
    out = {}
    for split, n in (("train", 12), ("test", 5)):
        d = _batch(rng, n, b"fine_labels", 100)
        d[b"coarse_labels"] = [int(x) for x in rng.integers(0, 20, n)]
        _dump(rel / split, d)
        out[split] = d
    _dump(rel / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return tmp_path, out


def test_cifar10_train_concatenates_batches_in_order(cifar10_root):
    parent, batches = cifar10_root
    images, labels, classes = read_cifar(parent, "cifar10", "train")
    n = sum(4 + i for i in range(1, 6))
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert classes == C10_NAMES
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    # channel-major layout: first 1024 bytes red plane, row-major
    assert torch.equal(images, torch.from_numpy(raw).view(n, 3, 32, 32))
    assert images[0, 1, 2, 3].item() == raw[0, 1024 + 2 * 32 + 3]
    want = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert labels.tolist() == want


def test_cifar10_release_folder_itself_and_registry(cifar10_root):
    parent, batches = cifar10_root
    a = read_cifar(parent / "cifar-10-batches-py", "cifar10", "test")
    ds = load_dataset("cifar10", parent, "test")
    assert torch.equal(a[0], ds.images) and torch.equal(a[1], ds.labels)
    assert ds.labels.tolist() == batches["test_batch"][b"labels"]
    assert ds.classes == C10_NAMES and len(ds) == 6


def test_cifar10_from_release_tar_gz(cifar10_root, tmp_path):
    parent, _ = cifar10_root
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(parent / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", arc, "train")
    ref = read_cifar(parent, "cifar10", "train")
    assert torch.equal(ds.images, ref[0]) and torch.equal(ds.labels, ref[1])


def test_cifar100_fine_and_coarse(cifar100_root):
    parent, d = cifar100_root
    imgs, fine, classes = read_cifar(parent, "cifar100", "train")
    assert imgs.shape == (12, 3, 32, 32) and len(classes) == 100 and classes[7] == "fine7"
    assert fine.tolist() == d["train"][b"fine_labels"]
    ds = load_dataset("cifar100", parent, "test", label_mode="coarse")
    assert ds.labels.tolist() == d["test"][b"coarse_labels"] and len(ds.classes) == 20


def test_wrong_keys_names_file(cifar10_root):
    parent, _ = cifar10_root
    bad = parent / "cifar-10-batches-py" / "test_batch"
    _dump(bad, {b"pixels": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch.*'data'"):
        read_cifar(parent, "cifar10", "test")


def test_wrong_shape_names_file(cifar10_root):
    parent, _ = cifar10_root
    bad = parent / "cifar-10-batches-py" / "data_batch_3"
    _dump(bad, {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_3.*3072"):
        read_cifar(parent, "cifar10", "train")


def test_label_count_mismatch_and_range_name_file(cifar10_root):
    parent, _ = cifar10_root
    bad = parent / "cifar-10-batches-py" / "test_batch"
    _dump(bad, {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="test_batch"):
        read_cifar(parent, "cifar10", "test")
    _dump(bad, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match=r"test_batch.*\[0, 10\)"):
        read_cifar(parent, "cifar10", "test")


def test_not_a_pickle_names_file(cifar10_root):
    parent, _ = cifar10_root
    (parent / "cifar-10-batches-py" / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        read_cifar(parent, "cifar10", "test")


def test_pickle_with_code_is_refused(cifar10_root):
    parent, _ = cifar10_root

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    _dump(parent / "cifar-10-batches-py" / "test_batch", {b"data": Evil(), b"labels": []})
    with pytest.raises(ValueError, match=r"test_batch.*not allowed"):
        read_cifar(parent, "cifar10", "test")


def test_missing_batch_file(cifar10_root):
    parent, _ = cifar10_root
    (parent / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        read_cifar(parent, "cifar10", "train")


def test_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("cifar10", tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"junk.*(batches\.meta|python release).*readme\.txt"):
        load_dataset("cifar10", tmp_path / "junk")
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10", None)


def test_bad_split_and_label_mode(cifar10_root):
    parent, _ = cifar10_root
    with pytest.raises(ValueError, match="split"):
        read_cifar(parent, "cifar10", "val")
    with pytest.raises(ValueError, match="label_mode"):
        read_cifar(parent, "cifar10", "train", label_mode="coarse")


def test_str_keys_are_accepted():
    rng = np.random.default_rng(0)
    d = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [3, 4]}
    images, labels = read_cifar_batch(pickle.dumps(d), "mem", b"labels", 10)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 4]
