"""ImageFolder directories / archives and the on-disk decoded-image cache."""
import os
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import gradmask.data.folder as folder_mod
from gradmask.data import load_dataset
from gradmask.data.cache import CACHE_ENV, cache_path
from gradmask.data.folder import decode_image_folder, decode_images, load_image_folder, read_image_archive

CLASSES = ["cat", "dog", "emu"]


def make_tree(root, split="train", n_per_class=3, size=(8, 8), seed=0, top=None):
    """root[/top]/<split>/<class>/<i>.png|jpg with random pixels; returns {path: array} of PNGs."""
    rng = np.random.default_rng(seed)
    base = root / top if top else root
    pngs = {}
    for c in CLASSES:
        d = base / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
            if i % 2 == 0:
                p = d / f"{i:03d}.png"
                Image.fromarray(arr).save(p)
                pngs[str(p)] = arr
            else:
                Image.fromarray(arr).save(d / f"{i:03d}.jpg", quality=90)
    (base / split / "cat" / "notes.txt").write_text("not an image")  # ignored
    return base


def make_tar(src, arc, arcname):
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return arc


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "ds")


def test_directory_decode_order_labels_and_pixels(tree):
    images, labels, classes = decode_image_folder(tree, "train", num_workers=0)
    assert classes == CLASSES
    assert images.shape == (9, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # PNG is lossless: sample 0 of "cat" is 000.png
    with Image.open(tree / "train" / "cat" / "000.png") as png:
        ref = np.array(png)
    assert torch.equal(images[0], torch.from_numpy(ref).permute(2, 0, 1))


def test_tar_gz_gives_identical_tensors(tree, tmp_path):
    a = decode_image_folder(tree, "train", num_workers=0)
    for arcname in ("ds", "."):  # with a single top folder, and without one
        arc = make_tar(tree, tmp_path / f"ds{len(arcname)}.tar.gz", arcname)
        b = decode_image_folder(arc, "train", num_workers=0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_plain_tar_and_single_top_folder_directory(tmp_path):
    make_tree(tmp_path / "outer", top="inner")
    a = decode_image_folder(tmp_path / "outer", "train", num_workers=0)
    arc = tmp_path / "x.tar"
    with tarfile.open(arc, "w") as tf:
        tf.add(tmp_path / "outer" / "inner", arcname="inner")
    b = decode_image_folder(arc, "train", num_workers=0)
    assert torch.equal(a[0], b[0]) and a[2] == CLASSES
    # unrelated extra top folders are ignored; two candidate trees are ambiguous
    (tmp_path / "outer" / "__MACOSX").mkdir()
    assert torch.equal(decode_image_folder(tmp_path / "outer", "train", num_workers=0)[0], a[0])
    make_tree(tmp_path / "outer", top="other")
    with pytest.raises(ValueError, match=r"'train'.*found: .*inner/.*other/"):
        decode_image_folder(tmp_path / "outer", "train")
    arc2 = make_tar(tmp_path / "outer", tmp_path / "two.tar.gz", ".")
    with pytest.raises(ValueError, match=r"two\.tar\.gz.*candidate prefixes: \['inner', 'other'\]"):
        decode_image_folder(arc2, "train")


def test_process_pool_matches_in_process(tree, monkeypatch):
    monkeypatch.setattr(folder_mod, "_POOL_MIN_IMAGES", 0)
    a = decode_image_folder(tree, "train", num_workers=0)
    b = decode_image_folder(tree, "train", num_workers=2)
    assert torch.equal(a[0], b[0])


def test_image_size_resizes_and_mismatch_is_reported(tree):
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tree / "train" / "dog" / "zzz.png")
    with pytest.raises(ValueError, match=r"zzz\.png.*image_size"):
        decode_image_folder(tree, "train", num_workers=0)
    images, _, _ = decode_image_folder(tree, "train", image_size=6, num_workers=0)
    assert images.shape == (10, 3, 6, 6)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    d = tmp_path / "t" / "train" / "a"
    d.mkdir(parents=True)
    Image.new("L", (4, 4), 77).save(d / "g.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 4)).save(d / "h.png")
    images, _, _ = decode_image_folder(tmp_path / "t", "train", num_workers=0)
    assert images.shape == (2, 3, 4, 4)
    assert images[0, :, 0, 0].tolist() == [77, 77, 77] and images[1, :, 0, 0].tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.*ImageFolder"):
        decode_image_folder(tmp_path / "nope")


def test_missing_split_lists_what_was_found(tree, tmp_path):
    with pytest.raises(ValueError, match=r"'test'.*found: train/"):
        decode_image_folder(tree, "test")
    arc = make_tar(tree, tmp_path / "a.tar.gz", "ds")
    with pytest.raises(ValueError, match=r"a\.tar\.gz.*test/<class>.*ds/"):
        decode_image_folder(arc, "test")


def test_empty_class_folder_named(tree, tmp_path):
    (tree / "train" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"fox.*no images"):
        decode_image_folder(tree, "train")
    arc = make_tar(tree, tmp_path / "e.tar.gz", "ds")
    with pytest.raises(ValueError, match=r"e\.tar\.gz:ds/train/fox.*no images"):
        decode_image_folder(arc, "train")


def test_undecodable_image_named(tree, tmp_path):
    (tree / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"dog/broken\.jpg"):
        decode_image_folder(tree, "train", num_workers=0)
    arc = make_tar(tree, tmp_path / "b.tar.gz", "ds")
    with pytest.raises(ValueError, match=r"b\.tar\.gz:ds/train/dog/broken\.jpg"):
        decode_image_folder(arc, "train", num_workers=0)


def test_not_an_archive_and_corrupt_archive(tmp_path):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"data\.zip.*not a \.tar"):
        load_image_folder(f)
    g = tmp_path / "bad.tar.gz"
    g.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match=r"bad\.tar\.gz"):
        read_image_archive(g)


# ----------------------------------------------------------------------------- cache
def _forbid_decode(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(folder_mod, "decode_images", boom)


@pytest.mark.parametrize("as_archive", [False, True])
def test_cache_hit_does_not_decode(tree, tmp_path, monkeypatch, as_archive):
    src = make_tar(tree, tmp_path / "c.tar.gz", "ds") if as_archive else tree
    cache = tmp_path / "cache"
    a = load_image_folder(src, "train", cache_dir=cache, num_workers=0)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith(("ds-train-", "c-train-"))
    assert not list(cache.glob(".*tmp")), "temporary file left behind"
    _forbid_decode(monkeypatch)
    b = load_image_folder(src, "train", cache_dir=cache, num_workers=0)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes


def test_stale_cache_rebuilt_when_directory_changes(tree, tmp_path):
    cache = tmp_path / "cache"
    a = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    p = tree / "train" / "emu" / "000.png"
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(p)
    os.utime(p, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    b = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    assert not torch.equal(a.images, b.images)
    assert b.images[6].eq(9).all()  # emu/000.png is sample 6
    assert len(list(cache.glob("*.pt"))) == 2
    # adding a file also invalidates
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tree / "train" / "emu" / "009.png")
    assert len(load_image_folder(tree, "train", cache_dir=cache, num_workers=0)) == 10


def test_stale_cache_rebuilt_when_archive_changes(tree, tmp_path):
    cache = tmp_path / "cache"
    arc = make_tar(tree, tmp_path / "s.tar.gz", "ds")
    a = load_image_folder(arc, "train", cache_dir=cache, num_workers=0)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tree / "train" / "dog" / "100.png")
    make_tar(tree, arc, "ds")
    os.utime(arc, ns=(2, 2))
    b = load_image_folder(arc, "train", cache_dir=cache, num_workers=0)
    assert len(a) == 9 and len(b) == 10


def test_truncated_cache_rebuilt_with_warning(tree, tmp_path):
    cache = tmp_path / "cache"
    a = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    (f,) = cache.glob("*.pt")
    f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"{f.name}.*unreadable.*rebuilding"):
        b = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    assert torch.equal(a.images, b.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt file is fine now
        load_image_folder(tree, "train", cache_dir=cache, num_workers=0)


def test_wrong_dtype_cache_rebuilt_with_warning(tree, tmp_path):
    cache = tmp_path / "cache"
    a = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    (f,) = cache.glob("*.pt")
    entry = torch.load(f, weights_only=True)
    entry["images"] = entry["images"].float()
    torch.save(entry, f)
    with pytest.warns(UserWarning, match=rf"{f.name}.*invalid.*uint8"):
        b = load_image_folder(tree, "train", cache_dir=cache, num_workers=0)
    assert b.images.dtype == torch.uint8 and torch.equal(a.images, b.images)


def test_cache_dir_from_env_and_unwritable_dir(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    load_image_folder(tree, "train", num_workers=0)
    assert len(list((tmp_path / "envcache").glob("ds-train-*.pt"))) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not write"):
        ds = load_image_folder(tree, "train", cache_dir=blocker / "sub", num_workers=0)
    assert len(ds) == 9


def test_use_cache_false_writes_nothing(tree, tmp_path):
    load_image_folder(tree, "train", cache_dir=tmp_path / "c", use_cache=False, num_workers=0)
    assert not (tmp_path / "c").exists()


def test_cache_path_sanitises_names(tmp_path):
    p = cache_path("my data/set", "train", "abc", tmp_path)
    assert p.parent == tmp_path and p.name == "my_data_set-train-abc.pt"


def test_decode_images_bytes_and_names():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(buf, format="PNG")
    out = decode_images([buf.getvalue()] * 2, ["a", "b"], num_workers=0)
    assert out.shape == (2, 3, 2, 3) and out[1, :, 1, 2].tolist() == [10, 20, 30]
    with pytest.raises(ValueError, match="cannot decode image b"):
        decode_images([buf.getvalue(), b"xx"], ["a", "b"], num_workers=0)


def test_registry_folder_and_cifar_from_folder(tree, tmp_path):
    ds = load_dataset("folder", tree, "train", cache_dir=tmp_path / "c", num_workers=0)
    assert ds.classes == CLASSES and ds.images.shape == (9, 3, 8, 8)
    # a 3-class tree is not CIFAR-10
    with pytest.raises(ValueError, match=r"3 class folders, expected 10"):
        load_dataset("cifar10", tree, "train", cache_dir=tmp_path / "c", num_workers=0)
