"""The mechanism numbers of a comparison (fit, generalisation gap, energy kept, computed trends)
against hand-made runs, scipy's Welch interval and a by-hand change-score test."""
import json
from pathlib import Path

import pytest
from scipy import stats

from gradmask.compare.mechanism import arm_mechanism, arm_mechanisms, gap_change, mechanism_blocks, per_epoch
from gradmask.compare.report import Run


def run(seed, mask, fits, tests, losses, energy=None):
    metrics = [{"epoch": e + 1, "train_eval_acc": f, "test_acc": t, "train_loss": loss,
                "mask_kept": None if energy is None else {"a": 0.5, "b": 0.4},
                "mask_energy_kept": None if energy is None else {"a": energy, "b": energy - 0.1}}
               for e, (f, t, loss) in enumerate(zip(fits, tests, losses))]
    return Run(Path(f"/x/{mask}-seed{seed}"), {"mask": mask, "seed": seed}, metrics, {"test_acc": tests[-1]})


NONE = [run(0, "none", [0.80, 0.99], [0.70, 0.80], [1.0, 0.10]),
        run(1, "none", [0.82, 0.98], [0.71, 0.81], [1.1, 0.12]),
        run(2, "none", [0.81, 0.99], [0.69, 0.82], [1.0, 0.11])]
LATERAL = [run(0, "lateral", [0.70, 0.95], [0.65, 0.81], [1.3, 0.30], energy=0.9),
           run(1, "lateral", [0.72, 0.96], [0.66, 0.80], [1.2, 0.32], energy=0.8),
           run(2, "lateral", [0.71, 0.94], [0.64, 0.82], [1.3, 0.31], energy=0.85)]


def welch(a, b):
    return stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)


def test_fit_gap_and_differences_match_scipy():
    m = arm_mechanism("lateral", LATERAL, NONE)
    assert m.epoch == 2
    assert m.train_eval_acc.mean == pytest.approx(95.0)
    gaps = [100 * (r.metrics[-1]["train_eval_acc"] - r.metrics[-1]["test_acc"]) for r in LATERAL]
    assert m.generalisation_gap.mean == pytest.approx(sum(gaps) / 3)
    base_gaps = [100 * (r.metrics[-1]["train_eval_acc"] - r.metrics[-1]["test_acc"]) for r in NONE]
    ref = welch(gaps, base_gaps)
    d = m.versus_baseline["generalisation_gap"]
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high))
    loss = m.versus_baseline["train_loss"]
    ref = welch([r.metrics[-1]["train_loss"] for r in LATERAL], [r.metrics[-1]["train_loss"] for r in NONE])
    assert (loss.low, loss.high) == pytest.approx((ref.low, ref.high))
    assert m.energy_kept == pytest.approx({"a": 0.85, "b": 0.75}) and m.kept == pytest.approx({"a": 0.5, "b": 0.4})
    assert [e for e, _ in m.per_epoch_versus_baseline["test_acc"]] == [1, 2]
    assert arm_mechanism("none", NONE, None).versus_baseline is None
    json.dumps(m.to_json(), allow_nan=False)  # NaN-free JSON


def test_gap_change_is_a_welch_test_on_per_run_changes():
    c = gap_change(LATERAL, NONE, "test_acc", 1, 2)
    own = [100 * (r.metrics[1]["test_acc"] - r.metrics[0]["test_acc"]) for r in LATERAL]
    base = [100 * (r.metrics[1]["test_acc"] - r.metrics[0]["test_acc"]) for r in NONE]
    ref = welch(own, base)
    assert (c.change.low, c.change.high) == pytest.approx((ref.low, ref.high))
    # lateral − none: −5 points after epoch 1, 0 after epoch 2: the change excludes 0 and the gap narrowed
    assert c.gap_early.diff == pytest.approx(-5.0) and c.gap_late.diff == pytest.approx(0.0, abs=1e-9)
    assert ref.low > 0 and c.direction == "narrowed"
    assert "narrowed" in c.sentence("lateral", "none")
    flat = gap_change(NONE[:2], NONE[1:], "test_acc", 1, 2)
    assert flat.direction == "no change established" and "no change" in flat.sentence("x", "none")


def test_report_blocks_show_each_arm_and_no_trend_word_without_its_test():
    arms, changes = arm_mechanisms({"none": NONE, "lateral": LATERAL}, "none")
    blocks = mechanism_blocks(arms, changes, "none")
    text = json.dumps(blocks)
    assert "lateral" in text and "energy kept" in text
    for word in ("narrowed", "widened", "closes", "closing"):
        for b in blocks:
            if word in json.dumps(b):
                assert "CI" in json.dumps(b)  # only inside a computed sentence with its interval
    # runs without the new keys (published before them): no mechanism section, no error
    old = [Run(r.path, r.config, [{"epoch": 1, "test_acc": 0.5, "train_loss": 1.0}], r.final) for r in NONE]
    arms, changes = arm_mechanisms({"none": old}, "none")
    assert mechanism_blocks(arms, changes, "none") == [] and per_epoch(old, "train_eval_acc") == {}
