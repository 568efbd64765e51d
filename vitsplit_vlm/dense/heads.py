"""Dense "linear" heads of the paper (sizes in its Tab. 12), reading one fused map (B, C, h, w)."""

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


def _norm_act(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return act(norm(x))


def _batch_norm_then(bn: nn.BatchNorm2d, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(bn(x))` in training, keeping `x` for backward but not `bn(x)`.

    The running statistics are updated once, here, exactly as `bn` would; the normalisation that
    `layer` reads is recomputed in backward from the batch statistics (no running-stat update).
    """
    bn.num_batches_tracked.add_(1)
    # momentum None is a cumulative average, as in nn.BatchNorm2d
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        F.batch_norm(x, bn.running_mean, bn.running_var, None, None, True, momentum, bn.eps)

    def run(t: torch.Tensor) -> torch.Tensor:
        return layer(F.batch_norm(t, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))

    return checkpoint(run, x, use_reentrant=False)


class UpsamplingHead(nn.Module):
    """Shared by the two heads: the `up` stack and the BatchNorm -> conv after it.

    The largest activations of a dense training step are this stack's 4x-grid maps, so training
    keeps fewer of them, with the same outputs, gradients and BatchNorm statistics:

    - by default, each `GroupNorm -> GELU` pair and the final `BatchNorm` are recomputed in
      backward from the tensor they read (elementwise work, a few ms), so their outputs are not
      kept: two of the four full-size maps per head at 4x the patch grid;
    - with ``checkpoint_up = True`` (``dense train --checkpoint-head``) the whole `up` stack is
      recomputed in backward and only its input is kept: about 5% more compute for the rest.

    Neither changes a parameter, so checkpoints load either way. An `nn.BatchNorm2d` subclass
    (SyncBatchNorm after `convert_sync_batchnorm`) runs as is, without the recomputation.
    """

    checkpoint_up: bool = False
    up: nn.Sequential
    norm: nn.BatchNorm2d

    def _training_with_grad(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def _run_up(self, x: torch.Tensor) -> torch.Tensor:
        if not self._training_with_grad():
            return self.up(x)
        if self.checkpoint_up:
            return checkpoint(self.up, x, use_reentrant=False)
        for i in range(0, len(self.up), 3):  # ConvT -> GN -> GELU stages (see `_up`)
            conv, norm, act = self.up[i : i + 3]
            x = checkpoint(_norm_act, norm, act, conv(x), use_reentrant=False)
        return x

    def _norm_then(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`layer(self.norm(x))`, recomputing the normalisation in backward when training."""
        plain_bn = type(self.norm) is nn.BatchNorm2d and self.norm.track_running_stats
        if self._training_with_grad() and plain_bn:
            return _batch_norm_then(self.norm, layer, x)
        return layer(self.norm(x))


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
        logits = self._norm_then(self.classifier, self._run_up(x))
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
        depth = self._norm_then(self.conv, self._run_up(x))
        if size is not None:
            depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
        return F.relu(depth) + self.min_depth
