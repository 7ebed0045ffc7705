"""One naming of logged metrics (TensorBoard, Lightning) beside the files' flat keys."""
import pytest

from gradmask.train.rundir import METRIC_KEYS
from gradmask.util.metric_names import logged_scalars, metric_tag


def test_every_key_of_a_run_has_one_tag_in_the_convention():
    expected = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss", "test_acc": "test/acc",
                "test_top5": "test/top5", "val_acc": "val/acc", "train_eval_acc": "train_eval/acc",
                "train_eval_loss": "train_eval/loss", "lr": "train/lr", "inhibition_rate": "gradmask/inhibition_rate",
                "epoch_seconds": "time/epoch_seconds", "images_per_second": "time/images_per_second"}
    assert {k: metric_tag(k) for k in expected} == expected
    assert metric_tag("mask_kept", "layer1.0") == "gradmask/kept/layer1.0"
    assert metric_tag("mask_energy_kept", "model.3") == "gradmask/energy_kept/model.3"
    assert metric_tag("extra_metric") == "extra_metric"  # a callback's own key: as it is
    for key in METRIC_KEYS:
        if key not in ("epoch", "mask_kept", "mask_energy_kept"):
            assert "/" in metric_tag(key), key
    with pytest.raises(ValueError, match="target"):
        metric_tag("mask_kept")


def test_a_record_flattens_to_its_tags():
    record = {"epoch": 3, "train_loss": 1.5, "test_acc": 0.5, "mask_kept": {"a": 0.5, "b": None},
              "mask_energy_kept": None, "flag": True, "note": "x"}
    assert logged_scalars(record) == {"train/loss": 1.5, "test/acc": 0.5, "gradmask/kept/a": 0.5}
