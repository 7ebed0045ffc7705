"""--augment li-blur: Algorithm 2 inside training, with the gradient mask off for the LI map."""
import torch

import gradmask
from gradmask.hooks import mask_handles, no_gradient_mask
from gradmask.train import TrainConfig
from gradmask.train.augment import build_augment


def test_li_blur_batch_augment_blurs_some_images_with_the_mask_off():
    torch.manual_seed(0)
    model = gradmask.create_model("resnet18_narrow", 10).train()
    handle = gradmask.attach(model, gradmask.GradientMask(groups=4))
    augment = build_augment(TrainConfig(augment="li-blur"))
    assert augment.crop_flip and augment.batch is not None
    images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    out = augment.batch(images, labels, model)
    changed = (out != images).flatten(1).any(dim=1)
    assert 0 < changed.sum() < 8  # rate 0.5: some images blurred, not all
    assert all(s["calls"] == 0 for s in handle.stats().values())  # the mask never ran
    assert handle.enabled and model.training


def test_no_gradient_mask_finds_and_restores_handles():
    model = gradmask.create_model("resnet18_narrow", 10)
    a = gradmask.attach(model, gradmask.GradientMask(groups=4))
    b = gradmask.attach(model, gradmask.GradientMask(groups=4), targets=["layer4.0"])
    b.enabled = False
    assert mask_handles(model) == [a, b] or mask_handles(model) == [b, a]
    with no_gradient_mask(model) as found:
        assert len(found) == 2 and not a.enabled and not b.enabled
    assert a.enabled and not b.enabled
    a.remove(), b.remove()
    assert mask_handles(model) == []
