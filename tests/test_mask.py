"""GradientMask: the fast path against a per-sample loop with conv2d and torch.quantile."""
import math

import pytest
import torch
import torch.nn.functional as F
from mask_reference import reference_kernel

from gradmask import GradientMask


def reference_scores_and_masks(grad, groups, mode, kernel="log", padding="reflect", rate=0.5,
                               sigma=11.0, size=5):
    """Algorithm 1 for one sample at a time, one set at a time: returns (scores, thresholds, mask)."""
    k = reference_kernel(kernel, sigma, size).double()
    n, c, h, w = grad.shape
    sets = c if mode == "pixel" else groups
    per = c // sets
    scores = torch.empty(n, sets, h, w, dtype=torch.float64)
    thresholds = torch.empty(n, sets, dtype=torch.float64)
    mask = torch.empty(n, c, h, w, dtype=grad.dtype)
    for i in range(n):
        for s in range(sets):
            g = grad[i, s * per:(s + 1) * per].double()
            d = g.abs()[0] if mode == "pixel" else torch.sqrt((g**2).sum(0))
            if mode == "norm":
                delta = d
            else:
                x = d[None, None]
                x = F.pad(x, (size // 2,) * 4, mode="reflect" if padding == "reflect" else "constant")
                delta = F.conv2d(x, k[None, None])[0, 0].abs()
            q = torch.quantile(delta.flatten(), rate)
            scores[i, s], thresholds[i, s] = delta, q
            mask[i, s * per:(s + 1) * per] = (delta > q).to(grad.dtype)
    return scores, thresholds, mask


def assert_masks_agree_except_ties(mask, ref_mask, scores, thresholds, groups_of_channel):
    """Every disagreement sits at a score indistinguishable from the threshold."""
    differ = (mask != ref_mask).any(dim=1) if groups_of_channel is None else None
    n, c, h, w = mask.shape
    bad = (mask != ref_mask)
    if not bad.any():
        return
    idx = bad.nonzero()
    for i, ch, y, x in idx.tolist():
        s = ch // groups_of_channel
        gap = abs(scores[i, s, y, x] - thresholds[i, s]).item()
        assert gap <= 1e-5 * thresholds[i, s].abs().item() + 1e-12, (i, ch, y, x, gap)
    assert bad.float().mean() < 0.01, differ


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("shape", [(3, 8, 8, 8), (2, 8, 9, 9), (2, 4, 7, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_reference(mode, padding, shape, dtype, device):
    torch.manual_seed(sum(shape))
    grad = torch.randn(*shape, dtype=dtype)
    groups = 4 if shape[1] == 8 else 2
    gm = GradientMask(groups=groups, mode=mode, padding=padding)
    scores, thresholds, ref = reference_scores_and_masks(grad, groups, mode, padding=padding)
    mask = gm.mask(grad.to(device))
    assert mask.shape == grad.shape and mask.dtype == dtype and mask.device.type == device
    mask = mask.cpu()
    per = 1 if mode == "pixel" else shape[1] // groups
    assert_masks_agree_except_ties(mask, ref, scores, thresholds, per)
    torch.testing.assert_close(gm(grad.to(device)).cpu(), grad * mask, rtol=0, atol=0)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_authors_kernel_and_other_rates_equal_reference(rate):
    torch.manual_seed(1)
    grad = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    gm = GradientMask(groups=2, kernel="authors", inhibition_rate=rate)
    scores, thresholds, ref = reference_scores_and_masks(grad, 2, "lateral", kernel="authors", rate=rate)
    assert_masks_agree_except_ties(gm.mask(grad), ref, scores, thresholds, 4)


def test_authors_and_eq2_masks_differ_on_some_positions():
    torch.manual_seed(2)
    grad = torch.randn(8, 16, 16, 16)
    a = GradientMask(groups=4).mask(grad)
    b = GradientMask(groups=4, kernel="authors").mask(grad)
    differ = (a != b).float().mean().item()
    assert 0.01 < differ < 0.3


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75, 0.95])
@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
def test_kept_fraction_per_sample_and_set(rate, mode, device):
    torch.manual_seed(3)
    grad = torch.randn(3, 8, 12, 10).to(device)
    gm = GradientMask(groups=4, inhibition_rate=rate, mode=mode)
    keep = gm.keep_map(grad)
    n = 12 * 10
    expected = n if rate == 0 else n - 1 - math.floor(rate * (n - 1))
    counts = keep.sum(dim=(2, 3, 4))
    assert counts.shape == (3, 8 if mode == "pixel" else 4)
    # Up to ties: values equal to the threshold are all dropped together.
    scores = gm.scores(grad).flatten(2)
    threshold = scores.masked_fill(keep.flatten(2), -float("inf")).amax(dim=2) if rate else None
    ties = (scores == threshold.unsqueeze(2)).sum(dim=2) if rate else torch.ones_like(counts)
    assert (counts <= expected).all() and (counts >= expected - (ties - 1)).all()
    assert (counts == expected).float().mean() > 0.8


def test_channels_of_a_set_share_the_mask():
    grad = torch.randn(2, 12, 8, 8)
    mask = GradientMask(groups=3).mask(grad).view(2, 3, 4, 8, 8)
    assert (mask == mask[:, :, :1]).all()
    assert not (mask[:, 0] == mask[:, 1]).all()


def test_each_sample_mask_depends_only_on_its_gradient():
    torch.manual_seed(4)
    gm = GradientMask(groups=4)
    grad = torch.randn(5, 8, 9, 9)
    batch = gm.mask(grad)
    for i in range(5):
        assert torch.equal(gm.mask(grad[i:i + 1]), batch[i:i + 1])
    changed = grad.clone()
    changed[0] = torch.randn(8, 9, 9) * 100
    assert torch.equal(gm.mask(changed)[1:], batch[1:])


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
def test_channels_last_gives_same_mask_and_layout(mode, device):
    torch.manual_seed(5)
    grad = torch.randn(4, 32, 8, 8).to(device)
    gm = GradientMask(mode=mode)
    cl = grad.contiguous(memory_format=torch.channels_last)
    assert torch.equal(gm.mask(cl), gm.mask(grad))
    masked = gm(cl)
    assert torch.equal(masked, gm(grad))
    assert masked.is_contiguous(memory_format=torch.channels_last)


def test_bf16_gradient_masked_in_bf16(device):
    torch.manual_seed(6)
    grad = torch.randn(2, 32, 8, 8).bfloat16().to(device)
    gm = GradientMask()
    masked = gm(grad)
    assert masked.dtype == torch.bfloat16
    assert torch.equal(gm.mask(grad), gm.mask(grad.float()).bfloat16())


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5])
def test_apply_returns_the_masked_gradient_and_the_kept_fraction(mode, dtype, rate, device):
    """apply's in-place fast path (scores turned into the mask, pixel mode masking in that buffer)
    equals grad * mask(grad), and its kept fraction counts keep_map's positions."""
    torch.manual_seed(7)
    grad = torch.randn(3, 8, 9, 7).to(dtype).to(device)
    gm = GradientMask(groups=4, mode=mode, inhibition_rate=rate)
    before = grad.clone()
    result = gm.apply(grad)
    masked, kept_fraction = result.gradient, result.kept_fraction
    assert torch.equal(grad, before)  # the input is not written to
    assert masked.dtype == dtype and masked.data_ptr() != grad.data_ptr()
    assert torch.equal(masked, grad * gm.mask(grad))
    assert kept_fraction.dtype == torch.float64 and kept_fraction.dim() == 0
    assert kept_fraction.item() == gm.keep_map(grad).double().mean().item()
    assert (kept_fraction.item() == 1.0) == (rate == 0.0)


def test_mask_carries_no_autograd():
    grad = torch.randn(2, 16, 8, 8, requires_grad=True)
    mask = GradientMask().mask(grad)
    assert not mask.requires_grad and mask.grad_fn is None
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_rate_zero_keeps_everything():
    grad = torch.randn(2, 16, 8, 8)
    assert torch.equal(GradientMask(inhibition_rate=0.0)(grad), grad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=0), "groups"), (dict(groups=2.0), "groups"),
    (dict(inhibition_rate=1.0), r"inhibition_rate must be in \[0, 1\)"),
    (dict(inhibition_rate=-0.1), "inhibition_rate"), (dict(mode="channel"), "mode"),
    (dict(kernel_size=6), "kernel_size"), (dict(kernel_size=-1), "kernel_size"),
    (dict(padding="same"), "padding"), (dict(sigma=float("nan")), "sigma"),
])
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradientMask(**kwargs)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups=16 must divide the channel count C=24"):
        GradientMask(groups=16).mask(torch.randn(1, 24, 8, 8))
    GradientMask(groups=16, mode="pixel").mask(torch.randn(1, 24, 8, 8))  # groups unused


@pytest.mark.parametrize("bad", [torch.randn(2, 8, 8), torch.randn(1, 2, 8, 8, 8),
                                 torch.ones(1, 16, 8, 8, dtype=torch.long)])
def test_bad_gradient_raises(bad):
    with pytest.raises(ValueError, match=r"grad must be a floating-point tensor \(N, C, H, W\)"):
        GradientMask().mask(bad)


@pytest.mark.parametrize("mode", ["lateral", "norm"])
def test_half_precision_norms_are_squared_in_float32(mode, device):
    """fp16 gradients under a GradScaler reach 1e3-1e4: squaring them in fp16 gives inf."""
    torch.manual_seed(0)
    grad = (torch.randn(2, 32, 8, 8) * 300).half().to(device)
    gm = GradientMask(groups=4, mode=mode)
    assert torch.isfinite(gm.scores(grad)).all()
    assert torch.equal(gm.keep_map(grad), gm.keep_map(grad.float()))


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_energy_kept_is_the_share_of_the_squared_norm_kept(mode, dtype):
    torch.manual_seed(3)
    grad = torch.randn(4, 8, 9, 7).to(dtype)
    gm = GradientMask(groups=4, mode=mode, inhibition_rate=0.6)
    result = gm.apply(grad)
    ref = (grad.double() * gm.mask(grad).double()).square().sum() / grad.double().square().sum()
    assert result.energy_kept.dtype == torch.float64 and result.energy_kept.dim() == 0
    assert float(result.energy_kept) == pytest.approx(float(ref), rel=1e-5 if dtype != torch.bfloat16 else 1e-2)
    assert float(GradientMask(groups=4, mode=mode, inhibition_rate=0.0).apply(grad).energy_kept) == 1.0
    assert math.isnan(float(gm.apply(torch.zeros_like(grad)).energy_kept))
