"""Fault injection: what used to go silently wrong is refused, redone or reported clearly.

A finished run refuses a changed config (so does ``compare``, unless told to retrain);
``reproduce`` skips a step only when its outputs exist and verify; evaluations use the image size
the model was trained at; a full disk, a checkpoint of another shape, mixed image sizes and
empty inputs get clear errors before work starts."""
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import tiny

from gradmask.cli import main
from gradmask.compare import compare
from gradmask.reproduce import make_plan, reproduce, runner
from gradmask.reproduce import report as reproduce_report
from gradmask.train import TrainConfig, load_checkpoint, read_checkpoint, train
from gradmask.train.checkpoint import save_checkpoint
from gradmask.util.files import write_atomic


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    train(tiny(out))
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------ item 3: changed settings
def test_a_finished_run_refuses_a_changed_config(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "done")
    with pytest.raises(ValueError, match=r"finished run.*epochs \(run 1, now 10\).*lr \(run 0.05, now 0.5\)"):
        train(tiny(run, epochs=10, lr=0.5, resume=True))
    assert json.loads((run / "final.json").read_text())["epochs"] == 1
    assert train(tiny(run, resume=True, progress=True))["epochs"] == 1  # progress does not change results


@pytest.mark.slow
def test_compare_refuses_runs_trained_with_other_settings_and_retrains_them_when_asked(tmp_path):
    trained = []

    def counting(config):
        trained.append((config.out, config.epochs))
        return train(config)

    out = tmp_path / "cmp"
    compare(tiny(None), variants=("none",), seeds=1, out=out, train_fn=counting, log=None)
    assert len(trained) == 1
    with pytest.raises(ValueError, match=r"none-seed0.*epochs \(run 1, now 2\).*overwrite"):
        compare(tiny(None, epochs=2), variants=("none",), seeds=1, out=out, train_fn=counting, log=None)
    assert len(trained) == 1  # refused before anything trained
    compare(tiny(None, epochs=2, overwrite=True), variants=("none",), seeds=1, out=out, train_fn=counting, log=None)
    assert json.loads((out / "none-seed0" / "final.json").read_text())["epochs"] == 2
    compare(tiny(None, epochs=2), variants=("none",), seeds=1, out=out, train_fn=counting, log=None)  # as trained
    assert [e for _, e in trained] == [1, 2, 2]


def test_compare_report_titles_results_of_runs_that_differ(tmp_path):
    out = tmp_path / "mixed"
    for seed, lr in ((0, 0.05), (1, 0.04)):
        train(tiny(out / f"none-seed{seed}", seed=seed, lr=lr))
    main(["compare", "--report-only", "--variants", "none", "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "## Results (runs differ in lr" in md
    assert "in `mixed/`" in md and f"--out {out}`" in md  # the folder's name only inside code spans


# ------------------------------------------------------------------------------ item 5: reproduce
class FakeSteps:
    """Two steps in the reproduce runner: one trains two tiny runs, one measures them."""

    def __init__(self, out):
        self.out, self.trained, self.measured = out, [], 0

    def train_fn(self, config):
        """Train, recording the run's name once per epoch actually trained."""
        name = os.path.basename(config.out)
        return train(config, callbacks=[lambda ctx, record: self.trained.append(name)])

    def steps(self, plan, out, progress=False, train_fn=None, log=print, jobs=1):
        def train_step():  # what compare does, without its report
            runs = [self.out / "runs" / f"none-seed{s}" for s in (0, 1)]
            for s, run in enumerate(runs):
                self.train_fn(tiny(run, seed=s, resume=True))
            return {"runs": [str(p) for p in runs]}

        def measure():
            self.measured += 1
            models = [load_checkpoint(self.out / "runs" / f"none-seed{s}")[0] for s in (0, 1)]
            return {"weights": [float(m.fc.weight.detach().sum()) for m in models]}

        return [runner.Step("train-x", "train", {"n": 1}, train_step, training=True),
                runner.Step("measure", "measure", {"n": 1}, measure)]


@pytest.fixture
def fake_reproduce(tmp_path, monkeypatch):
    fake = FakeSteps(tmp_path)
    monkeypatch.setattr(runner, "steps", fake.steps)
    monkeypatch.setattr(reproduce_report, "write_report", lambda out: {"markdown": "-", "html": "-"})
    plan = make_plan("quick", seeds=1)
    return fake, lambda: reproduce(plan, tmp_path, log=lambda line: None)


def test_reproduce_trains_and_measures_again_what_was_deleted(fake_reproduce, tmp_path):
    fake, run = fake_reproduce
    assert run()["ran"] == ["train-x", "measure"] and fake.trained == ["none-seed0", "none-seed1"]
    assert run()["skipped"] == ["train-x", "measure"] and fake.measured == 1
    shutil.rmtree(tmp_path / "runs" / "none-seed1")
    result = run()
    assert result["ran"] == ["train-x", "measure"] and fake.trained[2:] == ["none-seed1"] and fake.measured == 2
    (tmp_path / "runs" / "none-seed0" / "final.json").unlink()  # unfinished now: resumed, not retrained
    result = run()
    assert result["ran"] == ["train-x"] and fake.trained[3:] == []
    assert result["skipped"] == ["measure"]  # its inputs, the checkpoints, did not change


def test_reproduce_accepts_step_files_written_before_checksums(fake_reproduce, tmp_path):
    fake, run = fake_reproduce
    run()
    for path in (tmp_path / "steps").glob("*.json"):  # as the code before checksums wrote them
        record = json.loads(path.read_text())
        for key in ("checksum", "outputs", "inputs"):
            record.pop(key, None)
        write_atomic(path, json.dumps(record, indent=1) + "\n")
    for ckpt in (tmp_path / "runs").glob("*/checkpoint.pt"):
        state = torch.load(ckpt, weights_only=True)
        state.pop("checksum")
        torch.save(state, ckpt)
    with pytest.warns(UserWarning, match="unverified"):
        assert run()["skipped"] == ["train-x", "measure"]
    assert fake.trained == ["none-seed0", "none-seed1"] and fake.measured == 1  # nothing trained again
    shutil.rmtree(tmp_path / "runs" / "none-seed0")
    assert run()["ran"] == ["train-x", "measure"] and fake.trained[2:] == ["none-seed0"]


def test_reproduce_measures_again_when_an_input_was_retrained(fake_reproduce, tmp_path):
    fake, run = fake_reproduce
    run()
    # the run retrained behind reproduce's back (same settings, e.g. after a manual --overwrite)
    train(tiny(tmp_path / "runs" / "none-seed1", seed=1, overwrite=True))
    result = run()
    assert result["skipped"] == [] and fake.measured == 2


# ------------------------------------------------------------------------------ item 7: evaluation size
def _xml_tree(root, size):
    """An ImageFolder tree with box XMLs (``--dataset xml``): val/<class>/<i>.png + <i>.xml."""
    for c, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        d = root / "val" / c
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(d / f"{i}.png")
            (d / f"{i}.xml").write_text(
                f"<annotation><size><width>{size}</width><height>{size}</height></size><object><name>{c}</name>"
                f"<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>{size // 2}</xmax><ymax>{size // 2}</ymax></bndbox>"
                f"</object></annotation>")
    for c, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_saliency_evaluates_at_the_training_image_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    root = _xml_tree(tmp_path / "boxes", 24)
    run = tmp_path / "run"
    train(TrainConfig(dataset="folder", data=str(root), epochs=1, batch_size=4, mask="none", progress=False,
                      out=str(run)))
    assert read_checkpoint(run)["model_args"]["image_size"] == 24
    assert main(["saliency", str(run), "--data", str(root), "--dataset", "xml", "--methods", "gradcam",
                 "--no-correct-only", "--out", str(tmp_path / "sal")]) == 0
    err = capsys.readouterr()
    assert "24 px" in err.out + err.err and "the training image size" in err.out + err.err
    setting = json.loads((tmp_path / "sal" / "localization.json").read_text())
    assert "24 px" in json.dumps(setting)
    assert main(["saliency", str(run), "--data", str(root), "--dataset", "xml", "--methods", "gradcam",
                 "--no-correct-only", "--image-size", "32", "--out", str(tmp_path / "sal32")]) == 0
    err = capsys.readouterr()
    assert "evaluating at 32 px (--image-size; the model trained at 24 px)" in err.err


# ------------------------------------------------------------------------------ clear errors
def test_resume_with_a_checkpoint_of_another_shape_names_the_parameters(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "shape")
    (run / "final.json").unlink()
    state = read_checkpoint(run)
    state["model"]["fc.weight"] = torch.zeros(3, state["model"]["fc.weight"].shape[1])
    state["model"]["fc.bias"] = torch.zeros(3)
    save_checkpoint(run / "checkpoint.pt", state)
    with pytest.raises(ValueError, match=r"checkpoint.pt.*fc.weight \(3, \d+\) in the checkpoint, \(10, \d+\)"):
        train(tiny(run, resume=True))
    with pytest.raises(ValueError, match="fc.bias"):
        load_checkpoint(run)


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(finished_run, tmp_path,
                                                                                    monkeypatch):
    import tempfile

    from gradmask.util import files
    path = tmp_path / "checkpoint.pt"
    shutil.copy(finished_run / "checkpoint.pt", path)
    before = path.read_bytes()
    real = tempfile.mkstemp

    def full_disk(**kw):  # the temporary file lands on a full device
        _, name = real(**kw)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(files.tempfile, "mkstemp", full_disk)
    with pytest.raises(OSError, match=rf"disk full while writing {path}.*keeps its previous content") as info:
        save_checkpoint(path, read_checkpoint(finished_run))
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_mixed_image_sizes_advise_an_option_that_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        for c, size in (("a", 8), ("b", 10)):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    args = ["train", "--dataset", "folder", "--data", str(root), "--epochs", "1", "--batch-size", "2",
            "--mask", "none", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "r1")]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "r2"), "--image-size", "8"]) == 0
    assert read_checkpoint(tmp_path / "r2")["model_args"]["image_size"] == 8


def test_a_training_split_smaller_than_one_batch_is_refused_before_training(tmp_path):
    root = tmp_path / "small"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / split / c / "0.png")
    with pytest.raises(ValueError, match=r"2 training images.*batch_size.*16"):
        train(TrainConfig(dataset="imagenet", data=str(root), epochs=1, batch_size=16, num_workers=0, mask="none",
                          progress=False, out=str(tmp_path / "run")))


@pytest.mark.parametrize("command", [["saliency", "RUN", "--batch-size", "0"], ["sanity", "RUN", "--batch-size", "0"],
                                     ["blur-eval", "RUN", "--batch-size", "0"], ["saliency", "RUN", "--images", "0"],
                                     ["blur-eval", "RUN", "--images", "0"], ["saliency", "RUN", "--image-size", "0"]])
def test_evaluation_options_are_validated_before_any_work(command, finished_run, tmp_path, capsys, monkeypatch):
    from gradmask.cli import saliency as saliency_cli
    monkeypatch.setattr(saliency_cli, "_load_model", lambda *a: pytest.fail("loaded a model before validating"))
    args = [str(finished_run) if a == "RUN" else a for a in command]
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    option = command[2]
    assert option in capsys.readouterr().err
