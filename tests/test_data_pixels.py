"""Images with more than 8 bits per channel are scaled to 8 bits, not clipped (issue 26, item 4):
16-bit grayscale and RGB PNGs through every decoder (ImageFolder trees, the streamed ImageNet
dataset, ``ToTensor``); depths gradmask cannot scale are an error naming the file."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gradmask.data import ImageFolderDataset
from gradmask.data.folder import decode_image_folder
from gradmask.data.pixels import to_rgb
from gradmask.data.transforms import ToTensor


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale (H, W) or RGB (H, W, 3) uint16), written by hand: the reference
    encoder, independent of Pillow's writer."""
    h, w = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def expected8(arr16: np.ndarray) -> np.ndarray:
    """The 8-bit image of a 16-bit one: its high byte (v >> 8; 0 -> 0, 65535 -> 255)."""
    a = (arr16 >> 8).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


@pytest.fixture
def images16():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    rgb = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    return {"gray": gray, "rgb": rgb}


def _tree(root, images16, split="train"):
    for name, arr in images16.items():
        d = root / split / name
        d.mkdir(parents=True)
        (d / "0.png").write_bytes(png16(arr))
    return root


def test_sixteen_bit_png_tree_is_scaled_not_clipped(tmp_path, images16):
    images, labels, classes = decode_image_folder(_tree(tmp_path / "t", images16), "train", num_workers=0)
    assert classes == ["gray", "rgb"]
    for i, name in enumerate(classes):
        got = images[i].permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected8(images16[name])), name
        assert (got == 255).mean() < 0.05  # clipping made 99.6% of a random image 255


def test_sixteen_bit_png_streamed_and_to_tensor(tmp_path, images16):
    root = _tree(tmp_path / "t", images16)
    ds = ImageFolderDataset(root, "train", ToTensor(uint8=True))
    for i, name in enumerate(ds.classes):
        x, _ = ds[i]
        assert np.array_equal(x.permute(1, 2, 0).numpy(), expected8(images16[name])), name
    with Image.open(root / "train" / "gray" / "0.png") as im:  # ToTensor given the 16-bit image itself
        x = ToTensor(uint8=True)(im)
    assert torch.equal(x, torch.from_numpy(expected8(images16["gray"])).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_every_sixteen_bit_grayscale_mode(mode):
    arr = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16B" else Image.frombytes(mode, (4, 1),
                                                                                    arr.astype(">u2").tobytes())
    im.format = "PNG"  # "I" is 16-bit when it comes from a PNG (older Pillow opened 16-bit PNGs as "I")
    assert np.asarray(to_rgb(im, "x.png"))[..., 0].tolist() == [[0, 0, 1, 255]]


def test_depths_without_a_known_range_are_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"scan\.tif.*mode F"):
        to_rgb(Image.new("F", (2, 2), 0.5), "scan.tif")
    with pytest.raises(ValueError, match=r"deep\.tif.*mode I"):
        to_rgb(Image.new("I", (2, 2), 70000), "deep.tif")


def test_eight_bit_modes_unchanged():
    for im in (Image.new("L", (2, 2), 77), Image.new("RGBA", (2, 2), (1, 2, 3, 4)),
               Image.new("RGB", (2, 2), (5, 6, 7))):
        assert np.array_equal(np.asarray(to_rgb(im, "x")), np.asarray(im.convert("RGB")))
