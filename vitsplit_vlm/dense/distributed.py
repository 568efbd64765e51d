"""Several processes: the group torchrun starts, sums across ranks, synchronised BatchNorm.

``torchrun --nproc-per-node N -m vitsplit_vlm dense train ...`` starts N processes whose
environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
`join_group` joins them into one process group (nccl on CUDA, gloo on CPU). One process (no
``WORLD_SIZE``, or 1) creates no group, so nothing here changes a single-process run.

Collectives on an nccl group need CUDA tensors: every helper takes the `device` its tensors live
on (the run's device). Object collectives (`gather_objects`, `broadcast_object`) pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run (torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"Ranks: rank {self.rank} outside 0..{self.world_size - 1}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(env: dict[str, str] | None = None) -> Ranks:
    """`Ranks` from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process if unset)."""
    env = os.environ if env is None else env
    try:
        return Ranks(
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise ValueError(f"torchrun environment RANK / WORLD_SIZE / LOCAL_RANK: {err}") from None


def join_group(ranks: Ranks, device: torch.device) -> bool:
    """Join the default process group: nccl for CUDA devices, gloo otherwise. Returns whether it
    created the group (False alone, or when the caller already had one)."""
    if not ranks.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    if dist.get_world_size() != ranks.world_size:
        raise RuntimeError(
            f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {ranks.world_size}"
        )
    return True


def leave_group() -> None:
    """Wait for every rank, then destroy the default group (a rank that exits first aborts)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def in_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if in_group():
        dist.barrier()


# --------------------------------------------------------------------------- reductions


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the incoming gradients (sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over the ranks, differentiable: the gradient reaching each rank's input is
    the sum over ranks of the gradients of the output (as `SyncBatchNorm`). Alone: `tensor`."""
    if not in_group():
        return tensor
    return _SumAcrossRanks.apply(tensor)


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each value (float64; every rank passes the same keys)."""
    if not in_group():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def min_across_ranks(values: list[int], device: torch.device) -> list[int]:
    """Elementwise minimum over ranks of a list of integers of the same length everywhere."""
    if not in_group() or not values:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); ``[obj]`` alone."""
    if not in_group():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not in_group():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- BatchNorm


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the whole global batch, on any backend.

    `torch.nn.SyncBatchNorm` runs only on GPUs; this is the same computation for gloo on CPU:
    per-channel sums and centred squares are added over the ranks (`sum_across_ranks`, so the
    backward pass sees every rank's samples), then each rank normalises its own (B, C, ...)
    input. Running statistics follow `nn.BatchNorm2d` (unbiased variance, `momentum`, or a
    cumulative average when it is None). In eval mode, or alone, it is a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (B, C, ...), got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) -> (B, C, ...)."""
        if not (self.training and in_group()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        values = x.float()
        count_t = torch.tensor([values.numel() // values.shape[1]], dtype=torch.float64)
        count_t = count_t.to(x.device)
        dist.all_reduce(count_t)
        count = count_t.item()
        mean = sum_across_ranks(values.sum(dims)) / count
        centred = values - mean.view(shape)
        var = sum_across_ranks((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm under `module` normalising over the global batch: `nn.SyncBatchNorm` on
    CUDA, `CrossRankBatchNorm` elsewhere. Parameters and buffers are shared, not copied."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossRankBatchNorm):
        out = CrossRankBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        setattr(module, name, _convert_cpu(child))
    return module
