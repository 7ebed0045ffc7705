"""The operator ``torch.ops.gradmask.mask``: opcheck, the same results as the mask's pieces, empty
batches, and the device-generic path (the one CUDA takes) against the CPU fast path on CPU tensors."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from mask_reference import grads
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradmask
from gradmask import GradientMask
from gradmask.laplacian import LoGFilter
from gradmask.mask import force_device_generic
from gradmask.selection import kth_smallest_and_max

OP = torch.ops.gradmask.mask.default
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def gradient(shape, dtype=torch.float32, layout="contiguous", seed=0, nonfinite=True, ties=True):
    """A gradient ``shape`` (N, C, H, W) with a NaN and an inf (``nonfinite``), an all-zero sample set
    and a constant map (``ties``), laid out contiguous, channels_last or as a ViT's patch tokens
    ``(N, T, D)`` seen as a map (strided, not dense: one prefix token)."""
    n, c, h, w = shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if nonfinite and n * h * w > 1:
        g[0, 0, 0, min(1, w - 1)] = math.nan
        g[-1, c - 1, h - 1, 0] = math.inf
    if ties and n:
        g[-1, : c // 2] = 0.0
        g[0, c // 2:] = 0.25
    g = g.to(dtype)
    if layout == "channels_last":
        return g.contiguous(memory_format=torch.channels_last)
    if layout == "tokens":
        tokens = torch.zeros(n, 1 + h * w, c, dtype=dtype)
        tokens[:, 1:] = g.flatten(2).transpose(1, 2)
        return tokens[:, 1:].transpose(1, 2).unflatten(2, (h, w))
    return g


def same(a, b):
    """Equal values (NaN where the other has NaN)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])


def op_args(gm, grad):
    return (grad, gm._rate, gm.groups, gm.sigma, gm.kernel_size, gm.kernel, gm.padding, gm.mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens"])
def test_opcheck(dtype, layout):
    """Schema, fake implementation (shapes, dtypes, strides), AOT dispatch with dynamic shapes. The
    last compares outputs without ``equal_nan``: inputs whose results hold a NaN (a NaN gradient, the
    energy share of an empty one) leave it out."""
    for gm, shape in [(GradientMask(groups=2, kernel_size=3), (2, 4, 6, 5)),
                      (GradientMask(mode="pixel", kernel_size=3, inhibition_rate=0.3), (2, 4, 8, 8)),
                      (GradientMask(groups=4, mode="norm", inhibition_rate=0.0), (2, 4, 3, 3))]:
        torch.library.opcheck(OP, op_args(gm, gradient(shape, dtype, layout, nonfinite=False)))
    without_values = ("test_schema", "test_autograd_registration", "test_faketensor")
    gm = GradientMask(groups=2, kernel_size=3)
    for grad in (gradient((2, 4, 6, 6), dtype, layout), gradient((0, 4, 6, 6), dtype, layout)):
        torch.library.opcheck(OP, op_args(gm, grad), test_utils=without_values)


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens"])
def test_apply_equals_the_mask_times_the_gradient_bit_for_bit(mode, dtype, layout):
    """``apply`` (through the operator) against the mask made by ``keep_map`` and the statistics
    written out by hand: bit-identical values, the layout of ``torch.empty_like(grad)``."""
    for rate, shape in [(0.5, (3, 8, 8, 8)), (0.9, (2, 8, 16, 16)), (0.3, (2, 8, 5, 7)), (0.0, (2, 8, 4, 4))]:
        gm = GradientMask(groups=4, kernel_size=3, mode=mode, inhibition_rate=rate)
        grad = gradient(shape, dtype, layout)
        result = gm.apply(grad)
        keep = gm.keep_map(grad)
        n, c, h, w = shape
        expected = grad.reshape(n, keep.shape[1], -1, h, w) * keep.to(dtype)
        assert same(result.gradient, expected.reshape(shape)) and same(result.gradient, gm(grad))
        assert torch.equal(result.gradient.isnan(), grad.isnan())
        assert result.gradient.stride() == torch.empty_like(grad).stride()
        assert result.kept_fraction.item() == keep.double().mean().item()
        assert result.maps == n * keep.shape[1]
        energy = (result.gradient.double().square().sum() / grad.double().square().sum()).item()
        assert math.isnan(result.energy_kept.item()) == math.isnan(energy)  # NaN in, NaN share out


def recording_op(calls, *args):
    calls.append(args)
    return OP(*args)


class PassThrough(TorchDispatchMode):
    """A dispatch mode that runs every operator as it is (as tracing modes see them)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens"])
def test_eager_calls_skip_the_dispatcher_with_the_operators_results(dtype, layout, monkeypatch):
    """Outside tracing ``apply`` calls the kernel directly (no trip through the dispatcher): the
    same masked gradient and statistics, bit for bit, as the operator; under a dispatch mode (as
    when tracing) and for meta tensors it goes through the operator."""
    for gm, shape in [(GradientMask(groups=4, kernel_size=3), (3, 8, 8, 8)),
                      (GradientMask(groups=4, kernel_size=3, mode="pixel", inhibition_rate=0.3), (2, 8, 5, 7)),
                      (GradientMask(groups=2, mode="norm", inhibition_rate=0.0), (2, 8, 4, 4)),
                      (GradientMask(groups=4, kernel_size=3), (0, 8, 4, 4))]:
        grad = gradient(shape, dtype, layout)
        via_op = OP(*op_args(gm, grad))
        calls = []
        monkeypatch.setattr(gradmask.mask, "_MASK_OP", functools.partial(recording_op, calls))
        direct = gm.apply(grad)
        assert not calls and same(direct.gradient, via_op[0]) and same(direct.totals, via_op[1])
        assert direct.gradient.stride() == via_op[0].stride() and direct.totals.dtype == torch.float64
        with PassThrough():
            traced = gm.apply(grad)
        assert len(calls) == 1 and same(traced.totals, via_op[1])
        meta = gm.apply(grad.to("meta"))
        assert len(calls) == 2 and meta.gradient.device.type == "meta" and meta.totals.shape == (8,)
        monkeypatch.undo()


def test_totals_hold_the_calls_statistics():
    """The ``(8,)`` totals: 1 call, positions, maps, positions kept (exact: kept mask positions times
    the channels sharing them), the energy share kept and 1 (0 and 0 when it is NaN), non-finite and
    tied maps; the 0-d statistics derive from them."""
    gm = GradientMask(groups=4, kernel_size=3)
    grad = gradient((3, 8, 8, 8), nonfinite=False)
    result = gm.apply(grad)
    keep = gm.keep_map(grad)
    energy = (result.gradient.double().square().sum() / grad.double().square().sum()).item()
    t = result.totals.tolist()
    assert t[:3] == [1.0, grad.numel(), 3 * 4] and t[3] == keep.sum().item() * 2 and t[5] == 1.0
    assert t[4] == pytest.approx(energy, rel=1e-6) and t[6] == 0 and t[7] == result.tied_maps.item() >= 1
    assert result.kept_fraction.item() == keep.double().mean().item() and result.energy_kept.item() == t[4]
    bad = gm.apply(gradient((3, 8, 8, 8)))  # a NaN and an inf: no energy share
    assert bad.totals[4].item() == bad.totals[5].item() == 0 and math.isnan(bad.energy_kept.item())
    assert bad.nonfinite_maps.item() == bad.totals[6].item() == 2


@pytest.mark.parametrize("shape", [(0, 8, 6, 6), (2, 8, 0, 6), (0, 8, 1, 1)])
def test_an_empty_batch_passes_through(shape):
    for mode in ("lateral", "norm", "pixel"):
        gm = GradientMask(groups=4, kernel_size=3, mode=mode)
        grad = torch.randn(shape)
        result = gm.apply(grad)
        assert same(result.gradient, grad) and result.maps == shape[0] * gm.maps_per_sample(8)
        assert result.kept_fraction.item() == 1.0 and result.nonfinite_maps.item() == result.tied_maps.item() == 0
        assert torch.equal(gm.mask(grad), torch.ones(shape)) and torch.equal(gm(grad), grad)
        assert gm.keep_map(grad).shape == (shape[0], 8 if mode == "pixel" else 4, 1, *shape[2:])


def test_hooks_on_an_empty_batch_pass_the_gradient_through():
    torch.manual_seed(0)
    model = gradmask.create_model("resnet18_narrow", 10)
    with gradmask.attach(model, GradientMask(groups=4)) as handle:
        model(torch.rand(0, 3, 16, 16)).sum().backward()
        stats = handle.stats()["layer1.0"]
    assert stats["calls"] == 1 and stats["maps"] == 0 and stats["kept_fraction"] is None
    assert stats["energy_kept"] is None and stats["shape"] == (0, 16, 16, 16)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads(model).values())


def test_the_rate_is_a_cpu_tensor_replaced_when_set():
    gm = GradientMask(inhibition_rate=0.25)
    first = gm._rate
    gm.inhibition_rate = 0.75
    assert first.item() == 0.25 and gm._rate.item() == 0.75 and gm._rate.device.type == "cpu"
    with pytest.raises(ValueError, match=r"inhibition_rate must be in \[0, 1\)"):
        gm.inhibition_rate = 1.0
    assert gm._rate.item() == 0.75


# --- the device-generic path (CUDA's) against the CPU fast path, both on CPU tensors ---------------------


def test_cuda_and_other_devices_get_the_device_generic_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gradmask::mask", "CPU")
    assert torch._C._dispatch_has_computed_kernel_for_dispatch_key("gradmask::mask", "CUDA")
    gm, grad = GradientMask(groups=2, kernel_size=3), gradient((2, 4, 16, 16))
    with force_device_generic():
        forced = OP(*op_args(gm, grad))
    generic = gradmask.mask._generic_kernel(*op_args(gm, grad))
    assert all(same(a, b) for a, b in zip(forced, generic))


def test_force_device_generic_is_scoped():
    with force_device_generic():
        assert gradmask.mask._FORCE_DEVICE_GENERIC
        with force_device_generic(False):
            assert not gradmask.mask._FORCE_DEVICE_GENERIC
        assert gradmask.mask._FORCE_DEVICE_GENERIC
    assert not gradmask.mask._FORCE_DEVICE_GENERIC


@pytest.mark.parametrize("n", [9, 64, 300, 700, 1500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_selection_kthvalue_path_equals_the_cpu_path(n, dtype):
    """Every CPU path (sort, sorted halves, partition) against kthvalue, with ties and signed values."""
    g = torch.Generator().manual_seed(n)
    values = torch.randn(130, n, generator=g).to(dtype)
    values[:10] = values[:10].round()  # many ties
    values[10:20] = 0.0
    for k in (1, n // 3 + 1, n // 2, n):
        for nonnegative, rows in ((False, values), (True, values.abs())):
            fast = kth_smallest_and_max(rows, k, nonnegative=nonnegative)
            generic = kth_smallest_and_max(rows, k, nonnegative=nonnegative, device_generic=True)
            assert all(torch.equal(a, b) for a, b in zip(fast, generic)), (k, nonnegative)
            assert torch.equal(generic[0], rows.kthvalue(k, dim=1, keepdim=True).values)


@pytest.mark.parametrize("size", [(6, 6), (16, 16), (32, 32), (7, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_matrix_product_path_equals_the_cpu_path(size, dtype):
    """The LoG over all maps at once by matrix products (CUDA's) against the CPU path (blocks,
    compiled banded filter and non-finite passes for float32): the same up to float32 rounding,
    +inf at exactly the same non-finite positions."""
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(300, *size, generator=g).to(dtype)
    maps[0, 1, 1], maps[5, 2, 3], maps[7, 0, 0] = math.nan, math.inf, -math.inf
    for log in (LoGFilter(kernel_size=5), LoGFilter(kernel_size=3, kernel="authors", padding="zero")):
        for flags in ({}, dict(abs_input=True, abs_output=True, isolate_nonfinite=True),
                      dict(abs_output=True, isolate_nonfinite=True)):
            clean = maps.nan_to_num(0.0, 0.0, 0.0) if not flags else maps
            fast, generic = log(clean, **flags), log(clean, **flags, device_generic=True)
            assert torch.equal(fast.isinf(), generic.isinf()) and not generic.isnan().any()
            torch.testing.assert_close(generic, fast, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


def near_tie_mismatches(fast_keep, generic_keep, scores, keep_above, rtol):
    """Positions where the two masks differ and the score is not within ``rtol`` of the map's
    threshold (float32 rounding of the two LoG paths may flip near ties only)."""
    differ = (fast_keep != generic_keep).flatten(2)
    gap = (scores.flatten(2) - keep_above).abs()
    return differ & (gap > rtol * keep_above.abs() + 1e-30)


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens"])
def test_device_generic_mask_equals_the_cpu_fast_path(mode, dtype, layout):
    """The whole mask on the device-generic path against the CPU fast path, same inputs (non-finite
    values, ties, every row-length path of the selection): masks equal up to near-ties of float32
    rounding, the same non-finite and tied maps, kept fractions and energies close."""
    for shape, rate in [((3, 8, 8, 8), 0.5), ((2, 8, 16, 16), 0.3), ((2, 4, 32, 32), 0.5), ((2, 4, 40, 40), 0.9),
                        ((2, 8, 4, 4), 0.0)]:
        gm = GradientMask(groups=4, kernel_size=3, mode=mode, inhibition_rate=rate)
        grad = gradient(shape, dtype, layout)
        fast = gm.apply(grad)
        fast_keep, fast_scores = gm.keep_map(grad), gm.scores(grad)
        with force_device_generic():
            generic = gm.apply(grad)
            generic_keep, generic_scores = gm.keep_map(grad), gm.scores(grad)
            scales = gm._squared_norms(grad, torch.float64 if dtype == torch.float64 else torch.float32, True)[1]
        if mode != "pixel" and dtype != torch.float16:
            assert torch.equal(scales, gradmask.mask._sample_scales(grad, scales.dtype))
        assert torch.equal(fast_scores.isinf(), generic_scores.isinf())
        finite = fast_scores.isfinite()
        torch.testing.assert_close(generic_scores[finite], fast_scores[finite], rtol=2e-5, atol=0)
        flat = fast_scores.flatten(2)
        keep_above = torch.where(fast_keep.flatten(2), flat, -math.inf).amin(dim=2, keepdim=True)
        assert not near_tie_mismatches(fast_keep, generic_keep, fast_scores, keep_above.clamp(min=0), 1e-4).any()
        assert torch.equal(fast.nonfinite_maps, generic.nonfinite_maps)
        assert torch.equal(fast.tied_maps, generic.tied_maps)
        assert abs(fast.kept_fraction.item() - generic.kept_fraction.item()) <= 0.01
        assert torch.equal(generic.gradient.isnan(), grad.isnan())
        assert generic.gradient.stride() == fast.gradient.stride() and generic.gradient.dtype == dtype
        torch.testing.assert_close(generic.energy_kept, fast.energy_kept, rtol=0.02, atol=0, equal_nan=True)
        if dtype == torch.float64 or mode == "norm":  # no LoG rounding between the paths: the same bits
            assert torch.equal(generic_keep, fast_keep)
            assert same(generic.gradient, fast.gradient)


def test_hooks_on_the_device_generic_path_equal_the_cpu_path():
    """Attached to a model: the device-side bookkeeping of the hooks on the device-generic path
    gives the statistics and gradients of the CPU path (float64: no LoG rounding between them)."""
    x, y = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    results = []
    for generic in (False, True):
        torch.manual_seed(0)
        model = gradmask.create_model("resnet18_narrow", 10).double()
        with gradmask.attach(model, GradientMask(groups=4)) as handle, force_device_generic(generic):
            for _ in range(2):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
            results.append((handle.stats(), grads(model)))
    (stats, fast), (generic_stats, generic) = results
    assert stats == generic_stats and stats["layer1.0"]["calls"] == 2
    assert all(torch.equal(fast[k], generic[k]) for k in fast)


def test_totals_follow_the_model_to_another_device():
    """A model moved after attach: the first forward moves each target's totals to the output's
    device (the meta device here: CPU is the only real one on CI; the operator runs its fake there)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with gradmask.attach(model, GradientMask(groups=2, kernel_size=3), targets=["0", "1"]) as handle:
        assert [t.device.type for t in handle._totals.values()] == ["cpu", "cpu"]  # "1": no parameters, CPU
        model.to("meta")
        model(torch.rand(2, 3, 6, 6, device="meta")).sum().backward()
        assert [t.device.type for t in handle._totals.values()] == ["meta", "meta"]


class Buffered(nn.Module):
    """A target with a buffer and no parameters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return x * self.scale


def test_totals_start_on_a_buffer_only_targets_device_and_enabled_is_read_at_the_backward():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Buffered())
    x = torch.rand(2, 3, 6, 6)
    model.to("meta")
    with gradmask.attach(model, GradientMask(groups=2, kernel_size=3), targets=["1"]) as handle:
        assert handle._totals["1"].device.type == "meta"
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model[0].reset_parameters()
    model[1].scale.fill_(1.0)
    plain = grads_of(model, x)
    with gradmask.attach(model, GradientMask(groups=2, kernel_size=3), targets=["1"]) as handle:
        loss = model(x).square().sum()
        handle.enabled = False  # between the forward and the backward: eagerly, the hook passes
        loss.backward()
        assert handle.stats()["1"]["calls"] == 0
    assert all(torch.equal(plain[k], g) for k, g in grads(model).items())


def grads_of(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    result = grads(model)
    model.zero_grad(set_to_none=True)
    return result
