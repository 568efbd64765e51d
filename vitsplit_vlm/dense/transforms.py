"""Joint augmentations for dense samples (image + label map / depth map / instances).

A `Sample` travels through a list of transforms, each a small callable ``t(sample, rng)``.
Geometry (resize, crop, flip, pad) is applied to every target the sample holds; photometric
changes touch only the image. The pipelines mirror the toolboxes the paper trains with:

- ADE20K (MMSegmentation): random rescale of a ``(2048, 512)`` scale by a ratio in
  ``[0.5, 2.0]``, random crop with ``cat_max_ratio=0.75``, flip, photometric distortion, pad
  (label pad 255).
- NYU (depth toolbox): random crop, flip, colour augmentation (gamma / brightness / colour); no
  rescaling, which would change the metric scale of the scene.
- COCO (MMDetection): random rescale, flip (the detector pads batches itself).

Normalisation with the backbone's mean / std happens in `to_tensors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .losses import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One image and its targets, as numpy arrays in image pixel coordinates.

    image: (H, W, 3) uint8. seg: (H, W) int64 class ids / 255. depth: (H, W) float32 metres,
    0 = no measurement. boxes: (N, 4) float32 xyxy, labels: (N,) int64 (1..K, 0 is the
    detector's background), masks: (N, H, W) uint8. meta: ``path``, ``ori_size`` (H, W),
    ``scale_xy`` (resized / original along x and y), ``flip``, ``image_id``.
    """

    image: np.ndarray
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image.shape[0], self.image.shape[1]


def _resize_array(a: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize a (H, W) or (H, W, 3) array to `size` = (H', W') with PIL."""
    h, w = size
    if a.dtype == np.float32:
        return np.asarray(Image.fromarray(a, mode="F").resize((w, h), resample))
    if a.ndim == 2 and a.dtype != np.uint8:
        return np.asarray(Image.fromarray(a.astype(np.int32), mode="I").resize((w, h), resample))
    return np.asarray(Image.fromarray(a).resize((w, h), resample))


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize image (bilinear) and every target (nearest; boxes scaled) to `size` (H', W')."""
    h0, w0 = sample.size
    h, w = size
    if (h, w) == (h0, w0):
        return sample
    sy, sx = h / h0, w / w0
    out = replace(sample, image=_resize_array(sample.image, size, Image.BILINEAR))
    if sample.seg is not None:
        out.seg = _resize_array(sample.seg, size, Image.NEAREST).astype(np.int64)
    if sample.depth is not None:
        out.depth = _resize_array(sample.depth, size, Image.NEAREST).astype(np.float32)
    if sample.boxes is not None:
        out.boxes = sample.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    if sample.masks is not None:
        out.masks = (
            np.stack([_resize_array(m, size, Image.NEAREST) for m in sample.masks])
            if len(sample.masks)
            else np.zeros((0, h, w), np.uint8)
        )
    sx0, sy0 = sample.meta.get("scale_xy", (1.0, 1.0))
    out.meta = {**sample.meta, "scale_xy": (sx0 * sx, sy0 * sy)}
    return out


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """MMCV's keep-ratio rescale: the largest (H', W') with long side <= max(scale) and short
    side <= min(scale)."""
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


@dataclass
class RandomResize:
    """Keep-ratio rescale to `scale` x a ratio drawn uniformly from `ratio_range`."""

    scale: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        r = rng.uniform(*self.ratio_range)
        target = (int(self.scale[0] * r), int(self.scale[1] * r))
        return resize(sample, rescale_size(sample.size, target))


@dataclass
class Resize:
    """Deterministic keep-ratio rescale to `scale` (test time)."""

    scale: tuple[int, int]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return resize(sample, rescale_size(sample.size, self.scale))


def crop(sample: Sample, top: int, left: int, h: int, w: int) -> Sample:
    """Crop every map to rows top:top+h, cols left:left+w; instances left empty are dropped."""
    rows, cols = slice(top, top + h), slice(left, left + w)
    out = replace(sample, image=sample.image[rows, cols])
    if sample.seg is not None:
        out.seg = sample.seg[rows, cols]
    if sample.depth is not None:
        out.depth = sample.depth[rows, cols]
    if sample.boxes is not None:
        hh, ww = out.image.shape[:2]
        boxes = sample.boxes - np.array([left, top, left, top], dtype=np.float32)
        boxes = np.clip(boxes, 0, [ww, hh, ww, hh]).astype(np.float32)
        keep = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
        out.boxes, out.labels = boxes[keep], sample.labels[keep]
        if sample.masks is not None:
            out.masks = sample.masks[:, rows, cols][keep]
    return out


@dataclass
class RandomCrop:
    """Random `size` = (h, w) crop (no-op along a side that is already smaller).

    `cat_max_ratio` < 1 retries up to 10 times while one class covers more than that share of
    the labelled pixels (MMSegmentation's rule).
    """

    size: tuple[int, int]
    cat_max_ratio: float = 1.0

    def _draw(self, sample: Sample, rng: np.random.Generator) -> tuple[int, int, int, int]:
        H, W = sample.size
        h, w = min(self.size[0], H), min(self.size[1], W)
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        box = self._draw(sample, rng)
        if self.cat_max_ratio < 1.0 and sample.seg is not None:
            for _ in range(10):
                top, left, h, w = box
                seg = sample.seg[top : top + h, left : left + w]
                _, counts = np.unique(seg[seg != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(sample, rng)
        return crop(sample, *box)


@dataclass
class CenterCrop:
    """Deterministic centred `size` = (h, w) crop (``dense train --no-augment``'s RandomCrop)."""

    size: tuple[int, int]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        H, W = sample.size
        h, w = min(self.size[0], H), min(self.size[1], W)
        return crop(sample, (H - h) // 2, (W - w) // 2, h, w)


def hflip(sample: Sample) -> Sample:
    """Mirror left-right."""
    out = replace(sample, image=sample.image[:, ::-1].copy())
    w = sample.size[1]
    if sample.seg is not None:
        out.seg = sample.seg[:, ::-1].copy()
    if sample.depth is not None:
        out.depth = sample.depth[:, ::-1].copy()
    if sample.boxes is not None:
        out.boxes = sample.boxes.copy()
        out.boxes[:, 0], out.boxes[:, 2] = w - sample.boxes[:, 2], w - sample.boxes[:, 0]
    if sample.masks is not None:
        out.masks = sample.masks[:, :, ::-1].copy()
    out.meta = {**sample.meta, "flip": not sample.meta.get("flip", False)}
    return out


@dataclass
class RandomFlip:
    prob: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return hflip(sample) if rng.random() < self.prob else sample


@dataclass
class PhotoMetricDistortion:
    """MMSegmentation's distortion, each step with probability 0.5: brightness +-32, contrast
    x[0.5, 1.5] (before or after the colour steps), saturation x[0.5, 1.5], hue +-18 degrees
    of OpenCV's 0..180 scale (= +-0.1 of the hue circle)."""

    brightness: float = 32.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 0.1

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        import torchvision.transforms.v2.functional as TF

        img = sample.image.astype(np.float32)
        if rng.random() < 0.5:
            img = img + rng.uniform(-self.brightness, self.brightness)
        contrast_first = rng.random() < 0.5
        alpha = rng.uniform(*self.contrast) if rng.random() < 0.5 else None
        if contrast_first and alpha is not None:
            img = img * alpha
        t = torch.from_numpy(np.clip(img, 0, 255).round().astype(np.uint8)).permute(2, 0, 1)
        if rng.random() < 0.5:
            t = TF.adjust_saturation(t, rng.uniform(*self.saturation))
        if rng.random() < 0.5:
            t = TF.adjust_hue(t, rng.uniform(-self.hue, self.hue))
        img = t.permute(1, 2, 0).numpy().astype(np.float32)
        if not contrast_first and alpha is not None:
            img = img * alpha
        return replace(sample, image=np.clip(img, 0, 255).round().astype(np.uint8))


@dataclass
class ColorAug:
    """The depth toolbox's colour augmentation (probability `prob`): gamma, brightness and a
    per-channel colour factor, on the [0, 1] image."""

    prob: float = 0.5
    gamma: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.75, 1.25)
    colour: tuple[float, float] = (0.9, 1.1)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        img = sample.image.astype(np.float32) / 255.0
        img = img ** rng.uniform(*self.gamma)
        img = img * rng.uniform(*self.brightness)
        img = img * rng.uniform(*self.colour, size=3).astype(np.float32)
        return replace(sample, image=(np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def pad(sample: Sample, ph: int, pw: int) -> Sample:
    """Pad `ph` rows at the bottom and `pw` columns at the right: image 0, seg 255 (ignored by
    the loss), depth 0 (= invalid), instance masks 0."""
    if not ph and not pw:
        return sample
    out = replace(sample, image=np.pad(sample.image, ((0, ph), (0, pw), (0, 0))))
    if sample.seg is not None:
        out.seg = np.pad(sample.seg, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    if sample.depth is not None:
        out.depth = np.pad(sample.depth, ((0, ph), (0, pw)))
    if sample.masks is not None:
        out.masks = np.pad(sample.masks, ((0, 0), (0, ph), (0, pw)))
    return out


@dataclass
class PadTo:
    """Pad bottom/right to at least `size` (h, w) (see `pad` for the fill values)."""

    size: tuple[int, int]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        H, W = sample.size
        return pad(sample, max(0, self.size[0] - H), max(0, self.size[1] - W))


@dataclass
class PadToMultiple:
    """Pad bottom/right until both sides are multiples of `multiple` (the trunk's patch size),
    so a crop such as ADE20K's 512 reaches DINOv2 (patch 14) as 518 with the extra rows and
    columns ignored by the losses (MMSegmentation's ``size_divisor`` padding)."""

    multiple: int

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        H, W = sample.size
        return pad(sample, -H % self.multiple, -W % self.multiple)


def apply(transforms: Sequence, sample: Sample, rng: np.random.Generator) -> Sample:
    for t in transforms:
        sample = t(sample, rng)
    return sample


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (t - m) / s


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims of `x` bottom/right up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), value=value)


# ---- the pipelines (one per task) -------------------------------------------------------


def seg_train_pipeline(scale: tuple[int, int], crop_size: tuple[int, int]) -> list:
    return [
        RandomResize(scale, (0.5, 2.0)),
        RandomCrop(crop_size, cat_max_ratio=0.75),
        RandomFlip(0.5),
        PhotoMetricDistortion(),
        PadTo(crop_size),
    ]


def depth_train_pipeline(crop_size: tuple[int, int]) -> list:
    return [RandomCrop(crop_size), RandomFlip(0.5), ColorAug(0.5), PadTo(crop_size)]


def det_train_pipeline(scale: tuple[int, int], ratio_range: tuple[float, float]) -> list:
    return [RandomResize(scale, ratio_range), RandomFlip(0.5)]


def eval_pipeline(scale: tuple[int, int] | None) -> list:
    return [Resize(scale)] if scale is not None else []
