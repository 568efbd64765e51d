"""Inference helpers: whole-image and sliding-window segmentation, depth, detection.

Inputs are normalised images (B, 3, H, W) of any size; they are padded bottom/right to a
multiple of the patch size, run, and the outputs cropped back to (H, W). Sliding windows follow
MMSegmentation's ``slide_inference``: windows of `crop` every `stride` pixels, the last one
flush with the border, logits summed and divided by how many windows cover each pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .transforms import pad_to_multiple

MapFn = Callable[[torch.Tensor], torch.Tensor]  # padded (B, 3, H', W') -> (B, K, H', W')
SEG_MODES = ("whole", "slide")


def run_padded(fn: MapFn, pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad `pixels` to a multiple of `multiple`, apply `fn`, crop the output to the input size."""
    H, W = pixels.shape[-2:]
    return fn(pad_to_multiple(pixels, multiple))[..., :H, :W]


def slide_windows(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]):
    """Yield (y1, y2, x1, x2) windows covering an image of `size` = (H, W)."""
    H, W = size
    (ch, cw), (sh, sw) = crop, stride
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            yield max(y2 - ch, 0), y2, max(x2 - cw, 0), x2


@torch.no_grad()
def slide_inference(
    fn: MapFn,
    pixels: torch.Tensor,
    *,
    crop: tuple[int, int],
    stride: tuple[int, int],
    out_channels: int,
    multiple: int,
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, out_channels, H, W): windowed `fn`, overlaps averaged."""
    B, _, H, W = pixels.shape
    out = pixels.new_zeros(B, out_channels, H, W)
    count = pixels.new_zeros(1, 1, H, W)
    for y1, y2, x1, x2 in slide_windows((H, W), crop, stride):
        out[:, :, y1:y2, x1:x2] += run_padded(fn, pixels[:, :, y1:y2, x1:x2], multiple)
        count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def predict_seg(
    model,
    pixels: torch.Tensor,
    *,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Segmentation logits (B, K, H, W) (or at `out_size`, bilinear) for a `DenseModel`."""
    p = model.patch_size
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError("slide inference needs crop and stride")
        logits = slide_inference(
            model, pixels, crop=crop, stride=stride, out_channels=model.spec.num_classes, multiple=p
        )
    elif mode == "whole":
        logits = run_padded(model, pixels, p)
    else:
        raise ValueError(f"mode must be one of {SEG_MODES}, got {mode!r}")
    if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def predict_depth(
    model, pixels: torch.Tensor, *, out_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Depth (B, 1, H, W) metres (or at `out_size`, bilinear) for a `DenseModel`."""
    depth = run_padded(model, pixels, model.patch_size)
    if out_size is not None and tuple(depth.shape[-2:]) != tuple(out_size):
        depth = F.interpolate(depth, size=out_size, mode="bilinear", align_corners=False)
    return depth
