"""FGSM (against a hand reference and Captum), the accuracy-vs-epsilon curve on the jointly-correct
set, the mask-hook switch, and L1 pruning (achieved sparsity, global threshold, caller untouched)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradmask
from gradmask.data import TensorLoader
from gradmask.hooks import mask_handles, no_gradient_mask
from gradmask.models.resnet import Normalize
from gradmask.robustness import (
    fgsm,
    fgsm_curve,
    prune_model,
    pruning_curve,
    weight_sparsity,
)
from gradmask.robustness.pruning import accuracy, prunable_weights, recalibrate_batchnorm


class TinyNet(nn.Module):
    """normalize, conv-bn-relu, conv-relu, pool, fc."""

    def __init__(self, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.normalize = Normalize((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(self.normalize(x))))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def narrow(seed=0):
    torch.manual_seed(seed)
    return gradmask.create_model("resnet18_narrow", 10).eval()


def data(n=24, size=12, classes=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def hand_fgsm(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x.detach() + eps * g.sign()).clamp(0, 1)


# ------------------------------------------------------------------------------------------- FGSM

def test_fgsm_matches_hand_reference_and_bounds(device):
    model = TinyNet().eval().to(device)
    x, y = (t.to(device) for t in data())
    adv = fgsm(model, x, y, 8 / 255)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    torch.testing.assert_close(adv, hand_fgsm(model, x, y, 8 / 255), rtol=0, atol=0)
    moved = (adv - x).abs()
    inside = (x > 8 / 255) & (x < 1 - 8 / 255)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 8 / 255), atol=1e-6)
    torch.testing.assert_close(fgsm(model, x, y, 0.0), x)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_fgsm_matches_captum():
    captum_robust = pytest.importorskip("captum.robust")
    model = TinyNet(seed=3).eval()
    x, y = data(seed=4)
    attack = captum_robust.FGSM(model, loss_func=nn.CrossEntropyLoss(reduction="none"), lower_bound=0.0,
                                upper_bound=1.0)
    attack.zero_thresh = 0.0  # Captum leaves pixels with |grad| <= 1e-6 unperturbed by default
    # (per-sample losses: Captum sums their gradients, as the summed cross-entropy does)
    for eps in (1 / 255, 4 / 255):
        expected = attack.perturb(x.clone(), eps, y)
        torch.testing.assert_close(fgsm(model, x, y, eps), expected, rtol=0, atol=1e-7)


def test_fgsm_restores_mode_and_leaves_parameter_grads():
    model = TinyNet().train()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
    before = copy.deepcopy(model.state_dict())
    x, y = data()
    adv = fgsm(model, x, y, 2 / 255)
    assert model.training and model.bn.training
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 3.0))
    assert model.conv1.weight.grad is None
    for k, v in model.state_dict().items():  # eval mode: BatchNorm statistics not updated
        assert torch.equal(v, before[k]), k
    model.eval()
    torch.testing.assert_close(adv, hand_fgsm(model, x, y, 2 / 255), rtol=0, atol=0)


def test_fgsm_errors():
    model = TinyNet().eval()
    x, y = data()
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, (x - 0.5) / 0.25, y, 0.01)


def test_no_gradient_mask_switches_handles_off_and_restores():
    model = narrow()
    x, y = data(n=4, size=16, classes=10)
    plain = fgsm(model, x, y, 4 / 255)
    gm = gradmask.GradientMask(groups=4)
    other = gradmask.attach(model, gradmask.GradientMask(groups=8), targets=["layer4.0"])  # not a default target
    other.enabled = False
    with gradmask.attach(model, gm) as handle:
        assert set(map(id, mask_handles(model))) == {id(handle), id(other)}
        # the mask does act on the input gradient when on
        masked = hand_fgsm(model, x, y, 4 / 255)
        assert not torch.equal(masked, plain)
        handle.reset_stats()
        with no_gradient_mask(model) as found:
            assert len(found) == 2 and not handle.enabled and not other.enabled
        assert handle.enabled and not other.enabled  # each handle's own state restored
        torch.testing.assert_close(fgsm(model, x, y, 4 / 255), plain, rtol=0, atol=0)
        assert handle.enabled
        assert all(s["calls"] == 0 for s in handle.stats().values())
    other.remove()
    assert mask_handles(model) == []


def jointly_correct_setup(n=40):
    """Labels = model a's predictions, so a is always right; b (a perturbed copy) is right on part."""
    a = TinyNet(seed=0).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.fc.weight.add_(0.8 * torch.randn_like(b.fc.weight))
    x, _ = data(n=n, seed=5)
    with torch.no_grad():
        y = a(x).argmax(1)
        joint = b(x).argmax(1) == y
    assert 0 < int(joint.sum()) < n
    return a, b, x, y, joint


def test_fgsm_curve_on_the_jointly_correct_set():
    a, b, x, y, joint = jointly_correct_setup()
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)]
    eps = [0, 2, 8]
    curve = fgsm_curve({"a": a, "b": b}, loader, eps)
    assert curve.subset == "joint" and curve.n_images == int(joint.sum()) == curve.n_joint
    assert curve.n_total == len(y) and curve.warning is None
    assert curve.clean_accuracy["a"] == 1.0
    xj, yj = x[joint], y[joint]
    for name, model in (("a", a), ("b", b)):
        assert [e for e, _ in curve[name]] == [0.0, 2.0, 8.0]
        assert curve[name][0][1] == 1.0
        for e, acc in curve[name][1:]:
            with torch.no_grad():
                expected = (model(fgsm(model, xj, yj, e / 255)).argmax(1) == yj).double().mean().item()
            assert acc == pytest.approx(expected)
    # a TensorLoader gives the same numbers
    same = fgsm_curve({"a": a, "b": b}, TensorLoader(x, y, 7, shuffle=False), eps)
    assert dict(same) == dict(curve)


def test_fgsm_curve_all_images_and_errors():
    a, b, x, y, joint = jointly_correct_setup()
    curve = fgsm_curve({"a": a, "b": b}, [(x, y)], [0, 4], subset="all")
    assert curve.n_images == len(y) and curve.n_joint == int(joint.sum())
    with torch.no_grad():
        assert curve["b"][0][1] == pytest.approx((b(x).argmax(1) == y).double().mean().item())
    with pytest.raises(ValueError, match="epsilons"):
        fgsm_curve({"a": a}, [(x, y)], [0, -1])
    with pytest.raises(ValueError, match="subset"):
        fgsm_curve({"a": a}, [(x, y)], [0], subset="some")


def test_fgsm_curve_empty_joint_set_warns():
    a, b, x, y, joint = jointly_correct_setup()
    wrong = (y + 1) % 5  # nobody is right
    with pytest.warns(RuntimeWarning, match="no image"):
        curve = fgsm_curve({"a": a, "b": b}, [(x, wrong)], [0, 4])
    assert curve.n_images == 0 and "classified correctly by every model" in curve.warning
    assert all(math.isnan(acc) for _, acc in curve["a"])


def test_fgsm_curve_mask_hooks_off_and_modes_restored():
    model = narrow()
    x, y = data(n=6, size=16, classes=10)
    with torch.no_grad():
        y = model(x).argmax(1)
    reference = fgsm_curve({"m": model}, [(x, y)], [0, 8])
    model.train()
    with gradmask.attach(model, gradmask.GradientMask(groups=4)) as handle:
        curve = fgsm_curve({"m": model}, [(x, y)], [0, 8])
        assert handle.enabled and all(s["calls"] == 0 for s in handle.stats().values())
    assert model.training
    assert dict(curve) == dict(reference)


# ------------------------------------------------------------------------------------------- pruning

def test_layer_pruning_sparsity_per_layer():
    model = narrow()
    for s in (0.3, 0.75):
        pruned = prune_model(model, s, scheme="layer")
        for name, m in prunable_weights(pruned):
            n = m.weight.numel()
            assert int((m.weight == 0).sum()) == round(s * n), name
            assert not hasattr(m, "weight_orig") and not m._forward_pre_hooks  # pruning made permanent


def test_global_pruning_threshold_by_hand():
    model = narrow(seed=2)
    s = 0.6
    pruned = prune_model(model, s, scheme="global")
    layers = dict(prunable_weights(model))
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    k = round(s * magnitudes.numel())
    threshold = magnitudes.sort().values[k - 1]  # the k-th smallest magnitude is the last one pruned
    total_zeros = 0
    for name, m in prunable_weights(pruned):
        original = layers[name].weight.detach()
        keep = original.abs() > threshold
        assert torch.equal(m.weight != 0, keep), name
        assert torch.equal(m.weight[keep], original[keep])
        total_zeros += int((m.weight == 0).sum())
    assert total_zeros == k
    assert weight_sparsity(pruned)["total"] == pytest.approx(s, abs=1e-6)
    # the layers end up with different sparsities (that is the point of global pruning)
    per_layer = [v for key, v in weight_sparsity(pruned).items() if key != "total"]
    assert max(per_layer) - min(per_layer) > 0.1


def test_pruning_leaves_the_caller_model_alone_and_sparsity_zero_is_unpruned():
    model = narrow()
    model.train()
    with gradmask.attach(model, gradmask.GradientMask(groups=4)) as handle:
        state = copy.deepcopy(model.state_dict())
        x, y = data(n=20, size=16, classes=10)
        loader = [(x[:10], y[:10]), (x[10:], y[10:])]
        curve = pruning_curve(model, loader, [0, 0.5, 0.9], scheme="global")
        assert model.training and handle.enabled and mask_handles(model) == [handle]
        pruned = prune_model(model, 0.5)
        assert mask_handles(pruned) == []  # the copy carries no mask hooks
    assert set(model.state_dict()) == set(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_pre_hooks for m in model.modules())
    unpruned, n = accuracy(model, loader)
    assert n == 20 and curve.n_images == 20
    assert [s for s, _ in curve] == [0.0, 0.5, 0.9]
    assert curve[0][1] == unpruned
    assert curve.achieved[1] == pytest.approx(0.5, abs=1e-5) and curve.achieved[2] == pytest.approx(0.9, abs=1e-5)


def test_pruning_errors():
    model = TinyNet()
    with pytest.raises(ValueError, match="sparsities"):
        pruning_curve(model, [], [0, 1.0])
    with pytest.raises(ValueError, match="sparsities"):
        pruning_curve(model, [], [-0.1])
    with pytest.raises(ValueError, match="scheme"):
        pruning_curve(model, [], [0.5], scheme="local")


def test_batchnorm_recalibration_is_optional():
    model = TinyNet().eval()
    x, _ = data(n=16)
    pruned = prune_model(model, 0.5, scheme="layer")
    torch.testing.assert_close(pruned.bn.running_mean, model.bn.running_mean)  # off by default
    zeros = torch.zeros(8, dtype=torch.long)
    loader = [(x[:8], zeros), (x[8:], zeros)]
    recal = prune_model(model, 0.5, scheme="layer", recalibrate_bn=loader)
    with torch.no_grad():
        h = recal.conv1(recal.normalize(x))
    # equal batches, cumulative average: the mean of the two batch means = the mean over all 16
    torch.testing.assert_close(recal.bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert recal.bn.momentum == model.bn.momentum and not recal.training
    with pytest.raises(ValueError, match="no images"):
        recalibrate_batchnorm(copy.deepcopy(model), [])
