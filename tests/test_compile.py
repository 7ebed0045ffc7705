"""torch.compile with the mask: the hooks and the operator traced into the graphs (no graph break,
as many graphs as without the mask), masks, gradients and statistics equal to eager, schedules
recompile nothing, attach / remove after compiled calls take effect."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import gradmask
from gradmask import GradientMask
from gradmask.cli import main


@pytest.fixture
def operator_calls(monkeypatch):
    """``(gradient, rate)`` of every call of the operator's kernel (``GradientMask._kernel``: eager
    code calls it directly, the compiled graphs through the operator at run time, so this sees
    inside the compiled backward)."""
    seen = []
    kernel = GradientMask._kernel

    def recording(self, grad, rate, generic):
        seen.append((grad.clone(), rate))
        return kernel(self, grad, rate, generic)

    monkeypatch.setattr(GradientMask, "_kernel", recording)
    return seen


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return torch.relu(x + self.f(x))


def tiny_net(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Residual(8), Residual(8), Residual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).to(dtype)


def steps(net, model, x, y, handle=None, rates=(0.5, 0.3)):
    """One step per rate from zeroed gradients (the later ones run compiled code, not the
    compilation); the last step's parameter gradients."""
    for rate in rates:
        if handle is not None:
            handle.gradient_mask.inhibition_rate = rate
        model.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def keep_maps(calls):
    """The compact masks the operator made in ``calls``."""
    return [GradientMask(groups=2, kernel_size=3, inhibition_rate=rate).keep_map(grad) for grad, rate in calls]


def assert_same_masks(got, expected, dtype):
    assert len(got) == len(expected) == 4  # 2 targets, 2 steps
    for (grad, rate), (want_grad, want_rate) in zip(got, expected):
        assert rate == want_rate
        torch.testing.assert_close(grad, want_grad, rtol=1e-12 if dtype == torch.float64 else 1e-5,
                                   atol=0 if dtype == torch.float64 else 1e-9)  # inductor fuses: float32 rounding
    assert all(torch.equal(a, b) for a, b in zip(keep_maps(got), keep_maps(expected)))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_masks_gradients_and_stats_equal_eager(dtype, operator_calls):
    """CPU inductor, the mask attached before or after ``torch.compile``; the rate changes between
    the steps (a schedule) without recompiling."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 8, 8, generator=g, dtype=dtype), torch.tensor([0, 1, 2, 3])
    eager = tiny_net(dtype)
    with gradmask.attach(eager, GradientMask(groups=2, kernel_size=3), skip_last=1) as handle:
        expected_grads = steps(eager, eager, x, y, handle)
        expected_stats = handle.stats()
    expected_calls = list(operator_calls)
    for order in ("before", "after"):
        torch._dynamo.reset()
        counters.clear()
        operator_calls.clear()
        model = tiny_net(dtype)
        if order == "before":
            handle = gradmask.attach(model, GradientMask(groups=2, kernel_size=3), skip_last=1)
            net = torch.compile(model)
        else:
            net = torch.compile(model)
            handle = gradmask.attach(net, GradientMask(groups=2, kernel_size=3), skip_last=1)  # bare model's names
        assert list(handle.targets) == ["1", "2"]
        grads = steps(net, model, x, y, handle)
        handle.remove()
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], order
        assert_same_masks(operator_calls, expected_calls, dtype)
        for k in expected_grads:
            torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-10 if dtype == torch.float64 else 1e-5,
                                       atol=1e-12 if dtype == torch.float64 else 1e-6)
        stats = handle.stats()
        for name in ("1", "2"):
            assert stats[name]["calls"] == 2 and stats[name]["shape"] == expected_stats[name]["shape"]
            assert stats[name]["kept_fraction"] == expected_stats[name]["kept_fraction"]
            assert stats[name]["energy_kept"] == pytest.approx(expected_stats[name]["energy_kept"], rel=1e-6)


@pytest.mark.slow
def test_attach_and_remove_after_compiled_calls_take_effect(operator_calls):
    """Dynamo does not guard on module hooks: attach / remove drop its compiled code (aot_eager here:
    the guards are the backend's concern, not the kernels)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    eager = tiny_net()
    vanilla = steps(eager, eager, x, y)
    with gradmask.attach(eager, GradientMask(groups=2, kernel_size=3), skip_last=1) as handle:
        expected_grads = steps(eager, eager, x, y, handle)
    expected_calls = list(operator_calls)
    operator_calls.clear()
    model = tiny_net()
    net = torch.compile(model, backend="aot_eager")
    steps(net, model, x, y)  # compiled without hooks
    handle = gradmask.attach(model, GradientMask(groups=2, kernel_size=3), skip_last=1)
    grads = steps(net, model, x, y, handle)
    assert_same_masks(operator_calls, expected_calls, torch.float64)
    for k in expected_grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-10, atol=1e-12)
    handle.remove()
    operator_calls.clear()
    grads = steps(net, model, x, y)
    assert not operator_calls
    for k in vanilla:
        torch.testing.assert_close(grads[k], vanilla[k], rtol=1e-10, atol=1e-12)


def compiled_step_counts(model_name, mask):
    """``(graphs, graph breaks, handle stats)`` of two compiled (aot_eager: Dynamo and AOTAutograd,
    forward and backward) SGD steps at inhibition rates 0.5 then 0.3."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = gradmask.create_model(model_name, 10)
    handle = gradmask.attach(model, GradientMask(groups=4)) if mask else None
    net = torch.compile(model, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    steps(net, model, x, y, handle)
    stats = None if handle is None else handle.stats()
    if handle is not None:
        handle.remove()
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), stats


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["resnet18_narrow", "convnext_micro", "vit_tiny"])
def test_the_mask_adds_no_graph_break_and_no_recompile(model_name):
    """As many graphs with the mask as without (one), no graph break forward or backward, and the
    rate set between the two steps took effect (kept fractions 0.5 then 0.7) without a recompile."""
    assert compiled_step_counts(model_name, mask=False)[:2] == (1, 0)
    graphs, breaks, stats = compiled_step_counts(model_name, mask=True)
    assert (graphs, breaks) == (1, 0)
    assert len(stats) >= 4 and all(s["calls"] == 2 and 0.59 < s["kept_fraction"] < 0.61 for s in stats.values())


@pytest.mark.slow
def test_dynamic_shapes_and_no_gradient_mask_under_compile(operator_calls):
    """A smaller last batch (Dynamo's automatic dynamic shapes), then ``no_gradient_mask``: still no
    graph break, the statistics count every masked call, and switching the mask off takes effect."""
    torch._dynamo.reset()
    counters.clear()
    model = tiny_net(torch.float32)
    handle = gradmask.attach(model, GradientMask(groups=2, kernel_size=3), skip_last=1)
    net = torch.compile(model, backend="aot_eager")
    for n in (4, 3, 2):
        F.cross_entropy(net(torch.rand(n, 3, 8, 8)), torch.arange(n) % 4).backward()
    assert [grad.shape[0] for grad, _ in operator_calls] == [4, 4, 3, 3, 2, 2]
    with gradmask.no_gradient_mask(model):
        F.cross_entropy(net(torch.rand(2, 3, 8, 8)), torch.arange(2) % 4).backward()
    assert len(operator_calls) == 6 and not counters["graph_break"]
    stats = handle.stats()["1"]
    assert stats["calls"] == 3 and stats["shape"] == (2, 8, 8, 8) and stats["maps"] == 2 * (4 + 3 + 2)
    handle.remove()


@pytest.mark.slow
def test_cli_train_compile_with_the_mask(tmp_path, monkeypatch):
    """``gradmask train --compile`` with a mask: the engine compiles with static shapes (when the
    graph broke at every target, automatic dynamic shapes made inductor fail on this model's
    grouped convolutions). The aot_eager backend keeps the test fast (inductor's cold C++
    compilation takes minutes on 2 cores); the kernels are inductor's in the first test."""
    calls = []
    compile_ = torch.compile

    def recording_compile(model, **kwargs):
        calls.append(kwargs)
        return compile_(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", recording_compile)
    out = tmp_path / "compiled"
    assert main(["train", "--model", "regnet_micro", "--compile", "--mask", "lateral", "--groups", "4",
                 "--synthetic-train", "64", "--synthetic-test", "32", "--epochs", "1", "--batch-size", "32",
                 "--no-progress", "--out", str(out)]) == 0
    assert calls and all(c.get("dynamic") is False for c in calls)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert list(record["mask_kept"]) == ["stages.0.0", "stages.1.0", "stages.1.1", "stages.2.0"]
    assert all(0.4 < v <= 0.55 for v in record["mask_kept"].values())
