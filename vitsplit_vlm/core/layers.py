"""Small conv building blocks of the prior head and the fusion net (paper §3.2, Fig. 6; the official LLaVA connector's plain-conv variant)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.ops import DeformConv2d, deform_conv2d

DEFORM_IMPLS = ("auto", "torchvision", "sampled")


def deform_conv2d_sampled(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, *, padding: int = 1
) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d` (stride 1, no bias, one offset group) via `grid_sample`.

    Each kernel tap ``k = i * kw + j`` samples the input at ``(h - padding + i + dy_k,
    w - padding + j + dx_k)`` with bilinear weights and zeros outside the image, which is
    ``grid_sample(..., align_corners=True, padding_mode="zeros")``; the sampled columns then meet
    the weight in one matmul. Outputs and gradients match torchvision to float rounding
    (tests/test_core_layers.py); on CPU it is several times faster than torchvision's kernel,
    whose backward dominated a ViT-Split training step there.

    Shapes: x (B, C, H, W), offset (B, 2*kh*kw, H', W') laid out as torchvision's
    ``[dy_0, dx_0, dy_1, dx_1, ...]``, weight (C_out, C, kh, kw) -> (B, C_out, H', W').
    """
    batch, channels, height, width = x.shape
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    out_h, out_w = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    if c_in != channels or offset.shape != (batch, 2 * taps, out_h, out_w):
        raise ValueError(
            f"deform_conv2d_sampled: x {tuple(x.shape)}, offset {tuple(offset.shape)} and weight "
            f"{tuple(weight.shape)} do not fit (expected offset (B, {2 * taps}, {out_h}, {out_w}))"
        )
    dtype, device = offset.dtype, offset.device
    rows = torch.arange(out_h, device=device, dtype=dtype) - padding
    cols = torch.arange(out_w, device=device, dtype=dtype) - padding
    tap_i = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw)
    tap_j = torch.arange(kw, device=device, dtype=dtype).repeat(kh)
    offset = offset.view(batch, taps, 2, out_h, out_w)
    y = rows.view(1, 1, -1, 1) + tap_i.view(1, -1, 1, 1) + offset[:, :, 0]  # (B, taps, H', W')
    x_pos = cols.view(1, 1, 1, -1) + tap_j.view(1, -1, 1, 1) + offset[:, :, 1]
    # align_corners=True maps -1 / +1 to the centres of the first / last pixel.
    grid = torch.stack(
        (x_pos * (2.0 / (width - 1)) - 1.0, y * (2.0 / (height - 1)) - 1.0), dim=-1
    )  # (B, taps, H', W', 2)
    grid = grid.view(batch, taps * out_h, out_w, 2)
    flat_weight = weight.reshape(c_out, channels * taps)
    if torch.is_grad_enabled() and (x.requires_grad or grid.requires_grad or weight.requires_grad):
        # Like torchvision's kernel, keep only the inputs for backward and rebuild the sampled
        # columns (B, C*taps, H'*W'), the largest tensor here, when the gradient needs them.
        out = checkpoint(_sample_and_project, x, grid, flat_weight, use_reentrant=False)
    else:
        out = _sample_and_project(x, grid, flat_weight)
    return out.view(batch, c_out, out_h, out_w)


def _sample_and_project(
    x: torch.Tensor, grid: torch.Tensor, flat_weight: torch.Tensor
) -> torch.Tensor:
    """Bilinear taps (B, C, taps*H', W') -> columns (B, C*taps, H'*W') -> (B, C_out, H'*W')."""
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    columns = sampled.view(x.shape[0], flat_weight.shape[1], -1)
    return torch.matmul(flat_weight, columns)


class DeformBlock(nn.Module):
    """3x3 deformable conv, padding 1, no bias (as the official mmcv layer).

    Offsets come from a plain `Conv3x3(C_in -> 2*3*3)`. With `offset_init="zero"` (default,
    standard DCN practice) the block starts as an ordinary 3x3 conv; `"default"` keeps
    PyTorch's conv init as the official code does.

    `impl` picks the kernel: ``"torchvision"`` (`torchvision.ops.deform_conv2d`), ``"sampled"``
    (`deform_conv2d_sampled`, the same maths through `grid_sample`) or ``"auto"`` (default:
    torchvision on CUDA, sampled elsewhere, where torchvision's CPU kernel is slow). The
    parameters are the same either way, so checkpoints do not depend on it.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, offset_init: str = "zero", impl: str = "auto"
    ) -> None:
        super().__init__()
        if impl not in DEFORM_IMPLS:
            raise ValueError(f"DeformBlock impl must be one of {DEFORM_IMPLS}, got {impl!r}")
        self.impl = impl
        self.offsets = nn.Conv2d(in_channels, 2 * 3 * 3, kernel_size=3, padding=1)
        self.deform = DeformConv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        if offset_init == "zero":
            nn.init.zeros_(self.offsets.weight)
            nn.init.zeros_(self.offsets.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w)."""
        offsets = self.offsets(x)
        weight = self.deform.weight
        impl = self.impl
        if impl == "auto":
            impl = "torchvision" if x.is_cuda else "sampled"
        if impl == "sampled" and min(x.shape[-2:]) > 1:  # grid_sample needs >= 2 px per side
            return deform_conv2d_sampled(x, offsets, weight, padding=1)
        return deform_conv2d(x, offsets, weight, padding=(1, 1))


def center_init_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Initialise a (C_out, C_in, k, k) conv kernel as PyTorch initialises a 1x1 conv of the same
    channels, placed in the centre tap; every other tap zero (`ViTSplitConfig.conv_init`)."""
    c_out, c_in, kh, kw = weight.shape
    one = nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias is not None)
    with torch.no_grad():
        weight.zero_()
        weight[:, :, kh // 2, kw // 2] = one.weight[:, :, 0, 0].to(weight)
        if bias is not None:
            bias.copy_(one.bias)


def conv_block(
    in_channels: int,
    out_channels: int,
    *,
    deform: bool,
    offset_init: str,
    conv_init: str = "default",
) -> nn.Sequential:
    """`Conv1x1(in -> out) -> GELU -> {DeformBlock | Conv3x3}(out -> out) -> GELU`; with
    ``conv_init="center"`` the 3x3 (deformable) conv starts as a 1x1 conv (`center_init_`)."""
    second: nn.Module
    if deform:
        second = DeformBlock(out_channels, out_channels, offset_init=offset_init)
        if conv_init == "center":
            center_init_(second.deform.weight)
    else:
        second = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if conv_init == "center":
            center_init_(second.weight, second.bias)
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
