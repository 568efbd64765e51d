"""Detection neck: one fused stride-p map -> four scales (as the official `DINOViTSplitFusion`).

    x4  : [ConvT2x2s2 -> GN(32) -> GELU] x 2    stride p/4
    x2  : [ConvT2x2s2 -> GN(32) -> GELU]        stride p/2
    x1  : identity                              stride p
    x1/2: MaxPool2x2                            stride 2p

each followed by its own BatchNorm, then a feature pyramid (FPN, 256 channels) reads them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .heads import _up


class DetNeck(nn.Module):
    """(B, C, h, w) -> [(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w), (B, C, h//2, w//2)]."""

    strides_in_patches = (0.25, 0.5, 1.0, 2.0)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(*_up(channels, channels), *_up(channels, channels))
        self.up2 = nn.Sequential(*_up(channels, channels))
        self.same = nn.Identity()
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        scales = (self.up4(x), self.up2(x), self.same(x), self.down2(x))
        return [norm(s) for norm, s in zip(self.norms, scales, strict=True)]
