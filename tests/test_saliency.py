"""Saliency methods: LI-Map, Grad-CAM, Grad-CAM++ against slow references; the base class's
contract (batching, hooks, modes, gradients, targets, errors)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradmask
from gradmask.laplacian import LoGFilter
from gradmask.models.resnet import Normalize
from gradmask.saliency import GradCAM, GradCAMPlusPlus, LIMap, SaliencyMethod


class TinyNet(nn.Module):
    """conv-relu, conv-bn-relu, conv-relu (the second ReLU module used twice), pool, fc."""

    def __init__(self, inplace=False, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.normalize = Normalize((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU(inplace)
        self.conv3 = nn.Conv2d(8, 10, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, classes)
        with torch.no_grad():  # non-trivial eval-mode BatchNorm
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.relu1(self.conv1(self.normalize(x)))
        x = self.relu2(self.bn(self.conv2(x)))
        x = self.relu2(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(stem="cifar", seed=0):
    torch.manual_seed(seed)
    model = gradmask.create_model("resnet18_narrow", 10, stem=stem)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def images(n=3, size=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def minmax(m):
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else torch.zeros_like(m)


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


# ----------------------------------------------------------------------------------------------
# slow references: one image at a time, autograd.grad, explicit formulas

def relu_outputs(model, x):
    """Forward ``x``; every 4-D output of every nn.ReLU call, in call order, and the logits."""
    outs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outs.append(out))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return [o for o in outs if o.dim() == 4], logits


def limap_reference(model, x, targets=None, sigma=11.0, kernel_size=5, kernel="log"):
    model.eval()
    size = x.shape[-2:]
    maps = []
    for i in range(len(x)):
        acts, logits = relu_outputs(model, x[i:i + 1])
        t = logits[0].argmax() if targets is None else targets[i]
        grads = torch.autograd.grad(logits[0, t], acts)
        total = torch.zeros(size, dtype=torch.float64)
        for g in grads:
            d = g[0].double().square().sum(0).sqrt()  # K = 1: L2 norm over all channels
            h, w = d.shape
            s = min(kernel_size, 2 * min(h, w) - 1)   # the window shrunk to fit a tiny map
            k = torch.from_numpy(LoGFilter(sigma, s, kernel).kernel2d(h, w))
            r = s // 2
            padded = F.pad(d[None, None], (r, r, r, r), mode="reflect") if r else d[None, None]
            delta = F.conv2d(padded, k[None, None]).abs()
            total += F.interpolate(delta, size=size, mode="bilinear", align_corners=False)[0, 0]
        maps.append(minmax(total))
    return torch.stack(maps)


def gradcampp_reference(model, layer, x, targets=None, eps=1e-6):
    model.eval()
    size = x.shape[-2:]
    maps = []
    for i in range(len(x)):
        store = []
        hook = layer.register_forward_hook(lambda mod, inp, out, store=store: store.append(out))
        logits = model(x[i:i + 1])
        hook.remove()
        t = logits[0].argmax() if targets is None else targets[i]
        act = store[0]
        grad = torch.autograd.grad(logits[0, t], act)[0][0].double()
        act = act[0].detach().double()
        channels, h, w = act.shape
        cam = torch.zeros(h, w, dtype=torch.float64)
        for c in range(channels):
            total_a = act[c].sum().item()
            weight = 0.0
            for y in range(h):
                for xx in range(w):
                    g = grad[c, y, xx].item()
                    if g == 0.0:
                        continue
                    alpha = g**2 / (2 * g**2 + total_a * g**3 + eps)
                    weight += alpha * max(g, 0.0)
            cam += weight * act[c]
        cam = F.interpolate(cam.clamp_min(0)[None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0]
        maps.append(minmax(cam))
    return torch.stack(maps)


# ----------------------------------------------------------------------------------------------
# LI-Map

@pytest.mark.parametrize("inplace", [False, True])
def test_limap_matches_reference_tiny_net(inplace, device):
    model = TinyNet(inplace=inplace).double()
    x = images(3, 16, dtype=torch.float64)
    ours = LIMap(copy.deepcopy(model).to(device))(x.to(device)).cpu()
    torch.testing.assert_close(ours, limap_reference(model, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_limap_matches_reference_resnet_32px_tiny_maps(stem, device):
    """ImageNet stem at 32x32: 8x8 .. 1x1 maps (2x2 and 1x1 need the shrunk window)."""
    model = resnet(stem).double()
    x = images(2, 32, dtype=torch.float64)
    targets = torch.tensor([3, 7])
    ours = LIMap(copy.deepcopy(model).to(device))(x.to(device), targets.to(device)).cpu()
    torch.testing.assert_close(ours, limap_reference(model, x, targets), rtol=0, atol=1e-10)


def test_limap_authors_kernel_matches_reference():
    model = TinyNet().double()
    x = images(2, 16, dtype=torch.float64)
    ours = LIMap(model, kernel="authors")(x)
    torch.testing.assert_close(ours, limap_reference(model, x, kernel="authors"), rtol=0, atol=1e-10)


def test_limap_default_layers_count_every_relu_call():
    model = TinyNet()
    sal = LIMap(model)
    assert set(sal.layers) == {"relu1", "relu2"}
    recorded = []
    original = sal.compute
    sal.compute = lambda a, g, s: (recorded.append(len(g)), original(a, g, s))[1]
    sal(images(2))
    assert recorded == [3]  # relu1 once, relu2 twice
    rn = resnet()
    n_blocks = sum(1 for m in rn.modules() if isinstance(m, gradmask.models.BasicBlock))
    sal = LIMap(rn)
    sal.compute = lambda a, g, s: (recorded.append(len(g)), LIMap.compute(sal, a, g, s))[1]
    sal(images(1, 32))
    assert recorded[-1] == 1 + 2 * n_blocks  # stem + two calls of each block's ReLU


def test_limap_output_range_shape_and_explicit_layers():
    model = resnet()
    x = images(3, 32)
    maps = LIMap(model, target_layers=["layer1.0", "layer2.*"])(x)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3))


def test_limap_absolute_sum_equals_layer_for_one_signed_kernel():
    """Every 5x5 tap is negative (sigma=11): sum |delta| == |sum delta|."""
    model = TinyNet().double()
    x = images(2, 16, dtype=torch.float64)
    a = LIMap(model)(x)
    b = LIMap(model, absolute="sum")(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_limap_inplace_relu_equals_out_of_place():
    model = resnet()
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = images(2, 32)
    torch.testing.assert_close(LIMap(model)(x), LIMap(other)(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(GradCAM(model, "layer3")(x), GradCAM(other, "layer3")(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["limap", "gradcam", "gradcampp"])
def test_batch_equals_one_by_one(method, device):
    model = resnet().to(device)
    make = {"limap": lambda: LIMap(model), "gradcam": lambda: GradCAM(model, "layer3.1"),
            "gradcampp": lambda: GradCAMPlusPlus(model, "layer3.1")}[method]
    sal = make()
    x = images(4, 32).to(device)
    targets = torch.tensor([0, 5, 9, 2]).to(device)
    batch = sal(x, targets)
    single = torch.cat([sal(x[i:i + 1], targets[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-4)


def test_default_target_is_predicted_class_and_int_target_broadcasts():
    model = TinyNet()
    x = images(3)
    sal = LIMap(model)
    model.eval()
    predicted = model(x).argmax(1)
    torch.testing.assert_close(sal(x), sal(x, predicted))
    torch.testing.assert_close(sal(x, 2), sal(x, torch.full((3,), 2)))
    torch.testing.assert_close(sal(x, [2, 2, 2]), sal(x, torch.full((3,), 2)))


# ----------------------------------------------------------------------------------------------
# Grad-CAM, Grad-CAM++

@pytest.mark.parametrize("layer", ["conv2", "conv3"])
def test_gradcam_matches_captum(layer):
    pytest.importorskip("captum")
    from captum.attr import LayerGradCam

    model = TinyNet(inplace=False).double().eval()
    x = images(3, 16, dtype=torch.float64)
    targets = torch.tensor([0, 3, 4])
    attr = LayerGradCam(model, getattr(model, layer)).attribute(x, target=targets, relu_attributions=True)
    attr = F.interpolate(attr, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    expected = torch.stack([minmax(a) for a in attr])
    ours = GradCAM(model, layer)(x, targets)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)


def test_gradcam_hand_formula():
    """Without captum: w_c = spatial mean of dP/dA, ReLU(sum_c w_c A_c), bilinear, min-max."""
    model = TinyNet().double().eval()
    x = images(2, 16, dtype=torch.float64)
    store = []
    hook = model.conv3.register_forward_hook(lambda m, i, o: store.append(o))
    logits = model(x)
    hook.remove()
    t = logits.argmax(1)
    grad = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store[0])[0]
    cam = (grad.mean((2, 3), keepdim=True) * store[0]).sum(1).clamp_min(0).detach()
    cam = F.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(GradCAM(model, model.conv3)(x), torch.stack([minmax(c) for c in cam]),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("layer", ["conv2", "relu1"])
def test_gradcampp_matches_slow_reference(layer):
    model = TinyNet().double()
    x = images(2, 16, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    ours = GradCAMPlusPlus(model, layer)(x, targets)
    ref = gradcampp_reference(model, getattr(model, layer), x, targets)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


def test_gradcam_target_layer_by_name_or_module_same():
    model = resnet()
    x = images(2, 32)
    torch.testing.assert_close(GradCAM(model, "layer4")(x), GradCAM(model, model.layer4)(x))


# ----------------------------------------------------------------------------------------------
# the base class's contract

@pytest.mark.parametrize("make", [lambda m: LIMap(m), lambda m: GradCAM(m, "layer2"),
                                  lambda m: GradCAMPlusPlus(m, "layer2.1")])
def test_state_restored_no_hooks_left(make):
    model = resnet()
    model.train()
    model.layer1[0].bn1.eval()                 # a module frozen in eval mode stays so
    model.fc.weight.requires_grad_(False)       # frozen parameter stays frozen
    params = dict(model.named_parameters())
    torch.manual_seed(5)
    for i, p in enumerate(params.values()):
        p.grad = torch.randn_like(p) if i % 2 else None
    before_grads = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
    before_modes = {n: m.training for n, m in model.named_modules()}
    before_flags = {n: p.requires_grad for n, p in params.items()}
    before_stats = model.layer1[0].bn1.running_mean.clone()
    with make(model) as sal:
        sal(images(2, 32))
    assert no_hooks(model)
    assert {n: m.training for n, m in model.named_modules()} == before_modes
    assert {n: p.requires_grad for n, p in params.items()} == before_flags
    for n, p in params.items():
        if before_grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, before_grads[n]), n
    assert torch.equal(model.layer1[0].bn1.running_mean, before_stats)


def test_works_under_no_grad_and_with_frozen_model():
    model = TinyNet()
    for p in model.parameters():
        p.requires_grad_(False)
    x = images(2)
    with torch.no_grad():
        maps = LIMap(model)(x)
    assert maps.shape == (2, 16, 16) and maps.max() == 1


def test_errors_name_the_argument_and_leave_no_hooks():
    model = TinyNet()
    model.train()
    sal = LIMap(model)
    with pytest.raises(ValueError, match="images"):
        sal(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="images"):
        sal(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="images"):
        sal(torch.randint(0, 255, (2, 3, 16, 16)))
    with pytest.raises(ValueError, match="targets"):
        sal(images(2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="targets"):
        sal(images(2), -1)
    with pytest.raises(ValueError, match="targets"):
        sal(images(2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        sal(images(2), torch.tensor([0.0, 1.0]))
    assert no_hooks(model) and model.training
    with pytest.raises(ValueError, match="target_layers"):
        LIMap(model, target_layers=["nope"])
    with pytest.raises(ValueError, match="target_layer"):
        GradCAM(model, "layer9")
    with pytest.raises(ValueError, match="target_layer"):
        GradCAMPlusPlus(model, 3)
    with pytest.raises(ValueError, match="target_layers"):  # a non-spatial output
        LIMap(model, target_layers=["fc"])(images(2))
    assert no_hooks(model) and model.training
    with pytest.raises(ValueError, match="target_layers"):  # no ReLU at all
        LIMap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.LazyLinear(2)))
    with pytest.raises(ValueError, match="sigma"):
        LIMap(model, sigma=0)
    with pytest.raises(ValueError, match="absolute"):
        LIMap(model, absolute="none")


def test_subclass_template_is_small():
    """A new method is a compute(): e.g. gradient-norm maps of the last block."""
    class GradNorm(SaliencyMethod):
        def compute(self, activations, gradients, input_size):
            return F.interpolate(gradients[0].norm(dim=1, keepdim=True), size=input_size)[:, 0]

    maps = GradNorm(resnet(), ["layer3"])(images(2, 32))
    assert maps.shape == (2, 32, 32) and maps.max() == 1 and maps.min() == 0
    # the last block's output feeds global average pooling: its gradient is spatially constant,
    # a constant map normalises to zeros
    assert torch.equal(GradNorm(resnet(), ["layer4"])(images(2, 32)), torch.zeros(2, 32, 32))


def test_a_registered_saliency_method_is_served_by_name():
    """Adding a method is one class with @register_method: make_method and evaluate_localization
    take it by name (a one-layer method gets the default CAM layer)."""
    from gradmask.saliency import SALIENCY_METHODS, GradCAM, LIMap, register_method
    from gradmask.saliency.evaluate import make_method

    assert {"limap", "gradcam", "gradcam++"} <= set(SALIENCY_METHODS)
    model = gradmask.create_model("resnet18_narrow", 10)
    assert isinstance(make_method("limap", model), LIMap)
    try:
        @register_method("test-cam", needs_layer=True)
        class TestCAM(GradCAM):
            pass
        method = make_method("test-cam", model, images=torch.rand(1, 3, 16, 16))
        assert isinstance(method, TestCAM) and len(method.layers) == 1
    finally:
        SALIENCY_METHODS.pop("test-cam", None)
    with pytest.raises(ValueError, match="method must be one of"):
        make_method("test-cam", model)
