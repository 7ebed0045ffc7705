"""Default targets found by structure: residual blocks of every family, their limits and fallbacks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradmask
from gradmask import GradientMask
from gradmask.hooks import default_targets, is_residual_block, residual_blocks
from gradmask.models import BasicBlock, Bottleneck


def legacy_default_targets(model, skip_last):
    """The rule before structure discovery (registered BasicBlock / Bottleneck in module order)."""
    blocks = [n for n, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]
    return blocks[: max(len(blocks) - skip_last, 0)]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet18_narrow"])
@pytest.mark.parametrize("skip_last", [0, 1, 2, 3])
def test_project_resnets_keep_their_stored_default_targets(name, skip_last):
    model = gradmask.create_model(name, 10)
    assert list(default_targets(model, skip_last)) == legacy_default_targets(model, skip_last)


def test_resnet18_default_targets_by_name():
    assert list(default_targets(gradmask.create_model("resnet18_narrow", 10))) == [
        "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert list(default_targets(gradmask.create_model("resnet18", 10), skip_last=5)) == [
        "layer1.0", "layer1.1", "layer2.0"]


FAMILIES = {
    "convnext_micro": [f"stages.{s}.{b}" for s in range(4) for b in (1, 2)],
    "mobilenetv2_micro": ["blocks.0", "blocks.2", "blocks.4", "blocks.6"],
    "efficientnet_micro": ["blocks.0", "blocks.2", "blocks.4", "blocks.6"],
    "regnet_micro": ["stages.0.0", "stages.1.0", "stages.1.1", "stages.2.0", "stages.2.1", "stages.3.0"],
    "vit_tiny": [f"blocks.{i}" for i in range(6)],
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_found_by_structure_and_a_masked_step_runs(name):
    torch.manual_seed(0)
    model = gradmask.create_model(name, 10)
    assert list(residual_blocks(model)) == FAMILIES[name]
    size = 32 if name == "vit_tiny" else 16
    x, y = torch.rand(2, 3, size, size), torch.tensor([1, 2])
    F.cross_entropy(model(x), y).backward()
    vanilla = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with gradmask.attach(model, GradientMask(groups=8)) as handle:
        F.cross_entropy(model(x), y).backward()
        stats = handle.stats()
    assert list(stats) == FAMILIES[name][:-2]
    assert all(s["calls"] == 1 and 0.3 < s["kept_fraction"] < 0.7 for s in stats.values())
    first = next(n for n, p in model.named_parameters() if p.grad is not None)
    assert not torch.equal(model.get_parameter(first).grad, vanilla[first])  # masked below the targets


def test_inverted_residuals_without_a_skip_are_not_targets():
    model = gradmask.create_model("mobilenetv2_micro", 10)
    for index, block in enumerate(model.blocks):
        assert is_residual_block(block) == block.has_skip == (index in (0, 2, 4, 6))


# --- block forms -----------------------------------------------------------------------------

def conv(c=4):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return x + self.f(x)


class PostActivationInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.act = conv(), nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.f(x)
        out += x
        return self.act(out)


class FunctionalReluTorchAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return F.relu(torch.add(self.f(x), x))


class MethodAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return x.add(self.f(x))


class LayerScaleDropPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.drop_path = conv(), nn.Dropout(0.1)
        self.gamma = nn.Parameter(torch.full((4, 1, 1), 1e-6))

    def forward(self, x):
        return x + self.drop_path(self.gamma * self.f(x))


class Projection(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.proj = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(4, 8, 1))

    def forward(self, x):
        return self.proj(x) + self.f(x)


class PreActivation(nn.Module):
    """Pre-activation ResNet: the projection takes ``relu(bn(x))``."""

    def __init__(self):
        super().__init__()
        self.bn, self.f, self.shortcut = nn.BatchNorm2d(4), conv(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        out = F.relu(self.bn(x))
        return self.shortcut(out) + self.f(out)


class PreNormTransformer(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.norm1, self.mix, self.norm2, self.mlp = nn.LayerNorm(d), nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        x = x + self.mix(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ExtraInput(nn.Module):
    """``forward(x, scale)``: the first input is the block's input."""

    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x, scale=None):
        return x + self.f(x) * (1.0 if scale is None else scale)


RESIDUAL = [Plain, PostActivationInPlace, FunctionalReluTorchAdd, MethodAdd, LayerScaleDropPath, Projection,
            PreActivation, PreNormTransformer, ExtraInput]


@pytest.mark.parametrize("block", RESIDUAL, ids=lambda c: c.__name__)
def test_blocks_that_return_input_plus_branch_are_residual(block):
    assert is_residual_block(block())


class NoSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return self.f(x)


class AddsAParameter(nn.Module):
    """``f(x) + bias``: the second operand does not depend on the input."""

    def __init__(self):
        super().__init__()
        self.f, self.bias = conv(), nn.Parameter(torch.zeros(4, 1, 1))

    def forward(self, x):
        return self.f(x) + self.bias


class Gate(nn.Module):
    """Squeeze-excite: ``x * g(x)`` is not a sum."""

    def __init__(self):
        super().__init__()
        self.g = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.g(x.mean((2, 3), keepdim=True)))


class ParameterOnlyBranch(nn.Module):
    """ConvNeXt-V2's GRN: ``x + (gamma * (x * n(x)) + beta)`` with no submodule on the branch."""

    def __init__(self):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.zeros(1, 4, 1, 1)), nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.inner = nn.Identity()

    def forward(self, x):
        n = x.norm(dim=(2, 3), keepdim=True)
        return self.inner(x) + torch.addcmul(self.beta, self.gamma, x * n)


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return x + self.f(x), x


class SecondInputPlusBranch(nn.Module):
    """``y + f(x)``: the sum's shortcut is not the block's (first) input."""

    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x, y):
        return y + self.f(x)


class DataDependent(nn.Module):
    """Does not trace (control flow on a tensor value); not ResNet-shaped either."""

    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        return x + self.f(x) if x.sum() > 0 else x


NOT_RESIDUAL = [NoSkip, AddsAParameter, Gate, ParameterOnlyBranch, ReturnsTuple, SecondInputPlusBranch, DataDependent]


@pytest.mark.parametrize("block", NOT_RESIDUAL, ids=lambda c: c.__name__)
def test_other_modules_are_not_residual(block):
    assert not is_residual_block(block())


class DataDependentResNetShaped(nn.Module):
    """Does not trace; the attribute rule (``conv1``, ``conv2``, ``downsample``) decides."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.downsample = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), None

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if out.sum() > 0 else out


def test_untraceable_blocks_fall_back_to_registered_types_and_the_attribute_rule(monkeypatch):
    assert is_residual_block(DataDependentResNetShaped())
    assert not is_residual_block(DataDependent())
    monkeypatch.setattr(gradmask.hooks, "_RESIDUAL_BLOCK_TYPES", list(gradmask.hooks._RESIDUAL_BLOCK_TYPES))
    gradmask.register_residual_block(DataDependent)
    assert is_residual_block(DataDependent()) and is_residual_block(NoSkip()) is False


class Stage(nn.Module):
    """A residual stage around blocks: ``x + blocks(x)``."""

    def __init__(self, inner):
        super().__init__()
        self.blocks = nn.Sequential(inner(), inner())

    def forward(self, x):
        return x + self.blocks(x)


def test_nested_residual_modules_give_the_innermost_blocks():
    model = nn.Sequential(Stage(Plain), Stage(NoSkip), nn.Conv2d(4, 4, 1))
    assert list(residual_blocks(model)) == ["0.blocks.0", "0.blocks.1", "1"]
    assert list(residual_blocks(Plain())) == [""]  # a block on its own is its own target


class Caching(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = conv()

    def forward(self, x):
        self.last_input = x
        return x + self.f(x)


def test_tracing_leaves_no_attribute_behind():
    block = Caching()
    assert is_residual_block(block)
    assert not hasattr(block, "last_input") and set(vars(block)) == set(vars(Caching()))


def test_a_model_without_residual_blocks_gets_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), NoSkip(), Gate(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"Sequential has no residual blocks.*pass targets=\[\.\.\.\]"):
        gradmask.attach(model, GradientMask())


def test_attaching_a_module_twice_is_an_error_naming_it():
    model = gradmask.create_model("resnet18_narrow", 10)
    first = gradmask.attach(model, GradientMask(groups=4))
    with pytest.raises(ValueError, match=r"target 'layer2\.0' \(BasicBlock\) already has a gradient mask"):
        gradmask.attach(model, GradientMask(groups=4), targets=["layer2.0"])
    first.enabled = False  # switched off is still attached
    with pytest.raises(ValueError, match="already has a gradient mask"):
        gradmask.attach(model, GradientMask(groups=4), targets=["layer1.*"])
    gradmask.attach(model, GradientMask(groups=4), targets=["layer4.0"]).remove()  # another module: fine
    first.remove()
    gradmask.attach(model, GradientMask(groups=4), targets=["layer2.0"]).remove()
    first.reattach()
    with pytest.raises(ValueError, match="remove\\(\\) it before reattach"):
        first.reattach()
    assert len(gradmask.hooks.mask_handles(model)) == 1


# --- torchvision / timm (where they import: the GPU machine has both) ----------------------------

def _masked_step(model, size):
    handle = gradmask.attach(model, GradientMask(groups=8))
    x = torch.rand(2, 3, size, size)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    stats = handle.stats()
    handle.remove()
    assert stats and all(s["calls"] == 1 and 0 < s["kept_fraction"] < 0.7 for s in stats.values())
    return stats


TIMM = [("resnet50", {}, 16, "Bottleneck", 128), ("convnext_tiny", {}, 18, "ConvNeXtBlock", 128),
        ("mobilenetv3_large_100", {}, 10, None, 128), ("efficientnet_b0", {}, 9, "InvertedResidual", 128),
        ("vit_small_patch16_224", {"img_size": 64}, 12, "Block", 64)]


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,blocks,block_type,size", TIMM, ids=[t[0] for t in TIMM])
def test_timm_families(name, kwargs, blocks, block_type, size):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    found = residual_blocks(model)
    assert len(found) == blocks
    assert block_type is None or {type(m).__name__ for m in found.values()} == {block_type}
    stats = _masked_step(model, size)
    assert len(stats) == blocks - 2
    if name.startswith("vit"):
        assert all(s["shape"] == (2, 384, 4, 4) for s in stats.values())  # the patch grid


TORCHVISION = [("resnet50", {}, 16, "Bottleneck", 128), ("convnext_tiny", {}, 18, "CNBlock", 128),
               ("mobilenet_v3_large", {}, 10, "InvertedResidual", 128),
               ("efficientnet_b0", {}, 9, "MBConv", 128), ("vit_b_16", {"image_size": 64}, 12, "EncoderBlock", 64)]


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,blocks,block_type,size", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_families(name, kwargs, blocks, block_type, size):
    try:
        import torchvision.models as tvm
    except Exception as exc:  # noqa: BLE001 - torchvision fails at import on CPU-only torch builds
        pytest.skip(f"torchvision does not import: {exc}")
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, num_classes=5, **kwargs)
    found = residual_blocks(model)
    assert len(found) == blocks and {type(m).__name__ for m in found.values()} == {block_type}
    stats = _masked_step(model, size)
    assert len(stats) == blocks - 2
