"""Vision transformers: block outputs (N, T, D) masked on their patch grid, LI-Map, the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F
from mask_reference import run_step
from torch import nn

import gradmask
from gradmask import GradientMask
from gradmask.cli import main
from gradmask.hooks import TokenGrid
from gradmask.models import VisionTransformer


def tiny_vit(seed=0):
    """4x4 patch grid (8x8 images, patch 2), one class token: T = 17, D = 8."""
    torch.manual_seed(seed)
    return VisionTransformer(3, image_size=8, patch_size=2, dim=8, depth=3, heads=2).double()


def on_output_gradient(module, fn):
    """Call ``fn(grad)`` on the gradient of ``module``'s output (its return value replaces it)."""
    def hook(m, inputs, out):
        out.register_hook(fn)
    return module.register_forward_hook(hook)


def by_hand_mask(gm, grad, height, width, prefix):
    """Slow, obvious reference: patch tokens -> (N, H, W, D) -> (N, D, H, W), mask, and back."""
    n, t, d = grad.shape
    patches = grad[:, prefix:].reshape(n, height, width, d).permute(0, 3, 1, 2).contiguous()
    masked = gm(patches).permute(0, 2, 3, 1).reshape(n, height * width, d)
    return torch.cat([grad[:, :prefix], masked], dim=1)


@pytest.mark.parametrize("mode", ["lateral", "pixel"])
def test_parameter_gradients_equal_masking_the_grid_by_hand_float64(mode):
    x, y = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    gm = GradientMask(groups=2, mode=mode)
    reference = tiny_vit()
    manual = on_output_gradient(reference.blocks[0], lambda g: by_hand_mask(gm, g, 4, 4, 1))
    expected = run_step(reference, x, y)
    manual.remove()
    vanilla = run_step(reference, x, y)
    model = tiny_vit()
    with gradmask.attach(model, gm, skip_last=2) as handle:  # 3 blocks: the first is the target
        assert list(handle.targets) == ["blocks.0"]
        got = run_step(model, x, y)
        assert handle.stats()["blocks.0"]["shape"] == (3, 8, 4, 4)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(got["patch_embed.proj.weight"], vanilla["patch_embed.proj.weight"])
    assert torch.equal(got["head.weight"], vanilla["head.weight"])  # above the target: untouched


class Scale(nn.Module):
    """``x * w``: a token target whose input gradient is its (masked) output gradient."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return x * self.w


@pytest.mark.parametrize("grid,prefix", [((4, 4), 1), ((2, 8), 0), ((3, 5), 2)])
def test_prefix_tokens_pass_untouched_and_patches_are_masked_on_the_grid(grid, prefix):
    height, width = grid
    target = Scale()
    tokens = torch.randn(2, prefix + height * width, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(tokens)
    gm = GradientMask(groups=4, kernel_size=3)
    with gradmask.attach(target, gm, targets=[target], token_grid=grid, prefix_tokens=prefix) as handle:
        (target(tokens) * upstream).sum().backward()
        assert handle.stats()[""]["shape"] == (2, 8, height, width)
    assert torch.equal(tokens.grad[:, :prefix], upstream[:, :prefix])
    torch.testing.assert_close(tokens.grad, by_hand_mask(gm, upstream, height, width, prefix), rtol=0, atol=0)
    assert not torch.equal(tokens.grad, upstream)


def test_token_grid_views_round_trip():
    grid = TokenGrid(2, 3, 1)
    tokens = torch.arange(2 * 7 * 4, dtype=torch.float32).view(2, 7, 4)
    maps = grid.to_map(tokens)
    assert maps.shape == (2, 4, 2, 3) and maps.data_ptr() == tokens[:, 1:].data_ptr()  # a view
    assert torch.equal(maps[1, :, 1, 2], tokens[1, 1 + 1 * 3 + 2])  # patch (row 1, col 2)
    assert torch.equal(grid.to_tokens(maps, tokens[:, :1]), tokens)


def test_grid_comes_from_the_model_and_a_square_grid_is_inferred():
    model = gradmask.create_model("vit_tiny", 10)
    assert gradmask.hooks.declared_token_grid(model) == ((8, 8), 1)
    wrapped = gradmask.Normalized(nn.Sequential(nn.Identity(), model), (0.5,) * 3, (0.5,) * 3)
    assert gradmask.hooks.declared_token_grid(wrapped) == ((8, 8), 1)
    target = Scale()
    tokens = torch.randn(1, 16, 4, dtype=torch.float64, requires_grad=True)
    with gradmask.attach(target, GradientMask(groups=2, kernel_size=3), targets=[target]) as handle:
        target(tokens).sum().backward()
        assert handle.stats()[""]["shape"] == (1, 4, 4, 4)


def test_tokens_that_do_not_fit_the_grid_are_clear_errors_at_the_first_forward():
    target = Scale()
    with gradmask.attach(target, GradientMask(groups=2), targets=[target], token_grid=(4, 4), prefix_tokens=1):
        with pytest.raises(ValueError, match=r"target '' \(Scale\) outputs tokens \(2, 20, 8\).*"
                                             r"token_grid=\(4, 4\) and prefix_tokens=1 \(given to attach\) "
                                             r"need T = 17"):
            target(torch.randn(2, 20, 8, dtype=torch.float64))
    with gradmask.attach(target, GradientMask(groups=2), targets=[target]):
        with pytest.raises(ValueError, match=r"T - prefix_tokens = 20 - 0 is not a square grid.*token_grid=\(H, W\)"):
            target(torch.randn(2, 20, 8, dtype=torch.float64))
    model = gradmask.create_model("vit_tiny", 10)
    with gradmask.attach(model, GradientMask(groups=4), targets=["blocks.0"]):
        with pytest.raises(ValueError, match="takes 32x32 images, got 16x16"):
            model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="token_grid must be None or"):
        gradmask.attach(model, GradientMask(), token_grid=(4, 0))
    with pytest.raises(ValueError, match="prefix_tokens must be None or an integer"):
        gradmask.attach(model, GradientMask(), prefix_tokens=-1)


def test_li_map_on_a_vit_uses_the_blocks_on_the_grid():
    torch.manual_seed(0)
    model = gradmask.create_model("vit_tiny", 10).eval()
    li = gradmask.LIMap(model)
    assert list(li.layers) == [f"blocks.{i}" for i in range(6)]
    images = torch.rand(2, 3, 32, 32)
    maps = li(images)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.amax() == 1
    # K = 1: the norm over the embedding at each patch, LoG on the 8x8 grid, per layer, summed
    grads = []
    handles = [on_output_gradient(b, lambda g: grads.append(g)) for b in model.blocks]
    x = images.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    for h in handles:
        h.remove()
    total = sum(F.interpolate(li.filter_for(8, 8)(TokenGrid(8, 8, 1).to_map(g).square().sum(1).sqrt()).abs()
                              .unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False).squeeze(1)
                for g in grads)
    torch.testing.assert_close(li.attribute(images), total, rtol=1e-4, atol=1e-6)


def test_grad_cam_default_layer_on_a_vit_is_its_blocks_on_the_grid():
    from gradmask.saliency.evaluate import default_cam_layer

    torch.manual_seed(0)
    model = gradmask.create_model("vit_tiny", 10).eval()
    assert default_cam_layer(model) == "blocks"
    maps = gradmask.GradCAM(model, target_layer="blocks")(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_cli_trains_vit_tiny_with_the_lateral_mask(tmp_path):
    out = tmp_path / "vit"
    assert main(["train", "--model", "vit_tiny", "--mask", "lateral", "--groups", "4", "--synthetic-train", "96",
                 "--synthetic-test", "32", "--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--no-progress",
                 "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert list(record["mask_kept"]) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert all(0.4 < v <= 0.55 for v in record["mask_kept"].values())
