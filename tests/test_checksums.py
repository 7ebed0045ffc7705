"""Every file gradmask writes and later trusts carries a checksum verified on load: checkpoints,
data cache entries, reproduce step results. Damage is a clear error naming the file (the cache:
a warning naming it, then a rebuild); files written before checksums load, unverified, with a
warning; the cache key includes a content check of the source."""
import io
import json
import os
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_runs import tiny

from gradmask.cli import main
from gradmask.data import load_dataset
from gradmask.reproduce.store import read_step, write_step
from gradmask.train import load_checkpoint, read_checkpoint, train
from gradmask.util.files import CHECKSUM, ChecksumError, UnverifiedFileWarning, digest, verify, with_checksum


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("checked") / "run"
    train(tiny(out))
    return out


def flip_tensor_bytes(path, n=100):
    """Flip ``n`` bytes in the middle of the largest tensor record of a torch zip file (its
    structure stays readable: only weight values change)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    for i in range(start, start + n):
        data[i] ^= 0x5A
    with open(path, "wb") as fh:
        fh.write(bytes(data))


def test_flipped_bytes_in_a_checkpoint_are_an_error_naming_the_file(finished_run, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):  # an unfinished run: no final.json
        (damaged / name).write_bytes((finished_run / name).read_bytes())
    flip_tensor_bytes(damaged / "checkpoint.pt")
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(ChecksumError, match=f"{damaged / 'checkpoint.pt'}.*damaged"):
            load(damaged)
    with pytest.raises(ChecksumError, match="checkpoint.pt"):
        train(tiny(damaged, epochs=2, resume=True))
    assert main(["saliency", str(damaged), "--images", "4", "--out", str(tmp_path / "sal")]) == 2
    assert "damaged" in capsys.readouterr().err and not (tmp_path / "sal").exists()


def test_a_finished_run_with_a_damaged_checkpoint_is_not_reported_as_finished(finished_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in finished_run.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    flip_tensor_bytes(copy / "checkpoint.pt")
    with pytest.raises(ChecksumError):
        train(tiny(copy, resume=True))


def test_a_checkpoint_written_before_checksums_loads_unverified_with_a_warning(finished_run, tmp_path):
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    assert state[CHECKSUM].startswith("sha256:")
    legacy = tmp_path / "legacy.pt"
    torch.save({k: v for k, v in state.items() if k != CHECKSUM}, legacy)
    with pytest.warns(UnverifiedFileWarning, match="legacy.pt"):
        model, _ = load_checkpoint(legacy)
    assert torch.equal(model.state_dict()["fc.weight"], state["model"]["fc.weight"])


def test_a_file_the_safe_loader_refuses_is_named_without_unsafe_advice(tmp_path):
    odd = tmp_path / "odd.pt"
    torch.save({"x": np.arange(3)}, odd)  # numpy arrays are not among the safe loader's types
    with pytest.raises(ValueError) as info:
        read_checkpoint(odd)
    text = str(info.value)
    assert "odd.pt" in text and "not a gradmask file or contains objects gradmask will not load" in text
    assert "weights_only" not in text and "corrupted" not in text


# ------------------------------------------------------------------------------ the digest itself
tensors = st.builds(lambda shape, dtype, seed: (torch.randn(shape, generator=torch.Generator().manual_seed(seed))
                                                * 100).to(dtype),
                    st.lists(st.integers(0, 4), max_size=3).map(tuple),
                    st.sampled_from([torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.uint8,
                                     torch.bool]),
                    st.integers(0, 2 ** 16))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 62, 2 ** 62), st.floats(allow_nan=False),
                   st.text(max_size=8), tensors)
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=4)),
                      max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(values)
def test_digest_survives_a_save_load_round_trip(value):
    buffer = io.BytesIO()
    torch.save({"v": value}, buffer)
    buffer.seek(0)
    assert digest(torch.load(buffer, weights_only=True)) == digest({"v": value})


@settings(max_examples=60, deadline=None)
@given(tensors.filter(lambda t: t.numel() > 0), st.integers(0, 10 ** 6), st.integers(1, 255))
def test_digest_changes_with_any_byte_of_a_tensor(t, where, xor):
    changed = t.clone()
    raw = changed.reshape(-1).view(torch.uint8)
    raw[where % raw.numel()] ^= xor
    assert digest({"t": t}) != digest({"t": changed})


def test_digest_tells_structure_and_types_apart():
    cases = ([1, 2], [[1], 2], [1, 2, None], {"1": 2}, ["1", 2], [1.0, 2], [True, 2], [torch.tensor(1), 2],
             [torch.tensor(1.0), 2], [torch.tensor([1]), 2])
    assert len({digest(v) for v in cases}) == len(cases)


def test_verify_accepts_checked_content_and_names_the_file_on_mismatch(tmp_path):
    content = with_checksum({"a": torch.arange(4), "b": "x"})
    assert verify(content, tmp_path / "f", "thing") == content[CHECKSUM]
    content["a"][1] = 7
    with pytest.raises(ChecksumError, match="thing .*f is damaged"):
        verify(content, tmp_path / "f", "thing")


# ------------------------------------------------------------------------------ the data cache
def _tree(root, colour):
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), colour, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_damaged_cache_entry_is_named_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "tree", (10, 20, 30))
    first = load_dataset("folder", root=root, split="train")
    (entry,) = (tmp_path / "cache").glob("*.pt")
    flip_tensor_bytes(entry, n=4)
    with pytest.warns(UserWarning, match=f"{entry.name}.*damaged"):
        again = load_dataset("folder", root=root, split="train")
    assert torch.equal(again.images, first.images)


def test_a_replaced_file_with_the_same_size_and_mtime_is_not_served_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "tree", (10, 20, 30))
    assert int(load_dataset("folder", root=root, split="train").images[0, 0, 0, 0]) == 10
    target = root / "train" / "a" / "0.png"
    st_before = target.stat()
    Image.fromarray(np.full((4, 4, 3), (11, 20, 30), dtype=np.uint8)).save(target)
    assert target.stat().st_size == st_before.st_size  # same size: a flat colour compresses alike
    os.utime(target, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    assert int(load_dataset("folder", root=root, split="train").images[0, 0, 0, 0]) == 11


def test_a_replaced_archive_with_the_same_size_and_mtime_is_not_served_from_the_cache(tmp_path, monkeypatch):
    import tarfile
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    archives = []
    for k, colour in enumerate(((10, 20, 30), (11, 20, 30))):
        tree = _tree(tmp_path / f"tree{k}", colour)
        arc = tmp_path / f"data{k}.tar"
        with tarfile.open(arc, "w") as tf:
            tf.add(tree / "train", arcname="train", filter=lambda m: setattr(m, "mtime", 0) or m)
        archives.append(arc)
    assert archives[0].stat().st_size == archives[1].stat().st_size
    target = tmp_path / "data.tar"
    os.replace(archives[0], target)
    assert int(load_dataset("folder", root=target, split="train").images[0, 0, 0, 0]) == 10
    before = target.stat()
    os.replace(archives[1], target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert int(load_dataset("folder", root=target, split="train").images[0, 0, 0, 0]) == 11


# ------------------------------------------------------------------------------ reproduce step results
def test_step_results_carry_a_checksum(tmp_path):
    write_step(tmp_path, "blur", {"settings": {"n": 1}, "result": {"acc": [0.5, 0.25]}})
    path = tmp_path / "steps" / "blur.json"
    record = json.loads(path.read_text())
    assert record[CHECKSUM].startswith("sha256:") and read_step(tmp_path, "blur")["result"]["acc"] == [0.5, 0.25]
    path.write_text(path.read_text().replace("0.25", "0.75"))  # still valid JSON: only the checksum tells
    with pytest.raises(ChecksumError, match="blur.json"):
        read_step(tmp_path, "blur")
    del record[CHECKSUM]
    path.write_text(json.dumps(record))  # written before checksums: read, unverified
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_step(tmp_path, "blur")["result"]["acc"] == [0.5, 0.25]
    assert any(issubclass(w.category, UnverifiedFileWarning) for w in caught)


def test_short_writes_are_completed_so_torch_save_is_not_cut(tmp_path):
    """A write interrupted by a signal may write part of its bytes and say so: write_atomic's file
    completes them (a preempted Slurm job once wrote a checkpoint torch.save called damaged)."""
    from gradmask.util.files import _WriteErrors

    class Short:
        def __init__(self):
            self.data = bytearray()

        def write(self, chunk):
            part = bytes(chunk[:7])
            self.data += part
            return len(part)

    raw = Short()
    f = _WriteErrors(raw)
    payload = bytes(range(256)) * 3
    assert f.write(payload) == len(payload) and bytes(raw.data) == payload
