"""Training and evaluation loops for `DenseModel`, iteration based; the model's task supplies the
loss, the evaluation prediction and the metric (`vitsplit_vlm.dense.tasks`).

`train` repeats `train_step` (the same function `benchmarks/dense_speed.py` times) on the global
batches of `vitsplit_vlm.dense.sampler`; `evaluate` (`vitsplit_vlm.dense.evaluation`) runs one image
at a time. A `Runtime` says where: device, precision (autocast, a gradient scaler for fp16) and
processes (DDP over the loss, SyncBatchNorm, sharded data and evaluation); the default one is a
single CPU process in fp32. A step's logged loss is the mean over the global batch: under DDP the
processes' values are averaged, and pooled losses pool over every process's shard.

Hooks (`StepHook`) run after each step on every rank: periodic checkpoints and evaluation, the
progress bar and trackers (`vitsplit_vlm.dense.longrun`). A run resumes from `snapshot`'s output.

Optimiser: AdamW over the named trainable groups, weight decay on every parameter (as the
official MMSegmentation configs), the task head at ``lr * task_head_lr_mult`` (official 0.1).
Schedules (a factor on each group's lr, per iteration):

- ``poly``: ``(1 - t / T) ** power`` (MMCV ``poly``, power 0.9, min lr 0), with MMCV's linear
  warmup from ``warmup_ratio`` over ``warmup_iters``;
- ``onecycle``: MMCV / the depth toolbox's ``OneCycle``: cosine from ``1/div`` (25) up to 1 over
  the first 30%, then cosine down to ``1/(div * final_div)`` (final_div 100);
- ``step``: MMDetection's 1x schedule, x0.1 at 8/12 and 11/12 of the run (same warmup);
- ``constant`` (with the same optional warmup).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from .datasets import Batch, DenseDataset, SkipLog
from .distributed import gather_objects, mean_across_ranks, min_across_ranks
from .evaluation import EvalConfig, evaluate
from .heads import UpsamplingHead
from .model import DenseModel
from .runtime import Runtime, batch_to, prepare_model
from .sampler import BatchPlan, DataPosition, global_batches

SCHEDULES = ("poly", "onecycle", "step", "constant")


@dataclass
class TrainConfig:
    iters: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-2
    task_head_lr_mult: float = 0.1
    schedule: str = "poly"
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    poly_power: float = 0.9
    onecycle_pct: float = 0.3
    onecycle_div: float = 25.0
    onecycle_final_div: float = 100.0
    grad_clip: float | None = None
    checkpoint_head: bool = False
    num_workers: int = 0
    seed: int = 0
    log_every: int = 50
    accumulation: int = 1  # micro-steps per step: global batch = per device x world x this

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig.schedule: must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError("TrainConfig: iters and batch_size must be >= 1")
        if self.accumulation < 1:
            raise ValueError(f"TrainConfig.accumulation: must be >= 1, got {self.accumulation}")


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Iteration -> multiplier of every group's lr (see the module doc)."""
    T = cfg.iters

    def warm(step: int, value: float) -> float:
        if step < cfg.warmup_iters:
            return value * (1 - (1 - step / cfg.warmup_iters) * (1 - cfg.warmup_ratio))
        return value

    def poly(step: int) -> float:
        return warm(step, (1 - min(step, T) / T) ** cfg.poly_power)

    def onecycle(step: int) -> float:
        lo, end = 1 / cfg.onecycle_div, 1 / (cfg.onecycle_div * cfg.onecycle_final_div)
        up = max(1.0, cfg.onecycle_pct * T - 1)
        if step <= up:
            return _cos(lo, 1.0, step / up)
        return _cos(1.0, end, min(1.0, (step - up) / max(1.0, T - 1 - up)))

    def step_decay(step: int) -> float:
        passed = sum(step >= round(T * f) for f in (8 / 12, 11 / 12))
        return warm(step, 0.1**passed)

    def constant(step: int) -> float:
        return warm(step, 1.0)

    schedules = {"poly": poly, "onecycle": onecycle, "step": step_decay, "constant": constant}
    return schedules[cfg.schedule]


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def build_optimizer(model: DenseModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one parameter group per trainable group (named ``group["name"]``)."""
    groups = []
    for name, params in model.trainable_groups().items():
        mult = cfg.task_head_lr_mult if name == "task_head" else 1.0
        groups.append({"params": params, "lr": cfg.lr * mult, "name": name, "lr_mult": mult})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))


def set_head_checkpointing(model: DenseModel, enabled: bool) -> None:
    """Recompute the head's upsampling stack in backward (less memory, ~5% compute)."""
    if isinstance(model.head, UpsamplingHead):
        model.head.checkpoint_up = enabled
    elif enabled:
        raise ValueError(
            f"--checkpoint-head applies to heads with an upsampling stack; the "
            f"{model.spec.task} head has none"
        )


class TaskLoss(nn.Module):
    """``model.task.loss(model, batch)`` as a module: DDP wraps this, so that the forward pass it
    synchronises is the whole loss. Returns (scalar loss, parts as floats)."""

    def __init__(self, model: DenseModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.task.loss(self.model, batch)


@dataclass
class TrainState:
    """What one training step needs: the model (in training mode), AdamW and its schedule, and
    where it runs: `loss_module` (`TaskLoss`, DDP-wrapped with several processes) and a gradient
    scaler for fp16."""

    model: DenseModel
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[nn.Parameter]
    grad_clip: float | None
    runtime: Runtime = field(default_factory=Runtime)
    loss_module: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None


def start_training(
    model: DenseModel, cfg: TrainConfig, runtime: Runtime | None = None
) -> TrainState:
    """Put `model` on the runtime's device in training mode, wrap its loss in DDP when there are
    several processes, and build AdamW, the lr schedule and (fp16) the gradient scaler."""
    runtime = runtime or Runtime()
    prepare_model(model, runtime)
    model.train()
    set_head_checkpointing(model, cfg.checkpoint_head)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_module: nn.Module = TaskLoss(model)
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.device] if runtime.device.type == "cuda" else None
        # full fine-tuning leaves trunk parameters unused (DINOv2's mask token)
        loss_module = DistributedDataParallel(
            loss_module, device_ids=device_ids, find_unused_parameters=model.split is None
        )
    return TrainState(model, optimizer, scheduler, params, cfg.grad_clip, runtime, loss_module,
                      runtime.grad_scaler())  # fmt: skip


def train_step(state: TrainState, batch: Batch | list[Batch]) -> dict[str, float]:
    """One optimiser step on `batch` (or its micro-batches, gradients accumulated): the task's
    loss, backward, gradient clipping, AdamW, then the lr schedule. Returns the loss parts as
    floats (``"loss"``: the total), averaged over micro-batches and processes."""
    micro = [batch] if isinstance(batch, Batch) else list(batch)
    totals: dict[str, float] = {}
    for i, one in enumerate(micro):
        with _sync_gradients(state, i == len(micro) - 1):
            parts = _forward_backward(state, one, len(micro))
        totals = {k: totals.get(k, 0.0) + v for k, v in parts.items()}
    if len(micro) > 1:
        totals = {k: v / len(micro) for k, v in totals.items()}
    _optimizer_step(state)
    return mean_across_ranks(totals, state.runtime.device)


def _sync_gradients(state: TrainState, sync: bool):
    """DDP's all-reduce runs on the last micro-batch of a step only."""
    if sync or not hasattr(state.loss_module, "no_sync"):
        return contextlib.nullcontext()
    return state.loss_module.no_sync()


def _forward_backward(state: TrainState, batch: Batch, micro_steps: int) -> dict[str, float]:
    runtime = state.runtime
    batch = batch_to(batch, runtime.device)
    if runtime.distributed:
        batch = replace(batch, sharded=True)
    module = state.loss_module if state.loss_module is not None else TaskLoss(state.model)
    with runtime.autocast():
        loss, parts = module(batch)
    if micro_steps > 1:
        loss = loss / micro_steps
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
    return parts


def _optimizer_step(state: TrainState) -> None:
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)  # clip the true gradients
    if state.grad_clip:
        nn.utils.clip_grad_norm_(state.params, state.grad_clip)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)  # here: no gradients live through the next forward
    state.scheduler.step()


@dataclass
class Progress:
    """Where a run stands besides weights and optimizer; `snapshot` saves it, so a resumed run
    continues the same data order, log window and history.

    `position`: data position after the last step; `window`: losses since the last log line;
    `seconds`: training time before this session; `best`: the best evaluation so far
    (``{"step", "metric", "value", "mode"}``); `last_entry`: the log entry of this step, if any.
    """

    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    window: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    skips: SkipLog = field(default_factory=SkipLog)
    seconds: float = 0.0
    best: dict | None = None
    last_entry: dict | None = None

    def to_dict(self) -> dict:
        """Plain data (``torch.load(weights_only=True)`` reads it)."""
        return {"step": self.step, "position": self.position.to_dict(),
                "window": list(self.window), "history": [dict(h) for h in self.history],
                "skips": self.skips.as_dict(), "seconds": self.seconds, "best": self.best}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        return cls(data["step"], DataPosition(**data["position"]), list(data["window"]),
                   [dict(h) for h in data["history"]], SkipLog.from_dict(data["skips"]),
                   data["seconds"], data["best"])  # fmt: skip


StepHook = Callable[[TrainState, Progress], None]


def snapshot(state: TrainState, progress: Progress) -> dict:
    """Optimizer, lr schedule, gradient scaler and progress as plain data (rank 0's; every rank
    holds the same under DDP). The weights are saved separately (`trainable_state_dict`)."""
    scaler = state.scaler.state_dict() if state.scaler is not None else None
    return {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": scaler, "progress": progress.to_dict()}  # fmt: skip


def restore(state: TrainState, data: dict) -> Progress:
    """Load `snapshot`'s output into `state`; returns the saved progress."""
    state.optimizer.load_state_dict(data["optimizer"])
    state.scheduler.load_state_dict(data["scheduler"])
    if state.scaler is not None and data.get("scaler") is not None:
        state.scaler.load_state_dict(data["scaler"])
    return Progress.from_dict(data["progress"])


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    skips: SkipLog = field(default_factory=SkipLog)
    seconds: float = 0.0
    best: dict | None = None

    @property
    def first_loss(self) -> float:
        return self.history[0]["loss"] if self.history else math.nan

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def train(
    model: DenseModel,
    dataset: DenseDataset,
    cfg: TrainConfig,
    *,
    runtime: Runtime | None = None,
    log: Callable[[str], None] | None = print,
    on_step: Callable[[int, DenseModel], None] | None = None,
    hooks: tuple[StepHook, ...] = (),
    resume: dict | None = None,
    on_start: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train for ``cfg.iters`` optimiser steps; skipped samples are counted, never fatal.

    ``cfg.batch_size`` is the global batch (over processes and ``cfg.accumulation``). The loss
    logged per step is the running mean since the previous log line. `resume`: `snapshot`'s output
    (after the weights were loaded) to continue from; `on_start` sees the state first (e.g. to
    restore RNG states once the model is on its device).
    """
    runtime = runtime or Runtime()
    state = start_training(model, cfg, runtime)
    plan = BatchPlan(cfg.batch_size, runtime.world_size, cfg.accumulation)
    if resume is not None:
        progress = restore(state, resume)
    else:
        progress = Progress()
        if runtime.is_main:  # every rank holds the same list: count it once
            progress.skips.extend(dataset.skipped_at_init)
    if on_start is not None:
        on_start(state)
    start, session_steps = time.perf_counter(), 0
    stream = global_batches(dataset, plan, seed=cfg.seed, rank=runtime.ranks.rank,
                            num_workers=cfg.num_workers, start=progress.position)  # fmt: skip
    for position, micro in stream if progress.step < cfg.iters else ():
        progress.position = position
        micro = _usable(micro, progress.skips, runtime)
        if not micro:
            continue
        parts = train_step(state, micro)
        progress.step += 1
        session_steps += 1
        progress.window.append(parts["loss"])
        progress.last_entry = None
        if _log_now(progress.step, cfg):
            elapsed = time.perf_counter() - start
            _log_entry(state, progress, elapsed / session_steps, log)
        for hook in hooks:
            hook(state, progress)
        if on_step is not None:
            on_step(progress.step, model)
        if progress.step >= cfg.iters:
            break
    return _result(progress, progress.seconds + time.perf_counter() - start)


def _usable(micro: list[Batch], skips: SkipLog, runtime: Runtime) -> list[Batch]:
    """The micro-batches every rank can train on: skipped samples counted, a micro-step kept
    only where no rank's shard came out empty (every rank must run it)."""
    for batch in micro:
        skips.extend(batch.skipped)
    keep = min_across_ranks([int(len(batch) > 0) for batch in micro], runtime.device)
    return [batch for batch, ok in zip(micro, keep, strict=True) if ok]


def _log_now(step: int, cfg: TrainConfig) -> bool:
    return step == 1 or step % cfg.log_every == 0 or step == cfg.iters


def _log_entry(
    state: TrainState, progress: Progress, s_per_step: float, log: Callable[[str], None] | None
) -> None:
    window = progress.window
    entry = {
        "step": progress.step,
        "loss": sum(window) / len(window),
        "lr": max(g["lr"] / g["lr_mult"] for g in state.optimizer.param_groups),
        "s_per_step": s_per_step,
    }
    progress.history.append(entry)
    progress.last_entry = entry
    progress.window = []
    if log is not None and state.runtime.is_main:
        log(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}))


def _result(progress: Progress, seconds: float) -> TrainResult:
    """Every rank's skipped samples, summed on rank 0."""
    logs = gather_objects(progress.skips)
    skips = SkipLog()
    for one in logs or [progress.skips]:
        skips.merge(one)
    return TrainResult(progress.step, progress.history, skips, seconds, progress.best)


__all__ = [
    "SCHEDULES",
    "EvalConfig",
    "Progress",
    "StepHook",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "evaluate",
    "lr_factor",
    "restore",
    "snapshot",
    "start_training",
    "train",
    "train_step",
]
