"""CUDA-only checks: the mask on the GPU against the CPU (float32, bf16, fp16), channels_last, the
engine with bf16 / fp16 autocast (GradScaler), no host-device sync in a masked step, torchvision's
and timm's ResNet-50. Every test is skipped without CUDA (the reason says so); the device-generic
tests of the other files add their ``[cuda]`` instances on a GPU machine too.

The tolerance (docs/DESIGN.md, "CUDA"): a CUDA mask equals the CPU mask of the same gradient, in
float32, bf16 and fp16 alike (half gradients are upcast exactly before any arithmetic), except at
positions whose score lies within ``TIE_RTOL`` of the set's largest score from the threshold, and
at no more than ``MAX_TIE_SHARE`` of the positions: the two devices sum the LoG in different orders.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import NO_CUDA
from mask_reference import RecordingMask
from torch import nn

import gradmask
from gradmask import GradientMask
from gradmask.train import TrainConfig, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

TIE_RTOL = 3e-5  # float32 scores are within 4e-6 of float64 ones (x the map's largest score) on either device
MAX_TIE_SHARE = 1e-3


def assert_masks_equal_except_near_ties(gm: GradientMask, grad: torch.Tensor, got: torch.Tensor,
                                        expected: torch.Tensor) -> None:
    """``got`` / ``expected``: keep maps ``(N, G, 1, H, W)`` of ``grad`` (on the CPU). Every
    disagreement sits where the float64 score is within ``TIE_RTOL`` x (the set's largest score)
    of the float64 threshold."""
    scores = gm.scores(grad.double()).flatten(2)                       # (N, G, H*W)
    n = scores.shape[2]
    rank = math.floor(gm.inhibition_rate * (n - 1)) + 1
    threshold = scores.kthvalue(rank, dim=2, keepdim=True).values
    near = (scores - threshold).abs() <= TIE_RTOL * scores.amax(dim=2, keepdim=True)
    differ = (got != expected).flatten(2)
    assert not (differ & ~near).any(), f"{int((differ & ~near).sum())} positions differ away from the threshold"
    assert differ.double().mean() <= MAX_TIE_SHARE


def small_resnet(seed=0):
    torch.manual_seed(seed)
    return gradmask.create_model("resnet18_narrow", 10, stem="cifar")


SHAPES = [(2, 32, 32, 32), (3, 64, 16, 16), (4, 128, 8, 8), (2, 16, 7, 7), (2, 16, 4, 4), (2, 16, 9, 13)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("settings", [dict(), dict(padding="zero"), dict(kernel="authors"),
                                      dict(kernel_size=None), dict(inhibition_rate=0.8)],
                         ids=["default", "zero", "authors", "full-kernel", "rate0.8"])
def test_float32_masks_equal_the_cpu_masks(shape, mode, settings):
    torch.manual_seed(sum(shape))
    grad = torch.randn(*shape)
    gm = GradientMask(groups=4, mode=mode, **settings)
    on_cuda = gm.keep_map(grad.cuda())
    assert on_cuda.is_cuda and on_cuda.dtype == torch.bool
    assert_masks_equal_except_near_ties(gm, grad, on_cuda.cpu(), gm.keep_map(grad))
    assert torch.equal(gm(grad.cuda()).cpu(), grad * gm.mask(grad.cuda()).cpu())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("shape", [(4, 64, 32, 32), (4, 128, 8, 8)], ids=["32x32", "8x8"])
def test_half_precision_masks_equal_the_cpu_masks(dtype, mode, shape):
    torch.manual_seed(1)
    grad = (torch.randn(*shape) * 300).to(dtype)  # GradScaler-sized fp16 gradients
    gm = GradientMask(groups=16, mode=mode)
    on_cuda = gm.keep_map(grad.cuda())
    assert_masks_equal_except_near_ties(gm, grad, on_cuda.cpu(), gm.keep_map(grad))
    masked = gm(grad.cuda())
    assert masked.dtype == dtype and torch.isfinite(masked).all()
    assert torch.equal(masked, grad.cuda() * gm.mask(grad.cuda()))


@pytest.mark.parametrize("mode", ["lateral", "pixel"])
def test_channels_last_model_masks_in_its_layout_like_the_cpu(mode):
    """A channels_last model on CUDA: the hooks get channels_last gradients, mask them like the
    CPU would, and the step's gradients match the contiguous model's."""
    reference = small_resnet().cuda()
    cl = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    x, y = torch.rand(8, 3, 32, 32).cuda(), torch.randint(0, 10, (8,)).cuda()
    results = []
    for model, images in ((reference, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        gm = RecordingMask(groups=4, mode=mode)
        with gradmask.attach(model, gm):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), y).backward()
        results.append((gm, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (_, flat), (gm, flat_cl) = results
    assert len(gm.seen) == 6
    assert sum(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g, _ in gm.seen) >= 4
    for grad, keep in gm.seen:
        assert_masks_equal_except_near_ties(gm, grad.cpu(), keep.cpu(), gm.keep_map(grad.cpu()))
    assert (flat_cl - flat).norm() <= 1e-2 * flat.norm()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_engine_trains_with_autocast_on_cuda(tmp_path, amp):
    """bf16, and fp16 with the engine's GradScaler; channels_last; the mask keeps about half."""
    final = train(TrainConfig.from_dict(dict(train_limit=128, test_limit=64, epochs=1, batch_size=32, lr=0.05,
                                             device="cuda", amp=amp, channels_last=True, mask="lateral", groups=4,
                                             progress=False, out=str(tmp_path))))
    assert final["device"].startswith("cuda") and math.isfinite(final["test_loss"])
    kept = gradmask.train.read_checkpoint(tmp_path)["history"][0]["mask_kept"]
    assert len(kept) == 6 and all(0.45 < v <= 0.5 for v in kept.values())


@pytest.mark.slow
def test_engine_compiled_on_cuda(tmp_path):
    final = train(TrainConfig.from_dict(dict(train_limit=256, test_limit=64, epochs=2, batch_size=64, lr=0.05,
                                             device="cuda", amp="bf16", channels_last=True, compile=True,
                                             mask="lateral", groups=4, progress=False, out=str(tmp_path))))
    kept = gradmask.train.read_checkpoint(tmp_path)["history"][-1]["mask_kept"]
    assert math.isfinite(final["test_loss"]) and all(0.45 < v <= 0.5 for v in kept.values())


def _masked_step(model, optimizer, x, y, autocast: bool, with_optimizer: bool) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
    if with_optimizer:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if with_optimizer:
        optimizer.step()


@pytest.mark.parametrize("mode", ["lateral", "norm", "pixel"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-channels-last"])
@pytest.mark.parametrize("with_optimizer", [False, True], ids=["backward", "sgd-step"])
def test_masked_step_never_synchronises(mode, autocast, with_optimizer):
    """Under ``torch.cuda.set_sync_debug_mode("error")`` any host-device sync raises. After one
    warm-up step (it builds the LoG matrices of each map size: host-to-device copies), forward,
    the masked backward and (separately) SGD's step run without one. GradScaler is left out: its
    ``step`` reads ``found_inf`` on the host by design."""
    model = small_resnet().cuda()
    x, y = torch.rand(16, 3, 32, 32).cuda(), torch.randint(0, 10, (16,)).cuda()
    if autocast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    handle = gradmask.attach(model, GradientMask(groups=4, mode=mode))
    _masked_step(model, optimizer, x, y, autocast, with_optimizer=True)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _masked_step(model, optimizer, x, y, autocast, with_optimizer)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    stats = handle.stats()
    assert all(s["calls"] == 3 and 0.4 < s["kept_fraction"] <= 0.5 for s in stats.values())


def _resnet50(source: str) -> nn.Module:
    pytest.importorskip(source)
    try:
        return gradmask.create_model(f"{source}:resnet50", 10)
    except ValueError as exc:  # the package is there but does not import against this torch
        pytest.skip(str(exc))


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_external_resnet50_default_targets_and_a_masked_step(source):
    """torchvision's / timm's ResNet-50 (Bottleneck blocks found by structure: conv1, conv2,
    downsample): 16 blocks, the default targets all but the last two; one bf16 channels_last
    masked SGD step on the GPU."""
    torch.manual_seed(0)
    model = _resnet50(source).cuda().to(memory_format=torch.channels_last)
    assert len(gradmask.residual_blocks(model)) == 16
    expected = ([f"model.layer1.{i}" for i in range(3)] + [f"model.layer2.{i}" for i in range(4)]
                + [f"model.layer3.{i}" for i in range(6)] + ["model.layer4.0"])
    assert list(gradmask.default_targets(model)) == expected
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(4, 3, 128, 128).cuda().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,)).cuda()
    before = model.model.conv1.weight.detach().clone()
    with gradmask.attach(model, GradientMask(groups=16)) as handle:
        _masked_step(model, optimizer, x, y, autocast=True, with_optimizer=True)
        stats = handle.stats()
    assert list(stats) == expected
    assert all(s["calls"] == 1 and 0.4 < s["kept_fraction"] <= 0.5 for s in stats.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.model.conv1.weight, before)
