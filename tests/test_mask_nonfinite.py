"""The mask's rules for non-finite gradients, extreme magnitudes and ties, each a fault injection
that the mask of commit 85e7bef failed: one NaN zeroed its map or dropped its neighbours, +inf came
out as NaN, bf16 near 1e30 / float32 near 1e20 / float32 near 1e-25 gave all-zero outputs, 1x1,
constant and zero maps kept nothing, stats() did not report such events, a bad ``groups`` surfaced
only at the first backward, and ``inhibition_rate`` could not be validated between steps."""
import math

import pytest
import torch
from mask_reference import assert_agrees_except_near_ties, reference_mask
from torch import nn

import gradmask
from gradmask import GradientMask
from gradmask.laplacian import LoGFilter
from gradmask.mask import _sample_scales

MODES = ["lateral", "norm", "pixel"]


class _EditGradient(torch.autograd.Function):
    """Identity forward; backward passes a copy of the gradient through ``edit`` (in place)."""

    @staticmethod
    def forward(ctx, x, edit):
        ctx.edit = edit
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        ctx.edit(g)
        return g, None


def edit_gradient(x, edit):
    """``x`` unchanged, with ``edit(grad)`` applied in place to the gradient flowing back to it."""
    return _EditGradient.apply(x, edit)


def masked_and_keep(gm, grad):
    """(apply's result, keep (N, G, H, W))."""
    return gm.apply(grad), gm.keep_map(grad).squeeze(2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", [8, 32])  # the dense matrix LoG and the compiled banded one
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_gradient_passes_unchanged_and_the_rest_is_masked_as_documented(mode, side, value):
    torch.manual_seed(side)
    grad = torch.randn(2, 8, side, side)
    grad[0, 1, 5, 6] = value
    gm = GradientMask(groups=4, mode=mode)
    result, keep = masked_and_keep(gm, grad)
    out = result.gradient[0, 1, 5, 6].item()
    assert (math.isnan(out) and math.isnan(value)) or out == value  # +inf no longer comes out as NaN
    assert keep[0, 1 if mode == "pixel" else 0, 5, 6]
    reference = reference_mask(grad, 4, mode, 0.5)
    assert_agrees_except_near_ties(keep, reference)
    # the map keeps its quota: n - 1 - floor(q (n - 1)) positions, the non-finite one among them
    n = side * side
    assert keep[0, 1 if mode == "pixel" else 0].sum() == n - 1 - math.floor(0.5 * (n - 1))
    finite = torch.isfinite(grad)
    assert torch.equal(result.gradient[finite], (grad * gm.mask(grad))[finite])
    assert result.nonfinite_maps.item() == 1 and result.tied_maps.item() == 0


@pytest.mark.parametrize("mode", MODES)
def test_neighbours_of_a_nan_keep_the_mask_of_a_zero_minicolumn(mode):
    """The LoG reads the non-finite minicolumn as 0: away from it (outside the 5x5 window) the
    scores are those of the gradient with that minicolumn zeroed; the threshold moves by one rank."""
    torch.manual_seed(1)
    grad = torch.randn(1, 4, 32, 32)
    grad[0, 0, 10, 10] = math.nan
    zeroed = grad.clone()
    zeroed[0, :1 if mode == "pixel" else 2, 10, 10] = 0.0  # the value, or its minicolumn (set 0: channels 0-1)
    gm = GradientMask(groups=2, mode=mode)
    scores, zero_scores = gm.scores(grad), gm.scores(zeroed)
    assert scores[0, 0, 10, 10] == math.inf
    reached = torch.zeros(32, 32, dtype=torch.bool)  # where the NaN may change a score
    if mode == "norm":
        reached[10, 10] = True
    else:
        reached[8:13, 8:13] = True  # the 5x5 window
    assert torch.equal(scores[0, 0][~reached], zero_scores[0, 0][~reached])
    assert torch.equal(scores[0, 0][reached & torch.isfinite(scores[0, 0])],
                       zero_scores[0, 0][reached & torch.isfinite(scores[0, 0])])
    assert torch.equal(scores[:, 1:], zero_scores[:, 1:])  # other sets untouched


@pytest.mark.parametrize("mode", MODES)
def test_inf_gradient_stays_nonfinite_for_the_scaler(mode):
    """GradScaler-style check after the hook: a step with an inf gradient at a target is still
    non-finite after masking (the scaler skips it), and the inf itself arrives unchanged."""
    torch.manual_seed(2)

    def set_inf(g):
        g[1, 2, 4, 4] = math.inf

    target, head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    seen = []
    gm = GradientMask(groups=4, mode=mode)
    with gradmask.attach(target, gm, targets=[target]):
        target.register_forward_hook(lambda m, i, o: o.register_hook(seen.append) and None)
        out = head(edit_gradient(target(torch.randn(2, 3, 8, 8)), set_inf))
        params = [p for p in (*target.parameters(), *head.parameters())]
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        optimizer = torch.optim.SGD(params, lr=0.1)
        before = [p.detach().clone() for p in params]
        scaler.scale(out.square().mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    (masked,) = seen
    assert masked[1, 2, 4, 4] == math.inf and not torch.isfinite(masked).all()
    assert (masked == 0).any()  # the rest was masked
    assert not torch.isfinite(target.weight.grad).all()
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # the step was skipped
    assert scaler.get_scale() < 2.0**8


@pytest.mark.parametrize("mode", ["lateral", "norm"])
@pytest.mark.parametrize("dtype,magnitude", [(torch.bfloat16, 1e30), (torch.float32, 1e20), (torch.float32, 1e-25),
                                             (torch.float64, 1e160)])
def test_extreme_magnitudes_give_the_mask_of_ordinary_ones(mode, dtype, magnitude):
    """Squares of bf16 near 1e30 / float32 near 1e20 overflowed float32 (all-zero output), those of
    float32 near 1e-25 underflowed (every score 0); scaled by a power of two they cannot."""
    torch.manual_seed(3)
    shift = round(math.log2(magnitude))
    ordinary = torch.randn(3, 16, 8, 8, dtype=torch.float64).to(dtype)
    extreme = (ordinary.double() * 2.0**shift).to(dtype)
    assert torch.equal((extreme.double() * 2.0**-shift).to(dtype), ordinary)  # the scaling was exact
    gm = GradientMask(groups=4, mode=mode)
    result = gm.apply(extreme)
    assert torch.equal(gm.keep_map(extreme), gm.keep_map(ordinary))
    assert result.kept_fraction.item() == (64 - 1 - math.floor(0.5 * 63)) / 64
    assert result.tied_maps.item() == 0 and result.nonfinite_maps.item() == 0
    assert torch.equal(result.gradient, extreme * gm.mask(ordinary))


def test_scores_keep_their_units_and_overflow_to_inf():
    torch.manual_seed(4)
    grad = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    for mode in MODES:
        gm = GradientMask(groups=2, mode=mode, padding="zero")
        _, scores, _ = reference_mask(grad, 2, mode, 0.5, padding="zero")
        expected = scores.square() if mode == "norm" else scores  # norm mode scores squared norms
        torch.testing.assert_close(gm.scores(grad), expected, rtol=1e-12, atol=0)
    big = (torch.randn(2, 8, 6, 6) * 1e30).bfloat16()
    assert torch.isinf(GradientMask(groups=2, mode="norm").scores(big)).all()  # (1e30)**2 > float32 max
    assert torch.isfinite(GradientMask(groups=2).scores(big)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_maps_without_a_position_above_the_threshold_are_kept(mode, rate):
    """Ties: 1x1 maps, all-zero maps and (norm mode) constant maps kept 0% of their positions."""
    gm = GradientMask(groups=2, mode=mode, padding="zero", inhibition_rate=rate)
    for grad in (torch.randn(3, 4, 1, 1), torch.zeros(3, 4, 6, 5)):
        result = gm.apply(grad)
        assert result.kept_fraction.item() == 1.0 and result.tied_maps.item() == result.maps
        assert torch.equal(result.gradient, grad)
    constant = torch.full((2, 4, 7, 7), 3.0)
    if mode == "norm":
        assert gm.keep_map(constant).all()
    assert gm.keep_map(constant).sum(dim=(2, 3, 4)).min() > 0  # never a whole map wiped


def test_ties_below_the_maximum_are_still_dropped_together():
    """A map whose threshold ties with many positions but has positions above it: those above are
    kept, all tied ones dropped (the rule changes nothing there)."""
    grad = torch.zeros(1, 1, 4, 4)
    grad[0, 0, 0, :3] = torch.tensor([1.0, 2.0, 3.0])
    keep = GradientMask(groups=1, mode="norm", inhibition_rate=0.5).keep_map(grad)[0, 0, 0]
    assert keep.sum() == 3 and keep[0, :3].all()
    result = GradientMask(groups=1, mode="norm", inhibition_rate=0.5).apply(grad)
    assert result.tied_maps.item() == 0


def test_zero_rate_counts_nonfinite_maps_and_keeps_everything():
    grad = torch.randn(2, 8, 5, 5)
    grad[1, 3, 0, 0] = math.nan
    grad[1, 6, 2, 2] = -math.inf
    for mode, maps in (("lateral", 2), ("pixel", 2), ("norm", 1)):
        result = GradientMask(groups=2 if mode != "norm" else 1, mode=mode, inhibition_rate=0.0).apply(grad)
        assert result.nonfinite_maps.item() == maps and result.tied_maps.item() == 0
        assert torch.equal(result.gradient.nan_to_num(), grad.nan_to_num())


def small_net(channels=8):
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 4, 3, padding=1))


def test_stats_count_nonfinite_and_tied_maps():
    net = small_net()

    def nan_and_zero(g):  # sample 0 gets a NaN, sample 2 a zero gradient
        g[0, 5, 1, 1] = math.nan
        g[2] = 0.0

    with gradmask.attach(net, GradientMask(groups=2), targets=["0"]) as handle:
        x = torch.randn(3, 3, 6, 6)
        for _ in range(2):
            net[2](net[1](edit_gradient(net[0](x), nan_and_zero))).sum().backward()
        stats = handle.stats()["0"]
        assert stats["maps"] == 2 * 3 * 2 and stats["nonfinite_maps"] == 2 and stats["tied_maps"] == 2 * 2
        handle.reset_stats()
        assert handle.stats()["0"]["nonfinite_maps"] == 0 and handle.stats()["0"]["maps"] == 0


def test_groups_not_dividing_the_channels_fail_at_the_first_forward():
    net = small_net(channels=6)
    with gradmask.attach(net, GradientMask(groups=4), targets=["0"]):
        with torch.no_grad(), pytest.raises(ValueError, match=r"target '0' \(Conv2d\): groups=4 must divide "
                                                               r"the channel count C=6"):
            net(torch.randn(1, 3, 5, 5))
    with gradmask.attach(net, GradientMask(groups=4, mode="pixel"), targets=["0"]):
        net(torch.randn(1, 3, 5, 5))  # pixel mode ignores groups


def test_inhibition_rate_can_change_between_steps_and_is_validated():
    net = small_net()
    gm = GradientMask(groups=2, inhibition_rate=0.5)
    x, upstream = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)  # a dense gradient at the target
    with gradmask.attach(net, gm, targets=["2"]) as handle:
        kept = []
        for rate in (0.25, 0.75, 0.0):
            gm.inhibition_rate = rate
            handle.reset_stats()
            (net(x) * upstream).sum().backward()
            kept.append(handle.stats()["2"]["kept_fraction"])
    assert kept == [(64 - 1 - math.floor(r * 63)) / 64 if r else 1.0 for r in (0.25, 0.75, 0.0)]
    for bad in (1.0, -0.1, math.nan, True, "0.5", None):
        with pytest.raises(ValueError, match=r"inhibition_rate must be in \[0, 1\)"):
            gm.inhibition_rate = bad
    assert gm.inhibition_rate == 0.0 and isinstance(gm.inhibition_rate, float)


@pytest.mark.parametrize("shape,dtype,banded", [((5, 16, 16), torch.float32, True), ((5, 16, 16), torch.float32, False),
                                               ((5, 8, 8), torch.float32, True), ((5, 16, 16), torch.float64, True),
                                               ((5, 16, 16), torch.bfloat16, True)])
@pytest.mark.parametrize("abs_flags", [(True, True), (False, False)])
def test_log_isolates_nonfinite_values_on_every_path(shape, dtype, banded, abs_flags):
    """The compiled banded filter, the compiled helpers of the matrix products (8x8: dense operator)
    and the torch fallback (float64, bf16 -> float32 is compiled again) agree: +inf at the
    non-finite positions, elsewhere the filter of the input with them set to 0."""
    torch.manual_seed(6)
    maps = torch.randn(shape).to(dtype)
    maps[0, 2, 3], maps[1, 0, 0], maps[4, -1, -1] = math.nan, math.inf, -math.inf
    f = LoGFilter(banded=banded)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    abs_input, abs_output = abs_flags
    out = f(maps, dtype=compute, abs_input=abs_input, abs_output=abs_output, isolate_nonfinite=True)
    bad = ~torch.isfinite(maps)
    zeroed = f(maps.masked_fill(bad, 0.0), dtype=compute, abs_input=abs_input, abs_output=abs_output)
    assert (out[bad] == math.inf).all() and torch.isfinite(out[~bad]).all()
    assert torch.equal(out[~bad], zeroed[~bad])


def test_sample_scales_compiled_equal_torch():
    """One compiled pass per block gives the same powers of two as amax/amin in torch: zero,
    subnormal, huge, NaN and inf samples, float32 and bf16, contiguous and channels_last."""
    gm = GradientMask(groups=2)
    torch.manual_seed(7)
    grad = torch.randn(9, 4, 3, 3) * torch.tensor([1e-44, 1e-30, 1.0, 1e30, 2e37, 0, 1, 1, 2.0**-126]).view(-1, 1, 1, 1)
    grad[6, 1, 1, 1], grad[7, 0, 0, 0] = math.nan, -math.inf
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            g = grad.to(dtype).contiguous(memory_format=layout)
            squared, scales = gm._squared_norms(g, torch.float32, False)
            generic_squared, generic_scales = gm._squared_norms(g, torch.float32, True)  # CUDA's: uncompiled
            assert torch.equal(scales, _sample_scales(g, torch.float32)) and torch.equal(scales, generic_scales)
            assert torch.equal(squared.nan_to_num(), generic_squared.nan_to_num())
            assert scales[6] == scales[7] == 1.0 and scales[5] == 2.0**48
            assert (scales.log2() == scales.log2().round()).all()
