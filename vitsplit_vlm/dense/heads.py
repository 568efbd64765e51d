"""Dense "linear" heads of the paper (DESIGN §3), reading one fused map (B, C, h, w)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _up(in_c: int, out_c: int) -> list[nn.Module]:
    """`ConvT2x2s2(in -> out) -> GroupNorm(32) -> GELU`: doubles h and w."""
    return [
        nn.ConvTranspose2d(in_c, out_c, kernel_size=2, stride=2),
        nn.GroupNorm(32, out_c),
        nn.GELU(),
    ]


class UpsamplingHead(nn.Module):
    """Shared by the two heads: the `up` stack, optionally recomputed in backward.

    With ``checkpoint_up = True`` (``dense train --checkpoint-head``) training keeps only the
    stack's input and recomputes the two `ConvT -> GN -> GELU` stages during backward: about 5%
    more compute for the largest activations of the step (the 4x-grid maps). The stack holds no
    BatchNorm, so the recomputation changes no running statistics and gives the same gradients.
    """

    checkpoint_up: bool = False
    up: nn.Sequential

    def _run_up(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_up and self.training and torch.is_grad_enabled():
            return checkpoint(self.up, x, use_reentrant=False)
        return self.up(x)


class SegHead(UpsamplingHead):
    """`[ConvT2x2s2 -> GN(32) -> GELU] x2 -> BatchNorm(C) -> Conv1x1(C -> classes)`.

    Logits come out at 4x the patch grid; `forward(x, size)` resizes them bilinearly to `size`.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.up = nn.Sequential(*_up(channels, channels), *_up(channels, channels))
        self.norm = nn.BatchNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, h, w) -> logits (B, classes, 4h, 4w), or at `size` when given."""
        logits = self.classifier(self.norm(self._run_up(x)))
        if size is not None:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class DepthHead(UpsamplingHead):
    """`ConvT(C -> C/2) -> GN -> GELU -> ConvT(C/2 -> 64) -> GN -> GELU -> BN(64) -> Conv3x3(64 -> 1)`.

    Output is positive: `relu(x) + min_depth` (official 1e-3).
    """

    def __init__(self, channels: int, *, min_depth: float = 1e-3) -> None:
        super().__init__()
        self.up = nn.Sequential(*_up(channels, channels // 2), *_up(channels // 2, 64))
        self.norm = nn.BatchNorm2d(64)
        self.conv = nn.Conv2d(64, 1, kernel_size=3, padding=1)
        self.min_depth = min_depth

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, h, w) -> depth (B, 1, 4h, 4w), or at `size` when given."""
        depth = self.conv(self.norm(self._run_up(x)))
        if size is not None:
            depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
        return F.relu(depth) + self.min_depth
