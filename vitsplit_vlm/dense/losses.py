"""Dense losses: cross-entropy with an ignore index (segmentation) and SILog (depth).

Both follow the toolboxes the paper trains with (MMSegmentation, Monocular-Depth-Estimation-
Toolbox), so a loss value here means the same as a value in their logs.

Both pool over the whole batch (labelled pixels, valid depths). With ``sharded=True`` the batch is
one process's shard of a global batch (`DenseDataset` batches under DDP): each process returns a
loss whose mean over the processes is the global batch's loss and whose gradient, averaged over
the processes as DDP does, is the global loss's gradient, so N processes train as one would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import sum_across_ranks

IGNORE_INDEX = 255


def seg_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    sharded: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels.

    Args:
        logits: (B, K, h, w) at any resolution; resized bilinearly to the label size.
        labels: (B, H, W) int64 in ``0..K-1`` or `ignore_index`.
        sharded: the batch is one process's shard; the mean runs over every process's labelled
            pixels (see the module doc).

    Returns a scalar; 0 (with a graph) when every pixel is ignored, never NaN. Low-resolution
    logits go through `UpsampledCrossEntropy`: the same value and gradient as
    ``cross_entropy(interpolate(logits), labels)``, without keeping (B, K, H, W) tensors alive.
    """
    if sharded:
        return _pooled_seg_loss(logits, labels, ignore_index)
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    if logits.shape[-2:] != labels.shape[-2:]:
        return UpsampledCrossEntropy.apply(logits, labels, ignore_index)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def _pooled_seg_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """This shard's mean x (its labelled pixels / all shards' labelled pixels) x world size: the
    shards' losses average to the global mean, their gradients too."""
    local = seg_loss(logits, labels, ignore_index=ignore_index)
    count = (labels != ignore_index).sum().to(torch.float64)
    total = sum_across_ranks(count.clone())
    if total == 0:
        return local
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return local * (count / total * world).to(local.dtype)


class UpsampledCrossEntropy(torch.autograd.Function):
    """``cross_entropy(interpolate(logits, labels.shape[-2:], "bilinear"), labels)``, lean.

    The plain composition keeps the full-resolution log-softmax for backward and then holds it,
    its gradient and the upsampled logits' gradient at once: at a 512 crop with 150 classes
    that is about 0.9 GiB per two images, more than a ViT-Split model's trainable activations.
    Bilinear resizing acts on each class channel alone, so both passes here walk the classes in
    chunks of `CHUNK`: forward keeps a running log-sum-exp and the labelled class's logit,
    backward re-upsamples each chunk, turns it into ``(softmax - onehot) / n_valid`` in place
    and maps it back with the exact adjoint of the resize. Only the low-resolution logits and a
    (B, H, W) log-sum-exp are saved; the largest extra tensor is (B, CHUNK, H, W).
    """

    CHUNK = 16

    @staticmethod
    def _upsampled(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # at least float32 (as cross_entropy under autocast), whatever the logits' dtype
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def _chunks(num_classes: int, safe: torch.Tensor):
        """Per class chunk [lo, hi): (lo, hi, the label's index within the chunk, clamped so it
        can always be gathered, and the (B, 1, H, W) mask of pixels whose label lies in it)."""
        step = UpsampledCrossEntropy.CHUNK
        for lo in range(0, num_classes, step):
            hi = min(lo + step, num_classes)
            yield lo, hi, (safe - lo).clamp(0, hi - lo - 1), (safe >= lo) & (safe < hi)

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
        size = tuple(labels.shape[-2:])
        valid = labels != ignore_index
        safe = labels.masked_fill(~valid, 0).unsqueeze(1)  # (B, 1, H, W)
        like = dict(dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
        running_max = torch.full(safe.shape, -torch.inf, **like)  # exp(-inf - max) = 0 at start
        running_sum, picked = torch.zeros(safe.shape, **like), torch.zeros(safe.shape, **like)
        for lo, hi, index, here in UpsampledCrossEntropy._chunks(logits.shape[1], safe):
            up = UpsampledCrossEntropy._upsampled(logits[:, lo:hi], size)
            picked = picked + up.gather(1, index) * here
            new_max = torch.maximum(running_max, up.amax(dim=1, keepdim=True))
            running_sum = running_sum * (running_max - new_max).exp() + (
                (up - new_max).exp_().sum(dim=1, keepdim=True)
            )
            running_max = new_max
        lse = (running_max + running_sum.log()).squeeze(1)  # (B, H, W)
        n_valid = valid.sum()
        loss = ((lse - picked.squeeze(1)) * valid).sum() / n_valid
        ctx.save_for_backward(logits, safe, valid, n_valid, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, safe, valid, n_valid, lse = ctx.saved_tensors
        size = tuple(safe.shape[-2:])
        scale = (valid * (grad_loss / n_valid)).unsqueeze(1)  # (B, 1, H, W)
        grad_logits = torch.empty_like(logits)
        for lo, hi, index, here in UpsampledCrossEntropy._chunks(logits.shape[1], safe):
            grad_up = UpsampledCrossEntropy._upsampled(logits[:, lo:hi].detach(), size)
            grad_up.sub_(lse.unsqueeze(1)).exp_()  # softmax of this chunk's classes
            grad_up.scatter_add_(1, index, -here.to(grad_up.dtype))
            grad_up.mul_(scale.to(grad_up.dtype))
            grad_logits[:, lo:hi] = torch.ops.aten.upsample_bilinear2d_backward(
                grad_up, list(size), [logits.shape[0], hi - lo, *logits.shape[-2:]],
                False, None, None,
            )  # fmt: skip
        return grad_logits, None, None


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

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, *, sharded: bool = False
    ) -> torch.Tensor:
        """pred (B, 1, h, w) positive depth (resized bilinearly to the target), target
        (B, 1, H, W) metres with 0 = no measurement -> scalar (0 with a graph if nothing is
        valid). `sharded`: pool over every process's valid pixels (see the module doc)."""
        pred = pred.float()  # a no-op in fp32; under autocast, logs of bf16 depths are too coarse
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
        valid = self.valid_mask(target)
        if sharded:
            return self._pooled(pred, target, valid)
        if valid.sum() < 2:  # the unbiased variance needs two pixels
            return pred.sum() * 0.0
        g = torch.log(pred[valid] + self.eps) - torch.log(target[valid] + self.eps)
        return self.weight * torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)

    def _pooled(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The loss of the global batch from the shards' (count, sum g, sum g^2), in float64.
        Every rank returns the same value; the sum's backward hands each rank its share."""
        g = (torch.log(pred[valid] + self.eps) - torch.log(target[valid] + self.eps)).double()
        count = g.new_tensor([g.numel()])
        stats = sum_across_ranks(torch.cat([count, g.sum().view(1), (g * g).sum().view(1)]))
        n, s1, s2 = stats[0], stats[1], stats[2]
        if n < 2:
            return pred.sum() * 0.0
        mean = s1 / n
        var = (s2 - s1 * mean) / (n - 1)
        return (self.weight * torch.sqrt(var + 0.15 * mean**2)).float()
