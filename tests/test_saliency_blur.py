"""LI background blur (Algorithm 2): which images and pixels change, and to what."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import gradmask
from gradmask.saliency import LIBackgroundBlur, LIMap, gaussian_blur


def model_and_batch(n=8, size=32, seed=0):
    torch.manual_seed(seed)
    model = gradmask.create_model("resnet18_narrow", 10, stem="cifar")
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return model, x, y


def no_hooks(model):
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_gaussian_blur_matches_scipy_mirror():
    x = torch.rand(2, 3, 32, 30, dtype=torch.float64)
    for sigma in (0.7, 2.0, 3.0):
        expected = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, rtol=0, atol=1e-12)
    assert gaussian_blur(x.float(), 2.0).dtype == torch.float32
    with pytest.raises(ValueError, match="blur_sigma"):
        gaussian_blur(x, 0.0)


def test_only_selected_images_and_only_inhibited_pixels_change():
    model, x, y = model_and_batch(8)
    aug = LIBackgroundBlur(model, rate=0.5, quantile=0.5, blur_sigma=2.0, seed=3)
    result = aug.apply(x, y)
    out, selected = result.images, result.selected
    assert selected.sum() == 4                              # rate * N, exactly (integer)
    assert torch.equal(out[~selected], x[~selected])        # other images untouched
    # within the selected images: kept pixels identical, inhibited ones equal the blurred image
    idx = selected.nonzero().squeeze(1)
    field = LIMap(model).attribute(x[idx], y[idx])          # the LI-Map before normalisation
    threshold = torch.quantile(field.flatten(1), 0.5, dim=1).view(-1, 1, 1)
    keep = field.abs() > threshold
    assert torch.equal(result.keep[idx], keep)
    assert torch.equal(result.keep[~selected], torch.ones_like(result.keep[~selected]))
    blurred = gaussian_blur(x[idx], 2.0)
    sel_out = out[idx]
    kept = keep.unsqueeze(1).expand_as(sel_out)
    assert torch.equal(sel_out[kept], x[idx][kept])
    assert torch.equal(sel_out[~kept], blurred[~kept])
    assert (sel_out != x[idx]).any(dim=1).sum() > 0.4 * (~keep).sum()  # blurring did change pixels
    # about half the pixels of each selected image are inhibited (quantile 0.5)
    assert ((~keep).flatten(1).sum(1) == 32 * 32 // 2).all()


def test_rate_zero_is_identity_rate_one_blurs_all():
    model, x, y = model_and_batch(4)
    out = LIBackgroundBlur(model, rate=0.0, seed=0)(x, y)
    assert torch.equal(out, x) and out is not x
    res = LIBackgroundBlur(model, rate=1.0, seed=0).apply(x, y)
    assert res.selected.all()
    assert (res.images != x).flatten(1).any(1).all()
    out = LIBackgroundBlur(model, rate=1.0, quantile=0.0)(x, y)  # keeps every pixel
    assert torch.equal(out, x)


def test_expected_share_for_any_batch_size():
    aug = LIBackgroundBlur(None, rate=0.3, seed=0)
    counts = [aug.select(1).sum().item() for _ in range(2000)]
    assert abs(np.mean(counts) - 0.3) < 0.04
    assert {aug.select(10).sum().item() for _ in range(20)} == {3}


def test_seed_and_generator_determinism():
    model, x, y = model_and_batch(6)
    a = LIBackgroundBlur(model, rate=0.5, seed=7)(x, y)
    b = LIBackgroundBlur(model, rate=0.5, seed=7)(x, y)
    assert torch.equal(a, b)
    aug = LIBackgroundBlur(model, rate=0.5)
    c = aug(x, y, generator=torch.Generator().manual_seed(1))
    d = aug(x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, d)


def test_model_at_call_time_state_untouched():
    model, x, y = model_and_batch(4)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    running = model.layer1[0].bn1.running_mean.clone()
    aug = LIBackgroundBlur(rate=1.0, seed=0)           # no model at construction
    out = aug.augment(x, y, model)
    assert not torch.equal(out, x)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert torch.equal(model.layer1[0].bn1.running_mean, running)
    assert no_hooks(model)
    # the call-time model wins over the construction-time one
    other, _, _ = model_and_batch(4, seed=5)
    by_other = LIBackgroundBlur(other, rate=1.0, seed=0)(x, y)
    assert torch.equal(LIBackgroundBlur(other, rate=1.0, seed=0)(x, y, model), out)
    assert not torch.equal(by_other, out)


def test_labels_pick_the_class_score():
    model, x, y = model_and_batch(4)
    aug = LIBackgroundBlur(model, rate=1.0, seed=0)
    model.eval()
    predicted = model(x).argmax(1)
    assert torch.equal(aug.apply(x).keep, aug.apply(x, predicted).keep)
    other = (predicted + 1) % 10
    assert not torch.equal(aug.apply(x, predicted).keep, aug.apply(x, other).keep)


def test_errors_name_the_argument():
    model, x, y = model_and_batch(2)
    with pytest.raises(ValueError, match="rate"):
        LIBackgroundBlur(model, rate=1.5)
    with pytest.raises(ValueError, match="quantile"):
        LIBackgroundBlur(model, quantile=1.0)
    with pytest.raises(ValueError, match="blur_sigma"):
        LIBackgroundBlur(model, blur_sigma=0)
    with pytest.raises(ValueError, match="target_layers"):
        LIBackgroundBlur(model, target_layers=["nope"])
    with pytest.raises(ValueError, match="model"):
        LIBackgroundBlur(rate=1.0)(x, y)
    with pytest.raises(ValueError, match="labels"):
        LIBackgroundBlur(model, rate=1.0)(x, y[:1])
    with pytest.raises(ValueError, match="images"):
        LIBackgroundBlur(model, rate=1.0)(x[0], y)
    with pytest.raises(ValueError, match="targets"):
        LIBackgroundBlur(model, rate=1.0)(x, torch.tensor([0, 10]))
    assert no_hooks(model)
