"""Training and evaluation loops for `DenseModel`, iteration based; the model's task supplies the
loss, the evaluation prediction and the metric (`vitsplit_vlm.dense.tasks`).

`train` repeats `train_step` (the same function `benchmarks/dense_speed.py` times) on shuffled
batches; `evaluate` runs one image at a time.

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

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .datasets import Batch, DenseDataset, SkipLog, collate
from .heads import UpsamplingHead
from .model import DenseModel

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

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig.schedule: must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError("TrainConfig: iters and batch_size must be >= 1")


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


@dataclass
class TrainState:
    """What one training step needs: the model (in training mode), AdamW and its schedule."""

    model: DenseModel
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[nn.Parameter]
    grad_clip: float | None


def start_training(model: DenseModel, cfg: TrainConfig) -> TrainState:
    """Put `model` in training mode and build its optimizer and lr schedule."""
    model.train()
    set_head_checkpointing(model, cfg.checkpoint_head)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return TrainState(model, optimizer, scheduler, params, cfg.grad_clip)


def train_step(state: TrainState, batch: Batch) -> dict[str, float]:
    """One optimiser step on `batch`: the task's loss, backward, gradient clipping, AdamW, then
    the lr schedule. Returns the loss parts as floats (``"loss"``: the total)."""
    model = state.model
    loss, parts = model.task.loss(model, batch)
    loss.backward()
    if state.grad_clip:
        nn.utils.clip_grad_norm_(state.params, state.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)  # here: no gradients live through the next forward
    state.scheduler.step()
    return parts


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    skips: SkipLog = field(default_factory=SkipLog)
    seconds: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.history[0]["loss"] if self.history else math.nan

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def _batches(dataset: DenseDataset, cfg: TrainConfig):
    """Endless shuffled batches, one epoch after another (`set_epoch` re-seeds augmentation)."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            drop_last=len(dataset) >= cfg.batch_size,
        )
        yield from loader
        epoch += 1


def train(
    model: DenseModel,
    dataset: DenseDataset,
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] | None = print,
    on_step: Callable[[int, DenseModel], None] | None = None,
) -> TrainResult:
    """Train for ``cfg.iters`` optimiser steps; skipped samples are counted, never fatal.

    The loss logged per step is the running mean since the previous log line.
    """
    state = start_training(model, cfg)
    result = TrainResult(steps=0)
    result.skips.extend(dataset.skipped_at_init)
    window: list[float] = []
    start = time.perf_counter()
    for batch in _batches(dataset, cfg):
        result.skips.extend(batch.skipped)
        if not len(batch):
            continue
        parts = train_step(state, batch)
        result.steps += 1
        window.append(parts["loss"])
        if result.steps == 1 or result.steps % cfg.log_every == 0 or result.steps == cfg.iters:
            entry = {
                "step": result.steps,
                "loss": sum(window) / len(window),
                "lr": max(g["lr"] / g["lr_mult"] for g in state.optimizer.param_groups),
                "s_per_step": (time.perf_counter() - start) / result.steps,
            }
            result.history.append(entry)
            window = []
            if log is not None:
                log(
                    json.dumps(
                        {k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}
                    )
                )
        if on_step is not None:
            on_step(result.steps, model)
        if result.steps >= cfg.iters:
            break
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class EvalConfig:
    """`settings`: the task's own (`DenseTask.eval_settings`; None: its defaults); `max_images`:
    evaluate on the first N only."""

    settings: Any = None
    max_images: int | None = None


@torch.no_grad()
def evaluate(model: DenseModel, dataset: DenseDataset, cfg: EvalConfig | None = None) -> dict:
    """The task's metrics over `dataset` (built with ``train=False``), one image at a time."""
    cfg = cfg or EvalConfig()
    model.eval()
    task = model.task
    settings = cfg.settings if cfg.settings is not None else task.eval_settings()
    skips = SkipLog()
    skips.extend(dataset.skipped_at_init)
    metric = task.metric(model, dataset, settings)
    n = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)
    for index in range(n):
        batch = collate([dataset[index]])
        skips.extend(batch.skipped)
        if not len(batch):
            continue
        meta = batch.metas[0]
        pixels = batch.images if isinstance(batch.images, torch.Tensor) else batch.images[0][None]
        metric.update(task.predict(model, pixels, meta, settings), meta)
    metrics = metric.compute()
    metrics["skipped"] = skips.as_dict()
    return metrics
