"""LoG filter: against the eq. (2) formula, a plain conv2d, and scipy.ndimage."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from gradmask import laplacian
from gradmask.laplacian import LoGFilter, default_kernel_size, filter_matrix


def eq2(sigma, size):
    """Eq. (2) evaluated point by point on a size x size window."""
    r = size // 2
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            d2 = (i - r) ** 2 + (j - r) ** 2
            out[i, j] = -1 / (math.pi * sigma**4) * (1 - d2 / (2 * sigma**2)) * math.exp(-d2 / (2 * sigma**2))
    return out


def conv_reference(maps, kernel, padding):
    """Plain 2-D convolution of (B, H, W) maps with an explicit kernel and F.pad."""
    k = torch.as_tensor(kernel, dtype=maps.dtype)
    ry, rx = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2
    x = maps.unsqueeze(1)
    x = F.pad(x, (rx, rx, ry, ry), mode="reflect" if padding == "reflect" else "constant")
    return F.conv2d(x, k[None, None]).squeeze(1)


def assert_proportional(a, b, rtol=1e-9):
    """a == c * b for one positive constant c."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    c = np.dot(a, b) / np.dot(b, b)
    assert c > 0
    np.testing.assert_allclose(a, c * b, rtol=rtol, atol=rtol * np.abs(a).max())


@pytest.mark.parametrize("sigma,size", [(11.0, 5), (1.0, 7), (2.5, 9)])
def test_log_kernel_is_eq2(sigma, size):
    np.testing.assert_allclose(LoGFilter(sigma, size).kernel2d(16, 16), eq2(sigma, size), rtol=1e-12)


@pytest.mark.parametrize("sigma,size", [(11.0, 5), (1.5, 9)])
def test_log_kernel_matches_scipy_impulse_constant_mode(sigma, size):
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1
    ref = ndimage.gaussian_laplace(impulse, sigma, mode="constant", truncate=(size // 2) / sigma + 1e-9)
    assert_proportional(LoGFilter(sigma, size).kernel2d(size, size), ref)


def test_default_kernel_is_all_negative_at_sigma_11():
    assert (LoGFilter().kernel2d(32, 32) < 0).all()


def test_authors_kernel_is_scipy_reflect_window():
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1
    ref = ndimage.gaussian_laplace(impulse, 11.0)  # scipy's default mode='reflect'
    ours = LoGFilter(11.0, 5, kernel="authors").kernel2d(8, 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    scaled = ours / -ours[2, 2]
    assert scaled[2, 2] == -1
    assert -0.76 < scaled[2, 1] < -0.70 and -0.76 < scaled[1, 2] < -0.70
    eq2_scaled = eq2(11.0, 5) / -eq2(11.0, 5)[2, 2]
    assert np.abs(scaled - eq2_scaled).max() > 0.2  # a genuinely different (more peaked) kernel


@pytest.mark.parametrize("padding,mode", [("reflect", "mirror"), ("zero", "constant")])
@pytest.mark.parametrize("shape", [(9, 9), (10, 10), (7, 12), (13, 6), (6, 9)])  # (6, 9): dense path
def test_filter_matches_scipy_gaussian_laplace(padding, mode, shape):
    sigma = 1.2
    size = default_kernel_size(sigma)  # radius 4, fits every shape above
    maps = np.random.default_rng(0).random((3, *shape))
    ours = LoGFilter(sigma, size, padding=padding)(torch.from_numpy(maps)).numpy()
    ref = np.stack([ndimage.gaussian_laplace(m, sigma, mode=mode, truncate=(size // 2) / sigma + 1e-9)
                    for m in maps])
    assert_proportional(ours, ref)


@pytest.mark.parametrize("kernel", ["log", "authors"])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("shape", [(8, 8), (9, 9), (6, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_filter_matches_conv2d(kernel, padding, shape, dtype):
    f = LoGFilter(11.0, 5, kernel=kernel, padding=padding)
    maps = torch.rand(4, *shape, dtype=torch.float64)
    ref = conv_reference(maps, f.kernel2d(*shape), padding)
    out = f(maps.to(dtype))
    assert out.dtype == dtype and out.shape == maps.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_full_kernel_zero_padding_crop_is_exact():
    """kernel_size=None with zero padding: cropping the 67-wide kernel to the map loses nothing."""
    maps = np.random.default_rng(1).random((2, 6, 9))
    ours = LoGFilter(11.0, None, padding="zero")(torch.from_numpy(maps)).numpy()
    ref = np.stack([ndimage.gaussian_laplace(m, 11.0, mode="constant", truncate=3.0) for m in maps])
    assert_proportional(ours, ref)


def test_full_kernel_reflect_is_cropped_to_map():
    f = LoGFilter(11.0, None, padding="reflect")
    assert f.kernel2d(8, 5).shape == (15, 9)
    assert f.kernel2d(100, 100).shape == (67, 67)


def test_explicit_kernel_too_large_for_reflect_raises():
    with pytest.raises(ValueError, match="kernel_size=5.*2x2.*<= 3"):
        LoGFilter(11.0, 5)(torch.rand(1, 2, 2))
    LoGFilter(11.0, 5, padding="zero")(torch.rand(1, 2, 2))  # zero padding: exact crop, allowed


def test_filter_matrix_reflect_is_torch_reflect():
    taps = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    v = np.random.default_rng(2).random(6)
    padded = F.pad(torch.from_numpy(v)[None, None], (2, 2), mode="reflect")[0, 0].numpy()
    expected = np.array([np.dot(taps, padded[i:i + 5]) for i in range(6)])
    np.testing.assert_allclose(filter_matrix(taps, 6, "reflect") @ v, expected)


def test_dense_operator_only_for_small_maps():
    f = LoGFilter()
    assert f.uses_dense_operator(8, 8) and f.uses_dense_operator(7, 7) and f.uses_dense_operator(6, 11)
    assert not f.uses_dense_operator(16, 16) and not f.uses_dense_operator(9, 9)
    assert not f.uses_dense_operator(1, 10_000)  # cheap in multiply-adds, but a 10^8-entry matrix


@pytest.mark.parametrize("kernel_size,padding", [(5, "reflect"), (None, "reflect"), (None, "zero"), (3, "zero")])
@pytest.mark.parametrize("shape", [(8, 8), (6, 11), (3, 4), (5, 5)])
def test_dense_and_separable_paths_agree(monkeypatch, kernel_size, padding, shape):
    f = LoGFilter(2.0 if kernel_size is None else 11.0, kernel_size, padding=padding)
    maps = torch.rand(10, *shape, dtype=torch.float64)
    assert f.uses_dense_operator(*shape)
    dense = f(maps, abs_input=True, abs_output=True)
    monkeypatch.setattr(laplacian, "DENSE_MAX_POSITIONS", 0)
    assert not f.uses_dense_operator(*shape)
    separable = f(maps, abs_input=True, abs_output=True)
    torch.testing.assert_close(dense, separable, rtol=1e-12, atol=1e-15)
    ref = conv_reference(maps.abs(), f.kernel2d(*shape), padding).abs()
    torch.testing.assert_close(dense, ref, rtol=1e-10, atol=1e-15)


def _require_banded():
    if not laplacian.banded_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must build the compiled banded filter: .ci/run installs a C compiler")
        pytest.skip("the compiled banded filter was not built (no C compiler at install time)")


@pytest.mark.parametrize("kernel", ["log", "authors"])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
@pytest.mark.parametrize("shape", [(32, 32), (17, 23), (9, 40), (40, 5), (16, 16)])
def test_banded_filter_matches_matrix_products_and_conv2d(kernel, padding, kernel_size, shape):
    """The compiled banded path (radius 1-4) against the matrix products and a plain conv2d."""
    _require_banded()
    if padding == "reflect" and (kernel_size - 1) // 2 > min(shape) - 1:
        pytest.skip("window does not fit the map with reflect padding")
    banded = LoGFilter(11.0, kernel_size, kernel=kernel, padding=padding)
    products = LoGFilter(11.0, kernel_size, kernel=kernel, padding=padding, banded=False)
    assert banded.uses_banded_filter(*shape, "cpu", torch.float32)
    assert not products.uses_banded_filter(*shape, "cpu", torch.float32)
    maps = torch.randn(7, *shape)
    for abs_input, abs_output in [(False, False), (True, True), (True, False)]:
        out = banded(maps, abs_input=abs_input, abs_output=abs_output)
        ref = products(maps, abs_input=abs_input, abs_output=abs_output)
        scale = ref.abs().max().item()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 * scale)
    ref = conv_reference(maps.double(), banded.kernel2d(*shape), padding)
    torch.testing.assert_close(banded(maps).double(), ref, rtol=0, atol=1e-6 * ref.abs().max().item())


def test_banded_filter_is_used_only_where_it_applies():
    f = LoGFilter()
    expected = laplacian.banded_available()
    assert f.uses_banded_filter(32, 32, "cpu", torch.float32) == expected
    assert f.uses_banded_filter(16, 16, "cpu", torch.float32) == expected
    assert not f.uses_banded_filter(32, 32, "cpu", torch.float64)      # float32 only
    assert not f.uses_banded_filter(8, 8, "cpu", torch.float32)        # the dense operator is faster there
    assert not f.uses_banded_filter(32, 32, "meta", torch.float32)     # CPU only
    assert not LoGFilter(kernel_size=11).uses_banded_filter(32, 32, "cpu", torch.float32)  # radius 5 > 4
    assert not LoGFilter(kernel_size=None).uses_banded_filter(32, 32, "cpu", torch.float32)
    assert not LoGFilter(banded=False).uses_banded_filter(32, 32, "cpu", torch.float32)
    assert not LoGFilter(padding="zero").uses_banded_filter(1, 300, "cpu", torch.float32)  # radius 0 along y


def test_banded_filter_takes_any_layout_and_input_dtype():
    _require_banded()
    f, g = LoGFilter(), LoGFilter(banded=False)
    maps = torch.randn(3, 4, 20, 24).to(memory_format=torch.channels_last)   # not contiguous as (M, H, W)
    torch.testing.assert_close(f(maps), g(maps), rtol=0, atol=1e-6)
    half = torch.randn(6, 20, 24, dtype=torch.bfloat16)
    out = f(half, dtype=torch.float32, abs_input=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, g(half, dtype=torch.float32, abs_input=True), rtol=0, atol=1e-6)


def test_matrices_are_cached_per_size_device_dtype():
    f = LoGFilter()
    a = f.matrices(8, 8, "cpu", torch.float32)
    assert f.matrices(8, 8, "cpu", torch.float32) is a
    assert f.matrices(8, 8, "cpu", torch.float64)[0].dtype == torch.float64
    assert f.matrices(8, 9, "cpu", torch.float32)[1].shape == (9, 18)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=float("nan")), "sigma"), (dict(sigma=float("inf")), "sigma"), (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"), (dict(kernel_size=4), "kernel_size"), (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=-3), "kernel_size"), (dict(kernel_size=2.0), "kernel_size"),
    (dict(kernel="gauss"), "kernel"), (dict(padding="circular"), "padding"),
])
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoGFilter(**kwargs)


@pytest.mark.parametrize("shape", [(3, 5, 32, 32), (2, 700, 8, 8), (1, 2, 9, 13)])
def test_fused_magnitudes_and_dtype_equal_the_composition(shape):
    """``f(x, dtype, abs_input, abs_output)`` == ``|f(|x|.to(dtype))|`` exactly, block by block,
    from bf16 and channels_last inputs too (the mask's ``pixel`` mode)."""
    torch.manual_seed(0)
    f = LoGFilter()
    x = torch.randn(shape)
    for source in (x, x.bfloat16(), x.contiguous(memory_format=torch.channels_last)):
        fused = f(source, dtype=torch.float32, abs_input=True, abs_output=True)
        assert fused.dtype == torch.float32 and fused.shape == x.shape
        assert torch.equal(fused, f(source.abs().float()).abs())
    assert torch.equal(f(x, abs_output=True), f(x).abs())
    assert torch.equal(f(x.double(), abs_input=True), f(x.double().abs()))


def test_without_the_compiled_filter_one_notice_and_the_matrix_products(monkeypatch, caplog):
    """A machine without a C compiler at install time has no built _banded beside laplacian.py: the
    first call that wants it logs one line (NOT_BUILT_NOTICE) and the LoG equals the compiled path's result."""
    import logging
    grads = torch.randn(2, 3, 40, 40)
    expected = LoGFilter(sigma=11.0, kernel_size=5)(grads)
    laplacian.compiled_library.cache_clear()
    monkeypatch.setattr(laplacian, "EXTENSION_SUFFIXES", [".no-such-suffix.so"])
    try:
        with caplog.at_level(logging.WARNING, logger="gradmask"):
            assert laplacian.compiled_path() is None
            assert not laplacian.banded_available()
            got = LoGFilter(sigma=11.0, kernel_size=5)(grads)
            assert not laplacian.banded_available()
        assert [r.getMessage() for r in caplog.records] == [laplacian.NOT_BUILT_NOTICE]
        assert "\n" not in laplacian.NOT_BUILT_NOTICE
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.undo()
        laplacian.compiled_library.cache_clear()
