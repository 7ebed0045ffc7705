"""torch.compile (CPU inductor) with the mask: same masks and gradients as eager, attached before or after."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradmask
from gradmask import GradientMask
from gradmask.cli import main


class Recording(GradientMask):
    """Keeps every compact mask it made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keeps = []

    def apply(self, grad):
        self.keeps.append(self.keep_map(grad))
        return super().apply(grad)


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return torch.relu(x + self.f(x))


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Residual(8), Residual(8), Residual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).double()


def masked_step(net, model, gm, x, y):
    """Two steps (the second runs the compiled code, not the first compilation) on the same weights."""
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        gm.keeps.clear()
        F.cross_entropy(net(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, list(gm.keeps)


@pytest.mark.slow
def test_attach_before_or_after_compile_equals_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    eager, gm = tiny_net(), Recording(groups=2, kernel_size=3)
    with gradmask.attach(eager, gm, skip_last=1):
        expected_grads, expected_keeps = masked_step(eager, eager, gm, x, y)
    assert len(expected_keeps) == 2
    for order in ("before", "after"):
        model, gm = tiny_net(), Recording(groups=2, kernel_size=3)
        if order == "before":
            handle = gradmask.attach(model, gm, skip_last=1)
            net = torch.compile(model)
        else:
            net = torch.compile(model)
            handle = gradmask.attach(net, gm, skip_last=1)  # the compiled wrapper: names of the bare model
        assert list(handle.targets) == ["1", "2"]
        grads, keeps = masked_step(net, model, gm, x, y)
        handle.remove()
        assert len(keeps) == 2 and all(torch.equal(a, b) for a, b in zip(keeps, expected_keeps)), order
        for k in expected_grads:
            torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-10, atol=1e-12)
        assert handle.stats()["1"]["calls"] == 2


@pytest.mark.slow
def test_attach_and_remove_after_compiled_calls_take_effect():
    """Dynamo does not guard on module hooks: attach / remove drop its compiled code (aot_eager here:
    the guards are the backend's concern, not the kernels)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    eager, gm = tiny_net(), Recording(groups=2, kernel_size=3)
    vanilla = masked_step(eager, eager, gm, x, y)[0]
    with gradmask.attach(eager, gm, skip_last=1):
        expected_grads, expected_keeps = masked_step(eager, eager, gm, x, y)
    model, gm = tiny_net(), Recording(groups=2, kernel_size=3)
    net = torch.compile(model, backend="aot_eager")
    masked_step(net, model, gm, x, y)  # compiled without hooks
    handle = gradmask.attach(model, gm, skip_last=1)
    grads, keeps = masked_step(net, model, gm, x, y)
    assert len(keeps) == 2 and all(torch.equal(a, b) for a, b in zip(keeps, expected_keeps))
    for k in expected_grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-10, atol=1e-12)
    handle.remove()
    grads, keeps = masked_step(net, model, gm, x, y)
    assert not keeps
    for k in vanilla:
        torch.testing.assert_close(grads[k], vanilla[k], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_cli_train_compile_with_the_mask(tmp_path, monkeypatch):
    """``gradmask train --compile`` with a mask: the engine compiles with static shapes (with the
    graph broken at every target, automatic dynamic shapes made inductor fail on this model's
    grouped convolutions). The aot_eager backend keeps the test fast (inductor's cold C++
    compilation of every block graph takes minutes on 2 cores); the kernels are inductor's in
    the test above."""
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
