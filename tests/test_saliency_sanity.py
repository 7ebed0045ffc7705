"""Cascading randomization (Adebayo et al. 2018): SSIM against an independent slow reference and
closed forms, Spearman against scipy, the layer grouping, and the test itself on small models."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import gradmask
from gradmask.models.resnet import Normalized
from gradmask.saliency import GradCAM, LIMap
from gradmask.saliency.sanity import (
    cascading_randomization,
    gaussian_window,
    plot_sanity,
    randomization_groups,
    save_sanity_maps,
    spearman,
    ssim,
    write_sanity_report,
)


def resnet(seed=0):
    torch.manual_seed(seed)
    model = gradmask.create_model("resnet18_narrow", 10)
    with torch.no_grad():  # non-trivial eval-mode BatchNorm, as a trained model has
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def images(n=4, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# SSIM

def ssim_reference(x, y, data_range=1.0, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Wang et al. written out: explicit windows at every valid position, float64 numpy."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r**2 / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_identity_and_symmetry():
    x = torch.rand(3, 20, 24)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)
    y = torch.rand(3, 20, 24)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-12)
    assert (ssim(x, y) < 0.5).all()  # independent noise


def test_ssim_constant_images_closed_form():
    # constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    for a, b in [(0.2, 0.7), (0.0, 1.0), (0.5, 0.5), (0.9, 0.1)]:
        x, y = torch.full((16, 16), a), torch.full((16, 16), b)
        c1 = 0.01**2
        assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)
    # data range scales the constants: 0..255 images with L = 255 give the same value
    x, y = torch.full((16, 16), 0.2 * 255, dtype=torch.float64), torch.full((16, 16), 0.7 * 255, dtype=torch.float64)
    assert ssim(x, y, data_range=255).item() == pytest.approx(ssim(x / 255, y / 255).item(), abs=1e-9)


def test_ssim_negated_structure():
    """Opposite structure (negative local covariance): SSIM is strongly negative."""
    x = torch.rand(32, 32)
    assert ssim(x, 1 - x).item() < -0.5


def test_ssim_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    for h, w in [(11, 11), (16, 19), (24, 24)]:
        x = torch.rand(h, w, generator=g)
        y = (0.6 * x + 0.4 * torch.rand(h, w, generator=g)).clamp(0, 1)
        assert ssim(x, y).item() == pytest.approx(ssim_reference(x, y), abs=1e-10)
    x, y = torch.rand(2, 3, 14, 15, generator=g), torch.rand(2, 3, 14, 15, generator=g)
    per_image = ssim(x, y)
    for i in range(2):  # channels averaged
        ref = np.mean([ssim_reference(x[i, c], y[i, c]) for c in range(3)])
        assert per_image[i].item() == pytest.approx(ref, abs=1e-10)
    assert ssim(x, y, reduction="mean").item() == pytest.approx(per_image.mean().item())


def test_ssim_against_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 37, generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(40, 37, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = metrics.structural_similarity(x.numpy(), y.numpy(), data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-8)


def test_ssim_window_and_errors():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0)
    assert w[5, 5] == w.max() and torch.allclose(w, w.T)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(10, 20), torch.rand(10, 20))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(12, 12), torch.rand(13, 12))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.rand(12, 12), torch.rand(12, 12), window_size=4)


# ----------------------------------------------------------------------------------------------
# Spearman

def test_spearman_matches_scipy_with_ties_and_constant_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 9, 9, generator=g)
    y = 0.5 * x + 0.5 * torch.rand(4, 9, 9, generator=g)
    x[1] = (x[1] * 4).floor()  # ties
    y[2] = (y[2] > 0.5).float()
    x[3] = 0.3  # constant
    rho = spearman(x, y)
    for i in range(3):
        assert rho[i].item() == pytest.approx(spearmanr(x[i].flatten(), y[i].flatten()).statistic, abs=1e-12)
    assert math.isnan(rho[3].item())
    assert torch.allclose(spearman(x[:3], x[:3]), torch.ones(3, dtype=torch.float64))
    assert spearman(x[:1], -x[:1]).item() == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------------
# groups

def test_randomization_groups_resnet_top_down():
    groups = randomization_groups(resnet())
    names = [g for g, _ in groups]
    assert names == ["fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0",
                     "layer1.1", "layer1.0", "stem"]
    layers = dict(groups)
    assert layers["fc"] == ["fc"] and layers["stem"] == ["stem.1", "stem.0"]
    assert "layer4.0.downsample.0" in layers["layer4.0"] and layers["layer4.0"][-1] == "layer4.0.conv1"
    every = [n for n, m in resnet().named_modules() if next(m.parameters(recurse=False), None) is not None]
    assert sorted(sum(layers.values(), [])) == sorted(every)  # every parametrised layer exactly once
    by_layer = randomization_groups(resnet(), granularity="layer")
    assert [g for g, _ in by_layer] == list(reversed(every))


def test_randomization_groups_wrapped_and_plain_models():
    wrapped = Normalized(resnet(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))  # Normalize has buffers only
    names = [g for g, _ in randomization_groups(wrapped)]
    assert names[:3] == ["model.fc", "model.layer4.1", "model.layer4.0"] and names[-1] == "model.stem"
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert [g for g, _ in randomization_groups(plain)] == ["6", "3", "1", "0"]
    with pytest.raises(ValueError, match="no parameters"):
        randomization_groups(nn.ReLU())
    with pytest.raises(ValueError, match="granularity"):
        randomization_groups(plain, granularity="stage")


# ----------------------------------------------------------------------------------------------
# the test

def test_cascade_step0_is_identity_and_randomizing_changes_maps():
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    rng = torch.get_rng_state()
    steps = cascading_randomization(model, images(), lambda m: LIMap(m), seed=0)
    assert len(steps) == 1 + len(randomization_groups(model))
    assert steps[0]["randomized"] == "original" and steps[0]["layers"] == []
    assert steps[0]["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert steps[0]["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert [s["randomized"] for s in steps[1:3]] == ["fc", "layer4.1"]
    assert all(s["spearman"] < 0.999 and s["ssim"] < 0.999 for s in steps[1:])
    assert steps[-1]["spearman"] < steps[1]["spearman"] and steps[-1]["ssim"] < steps[1]["ssim"]
    assert len(steps[3]["spearman_images"]) == 4 and len(steps[3]["ssim_images"]) == 4
    # the caller's model is untouched: weights, buffers, mode, hooks; global RNG as before
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_cascade_deterministic_per_seed_targets_and_maps():
    model, x = resnet(), images(3)
    factory = lambda m: GradCAM(m, "layer4")  # noqa: E731
    a = cascading_randomization(model, x, factory, targets=2, seed=5, return_maps=True)
    b = cascading_randomization(model, x, factory, targets=[2, 2, 2], seed=5)
    c = cascading_randomization(model, x, factory, targets=2, seed=6)
    assert [s["ssim"] for s in a] == [s["ssim"] for s in b]
    assert [s["ssim"] for s in a] != [s["ssim"] for s in c]
    assert a[0]["maps"].shape == (3, 32, 32) and a[-1]["maps"].shape == (3, 32, 32)
    # the maps of step 0 are the trained model's maps for the given class
    assert torch.allclose(a[0]["maps"], GradCAM(model, "layer4")(x, 2), atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        cascading_randomization(model, x, factory, targets=[1, 2])


def test_cascade_model_independent_method_passes_unchanged():
    """A map that ignores the model (an edge detector) keeps correlation 1 at every step: what
    the test is designed to expose."""
    def edges(model):
        def fn(x, targets):
            g = (x[..., 1:, 1:] - x[..., :-1, 1:]).abs() + (x[..., 1:, 1:] - x[..., 1:, :-1]).abs()
            g = nn.functional.pad(g.sum(1), (1, 0, 1, 0))
            flat = g.flatten(1)
            return ((flat - flat.min(1, keepdim=True).values)
                    / (flat.max(1, keepdim=True).values - flat.min(1, keepdim=True).values)).view_as(g)
        return fn

    steps = cascading_randomization(resnet(), images(2), edges, granularity="layer")
    assert all(s["spearman"] == pytest.approx(1.0) and s["ssim"] == pytest.approx(1.0) for s in steps)


def test_cascade_layer_granularity_and_constant_maps():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.manual_seed(0)
    zero = lambda m: (lambda x, t: torch.zeros(len(x), *x.shape[-2:]))  # noqa: E731
    steps = cascading_randomization(model, images(2, 16), zero, granularity="layer")
    assert [s["randomized"] for s in steps] == ["original", "6", "2", "0"]
    assert all(math.isnan(s["spearman"]) and s["spearman_undefined"] == 2 for s in steps)
    assert steps[1]["ssim"] == pytest.approx(1.0)


def test_sanity_plots_and_report(tmp_path):
    model, x = resnet(), images(2)
    steps = cascading_randomization(model, x, lambda m: LIMap(m), return_maps=True)
    cam = cascading_randomization(model, x, lambda m: GradCAM(m, "layer4"))
    paths = write_sanity_report(tmp_path, {"limap": steps, "gradcam": cam}, {"checkpoint": "x"})
    for key in ("markdown", "json", "figure"):
        assert paths[key].is_file()
    data = json.loads(paths["json"].read_text())
    assert data["methods"]["limap"][0]["spearman"] == pytest.approx(1.0)
    assert "maps" not in data["methods"]["limap"][0]
    md = paths["markdown"].read_text()
    assert "| 1 | fc |" in md and "limap" in md and "gradcam" in md
    from PIL import Image
    with Image.open(paths["figure"]) as im:
        assert im.size[0] > 100
    grid = save_sanity_maps(tmp_path / "maps.png", x, steps, n=2)
    with Image.open(grid) as im:
        assert im.size[0] > 100
    assert plot_sanity(tmp_path / "p.png", {"limap": steps}).is_file()
    with pytest.raises(ValueError, match="return_maps"):
        save_sanity_maps(tmp_path / "m.png", x, cam)
