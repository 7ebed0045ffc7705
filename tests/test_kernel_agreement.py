"""benchmarks/kernel_agreement.py: the box-blur mask against scipy and a slow per-map quantile loop,
the agreement figures, the LoG taps it reports, and one tiny run end to end."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gradmask

scipy_ndimage = pytest.importorskip("scipy.ndimage")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_agreement.py"
sys.path.insert(0, str(SCRIPT.parent))
import kernel_agreement as ka  # noqa: E402


def slow_box_blur_keep(grad: torch.Tensor, groups: int, rate: float, size: int, mode: str) -> torch.Tensor:
    """Per sample and set: the norm map by a loop over channels, scipy's uniform_filter, then
    torch.quantile and GradientMask's tie rule (keep the maximum when nothing is above the threshold)."""
    n, c, h, w = grad.shape
    per_set = c // groups
    out = torch.zeros(n, groups, h, w, dtype=torch.bool)
    for i in range(n):
        for k in range(groups):
            squares = np.zeros((h, w))
            for ch in range(k * per_set, (k + 1) * per_set):
                squares += grad[i, ch].double().numpy() ** 2
            blurred = torch.from_numpy(scipy_ndimage.uniform_filter(np.sqrt(squares), size=size, mode=mode))
            q = torch.quantile(blurred.flatten(), rate)
            keep = blurred > q
            out[i, k] = keep if keep.any() else blurred == blurred.max()
    return out


@pytest.mark.parametrize("padding, mode", [("reflect", "mirror"), ("zero", "constant")])
@pytest.mark.parametrize("size, shape", [(5, (2, 3, 7, 9)), (3, (1, 4, 5, 5)), (5, (3, 8, 8))])
def test_box_blur_matches_scipy_uniform_filter(padding, mode, size, shape):
    # gradmask's "reflect" mirrors without repeating the edge: scipy's "mirror" (scipy's "reflect" repeats it)
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = scipy_ndimage.uniform_filter(maps.numpy(), size=(1,) * (maps.dim() - 2) + (size, size), mode=mode)
    torch.testing.assert_close(ka.box_blur(maps, size, padding), torch.from_numpy(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("groups, rate, shape", [(4, 0.5, (3, 8, 6, 7)), (2, 0.3, (2, 6, 8, 8)),
                                                 (1, 0.9, (1, 3, 5, 5))])
def test_box_blur_keep_matches_slow_quantile_loop(groups, rate, shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    expected = slow_box_blur_keep(grad, groups, rate, 5, "mirror")
    assert torch.equal(ka.box_blur_keep(grad, groups, rate), expected)


def test_box_blur_keep_tie_rule_keeps_constant_and_zero_maps_whole():
    grad = torch.ones(2, 4, 6, 6)
    grad[1] = 0.0
    keep = ka.box_blur_keep(grad, 2, 0.5)
    assert keep.all()
    assert torch.equal(keep, slow_box_blur_keep(grad, 2, 0.5, 5, "mirror"))


@pytest.mark.parametrize("mode", ["lateral", "norm"])
def test_keep_of_scores_is_the_gradient_masks_rule(mode):
    grad = torch.randn(4, 8, 9, 10, generator=torch.Generator().manual_seed(3))
    grad[1, :4] = 1.0  # a constant set: the tie rule
    gm = gradmask.GradientMask(groups=2, mode=mode, inhibition_rate=0.5)
    assert torch.equal(ka.keep_of_scores(gm.scores(grad), 0.5), gm.keep_map(grad)[:, :, 0])


def test_a_wide_log_is_a_box_blur():
    # eq. (2) with sigma >> window: all taps equal up to 1e-8, so |LoG(norms)| ranks like the box blur
    grad = torch.randn(4, 8, 12, 12, generator=torch.Generator().manual_seed(4))
    wide = gradmask.GradientMask(groups=4, sigma=1e4, kernel_size=5, inhibition_rate=0.5)
    assert ka.agreement(wide.keep_map(grad)[:, :, 0], ka.box_blur_keep(grad, 4, 0.5)) > 0.99


def test_agreement_identical_complement_and_matrix():
    a = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)) > 0.5
    b = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(6)) > 0.5
    assert ka.agreement(a, a) == 1.0
    assert ka.agreement(a, ~a) == 0.0
    assert ka.agreement(a, b) == pytest.approx((a == b).sum().item() / a.numel())
    matrix = ka.agreement_matrix([a, b, ~a])
    assert np.array_equal(matrix, matrix.T)
    assert np.array_equal(np.diag(matrix), np.ones(3))
    assert matrix[0, 1] == ka.agreement(a, b) and matrix[0, 2] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        ka.agreement(a, a[:1])


def test_taps_of_eq2():
    wide, narrow = ka.log_taps(11.0), ka.log_taps(1.0)
    scaled = wide / np.abs(wide).max()
    assert (wide < 0).all() and scaled.max() < -0.93 and scaled.min() == -1.0
    assert wide[2, 2] == wide.min() and scaled[0, 0] == pytest.approx(-(1 - 8 / 242) * math.exp(-8 / 242))
    assert narrow[2, 2] < 0 and (narrow[0] > 0).all()  # a negative centre and a positive surround
    assert ka.zero_crossing(11.0) == pytest.approx(15.556, abs=1e-3)


def test_tiny_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "agreement.json"
    ka.main(["--batches", "2", "--batch-size", "4", "--train-images", "8", "--json", str(out)])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "synthetic" in result["data"] and "synthetic" in printed
    assert [p["name"] for p in result["phases"]] == ["init", "trained"]
    for phase in result["phases"]:
        rows = phase["targets"]
        assert [r["target"] for r in rows] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                                               "layer3.1", "all"]
        for row in rows:
            assert set(row["agreement"]) == {f"{a}~{b}" for a, b in ka.PAIRS}
            for spread in row["agreement"].values():
                assert 0.0 <= spread["low"] <= spread["mean"] <= spread["high"] <= 1.0
            assert all(k["mean"] == 0.5 for k in row["kept"].values())  # even maps: exactly half kept
    assert "| layer1.0 | 32x32 | 4 |" in printed


def test_bad_arguments_are_refused_before_work(capsys):
    with pytest.raises(SystemExit):
        ka.main(["--rate", "1.5"])
    assert "--rate must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--groups 3 must divide the 16 channels"):
        ka.main(["--groups", "3"])
