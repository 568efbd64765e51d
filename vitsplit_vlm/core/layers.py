"""Small conv building blocks of the prior head and the fusion net (DESIGN §3, §5)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import DeformConv2d


class DeformBlock(nn.Module):
    """3x3 deformable conv, padding 1, no bias (as the official mmcv layer).

    Offsets come from a plain `Conv3x3(C_in -> 2*3*3)`. With `offset_init="zero"` (default,
    standard DCN practice) the block starts as an ordinary 3x3 conv; `"default"` keeps
    PyTorch's conv init as the official code does.
    """

    def __init__(self, in_channels: int, out_channels: int, *, offset_init: str = "zero") -> None:
        super().__init__()
        self.offsets = nn.Conv2d(in_channels, 2 * 3 * 3, kernel_size=3, padding=1)
        self.deform = DeformConv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        if offset_init == "zero":
            nn.init.zeros_(self.offsets.weight)
            nn.init.zeros_(self.offsets.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w)."""
        return self.deform(x, self.offsets(x))


def conv_block(
    in_channels: int, out_channels: int, *, deform: bool, offset_init: str
) -> nn.Sequential:
    """`Conv1x1(in -> out) -> GELU -> {DeformBlock | Conv3x3}(out -> out) -> GELU`."""
    second: nn.Module
    if deform:
        second = DeformBlock(out_channels, out_channels, offset_init=offset_init)
    else:
        second = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.GELU(), second, nn.GELU()
    )


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """Drop `num_prefix` leading (CLS/register) tokens and reshape (B, T, C) -> (B, C, h, w)."""
    h, w = grid
    patches = tokens[:, num_prefix:]
    if patches.shape[1] != h * w:
        raise ValueError(
            f"expected {num_prefix} prefix + {h}x{w} patch tokens, got {tokens.shape[1]} tokens"
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
