"""Dense metrics, accumulated over a data set: mIoU / pixel accuracy and the depth errors.

Segmentation follows MMSegmentation (one confusion matrix over all pixels of the split; a class
absent from both ground truth and predictions has no IoU and is left out of the mean). Depth
follows the NYU protocol of BTS / AdaBins / the Monocular-Depth-Estimation-Toolbox: errors are
computed per image over valid pixels (``min_depth < gt < max_depth``) and averaged over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .losses import IGNORE_INDEX

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")


class SegMetric:
    """Confusion-matrix accumulator for `num_classes` classes (labels equal to `ignore_index`
    are skipped)."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred, label: integer maps of the same shape, e.g. (B, H, W) or (H, W)."""
        if pred.shape != label.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ")
        keep = label != self.ignore_index
        label = label[keep].long()
        pred = pred[keep].long()
        if label.numel() and (int(label.max()) >= self.num_classes or int(label.min()) < 0):
            raise ValueError(f"labels outside 0..{self.num_classes - 1} (and {self.ignore_index})")
        k = self.num_classes
        self.confusion += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k).cpu()

    def merge(self, other: SegMetric) -> None:
        """Add another accumulator's confusion matrix (same classes), e.g. from another shard."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.confusion += other.confusion

    def compute(self) -> dict:
        """``{"mIoU", "aAcc", "mAcc", "IoU": [...], "Acc": [...]}``; IoU and accuracies in
        percent, ``nan`` for a class that never occurs (left out of the means)."""
        cm = self.confusion.double()
        inter = cm.diag()
        gt = cm.sum(1)
        union = gt + cm.sum(0) - inter
        iou = inter / union  # nan where union == 0
        acc = inter / gt
        total = cm.sum()
        return {
            "mIoU": _nanmean(iou) * 100,
            "aAcc": float(inter.sum() / total) * 100 if total > 0 else math.nan,
            "mAcc": _nanmean(acc) * 100,
            "IoU": [float(v) * 100 for v in iou],
            "Acc": [float(v) * 100 for v in acc],
        }


def _nanmean(values: torch.Tensor) -> float:
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if ok.any() else math.nan


def depth_errors(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Errors of one image over the pixels given (1-D tensors, metres, all positive).

    abs_rel = mean(|gt - pred| / gt), sq_rel = mean((gt - pred)^2 / gt),
    rmse = sqrt(mean((gt - pred)^2)), rmse_log = sqrt(mean((ln gt - ln pred)^2)),
    log10 = mean(|log10 gt - log10 pred|), silog = 100 * sqrt(mean(e^2) - mean(e)^2) with
    e = ln pred - ln gt, d_i = fraction with max(gt/pred, pred/gt) < 1.25^i.
    """
    pred, gt = pred.double(), gt.double()
    thresh = torch.maximum(gt / pred, pred / gt)
    err = torch.log(pred) - torch.log(gt)
    return {
        "abs_rel": float(((gt - pred).abs() / gt).mean()),
        "sq_rel": float(((gt - pred) ** 2 / gt).mean()),
        "rmse": float(((gt - pred) ** 2).mean().sqrt()),
        "rmse_log": float((err**2).mean().sqrt()),
        "log10": float((torch.log10(gt) - torch.log10(pred)).abs().mean()),
        "silog": float(((err**2).mean() - err.mean() ** 2).clamp_min(0).sqrt() * 100),
        "d1": float((thresh < 1.25).double().mean()),
        "d2": float((thresh < 1.25**2).double().mean()),
        "d3": float((thresh < 1.25**3).double().mean()),
    }


@dataclass
class DepthMetric:
    """Per-image depth errors averaged over images.

    Valid pixels: ``min_depth < gt < max_depth`` (and inside `crop` when given, a
    ``(top, bottom, left, right)`` box such as NYU's Eigen crop). Predictions are clamped to
    ``[min_depth, max_depth]`` first (BTS / AdaBins convention). An image without valid pixels
    is counted in `empty` and left out. `per_image` keeps each image's errors (in `DEPTH_KEYS`
    order) so that `merge` adds them one by one: shards merged in image order give the one-pass
    sums bit for bit.
    """

    min_depth: float = 1e-3
    max_depth: float = 10.0
    crop: tuple[int, int, int, int] | None = None
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEPTH_KEYS, 0.0))
    count: int = 0
    empty: int = 0
    per_image: list[tuple[float, ...]] = field(default_factory=list)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """pred, gt: (B, 1, H, W) or (B, H, W) metres, same shape; gt 0 = no measurement."""
        if pred.shape != gt.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
        if pred.ndim == 4:
            pred, gt = pred[:, 0], gt[:, 0]
        for p, g in zip(pred, gt, strict=True):
            valid = (g > self.min_depth) & (g < self.max_depth)
            if self.crop is not None:
                box = torch.zeros_like(valid)
                top, bottom, left, right = self.crop
                box[top:bottom, left:right] = True
                valid &= box
            if not valid.any():
                self.empty += 1
                continue
            errors = depth_errors(p[valid].clamp(self.min_depth, self.max_depth), g[valid])
            self._add(tuple(errors[key] for key in DEPTH_KEYS))

    def _add(self, values: tuple[float, ...]) -> None:
        for key, value in zip(DEPTH_KEYS, values, strict=True):
            self.sums[key] += value
        self.count += 1
        self.per_image.append(values)

    def merge(self, other: DepthMetric) -> None:
        """Add another accumulator's images, e.g. from another shard: image by image (the order a
        single pass would have added them, when shards are merged in image order)."""
        if len(other.per_image) != other.count:  # sums without per-image values: add the sums
            for key in DEPTH_KEYS:
                self.sums[key] += other.sums[key]
            self.count += other.count
        else:
            for values in other.per_image:
                self._add(values)
        self.empty += other.empty

    def compute(self) -> dict[str, float]:
        """Mean of every key in `DEPTH_KEYS` over images (nan when none was valid)."""
        n = self.count
        return {key: (self.sums[key] / n if n else math.nan) for key in DEPTH_KEYS}


# NYU-v2 Eigen crop on 480x640 images (top, bottom, left, right), as BTS / the toolbox.
NYU_EIGEN_CROP = (45, 471, 41, 601)
