"""The command line: every option's help states its default, options generated from the settings
(MaskSettings, TrainConfig), errors in the flags' own spelling, mask-stats defaults = train's."""
import argparse
import dataclasses

import pytest

import gradmask
from gradmask.cli import build_parser, main
from gradmask.cli.options import HelpFormatter
from gradmask.cli.train import config_from_args
from gradmask.settings import MaskSettings
from gradmask.train import TrainConfig


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_states_its_default_one_way():
    """Defaults are written one way, ``(default: X)``, by the HelpFormatter only: no help text states
    its own default ("(0.15) (default: 0.15)", "(default 0.5)", "default limap,..." before), every
    option that has one shows it exactly once, flags show none, and only repeatable options without
    a value (``--tune``, ``--data``) show nothing."""
    missing, hand_written, shown_twice = [], [], []
    for name, sub in _subparsers().items():
        formatter = HelpFormatter(name)
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(
                    action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)
            if "default" in (action.help or "").replace(" (default: %(default)s)", "").lower():
                hand_written.append((name, action.option_strings, action.help))
            if text.count("default:") > 1:
                shown_twice.append((name, action.option_strings, text))
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if flag:
                assert "(default: " not in text, (name, action.option_strings)
            elif "(default: " not in text and action.default != []:
                missing.append((name, action.option_strings))
    assert not hand_written, hand_written
    assert not shown_twice, shown_twice
    assert not missing, missing
    assert {"train", "mask-stats", "compare", "reproduce", "saliency", "sanity", "blur-eval", "robustness",
            "status"} <= set(_subparsers())
    saliency = " ".join(_subparsers()["saliency"].format_help().split())
    assert "share of pixels forming the box (default: 0.15)" in saliency
    assert "exclude images whose box covers more of the image (default: 0.5)" in saliency
    assert "comma-separated saliency methods (default: limap,gradcam,gradcam++)" in saliency


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"gradmask {gradmask.__version__}"


@pytest.mark.parametrize("argv,message", [
    (["--kernel-size", "4"], "argument --kernel-size: --kernel-size must be an odd integer >= 1 or 'full'"),
    (["--kernel-size", "x"], "--kernel-size must be an odd integer"),
    (["--groups", "0"], "argument --groups: --groups must be an integer >= 1"),
    (["--groups", "two"], "--groups must be an integer, got 'two'"),
    (["--sigma", "-1"], "--sigma must be a finite number > 0"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_option_values_are_named_by_their_flag(argv, message, capsys):
    for command in ("train", "mask-stats") if argv[0] != "--device" else ("train",):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_train_options_not_given_keep_the_preset_or_the_default():
    parse = build_parser().parse_args
    assert config_from_args(parse(["train"])) == TrainConfig()
    quick = TrainConfig.from_preset("quick")
    config = config_from_args(parse(["train", "--preset", "quick", "--groups", "8", "--kernel-size", "full",
                                     "--train-limit", "all", "--no-progress", "--nesterov"]))
    assert config == quick.replace(groups=8, kernel_size=None, train_limit=None, progress=False, nesterov=True)
    paper = config_from_args(parse(["train", "--preset", "paper"]))
    assert (paper.model, paper.mask_settings.groups) == ("resnet18", 16)


def test_mask_options_sit_together_and_follow_mask_settings():
    train = _subparsers()["train"]
    group = next(g for g in train._action_groups if g.title == "gradient mask")
    flags = {s for a in group._group_actions for s in a.option_strings}
    settings = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(MaskSettings) if f.name != "mode"}
    assert settings | {"--mask", "--targets", "--skip-last", "--inhibition-schedule"} <= flags


def test_mask_stats_defaults_are_trains():
    args = build_parser().parse_args(["mask-stats"])
    train = TrainConfig().to_dict()
    assert args.model == train["model"] and args.groups is None  # None: the model's, as in train
    for name in ("mask", "sigma", "kernel_size", "kernel", "padding", "inhibition_rate", "targets", "skip_last",
                 "seed"):
        assert getattr(args, name) == train[name], name
