"""The training engine on tiny synthetic runs: the run-directory contract, learning, the mask,
callbacks, refusing to clobber a run, finished-run resume, checkpoints."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

import gradmask
from gradmask.train import FINAL_KEYS, METRIC_KEYS, TrainConfig, load_checkpoint, read_checkpoint, train
from gradmask.train.source import source_revision
from gradmask.util.files import json_digest


def tiny(out, **kw) -> TrainConfig:
    base = dict(train_limit=256, test_limit=128, epochs=2, batch_size=64, lr=0.05, schedule="triangle",
                warmup_epochs=0.5, progress=False, out=str(out))
    return TrainConfig.from_dict({**base, **kw})


class Recorder:
    """Keeps what the callbacks saw."""

    def __init__(self):
        self.started, self.epochs, self.final, self.hooks = 0, [], None, None

    def on_train_start(self, ctx):
        self.started += 1
        self.hooks = sum(len(m._forward_hooks) for m in ctx.model.modules())
        self.handle = ctx.handle

    def on_epoch_end(self, ctx, record):
        self.epochs.append(ctx.epoch)
        record["extra_metric"] = 0.5 * ctx.epoch

    def on_train_end(self, ctx, final):
        self.final = final


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("masked")
    rec = Recorder()
    config = tiny(out, mask="lateral")
    final = train(config, callbacks=[rec])
    return out, config, final, rec


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_directory_contract(masked_run):
    out, config, final, _ = masked_run
    saved = json.loads(Path(out / "config.json").read_text())
    assert saved.pop("checksum") == json_digest(saved)           # every record carries its checksum
    assert saved.pop("gradmask_version") == source_revision()
    assert saved.pop("trained_by") == [source_revision()] == final["trained_by"]
    assert source_revision().startswith(gradmask.__version__)
    assert TrainConfig.from_dict(saved) == config
    records = _jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(METRIC_KEYS) <= set(r)
        for key in ("train_acc", "test_acc", "test_top5"):
            assert 0.0 <= r[key] <= 1.0
        assert r["test_top5"] >= r["test_acc"]
        assert r["lr"] > 0 and r["epoch_seconds"] > 0 and r["images_per_second"] > 0
    rows = list(csv.DictReader(Path(out / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert "mask_kept_mean" in rows[0] and "mask_kept" not in rows[0]
    assert float(rows[0]["test_acc"]) == pytest.approx(records[0]["test_acc"])
    written = json.loads(Path(out / "final.json").read_text())
    assert written.pop("checksum") == json_digest(written) and written == final
    assert final["checkpoint"] == read_checkpoint(out)["checksum"]   # the checkpoint it describes
    assert all(r.pop("checksum") == json_digest(r) for r in records)
    assert tuple(final) == FINAL_KEYS
    assert final["epochs"] == 2 and final["mask"] == "lateral" and final["model"] == "resnet18_narrow"
    assert final["test_acc"] == records[-1]["test_acc"] and final["device"] == "cpu"
    assert final["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in records))
    model = gradmask.create_model("resnet18_narrow", 10)
    assert final["num_params"] == sum(p.numel() for p in model.parameters())
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "final.json",
                                                     "metrics.csv", "metrics.jsonl"]


def test_mask_is_attached_and_records_the_kept_fraction(masked_run):
    out, config, _, rec = masked_run
    assert rec.handle is not None and len(rec.handle.targets) == 6  # 8 blocks but the last two
    assert rec.hooks == 6
    for r in _jsonl(out / "metrics.jsonl"):
        kept = r["mask_kept"]
        assert sorted(kept) == sorted(rec.handle.targets)
        # q = 0.5 over n = H*W positions keeps n - 1 - floor(0.5 (n - 1)) of n: just under a half
        assert all(0.45 < v <= 0.5 for v in kept.values())
    rows = list(csv.DictReader(Path(out / "metrics.csv").read_text().splitlines()))
    assert 0.45 < float(rows[-1]["mask_kept_mean"]) <= 0.5


def test_records_the_energy_kept_and_the_fit_on_a_fixed_training_subset(masked_run, tmp_path):
    out, config, _, rec = masked_run
    records = _jsonl(out / "metrics.jsonl")
    for r in records:
        energy = r["mask_energy_kept"]
        assert sorted(energy) == sorted(rec.handle.targets)
        # the kept half of the positions are the important ones: more than half of the energy, not all of it
        assert all(r["mask_kept"][name] < v < 1.0 for name, v in energy.items())
        assert 0.0 <= r["train_eval_acc"] <= 1.0 and r["train_eval_loss"] > 0
    rows = list(csv.DictReader(Path(out / "metrics.csv").read_text().splitlines()))
    assert float(rows[-1]["mask_energy_kept_mean"]) == pytest.approx(
        sum(records[-1]["mask_energy_kept"].values()) / len(records[-1]["mask_energy_kept"]))
    # the subset is evaluated like the test split: a run whose test split is that subset scores it the same
    subset = min(config.train_eval_images, config.train_limit)
    assert subset == 256  # tiny(): the whole training set is the subset
    plain = train(tiny(tmp_path / "off", mask="none", epochs=1, train_eval_images=0))
    assert "train_eval_acc" not in _jsonl(tmp_path / "off" / "metrics.jsonl")[0] and plain["epochs"] == 1


def test_train_eval_subset_is_a_fixed_draw_of_the_training_images():
    from gradmask.train.augment import build_augment
    from gradmask.train.data import build_data

    def subset(seed):
        config = TrainConfig(train_limit=300, test_limit=64, train_eval_images=50, seed=seed, progress=False)
        data = build_data(config, build_augment(config), torch.device("cpu"))
        images = torch.cat([x for x, _, _ in data.train_eval_batches()])
        assert data.train_eval_size == 50 and images.shape[0] == 50
        return images, data

    a, data = subset(0)
    b, _ = subset(7)
    assert torch.equal(a, b)  # the same images whatever the run's seed
    train_images = data.train.images.float() / 255
    matches = (a[:, None] - train_images[None]).abs().flatten(2).amax(2) < 1e-6
    assert bool(matches.any(1).all())  # each one is a training image, not augmented


def test_callbacks_see_every_epoch_and_can_add_metrics(masked_run):
    out, _, final, rec = masked_run
    assert rec.started == 1 and rec.epochs == [1, 2] and rec.final == final
    assert [r["extra_metric"] for r in _jsonl(out / "metrics.jsonl")] == [0.5, 1.0]
    rows = csv.DictReader((out / "metrics.csv").read_text().splitlines())
    assert [float(r["extra_metric"]) for r in rows] == [0.5, 1.0]


def test_no_mask_means_no_hooks(tmp_path):
    rec = Recorder()
    train(tiny(tmp_path, mask="none", epochs=1, train_limit=128, test_limit=64), callbacks=[rec])
    assert rec.handle is None and rec.hooks == 0
    assert _jsonl(tmp_path / "metrics.jsonl")[0]["mask_kept"] is None
    assert list(csv.DictReader(Path(tmp_path / "metrics.csv").read_text().splitlines()))[0]["mask_kept_mean"] == ""


@pytest.mark.slow
def test_accuracy_above_chance_after_a_short_run(tmp_path):
    # 1500 images x 4 epochs of the 10-class synthetic data without distractors, ~25 s on one core.
    # Chance is 0.1 (its standard deviation on 1000 test images 0.0095). With the full clutter this
    # run reached only 0.16-0.23, and 0.126 on a fresh clone with one thread, failing a 0.14 threshold
    # (issue 26): the numbers change with the thread count and the CPU's dispatch capability. Without
    # clutter: seeds 0-3 0.307-0.366 (1 thread, AVX512), seed 0 0.297 (2 threads), seeds 0-1
    # 0.295 / 0.304 (1 thread, ATEN_CPU_CAPABILITY=avx2); 0.2 is ten chance deviations above chance
    # and 0.095 below every setup measured.
    final = train(TrainConfig(train_limit=1500, test_limit=1000, epochs=4, batch_size=32, lr=0.03,
                              schedule="triangle", warmup_epochs=1, augment="none", mask="none",
                              synthetic_clutter=0.0, train_eval_images=0, progress=False, out=str(tmp_path)))
    records = _jsonl(tmp_path / "metrics.jsonl")
    assert final["test_acc"] > 0.2, records
    assert final["test_loss"] < math.log(10) and records[-1]["train_loss"] < records[0]["train_loss"]


def test_load_checkpoint_rebuilds_the_trained_model(masked_run):
    out, config, final, _ = masked_run
    model, cfg = load_checkpoint(out)
    assert cfg == config and not model.training
    assert not any(m._forward_hooks for m in model.modules())
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    # the rebuilt model scores what the run reported on the same test images
    test = gradmask.data.load_dataset("synthetic", split="test", n=config.test_limit)
    with torch.no_grad():
        acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(final["test_acc"], abs=1e-6)
    same, _ = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))


def test_damaged_checkpoints_raise_value_error_naming_the_file(masked_run, tmp_path):
    out = masked_run[0]
    data = (out / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    partial = tmp_path / "partial.pt"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, partial)
    wrong = tmp_path / "wrong.pt"
    state["model"] = {k: v for k, v in state["model"].items() if "fc" not in k}
    torch.save(state, wrong)
    for path in (truncated, garbage, partial, wrong):
        with pytest.raises(ValueError, match=path.name):
            load_checkpoint(path)
    with pytest.raises(ValueError, match="partial.pt"):
        read_checkpoint(partial)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent")


def test_refuses_a_used_directory_and_resumes_a_finished_run_without_training(masked_run):
    out, config, final, _ = masked_run
    with pytest.raises(ValueError, match="not empty"):
        train(config)
    rec = Recorder()
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    assert train(config.replace(resume=True), callbacks=[rec]) == final
    assert rec.started == 0 and (out / "checkpoint.pt").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="lr"):
        (out / "final.json").rename(out / "final.bak")
        try:
            train(config.replace(resume=True, lr=0.5))
        finally:
            (out / "final.bak").rename(out / "final.json")


def test_overwrite_starts_again(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    config = tiny(tmp_path, mask="none", epochs=1, train_limit=64, test_limit=64)
    with pytest.raises(ValueError, match="overwrite"):
        train(config)
    train(config.replace(overwrite=True))
    train(config.replace(overwrite=True, seed=1))
    assert len(_jsonl(tmp_path / "metrics.jsonl")) == 1
    assert json.loads(Path(tmp_path / "final.json").read_text())["seed"] == 1
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_channels_last_and_bf16_autocast(tmp_path, device):
    final = train(tiny(tmp_path, epochs=1, train_limit=64, test_limit=64, channels_last=True, amp="bf16",
                       device=device))
    assert 0.0 <= final["test_acc"] <= 1.0 and final["device"].split(" ")[0] == device
    kept = _jsonl(tmp_path / "metrics.jsonl")[0]["mask_kept"]
    assert all(0.45 < v <= 0.5 for v in kept.values())


@pytest.mark.slow
def test_compiled_runs_in_one_process_each_get_their_own_hooks(tmp_path, monkeypatch):
    """Dynamo does not guard on module hooks: without a reset, a compiled masked run after a compiled
    vanilla one (``compare``'s order) reused the vanilla code and never masked. Dynamo's ``eager``
    backend (the same tracing and caching, no code generation) keeps this fast."""
    import functools
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    for mask in ("none", "lateral"):
        train(tiny(tmp_path / mask, mask=mask, epochs=1, train_limit=64, test_limit=32, compile=True, overwrite=True))
        kept = _jsonl(tmp_path / mask / "metrics.jsonl")[0]["mask_kept"]
        assert (kept is None) if mask == "none" else all(v is not None and 0.45 < v <= 0.5 for v in kept.values())


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="amp"):
        train(tiny(tmp_path, amp="fp16", device="cpu"))
    with pytest.raises(FileNotFoundError, match="no-such-cifar"):
        train(tiny(tmp_path, dataset="cifar10", data=str(tmp_path / "no-such-cifar")))
    with pytest.raises(ValueError, match="model"):
        tiny(tmp_path, model="resnet7")
    with pytest.raises(ValueError, match="targets|target"):
        train(tiny(tmp_path / "t", targets=["no.such.module"]))


@pytest.fixture
def image_tree(tmp_path, monkeypatch):
    """root/{train,val}/{a,b}/*.png: two colour classes, 40x40 (train 8, val 4 per class)."""
    from PIL import Image
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tree"
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 4)):
        for label, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 40, (40, 40, 3), generator=g)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_folder_dataset_with_val_split_and_measured_stats(image_tree, tmp_path):
    out = tmp_path / "folder-run"
    final = train(TrainConfig(dataset="folder", data=str(image_tree), epochs=1, batch_size=8, mask="none",
                              progress=False, out=str(out)))
    assert final["epochs"] == 1
    state = read_checkpoint(out)
    assert state["model_args"]["num_classes"] == 2 and state["model_args"]["stem"] == "cifar"
    assert state["model_args"]["mean"][0] > state["model_args"]["mean"][1]  # measured on the red/blue images


def test_streamed_imagenet_layout(image_tree, tmp_path):
    out = tmp_path / "imagenet-run"
    final = train(TrainConfig.from_dict(dict(dataset="imagenet", data=str(image_tree), epochs=1, batch_size=8,
                                             num_workers=0, mask="lateral", groups=8, train_limit=8, progress=False,
                                             out=str(out))))
    records = _jsonl(out / "metrics.jsonl")
    assert final["epochs"] == 1 and 0.0 <= final["test_acc"] <= 1.0
    assert records[0]["images_per_second"] > 0 and records[0]["mask_kept"]
    state = read_checkpoint(out)
    assert state["model_args"]["stem"] == "imagenet" and state["model_args"]["num_classes"] == 2


def test_tensorboard_without_the_package_is_an_error_before_anything_is_written(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without tensorboard
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"tensorboard.*pip install 'gradmask\[tensorboard\]'"):
        train(tiny(out, mask="none", epochs=1, tensorboard=True))
    assert not out.exists()


def test_progress_bar_and_tensorboard_under_the_logged_names(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = tiny(tmp_path, mask="lateral", epochs=1, train_limit=64, test_limit=32, progress=True,
                  tensorboard=True)
    train(config)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "test/loss", "test/acc", "test/top5", "train_eval/acc", "train/lr",
            "gradmask/kept/layer1.0", "gradmask/energy_kept/layer1.0", "time/epoch_seconds"} <= tags, sorted(tags)
    record = _jsonl(tmp_path / "metrics.jsonl")[0]
    assert events.Scalars("train/loss")[0].value == pytest.approx(record["train_loss"])
    assert events.Scalars("gradmask/kept/layer1.0")[0].value == pytest.approx(record["mask_kept"]["layer1.0"])
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "img/s" in err
    assert "\r" not in err      # not a terminal: the epoch's summary line, no bar fragments


def test_gsnr_probe_draws_a_fixed_random_subset_of_class_ordered_data():
    """Image files are stored class by class: the probe must not be the first N (one class)."""
    from types import SimpleNamespace

    from gradmask.train.gsnr_probe import gsnr_probe as _gsnr_probe
    labels = torch.arange(10).repeat_interleave(50)                     # class-ordered, 500 images
    images = (torch.arange(500, dtype=torch.float32) / 500).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    data = SimpleNamespace(streamed=False, train=SimpleNamespace(images=images, labels=labels))
    config = TrainConfig.from_preset("quick", gsnr_every=1, gsnr_samples=40)
    probe = _gsnr_probe(config, data)
    index = (probe.images[:, 0, 0, 0] * 500).round().long()
    assert probe.labels.shape == (40,) and index.unique().numel() == 40
    assert torch.equal(probe.labels, labels[index])                     # images and labels stay paired
    assert probe.labels.unique().numel() >= 5                           # first 40 would be one class
    assert torch.equal(_gsnr_probe(config, data).labels, probe.labels)  # the same set in every run


class _StopAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, ctx, record):
        if ctx.epoch == self.epoch:
            raise KeyboardInterrupt   # epoch computed, its checkpoint not written


def test_a_run_resumed_with_other_code_says_so_and_records_both(tmp_path, monkeypatch, capsys):
    import gradmask.train.engine as engine
    config = tiny(tmp_path / "run", epochs=2, train_limit=64, test_limit=32)
    monkeypatch.setattr(engine, "_version", lambda: "0.1.0+gaaaa")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_StopAfter(2)])
    assert read_checkpoint(tmp_path / "run")["trained_by"] == ["0.1.0+gaaaa"]
    monkeypatch.setattr(engine, "_version", lambda: "0.1.0+gbbbb.dirty")
    capsys.readouterr()
    final = train(config.replace(resume=True))
    err = capsys.readouterr().err
    assert "with code 0.1.0+gbbbb.dirty; its 1 finished epoch was trained by 0.1.0+gaaaa" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["gradmask_version"] == "0.1.0+gbbbb.dirty"
    assert saved["trained_by"] == final["trained_by"] == ["0.1.0+gaaaa", "0.1.0+gbbbb.dirty"]
    # resuming a run of older gradmask (no trained_by in its checkpoint) names its version
    assert engine._trained_by({"gradmask_version": "0.0.9", "epoch": 3}, engine.RunDir(tmp_path / "old")) == \
        ["0.0.9", "0.1.0+gbbbb.dirty"]


def test_a_run_stored_with_the_old_schedule_name_resumes_to_the_same_numbers(tmp_path):
    """A run written before "onecycle" was renamed "triangle" (config.json, the checkpoint's config and
    its LambdaLR state say "onecycle"), stopped after epoch 1, resumes under either name to the
    numbers of an uninterrupted run."""
    from gradmask.train.checkpoint import save_checkpoint

    whole = train(tiny(tmp_path / "whole", mask="lateral"))

    class Stop:
        def on_epoch_end(self, ctx, record):
            if ctx.epoch == 2:
                raise KeyboardInterrupt

    out = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        train(tiny(out, mask="lateral"), callbacks=[Stop()])
    state = read_checkpoint(out)
    assert state["epoch"] == 1
    state = {k: v for k, v in state.items() if k != "checksum"}
    state["config"]["schedule"] = "onecycle"
    for fn in state["scheduler"]["lr_lambdas"]:
        fn["kind"] = "onecycle"
    save_checkpoint(out / "checkpoint.pt", state)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "schedule": "onecycle"}))
    (out / ".gradmask.lock").unlink(missing_ok=True)

    resumed = train(tiny(out, mask="lateral").replace(schedule="onecycle", resume=True))
    for key in ("test_acc", "test_loss", "test_top5"):
        assert resumed[key] == whole[key], key
    assert _jsonl(out / "metrics.jsonl")[-1]["train_loss"] == _jsonl(tmp_path / "whole" / "metrics.jsonl")[-1][
        "train_loss"]
