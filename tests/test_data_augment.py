"""Batched crop/flip augmentation against a slow per-image reference."""
import pytest
import torch
import torch.nn.functional as F

from gradmask.data import RandomCropFlip, crop_flip, random_crop_flip, sample_crop_flip, to_float


def _images(n=12, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _reference(x, dy, dx, flips, p, mode):
    """Per-image: pad with F.pad, slice, flip."""
    xf = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    h, w = x.shape[2:]
    outs = []
    for i in range(x.shape[0]):
        padded = F.pad(xf[i : i + 1], (p, p, p, p), mode="constant" if mode == "zeros" else "reflect")[0]
        crop = padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        outs.append(crop.flip(2) if flips[i] else crop)
    return torch.stack(outs)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("as_float", [False, True])
def test_crop_matches_per_image_reference(mode, as_float):
    x = _images()
    if as_float:
        x = x.float() / 255
    g = torch.Generator().manual_seed(1)
    dy, dx, flips = sample_crop_flip(x.shape[0], 4, generator=g)
    out = crop_flip(x, dy, dx, flips, 4, mode)
    ref = _reference(x, dy, dx, flips, 4, mode)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.is_contiguous()
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    assert flips.any() and (~flips).any() and (dy != 4).any()  # the sample exercised both paths


def test_extreme_offsets_match_reference():
    x = _images(n=4)
    dy = torch.tensor([0, 8, 0, 8])
    dx = torch.tensor([0, 8, 8, 0])
    flips = torch.tensor([False, True, True, False])
    for mode in ("zeros", "reflect"):
        assert torch.allclose(crop_flip(x, dy, dx, flips, 4, mode), _reference(x, dy, dx, flips, 4, mode))


def test_flip_flips_exactly_the_chosen_images():
    x = _images(n=16)
    g = torch.Generator().manual_seed(5)
    dy, dx, flips = sample_crop_flip(16, 0, generator=g)
    out = crop_flip(x, dy, dx, flips, 0)
    xf = to_float(x)
    for i in range(16):
        assert torch.equal(out[i], xf[i].flip(2) if flips[i] else xf[i])
    assert 0 < int(flips.sum()) < 16


def test_outputs_in_unit_range_and_generator_determinism():
    x = _images(n=64)
    a = random_crop_flip(x, 4, generator=torch.Generator().manual_seed(9))
    b = random_crop_flip(x, 4, generator=torch.Generator().manual_seed(9))
    c = random_crop_flip(x, 4, generator=torch.Generator().manual_seed(10))
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_padding_introduces_black_border():
    x = torch.full((1, 3, 6, 6), 255, dtype=torch.uint8)
    out = crop_flip(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), 2)
    assert out[0, :, :2, :].eq(0).all() and out[0, :, :, :2].eq(0).all() and out[0, :, 2:, 2:].eq(1).all()


def test_no_flip_no_padding_is_identity():
    x = _images()
    aug = RandomCropFlip(padding=0, flip=False)
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), to_float(x))


def test_bad_arguments():
    x = _images(h=4, w=4)
    with pytest.raises(ValueError, match="pad_mode"):
        RandomCropFlip(pad_mode="edge")
    with pytest.raises(ValueError, match="reflect padding"):
        random_crop_flip(x, 4, pad_mode="reflect")
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_float(torch.zeros(1, 3, 2, 2, dtype=torch.int32))
