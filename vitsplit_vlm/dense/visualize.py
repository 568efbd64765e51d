"""PNG overlays for dense predictions: class masks, depth colour maps, boxes with masks."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 distinct colours (golden-ratio hues), fixed for a given K."""
    colours = [
        colorsys.hsv_to_rgb((0.07 + k * 0.618034) % 1.0, 0.75, 0.95) for k in range(num_classes)
    ]
    return (np.array(colours) * 255).round().astype(np.uint8)


def seg_overlay(image: Image.Image, pred: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """Blend class colours of `pred` (H, W) int over `image` (same size)."""
    colours = palette(int(pred.max()) + 1 if pred.numel() else 1)[pred.cpu().numpy()]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def depth_colormap(depth: torch.Tensor, max_depth: float | None = None) -> Image.Image:
    """(H, W) metres -> colour image, near = bright yellow, far = dark purple (matplotlib's
    ``magma`` when matplotlib is installed, a grey ramp otherwise); 0 (no depth) is black."""
    d = depth.detach().cpu().float().numpy()
    top = max_depth or float(d.max()) or 1.0
    x = np.clip(1.0 - d / top, 0.0, 1.0)
    try:
        from matplotlib import colormaps

        rgb = colormaps["magma"](x)[..., :3]
    except ImportError:
        rgb = np.repeat(x[..., None], 3, axis=-1)
    rgb[d <= 0] = 0.0
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def detection_overlay(
    image: Image.Image,
    detection: dict[str, torch.Tensor],
    class_names: list[str] | None = None,
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.45,
) -> Image.Image:
    """Boxes, labels, scores and masks (N, 1, H, W) probabilities with score >= threshold."""
    keep = detection["scores"] >= score_threshold
    boxes, labels, scores = (detection[k][keep] for k in ("boxes", "labels", "scores"))
    colours = palette(max(int(labels.max()) + 1 if len(labels) else 1, 2))
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if "masks" in detection:
        for mask, label in zip(detection["masks"][keep], labels, strict=True):
            m = (mask[0] > 0.5).cpu().numpy()
            base[m] = base[m] * (1 - alpha) + colours[int(label)] * alpha
    out = Image.fromarray(base.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True):
        colour = tuple(int(c) for c in colours[label])
        draw.rectangle(box, outline=colour, width=2)
        name = class_names[label - 1] if class_names else str(label)
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=colour)
    return out
