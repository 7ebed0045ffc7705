"""GSNR: the closed form on a linear model, chunking, identical gradients, BatchNorm, the gradient
mask under vmap (against one masked backward per sample with the real hooks), the summary and the
training probe."""
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradmask
from gradmask.robustness import GSNRProbe, gsnr, gsnr_summary, read_gsnr
from gradmask.robustness.gsnr import DEFAULT_EPS, per_sample_gradients


def closed_form(per_sample: torch.Tensor, eps=DEFAULT_EPS, ddof=1) -> torch.Tensor:
    g = per_sample.to(torch.float64)
    return g.mean(0).square() / (g.var(0, correction=ddof) + eps)


def loop_gradients(model, x, y, loss_fn=F.cross_entropy):
    """Per-sample gradients the slow way: one backward per sample (model as it is, hooks included)."""
    out = {n: [] for n, _ in model.named_parameters()}
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(v) for n, v in out.items()}


def test_linear_model_closed_form():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.randn(20, 6), torch.randint(0, 4, (20,))
    result = gsnr(model, None, x, y)
    # explicit per-sample gradients of the cross-entropy: (softmax - onehot) x^T and (softmax - onehot)
    with torch.no_grad():
        delta = torch.softmax(model(x), 1) - F.one_hot(y, 4)
    expected = {"weight": closed_form(delta[:, :, None] * x[:, None, :]), "bias": closed_form(delta)}
    assert set(result) == {"weight", "bias"} and result.n_samples == 20 and result.masked == []
    for k in expected:
        assert result[k].dtype == torch.float64 and result[k].shape == getattr(model, k).shape
        torch.testing.assert_close(result[k], expected[k], rtol=1e-5, atol=1e-12)
    pop = gsnr(model, None, x, y, ddof=0)
    torch.testing.assert_close(pop["bias"], closed_form(delta, ddof=0), rtol=1e-5, atol=1e-12)
    assert model.weight.grad is None


def test_chunked_equals_unchunked():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(23, 5), torch.randint(0, 3, (23,))
    whole = gsnr(model, None, x, y, chunk_size=64)
    for chunk in (1, 4, 10):
        part = gsnr(model, None, x, y, chunk_size=chunk)
        for k in whole:  # float32 per-sample gradients differ in the last bits between batch sizes
            torch.testing.assert_close(part[k], whole[k], rtol=2e-5, atol=0)
    # float64 gradients: the chunk merging itself is exact to rounding
    model, x = model.double(), x.double()
    whole = gsnr(model, None, x, y, chunk_size=64)
    for chunk in (1, 4, 10):
        part = gsnr(model, None, x, y, chunk_size=chunk)
        for k in whole:
            torch.testing.assert_close(part[k], whole[k], rtol=1e-10, atol=0)


def test_identical_per_sample_gradients_give_a_large_finite_value():
    torch.manual_seed(2)
    model = nn.Linear(3, 2)
    x = torch.randn(9, 3)
    y = torch.zeros(9, dtype=torch.long)
    # loss = sum of the logits: the bias gradient is 1 for every sample, variance exactly 0
    result = gsnr(model, lambda out, target: out.sum(), x, y, chunk_size=4)
    assert torch.isfinite(result["bias"]).all()
    torch.testing.assert_close(result["bias"], torch.full((2,), 1.0 / DEFAULT_EPS, dtype=torch.float64))
    assert torch.isfinite(result["weight"]).all() and float(result["weight"].max()) < 1e6
    zero = gsnr(model, lambda out, target: out[:, :1].sum(), x, y)  # the second row never gets a gradient
    assert float(zero["bias"][1]) == 0.0


def test_errors():
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_size"):
        gsnr(model, None, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="at least 2"):
        gsnr(model, None, x[:1], y[:1])
    with pytest.raises(ValueError, match="targets"):
        gsnr(model, None, x, y[:3])
    with pytest.raises(ValueError, match="params"):
        gsnr(model, None, x, y, params=["nope"])
    with pytest.raises(ValueError, match="gradient_mask"):
        gsnr(model, None, x, y, gradient_mask="on")


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_batchnorm_model_uses_running_statistics_and_restores_mode():
    model = BNNet().train()
    state = copy.deepcopy(model.state_dict())
    x, y = torch.rand(10, 3, 6, 6), torch.randint(0, 3, (10,))
    result = gsnr(model, None, x, y, chunk_size=4)
    assert model.training and model.bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    model.eval()
    reference = loop_gradients(model, x, y)
    for k in result:
        torch.testing.assert_close(result[k], closed_form(reference[k]), rtol=1e-4, atol=1e-10)
    conv_only = gsnr(model, None, x, y, params="conv")
    assert list(conv_only) == ["conv.weight"]


def narrow(seed=0):
    torch.manual_seed(seed)
    model = gradmask.create_model("resnet18_narrow", 10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def assert_gradients_close(actual, expected):
    for k in expected:
        scale = float(expected[k].abs().max()) + 1e-30
        torch.testing.assert_close(actual[k] / scale, expected[k] / scale, rtol=0, atol=2e-5, msg=k)


def test_masked_per_sample_gradients_equal_one_masked_backward_per_sample(device):
    model = narrow().to(device)
    gm = gradmask.GradientMask(groups=4, inhibition_rate=0.5)
    x, y = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([1, 4, 7, 2, 9])
    x, y = x.to(device), y.to(device)
    with gradmask.attach(model, gm) as handle:
        reference = loop_gradients(model, x, y)  # the real hooks, one sample per backward
        assert all(s["calls"] == 5 for s in handle.stats().values())
        handle.reset_stats()
        # gradient_mask="auto": the live handle's mask, applied functionally under vmap
        assert_gradients_close(per_sample_gradients(model, None, x, y, chunk_size=3), reference)
        detected = gsnr(model, None, x, y, chunk_size=3)
        assert handle.enabled and all(s["calls"] == 0 for s in handle.stats().values())
    plain_reference = loop_gradients(model, x, y)
    assert_gradients_close(per_sample_gradients(model, None, x, y, gradient_mask=gm, chunk_size=2), reference)
    assert_gradients_close(per_sample_gradients(model, None, x, y), plain_reference)
    explicit = gsnr(model, None, x, y, gradient_mask=gm, chunk_size=3)
    plain = gsnr(model, None, x, y)
    assert detected.masked == explicit.masked == list(gradmask.default_targets(model))
    assert plain.masked == []
    masked_grads = per_sample_gradients(model, None, x, y, gradient_mask=gm, chunk_size=5)
    one_chunk = gsnr(model, None, x, y, gradient_mask=gm, chunk_size=5)
    for k in reference:
        torch.testing.assert_close(explicit[k], detected[k], rtol=1e-9, atol=0)
        torch.testing.assert_close(one_chunk[k], closed_form(masked_grads[k]), rtol=1e-6, atol=1e-12)
    # the mask changes the gradients upstream of the targets (stem and the masked blocks)
    assert not torch.allclose(detected["stem.0.weight"], plain["stem.0.weight"], rtol=1e-2)
    with gradmask.attach(model, gm) as handle:
        handle.enabled = False  # a switched-off handle is not applied
        assert gsnr(model, None, x, y).masked == []


def test_summary_means_by_layer_and_network():
    result = {"a.weight": torch.tensor([1.0, 3.0], dtype=torch.float64), "a.bias": torch.tensor([5.0]),
              "b.c.weight": torch.ones(2, 3), "scale": torch.tensor([10.0])}
    summary = gsnr_summary(result)
    assert summary == pytest.approx({"a": 3.0, "b.c": 1.0, "scale": 10.0, "network": 25.0 / 10})
    assert list(summary) == ["a", "b.c", "scale", "network"]


def test_probe_records_every_k_epochs(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    images, labels = torch.rand(6, 3, 6, 6), torch.randint(0, 3, (6,))
    probe = GSNRProbe(images, labels, every=2)
    (tmp_path / "gsnr.jsonl").write_text(json.dumps({"epoch": 4, "network": 1.0}) + "\n")
    ctx = SimpleNamespace(is_main=True, epoch=0, model=model, run_dir=SimpleNamespace(path=tmp_path))
    probe.on_train_start(ctx)  # a fresh run: stale records of a previous run dropped
    assert read_gsnr(tmp_path) == []
    records = []
    for epoch in (1, 2, 3, 4):
        ctx.epoch = epoch
        record = {"epoch": epoch}
        probe.on_epoch_end(ctx, record)
        records.append(record)
    rows = read_gsnr(tmp_path)
    assert [r["epoch"] for r in rows] == [2, 4]
    expected = gsnr_summary(gsnr(model, None, images, labels, params="conv"))
    assert rows[0]["network"] == pytest.approx(expected["network"])
    assert rows[0]["layers"] == pytest.approx({"0": expected["0"]}) and rows[0]["n_samples"] == 6
    assert "gsnr_network" not in records[0] and records[1]["gsnr_network"] == pytest.approx(expected["network"])
    ctx.epoch = 2  # resumed from epoch 2: the epoch-4 record goes
    probe.on_train_start(ctx)
    assert [r["epoch"] for r in read_gsnr(tmp_path)] == [2]
    ctx.is_main = False
    ctx.epoch = 4
    probe.on_epoch_end(ctx, {})
    assert [r["epoch"] for r in read_gsnr(tmp_path)] == [2]
    with pytest.raises(ValueError, match="every"):
        GSNRProbe(images, labels, every=0)
    assert not math.isnan(rows[1]["network"])
