"""gradmask.attach: targets, hooks, exact gradients, autocast, channels_last, DDP."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from mask_reference import RecordingMask, grads, run_step
from torch import nn

import gradmask
from gradmask import GradientMask


def small_resnet(seed=0, **kw):
    torch.manual_seed(seed)
    return gradmask.create_model("resnet18_narrow", 10, stem="cifar", **kw)


def test_weight_gradient_is_the_sum_over_kept_positions_eq7(device):
    """One conv target, dL/da = R: dL/dw = sum over kept (n, i, j) of R * input patch."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False).double().to(device)
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64).to(device)
    upstream = torch.randn(3, 4, 7, 6, dtype=torch.float64).to(device)
    gm = GradientMask(groups=2)
    with gradmask.attach(conv, gm, targets=[conv]):
        (conv(x) * upstream).sum().backward()
    keep = gm.mask(upstream)
    patches = F.unfold(x, 3, padding=1)  # (N, 2*3*3, H*W)
    kept_upstream = (upstream * keep).flatten(2)  # (N, 4, H*W)
    by_hand = torch.einsum("ncp,nkp->ck", kept_upstream, patches).view_as(conv.weight)
    torch.testing.assert_close(conv.weight.grad, by_hand, rtol=1e-12, atol=1e-12)
    unmasked = torch.einsum("ncp,nkp->ck", upstream.flatten(2), patches).view_as(conv.weight)
    assert not torch.allclose(conv.weight.grad, unmasked)


def test_remove_restores_exact_vanilla_gradients(device):
    model = small_resnet().to(device)
    x, y = torch.rand(4, 3, 16, 16).to(device), torch.randint(0, 10, (4,)).to(device)
    vanilla = run_step(model, x, y)
    handle = gradmask.attach(model, GradientMask())
    masked = run_step(model, x, y)
    assert not torch.equal(masked["layer1.0.conv1.weight"], vanilla["layer1.0.conv1.weight"])
    assert torch.equal(masked["fc.weight"], vanilla["fc.weight"])  # nothing masked above layer3
    handle.enabled = False
    assert all(torch.equal(v, vanilla[k]) for k, v in run_step(model, x, y).items())
    handle.enabled = True
    handle.remove()
    assert all(torch.equal(v, vanilla[k]) for k, v in run_step(model, x, y).items())
    assert all(not m._forward_hooks for m in model.modules())


def test_context_manager_removes_hooks_and_counts_calls(device):
    model = small_resnet().to(device)
    x, y = torch.rand(2, 3, 16, 16).to(device), torch.randint(0, 10, (2,)).to(device)
    with gradmask.attach(model, GradientMask(inhibition_rate=0.25)) as handle:
        run_step(model, x, y)
        run_step(model, x, y)
        with torch.no_grad():
            model(x)  # no backward, no call
        stats = handle.stats()
    assert list(stats) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert stats["layer2.0"]["calls"] == 2 and stats["layer2.0"]["shape"] == (2, 32, 8, 8)
    n = 8 * 8
    assert stats["layer2.0"]["kept_fraction"] == pytest.approx((n - 1 - int(0.25 * (n - 1))) / n, abs=0.02)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("mode", ["lateral", "pixel"])
def test_kept_fraction_is_kept_positions_over_all_positions_of_all_calls(mode, device):
    """stats() weighs calls by size: batches of 3 and 1, the second with ties (a zero gradient)."""
    model = small_resnet().to(device)
    gm = RecordingMask(groups=4, mode=mode, inhibition_rate=0.3)
    with gradmask.attach(model, gm, targets=["layer2.0"]) as handle:
        run_step(model, torch.rand(3, 3, 16, 16).to(device), torch.randint(0, 10, (3,)).to(device))
        model.zero_grad(set_to_none=True)
        (model(torch.rand(1, 3, 16, 16).to(device)).sum() * 0.0).backward()  # all-zero gradient: every score ties
        kept = handle.stats()["layer2.0"]["kept_fraction"]
    (_, first), (_, second) = gm.seen
    assert second.all()  # no position above the threshold: the tie rule keeps the whole map
    channels = 32 // first.shape[1]
    expected = (first.sum() + second.sum()).item() * channels / (4 * 32 * 8 * 8)
    assert kept == pytest.approx(expected, rel=1e-12) and first.double().mean().item() < kept < 1


def test_default_targets_every_residual_block_but_last_two():
    assert list(gradmask.default_targets(gradmask.create_model("resnet50", 10))) == (
        [f"layer1.{i}" for i in range(3)] + [f"layer2.{i}" for i in range(4)]
        + [f"layer3.{i}" for i in range(6)] + ["layer4.0"])
    assert len(gradmask.default_targets(gradmask.create_model("resnet34", 10))) == 14


class ForeignBlock(nn.Module):
    """Shaped like torchvision's BasicBlock (conv1, conv2, downsample), with in-place ops."""

    def __init__(self, c, inplace=True):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=inplace)
        self.downsample = None
        self.inplace = inplace

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.relu(out)


def foreign_net(inplace):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=inplace),
                         *[ForeignBlock(16, inplace) for _ in range(4)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).double()


def test_structural_blocks_and_in_place_relu_give_the_out_of_place_gradients(device):
    x, y = torch.rand(3, 3, 8, 8, dtype=torch.float64).to(device), torch.tensor([0, 1, 2]).to(device)
    results = []
    for inplace in (True, False):
        model = foreign_net(inplace).to(device)
        # default targets: the 4 structural blocks minus the last two; plus a conv followed by in-place ReLU
        handle = gradmask.attach(model, GradientMask(groups=4))
        assert list(handle.targets) == ["2", "3"]
        conv_handle = gradmask.attach(model, GradientMask(groups=4), targets=["0"])
        results.append(run_step(model, x, y))
        assert conv_handle.stats()["0"]["calls"] == 1
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    plain = foreign_net(True).to(device)
    assert not torch.equal(run_step(plain, x, y)["0.weight"], results[0]["0.weight"])


def attached_targets(model, targets):
    with gradmask.attach(model, GradientMask(), targets=targets) as handle:
        return list(handle.targets)


def test_targets_by_name_pattern_type_and_module():
    model = small_resnet()
    assert attached_targets(model, ["layer1.0", "layer2"]) == ["layer1.0", "layer2"]
    assert attached_targets(model, ["layer*.1"]) == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert len(attached_targets(model, [gradmask.models.BasicBlock])) == 8
    assert attached_targets(model, [model.layer3]) == ["layer3"]


def test_bad_targets_raise_clear_errors():
    model = small_resnet()
    with pytest.raises(ValueError, match="'layer9' matches no module"):
        gradmask.attach(model, GradientMask(), targets=["layer9"])
    with pytest.raises(ValueError, match="no residual blocks.*targets="):
        gradmask.attach(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), GradientMask())
    handle = gradmask.attach(model, GradientMask(), targets=["fc"])
    with pytest.raises(ValueError, match=r"target 'fc' \(Linear\) must output a 4-D floating-point tensor"):
        model(torch.rand(1, 3, 16, 16))
    handle.remove()
    gradmask.attach(model, GradientMask(groups=3), targets=["layer1.0"])
    with pytest.raises(ValueError, match="groups=3 must divide the channel count C=16"):
        run_step(model, torch.rand(1, 3, 16, 16), torch.tensor([1]))


def test_autocast_bf16(device):
    model = small_resnet().to(device)
    gm = RecordingMask()
    x, y = torch.rand(4, 3, 16, 16).to(device), torch.randint(0, 10, (4,)).to(device)
    with gradmask.attach(model, gm) as handle:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    assert len(gm.seen) == 6 and all(g.dtype == torch.bfloat16 for g, _ in gm.seen)
    for g, keep in gm.seen:
        assert torch.equal(GradientMask().keep_map(g), keep)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(abs(s["kept_fraction"] - 0.5) < 0.02 for s in handle.stats().values())


def test_fp16_grad_scaler_skips_a_step_with_an_inf_gradient_at_a_target(device):
    """fp16 autocast with torch.amp.GradScaler: a finite step updates the weights; an inf in the
    gradient reaching a target is not masked into something finite, so the scaler finds it, skips
    the optimizer step (weights unchanged) and halves its scale."""
    model = small_resnet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    inject = []

    def put_inf(module, inputs, output):  # registered before attach: its tensor hook runs first
        if inject:
            output.register_hook(lambda g: g.index_put((torch.zeros(1, dtype=torch.long, device=g.device),) * 4,
                                                       torch.tensor(float("inf"), dtype=g.dtype, device=g.device)))

    model.layer2[0].register_forward_hook(put_inf)
    gm = RecordingMask(groups=4)
    gradmask.attach(model, gm)
    x, y = torch.rand(4, 3, 16, 16).to(device), torch.randint(0, 10, (4,)).to(device)
    for with_inf in (False, True):
        inject[:] = [True] if with_inf else []
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        scale = scaler.get_scale()
        with torch.autocast(device, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        upstream_finite = torch.isfinite(model.layer1[0].conv1.weight.grad).all().item()
        scaler.step(optimizer)
        scaler.update()
        unchanged = all(torch.equal(p, before[k]) for k, p in model.named_parameters())
        assert upstream_finite != with_inf and unchanged == with_inf
        assert scaler.get_scale() == (scale / 2 if with_inf else scale)
    assert len(gm.seen) == 12 and all(g.dtype == torch.float16 for g, _ in gm.seen)
    # backward order: layer3.1, layer3.0, layer2.1 finite; layer2.0 got the inf, layer1.* what it let through
    assert [bool(torch.isfinite(g).all()) for g, _ in gm.seen[6:]] == [True] * 3 + [False] * 3


def test_channels_last_model_gets_the_same_gradients(device):
    x, y = torch.rand(3, 3, 16, 16, dtype=torch.float64).to(device), torch.randint(0, 10, (3,)).to(device)
    reference = small_resnet().double().to(device)
    cl = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    gradmask.attach(reference, GradientMask())
    gm = RecordingMask()
    gradmask.attach(cl, gm)
    expected = run_step(reference, x, y)
    got = run_step(cl, x.contiguous(memory_format=torch.channels_last), y)
    assert any(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g, _ in gm.seen)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-12)


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = small_resnet()
        gm = RecordingMask()
        gradmask.attach(model, gm)
        ddp = nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(123)
        x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
        shard = slice(rank * 4, (rank + 1) * 4)
        F.cross_entropy(ddp(x[shard]), y[shard]).backward()
        torch.save({"masks": [k for _, k in gm.seen], "grads": grads(model)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_masks_equal_single_process_on_each_shard(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(123)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    shard_grads = []
    for rank in range(2):
        model = small_resnet()
        gm = RecordingMask()
        gradmask.attach(model, gm)
        shard = slice(rank * 4, (rank + 1) * 4)
        shard_grads.append(run_step(model, x[shard], y[shard]))
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(result["masks"]) == 6
        for ddp_keep, (_, keep) in zip(result["masks"], gm.seen):
            assert torch.equal(ddp_keep, keep)
    ddp_grads = torch.load(tmp_path / "rank0.pt")["grads"]
    for k, g in ddp_grads.items():
        torch.testing.assert_close(g, (shard_grads[0][k] + shard_grads[1][k]) / 2, rtol=1e-4, atol=1e-6)


def test_double_star_pattern_crosses_dots():
    model = small_resnet()
    names = list(gradmask.attach(model, GradientMask(), targets=["layer2.**.conv*"]).targets)
    assert names == ["layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]


def test_stats_report_the_mean_energy_share_kept_per_call():
    model = small_resnet()
    gm = GradientMask(groups=4)
    seen = []
    original = gm.apply

    def recording(grad):
        result = original(grad)
        seen.append(float(result.energy_kept))
        return result

    gm.apply = recording
    with gradmask.attach(model, gm, targets=["layer2.0"]) as handle:
        for seed in range(2):
            torch.manual_seed(seed)
            F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        stats = handle.stats()["layer2.0"]
    assert len(seen) == 2 and stats["energy_kept"] == pytest.approx(sum(seen) / 2)
    assert stats["kept_fraction"] < stats["energy_kept"] < 1
