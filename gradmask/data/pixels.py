"""Decoded images to 8-bit RGB, the one pixel format of every dataset.

Images with more than 8 bits per channel are scaled, never clipped: a 16-bit value ``v`` becomes
its high byte ``v >> 8`` (0 -> 0, 65535 -> 255), which is what Pillow itself does when it opens a
16-bit RGB or RGBA PNG. 16-bit grayscale (Pillow modes ``I;16``, ``I;16B``, ``I;16L``, and ``I``
when the file is a PNG: older Pillow opened 16-bit PNGs as ``I``) is scaled here; Pillow's own
``convert("RGB")`` would clip it at 255. Depths without a known range (32-bit integer ``I`` from
other formats, float ``F``) are an error naming the file: gradmask will not guess their scale.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# the decoding rule's version, part of the data cache key of decoded folders (entries decoded before
# deep images were scaled are decoded again)
DECODER = "rgb8-scaled"


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """``image`` as a new 8-bit RGB Pillow image, loaded (usable after the file is closed), deeper
    grayscale scaled to its high byte; ``name`` (the file) is named in the error for a depth without
    a known range."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.uint32)  # uint16 of either byte order, or int32 for "I"
        return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise ValueError(f"image {name} has {kind} pixels (Pillow mode {mode}), whose range gradmask cannot "
                         f"know; convert it to 8 or 16 bits per channel")
    return image.convert("RGB")


__all__ = ["DECODER", "to_rgb"]
