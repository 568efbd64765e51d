"""Dense losses: cross-entropy with an ignore index (segmentation) and SILog (depth).

Both follow the toolboxes the paper trains with (MMSegmentation, Monocular-Depth-Estimation-
Toolbox), so a loss value here means the same as a value in their logs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


def seg_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels.

    Args:
        logits: (B, K, h, w) at any resolution; resized bilinearly to the label size.
        labels: (B, H, W) int64 in ``0..K-1`` or `ignore_index`.

    Returns a scalar; 0 (with a graph) when every pixel is ignored, never NaN.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


class SILogLoss(nn.Module):
    """Scale-invariant log loss, as the Monocular-Depth-Estimation-Toolbox's ``SigLoss``.

    With `g = log(pred + eps) - log(gt + eps)` over valid pixels (``0 < gt <= max_depth``)::

        loss = weight * sqrt(var(g) + 0.15 * mean(g) ** 2)

    where `var` is the unbiased variance (``torch.var``) and `eps = 1e-3`. The toolbox's NYU
    setting is ``weight=10, max_depth=10``. The whole batch is pooled, as in the toolbox.
    """

    def __init__(
        self, *, weight: float = 10.0, max_depth: float | None = 10.0, eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.weight = weight
        self.max_depth = max_depth
        self.eps = eps

    def valid_mask(self, target: torch.Tensor) -> torch.Tensor:
        """Boolean mask of pixels with ground truth: ``0 < gt`` (and ``<= max_depth``)."""
        valid = target > 0
        if self.max_depth is not None:
            valid &= target <= self.max_depth
        return valid

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred (B, 1, h, w) positive depth (resized bilinearly to the target), target
        (B, 1, H, W) metres with 0 = no measurement -> scalar (0 with a graph if nothing is valid)."""
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
        valid = self.valid_mask(target)
        if valid.sum() < 2:  # the unbiased variance needs two pixels
            return pred.sum() * 0.0
        g = torch.log(pred[valid] + self.eps) - torch.log(target[valid] + self.eps)
        return self.weight * torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)
