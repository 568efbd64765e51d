"""Decoded images as 8-bit RGB, whatever their bit depth (every image loader of the project).

PIL's ``convert("RGB")`` clips high-bit-depth greyscale instead of scaling it: a 16-bit PNG
(mode ``I;16``, values 0..65535) comes out almost all white. `to_rgb` scales such images to
0..255 first:

============================  ===============================================================
``I;16``, ``I;16B``, ...      16-bit: value / 257 (65535 -> 255), rounded
``I`` (32-bit integer)        read as 16-bit (what PIL gives for 16-bit PNGs and TIFFs),
                              values clipped to 0..65535, then / 257
``F`` (32-bit float)          0..1 when every value lies there (x 255), else as ``I``
anything else                 PIL's own conversion (8-bit modes, palette, RGBA, CMYK; 48-bit
                              RGB PNGs already open as 8-bit ``RGB``)
============================  ===============================================================
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image`, high-bit-depth greyscale scaled (see the module doc)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _grey_to_rgb(np.asarray(image).astype(np.float64), 65535.0)
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        unit = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
        return _grey_to_rgb(values, 1.0 if unit else 65535.0)
    return image.convert("RGB")


def _grey_to_rgb(values: np.ndarray, full_scale: float) -> Image.Image:
    """(H, W) values in 0..`full_scale` -> 8-bit RGB (NaN -> 0, out of range clipped)."""
    values = np.nan_to_num(values, nan=0.0, posinf=full_scale, neginf=0.0)
    grey = np.rint(np.clip(values, 0.0, full_scale) * (255.0 / full_scale)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # (H, W) uint8 -> "L"


def open_rgb(path) -> Image.Image:
    """Open and fully decode the image file at `path` as 8-bit RGB (`to_rgb`); PIL's errors
    (``OSError``, ``SyntaxError``, ``ValueError``, ``Image.DecompressionBombError``) pass through."""
    with Image.open(path) as image:
        return to_rgb(image)
