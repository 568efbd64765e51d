"""`ViTSplit`: a frozen trunk plus trainable heads, for any supported HF vision model.

cfg = ViTSplitConfig(k=3, n=4, s=2, selection="uniform", variant="dense")
model = ViTSplit(trunk, cfg)   # trunk: Dinov2Model, CLIPVisionModel, ... (loaded HF model)
out = model(pixel_values)      # out.fused, out.task, out.prior: (B, C, h, w)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ViTSplitConfig
from .heads import ViTSplitHeads, ViTSplitOutput
from .trunk import FrozenTrunk


class ViTSplit(nn.Module):
    """Frozen trunk (no autograd, eval mode, stops at the deepest needed layer) + heads."""

    def __init__(self, trunk: nn.Module, cfg: ViTSplitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = FrozenTrunk(trunk)
        self.heads = ViTSplitHeads(
            cfg, self.trunk.spec, blocks=self.trunk.blocks, final_norm=self.trunk.final_norm
        )

    @property
    def layers(self):
        return self.heads.layers

    @property
    def out_channels(self) -> int:
        return self.heads.out_channels

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.heads.trainable_groups()

    def frozen_features(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """The frozen hidden states the heads read, `{index: (B, T, C)}`, without autograd."""
        return self.trunk(pixel_values, self.heads.layers.required_layers)

    def forward(self, pixel_values: torch.Tensor) -> ViTSplitOutput:
        """(B, 3, H, W) -> maps (B, C', H/p, W/p)."""
        grid = self.trunk.check_pixels(pixel_values)
        return self.heads(self.frozen_features(pixel_values), grid)
