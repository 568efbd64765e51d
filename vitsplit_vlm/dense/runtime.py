"""Where and how a dense run computes: device, precision, processes (`Runtime`).

=========  ==================================================================================
fp32       no autocast (the default; on CUDA, matmuls and convolutions may use TF32)
bf16       autocast to bfloat16 on CUDA (GPUs with bf16 support) or CPU; the frozen trunk's
           weights are cast to bf16 (it runs without autograd); trainable weights, optimizer
           state and losses stay float32
fp16       autocast to float16 with a gradient scaler; CUDA only
=========  ==================================================================================

`Runtime()` is one CPU process in fp32: exactly what the engine did before it had a runtime.
`resolve_runtime` reads ``--device`` / ``--precision`` and torchrun's environment, joins the
process group and sets the CUDA device of this rank; a precision the device cannot run is a
``ValueError`` naming the flag and the reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from vitsplit_vlm.core.feature_cache import FrozenHidden

from .datasets import Batch
from .distributed import Ranks, join_group, ranks_from_env, sync_batch_norm

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, *, bf16_supported: bool) -> None:
    """Raise a ``ValueError`` naming ``--precision`` if `device` cannot train in `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"--precision fp16: float16 training needs a CUDA device (its gradient scaler and "
            f"kernels); this run is on {device.type}. Use --precision bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not bf16_supported:
        raise ValueError(
            f"--precision bf16: {_gpu_name(device)} has no bfloat16 support (compute capability "
            "8.0 or newer needed); use --precision fp16 or fp32"
        )


def _gpu_name(device: torch.device) -> str:
    try:
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return f"{name} (compute capability {major}.{minor})"
    except (RuntimeError, AssertionError):
        return f"device {device}"


@dataclass(frozen=True)
class Runtime:
    """Device, precision and this process's ranks. `channels_last`: NHWC weights in the seg /
    depth heads' convolutions (CUDA); `owns_group`: `resolve_runtime` created the process group
    (so the command leaves it at the end)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    ranks: Ranks = field(default_factory=Ranks)
    channels_last: bool = False
    owns_group: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        supported = self.device.type != "cuda" or _bf16_supported(self.device)
        check_precision(self.precision, self.device, bf16_supported=supported)

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    @property
    def distributed(self) -> bool:
        return self.ranks.distributed

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast)."""
        return AMP_DTYPES.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `amp_dtype` on this device; nothing for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (None otherwise)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def describe(self) -> dict:
        """Plain data for logs and run records."""
        return {"device": str(self.device), "precision": self.precision,
                "world_size": self.world_size, "channels_last": self.channels_last}  # fmt: skip


def _bf16_supported(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def resolve_runtime(
    device: str = "auto",
    precision: str = "fp32",
    *,
    tf32: bool = True,
    channels_last: bool = True,
) -> Runtime:
    """The `Runtime` of ``--device`` / ``--precision`` in torchrun's environment.

    ``auto`` is CUDA when a GPU is visible, else CPU; under torchrun each rank takes
    ``cuda:LOCAL_RANK`` and joins the process group (nccl on CUDA, gloo on CPU). `tf32` and
    `channels_last` apply on CUDA only (process-wide TF32 for fp32 matmuls / convolutions).
    """
    if device not in DEVICES:
        raise ValueError(f"--device: must be one of {DEVICES}, got {device!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda: no CUDA device is visible to this process")
    ranks = ranks_from_env()
    chosen = torch.device("cpu")
    if device == "cuda" or (device == "auto" and cuda):
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"--device cuda: LOCAL_RANK {ranks.local_rank} but only "
                f"{torch.cuda.device_count()} GPU(s) visible (torchrun --nproc-per-node <= GPUs)"
            )
        chosen = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(chosen)
        set_tf32(tf32)
    runtime = Runtime(chosen, precision, ranks, channels_last=channels_last and cuda_device(chosen))
    return replace(runtime, owns_group=join_group(ranks, chosen))


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (process-wide)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def cuda_device(device: torch.device) -> bool:
    return device.type == "cuda"


# --------------------------------------------------------------------------- model and data


def prepare_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Put a `DenseModel` on the runtime's device, in place (idempotent).

    The frozen trunk of vitsplit / linear is cast to the autocast dtype (it runs without
    autograd); with several processes every BatchNorm becomes a synchronised one
    (`distributed.sync_batch_norm`); with `channels_last`, the convolutions of the seg / depth
    heads (their 4x-grid upsampling, where convolution time goes) take NHWC weights.
    """
    from .heads import UpsamplingHead

    model.to(runtime.device)
    split = getattr(model, "split", None)
    if runtime.amp_dtype is not None and split is not None:
        split.trunk.model.to(runtime.amp_dtype)
    head = getattr(model, "head", None)
    if runtime.channels_last and isinstance(head, UpsamplingHead):
        head.to(memory_format=torch.channels_last)
    if runtime.distributed:
        for name, child in model.named_children():
            setattr(model, name, sync_batch_norm(child, runtime.device))
    return model


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """`batch` with its tensors on `device` (the same object when nothing moves)."""
    if device.type == "cpu" and _on_cpu(batch):
        return batch
    movable = (torch.Tensor, FrozenHidden)
    move = lambda t: t.to(device, non_blocking=True) if isinstance(t, movable) else t  # noqa: E731
    images = move(batch.images) if isinstance(batch.images, movable) else [
        move(im) for im in batch.images
    ]  # fmt: skip
    targets = None
    if batch.targets is not None:
        targets = [{k: move(v) for k, v in t.items()} for t in batch.targets]
    return replace(batch, images=images, seg=move(batch.seg), depth=move(batch.depth),
                   targets=targets)  # fmt: skip


def _on_cpu(batch: Batch) -> bool:
    images = batch.images if isinstance(batch.images, list) else [batch.images]
    tensors = [*images, batch.seg, batch.depth]
    for target in batch.targets or []:
        tensors += list(target.values())
    return all(t.device.type == "cpu" for t in tensors
               if isinstance(t, (torch.Tensor, FrozenHidden)))  # fmt: skip


def to_cpu(obj):
    """Tensors in a prediction (a tensor, or lists / dicts of them) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
