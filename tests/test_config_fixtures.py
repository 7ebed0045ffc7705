"""Stored ``config.json`` forms (tests/fixtures/configs) load, write back today's flat dict, and resume.

The fixtures are copies of real run records: ``2026-11-30-*`` (no ``arm``, no ``train_eval_images``, no
checksum, the old schedule name ``onecycle``), ``2026-12-overfit-lateral`` (the running overfit
reproduction: ``arm`` None, a checksum, machine records) and ``2026-12-08-arm-lateral-sigma1`` (a
``gradmask compare --variants lateral@sigma=1`` run: ``arm`` with an override)."""
import json
import shutil
from pathlib import Path

import pytest

from gradmask.train import TrainConfig, read_checkpoint, train
from gradmask.train.checkpoint import save_checkpoint
from gradmask.train.config import SCHEDULE_ALIASES
from gradmask.train.rundir import RunDir

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
NAMES = sorted(p.name for p in FIXTURES.glob("*.json"))
RECORD_KEYS = ("gradmask_version", "trained_by", "checksum", "machine")  # written beside the config
ADDED_SINCE = {"arm": None, "train_eval_images": 2000}  # what a config.json without these keys reads as


def _stored(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_there_are_fixtures_of_every_stored_form():
    forms = [_stored(name) for name in NAMES]
    assert any("arm" not in f and "train_eval_images" not in f and "checksum" not in f for f in forms)
    assert any(f.get("schedule") == "onecycle" for f in forms)
    assert any("checksum" in f and "arm" in f for f in forms)
    assert any(str(f.get("arm")).startswith("lateral@") for f in forms)


@pytest.mark.parametrize("name", NAMES)
def test_a_stored_config_round_trips_to_the_same_flat_dict(name):
    stored = _stored(name)
    config = TrainConfig.from_dict(stored)
    expected = {**ADDED_SINCE, **{k: v for k, v in stored.items() if k not in RECORD_KEYS}}
    expected["schedule"] = SCHEDULE_ALIASES.get(expected["schedule"], expected["schedule"])
    written = json.loads(json.dumps(config.to_dict()))
    assert written == expected
    # today's keys in today's order (the checksummed current form)
    current = [k for k in _stored("2026-12-overfit-lateral.json") if k not in RECORD_KEYS]
    assert list(written) == current
    assert TrainConfig.from_dict(written) == config


@pytest.mark.parametrize("name", ["2026-12-overfit-lateral.json", "2026-12-08-arm-lateral-sigma1.json"])
def test_a_checksummed_config_json_verifies_and_reads(tmp_path, name):
    shutil.copy(FIXTURES / name, tmp_path / "config.json")
    assert RunDir(tmp_path).read_config() == TrainConfig.from_dict(_stored(name))


def test_a_run_written_in_the_old_flat_form_resumes(tmp_path):
    """A run stopped after epoch 1 whose config.json and checkpoint hold the 2026-11-30 form (only its
    keys, "onecycle", no checksum in config.json) resumes to epoch 2 and is then written in today's form."""
    config = TrainConfig.from_dict(dict(train_limit=64, test_limit=32, synthetic_train=64, synthetic_test=32,
                                        epochs=2, batch_size=32, lr=0.05, schedule="triangle", mask="lateral",
                                        progress=False, out=str(tmp_path / "run")))

    class Stop:
        def on_epoch_end(self, ctx, record):
            if ctx.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Stop()])
    old_keys = [k for k in _stored("2026-11-30-cifar10-lateral.json") if k not in RECORD_KEYS]

    def old_form(flat: dict) -> dict:
        return {**{k: flat[k] for k in old_keys if k in flat}, "schedule": "onecycle"}

    out = tmp_path / "run"
    state = {k: v for k, v in read_checkpoint(out).items() if k != "checksum"}
    state["config"] = old_form(state["config"])
    for fn in state["scheduler"]["lr_lambdas"]:
        fn["kind"] = "onecycle"
    save_checkpoint(out / "checkpoint.pt", state)
    (out / "config.json").write_text(json.dumps(old_form(json.loads((out / "config.json").read_text()))))
    (out / ".gradmask.lock").unlink(missing_ok=True)

    epochs = []
    resumed = config.replace(resume=True)
    final = train(resumed, callbacks=[lambda ctx, record: epochs.append(ctx.epoch)])
    assert epochs == [2] and final["epochs"] == 2
    written = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in written.items() if k not in RECORD_KEYS} == json.loads(json.dumps(resumed.to_dict()))


def test_the_command_line_builds_the_stored_configs():
    """``gradmask train ARGV`` -> the flat config recorded in fixtures/cli-train-configs.json (14 argv, keyed by
    the argv joined by spaces; written by issue 23's snapshot_cli.py at ea27df6)."""
    from gradmask.cli import build_parser
    from gradmask.cli.train import config_from_args

    expected = json.loads((FIXTURES.parent / "cli-train-configs.json").read_text())
    for key, flat in expected.items():
        argv = [] if key == "(none)" else key.split(" ")
        config = config_from_args(build_parser().parse_args(["train", *argv]))
        assert json.loads(json.dumps(config.to_dict())) == flat, key


def test_resuming_with_other_settings_names_the_options_to_pass(tmp_path):
    """A run started with --groups 8, resumed without --groups (the model's 4): refused, naming the stored value
    and the option that asks for it."""
    flat = dict(train_limit=64, test_limit=32, synthetic_train=64, synthetic_test=32, epochs=1, batch_size=32,
                train_eval_images=0, progress=False, out=str(tmp_path / "run"))
    train(TrainConfig.from_dict({**flat, "groups": 8, "nesterov": True}))
    expected = (r"differs in nesterov \(run True, now False\), groups \(run 8, now 4\); "
                r"use the run's settings \(--nesterov / nesterov=True, --groups 8 / groups=8\)")
    with pytest.raises(ValueError, match=expected):
        train(TrainConfig.from_dict({**flat, "resume": True}))
