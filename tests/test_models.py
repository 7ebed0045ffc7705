"""Every registered model honours one contract: images in [0, 1] -> logits, default targets."""
import pytest
import torch
import torch.nn.functional as F

import gradmask
from gradmask.hooks import residual_blocks

BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet18_narrow": 8, "convnext_micro": 8,
          "mobilenetv2_micro": 4, "efficientnet_micro": 4, "regnet_micro": 6, "vit_tiny": 6}
IMAGE_SIZE = {("vit_tiny", "imagenet"): 224}  # the ViT's position embedding fixes its image size


@pytest.mark.parametrize("name", gradmask.list_models())
@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 128)])
def test_contract(name, stem, size):
    torch.manual_seed(0)
    model = gradmask.create_model(name, num_classes=7, stem=stem)
    size = IMAGE_SIZE.get((name, stem), size)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=16 if name != "resnet18_narrow" else 8))
    assert len(residual_blocks(model)) == BLOCKS[name]
    assert len(handle.targets) == BLOCKS[name] - 2
    out = model(x)
    assert out.shape == (2, 7)
    F.cross_entropy(out, torch.tensor([0, 6])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(s["calls"] == 1 for s in handle.stats().values())


def test_normalisation_is_the_first_layer():
    model = gradmask.create_model("resnet18_narrow", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model.normalize(x), (x - 0.5) / 0.25)


def test_cifar_stem_keeps_resolution_imagenet_stem_divides_by_four():
    cifar = gradmask.create_model("resnet18_narrow", 10, stem="cifar")
    imagenet = gradmask.create_model("resnet18_narrow", 10, stem="imagenet")
    x = torch.rand(1, 3, 32, 32)
    assert cifar.stem(x).shape[-1] == 32 and imagenet.stem(x).shape[-1] == 8


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        gradmask.create_model("resnet19", 10)
    with pytest.raises(ValueError, match="stem must be"):
        gradmask.create_model("resnet18", 10, stem="vit")
    with pytest.raises(ValueError, match="needs the package 'not_a_pkg'"):
        gradmask.models._external("not_a_pkg:x", 10, (0.5,) * 3, (0.5,) * 3)


def test_normalized_wraps_a_user_model():
    inner = torch.nn.Conv2d(3, 2, 1)
    wrapped = gradmask.Normalized(inner, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(wrapped(x), inner(x * 2 - 1))


def test_each_registry_entry_states_its_default_groups(monkeypatch):
    """resnet18/34/50: the paper's K=16; the narrow, micro and ViT test models: 4 (what they trained with before
    the registry held K); names without an entry: the library default 16."""
    from gradmask import models
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    monkeypatch.setattr(models, "_GROUPS", dict(models._GROUPS))
    assert {name: models.model_groups(name) for name in models.list_models()} == {
        "resnet18": 16, "resnet34": 16, "resnet50": 16, "resnet18_narrow": 4, "convnext_micro": 4,
        "mobilenetv2_micro": 4, "efficientnet_micro": 4, "regnet_micro": 4, "vit_tiny": 4}
    assert models.model_groups("torchvision:resnet18") == models.model_groups("timm:resnet18") == 16

    @models.register_model
    def plain_net(**kw):
        return None

    @models.register_model(groups=2)
    def small_net(**kw):
        return None

    assert (models.model_groups("plain_net"), models.model_groups("small_net")) == (16, 2)
    with pytest.raises(ValueError, match="groups must be an integer >= 1"):
        models.register_model(groups=0)
