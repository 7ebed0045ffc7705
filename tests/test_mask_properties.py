"""Property-based tests (hypothesis) of the mask's invariants on random shapes, modes, dtypes,
layouts, kernels, paddings and rates: agreement with the slow reference (tests/mask_reference.py),
the kept count per sample and set, independence of each sample from the rest of the batch,
invariance to scaling a sample by a positive constant, the gradient's shape / dtype / layout, and
non-finite values passing unchanged. Examples are derandomized (the same every run) and small."""
import math
from dataclasses import dataclass

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mask_reference import assert_agrees_except_near_ties, reference_mask

from gradmask import GradientMask
from gradmask.selection import kth_smallest_and_max

MODES = ["lateral", "norm", "pixel"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIDES = [1, 2, 3, 5, 8, 9, 12]  # 8x8 and smaller: dense LoG operator; 9x9, 12x12: banded / separable
LONG_MAPS = [(23, 23), (24, 40), (33, 33)]  # 529 and 960 positions: sorted halves; 1089: partition

property_settings = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@dataclass(frozen=True)
class Case:
    mode: str
    groups: int
    shape: tuple
    kernel: str
    kernel_size: int
    padding: str
    rate: float
    dtype: torch.dtype
    channels_last: bool
    seed: int
    exponents: tuple  # per sample: the gradient is randn * 2**exponent
    sparsity: float   # share of exact zeros (as after a ReLU)

    def mask(self) -> GradientMask:
        return GradientMask(groups=self.groups, mode=self.mode, kernel=self.kernel, kernel_size=self.kernel_size,
                            padding=self.padding, inhibition_rate=self.rate)

    def gradient(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        grad = torch.randn(self.shape, generator=generator, dtype=torch.float64)
        grad *= torch.tensor([2.0**e for e in self.exponents], dtype=torch.float64).view(-1, 1, 1, 1)
        grad[torch.rand(self.shape, generator=generator) < self.sparsity] = 0.0
        grad = grad.to(self.dtype)
        return grad.contiguous(memory_format=torch.channels_last) if self.channels_last else grad

    def reference(self, grad: torch.Tensor):
        return reference_mask(grad, self.groups, self.mode, self.rate, kernel=self.kernel, padding=self.padding,
                              size=self.kernel_size)

    @property
    def positions(self) -> int:
        return self.shape[2] * self.shape[3]


@st.composite
def cases(draw, max_exponent: int = 40) -> Case:
    mode = draw(st.sampled_from(MODES))
    groups = draw(st.sampled_from([1, 2, 4]))
    channels = groups * draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:  # one case in ten: the long rows of the order statistic
        n, (h, w) = 1, draw(st.sampled_from(LONG_MAPS))
    else:
        n, h, w = draw(st.integers(1, 3)), draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
    kernel_size = draw(st.sampled_from([3, 5]))
    reflect_fits = min(h, w) > kernel_size // 2
    padding = draw(st.sampled_from(["reflect", "zero"])) if reflect_fits else "zero"
    rate = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]) | st.floats(0.0, 1.0, exclude_max=True))
    dtype = draw(st.sampled_from(DTYPES))
    bound = min(max_exponent, 6) if dtype == torch.float16 else max_exponent
    exponents = tuple(draw(st.lists(st.integers(-bound, bound), min_size=n, max_size=n)))
    return Case(mode=mode, groups=groups, shape=(n, channels, h, w), kernel=draw(st.sampled_from(["log", "authors"])),
                kernel_size=kernel_size, padding=padding, rate=rate, dtype=dtype, channels_last=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)), exponents=exponents, sparsity=draw(st.sampled_from([0.0, 0.3])))


def keep_of(gm: GradientMask, grad: torch.Tensor) -> torch.Tensor:
    return gm.keep_map(grad).squeeze(2)  # (N, G, H, W)


@property_settings
@given(cases())
def test_agrees_with_the_slow_reference(case):
    grad = case.gradient()
    gm = case.mask()
    assert_agrees_except_near_ties(keep_of(gm, grad), case.reference(grad))
    assert torch.equal(gm(grad), grad * gm.mask(grad))


@property_settings
@given(cases())
def test_kept_count_per_sample_and_set(case):
    """Per (sample, set): ``n - k`` positions (``k = floor(q (n - 1)) + 1``) where the k-th and the
    next score differ, all positions above the k-th score in general, the positions at the maximum
    when none is above; never none; everything at rate 0."""
    grad = case.gradient()
    gm = case.mask()
    counts = keep_of(gm, grad).sum(dim=(2, 3))
    n = case.positions
    if case.rate == 0.0:
        assert (counts == n).all()
        return
    k = math.floor(case.rate * (n - 1)) + 1
    ordered = gm.scores(grad).flatten(2).sort(dim=2).values
    kth, largest = ordered[..., k - 1], ordered[..., -1]
    above = (ordered > kth[..., None]).sum(dim=2)
    at_max = (ordered == largest[..., None]).sum(dim=2)
    assert torch.equal(counts, torch.where(largest > kth, above, at_max))
    assert (counts >= 1).all()
    if k < n:
        distinct = ordered[..., k] > kth
        assert (counts[distinct] == n - k).all()
    result = gm.apply(grad)
    assert result.kept_fraction.item() == counts.sum().item() / counts.numel() / n


@property_settings
@given(cases(), st.data())
def test_each_sample_is_independent_of_the_rest_of_the_batch(case, data):
    grad = case.gradient()
    gm = case.mask()
    keep = keep_of(gm, grad)
    i = data.draw(st.integers(0, case.shape[0] - 1))
    assert torch.equal(keep_of(gm, grad[i:i + 1]), keep[i:i + 1])
    others = grad.clone()
    garbage = data.draw(st.sampled_from([math.nan, math.inf, 0.0, 1e30]))
    others[torch.arange(case.shape[0]) != i] = garbage
    assert torch.equal(keep_of(gm, others)[i], keep[i])


@property_settings
@given(cases(max_exponent=30), st.data())
def test_invariant_to_scaling_a_sample_by_a_power_of_two(case, data):
    """Exactly the same mask (the norms are scaled by powers of two before squaring, so no range
    limit of float32 applies within the dtype's own range)."""
    grad = case.gradient()
    i = data.draw(st.integers(0, case.shape[0] - 1))
    shift = data.draw(st.integers(-4, 4) if case.dtype == torch.float16 else st.integers(-60, 60))
    scaled = grad.clone()
    scaled[i] = (grad[i].double() * 2.0**shift).to(case.dtype)
    assume(torch.equal((scaled[i].double() * 2.0**-shift).to(case.dtype), grad[i]))  # the scaling was exact
    gm = case.mask()
    assert torch.equal(keep_of(gm, scaled), keep_of(gm, grad))


@property_settings
@given(cases(max_exponent=20), st.floats(1e-3, 1e3))
def test_scaling_a_sample_by_any_positive_constant_moves_only_near_ties(case, factor):
    assume(case.dtype in (torch.float32, torch.float64))  # other dtypes would re-round the values
    grad = case.gradient()
    scaled = (grad.double() * factor).to(case.dtype)
    reference = case.reference(grad)
    assert_agrees_except_near_ties(keep_of(case.mask(), scaled), reference, rtol=1e-4)


@property_settings
@given(cases())
def test_apply_keeps_shape_dtype_layout_and_input(case):
    grad = case.gradient()
    before = grad.clone()
    gm = case.mask()
    result = gm.apply(grad)
    out = result.gradient
    assert out.shape == grad.shape and out.dtype == grad.dtype and out.device == grad.device
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)
    assert torch.equal(grad, before) and out.data_ptr() != grad.data_ptr()
    assert torch.equal(out, grad * gm.mask(grad))
    keep = keep_of(gm, grad)
    assert result.maps == keep.shape[0] * keep.shape[1]
    assert result.kept_fraction.item() == keep.double().mean().item()
    assert result.nonfinite_maps.item() == 0 and 0 <= result.tied_maps.item() <= result.maps


@property_settings
@given(cases(max_exponent=20), st.data())
def test_nonfinite_values_pass_unchanged_and_the_rest_follows_the_reference(case, data):
    grad = case.gradient()
    n, c, h, w = case.shape
    count = data.draw(st.integers(1, 3))
    spots = [(data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, c - 1)), data.draw(st.integers(0, h - 1)),
              data.draw(st.integers(0, w - 1))) for _ in range(count)]
    for spot in spots:
        grad[spot] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    gm = case.mask()
    result = gm.apply(grad)
    bad = ~torch.isfinite(grad)
    out = result.gradient
    assert torch.equal(out[bad].isnan(), grad[bad].isnan())
    assert torch.equal(out[bad].nan_to_num(), grad[bad].nan_to_num())  # +-inf unchanged
    assert torch.isfinite(out[~bad]).all()
    assert torch.equal(out[~bad], (grad * gm.mask(grad))[~bad])
    keep = keep_of(gm, grad)
    per = 1 if case.mode == "pixel" else c // case.groups
    for i, ch, y, x in bad.nonzero().tolist():
        assert keep[i, ch // per, y, x]
    assert_agrees_except_near_ties(keep, case.reference(grad))
    bad_maps = bad.view(n, c // per, per, h, w).any(dim=(2, 3, 4))
    assert result.nonfinite_maps.item() == bad_maps.sum().item()


@property_settings
@given(st.sampled_from([1, 2, 7, 64, 256, 512, 513, 777, 1024, 1025, 2048]), st.integers(1, 40),
       st.sampled_from([torch.float32, torch.float64]), st.booleans(), st.data())
def test_kth_smallest_and_max_equal_kthvalue_and_amax(n, rows, dtype, nonnegative, data):
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1)))
    values = torch.randn(rows, n, generator=generator, dtype=dtype)
    values[:, ::5] = values[:, :1].clone()  # ties
    values[:, 1::7] = data.draw(st.sampled_from([0.0, -0.0, math.inf, -math.inf, 1e30]))
    if nonnegative:
        values = values.abs()
    k = data.draw(st.integers(1, n))
    kth, largest = kth_smallest_and_max(values, k, nonnegative=nonnegative)
    assert torch.equal(kth, values.kthvalue(k, dim=1, keepdim=True).values)
    assert torch.equal(largest, values.amax(dim=1, keepdim=True))
