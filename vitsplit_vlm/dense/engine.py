"""Training and evaluation loops for `DenseModel` (seg / depth / det), iteration based.

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

import torch
import torch.nn as nn

from .coco import coco_evaluate, to_coco_results
from .datasets import Batch, DenseDataset, SkipLog, collate
from .heads import UpsamplingHead
from .inference import predict_depth, predict_seg
from .losses import SILogLoss, seg_loss
from .metrics import DepthMetric, SegMetric
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
    """Recompute the seg / depth head's upsampling stack in backward (less memory, ~5% compute)."""
    if isinstance(model.head, UpsamplingHead):
        model.head.checkpoint_up = enabled
    elif enabled:
        raise ValueError("--checkpoint-head applies to the seg and depth heads, not to det")


def compute_loss(
    model: DenseModel, batch: Batch, depth_loss: SILogLoss | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one batch; returns (loss, its parts as floats)."""
    task = model.spec.task
    if task == "seg":
        loss = seg_loss(model(batch.images, resize=False), batch.seg)
        return loss, {"loss": float(loss.detach())}
    if task == "depth":
        loss = (depth_loss or SILogLoss(max_depth=model.spec.max_depth))(
            model(batch.images), batch.depth
        )
        return loss, {"loss": float(loss.detach())}
    images = list(batch.images) if isinstance(batch.images, torch.Tensor) else batch.images
    parts = model(images, batch.targets)
    loss = sum(parts.values())
    return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}


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
    model.train()
    set_head_checkpointing(model, cfg.checkpoint_head)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    depth_loss = SILogLoss(max_depth=model.spec.max_depth) if model.spec.task == "depth" else None
    result = TrainResult(steps=0)
    result.skips.extend(dataset.skipped_at_init)
    window: list[float] = []
    start = time.perf_counter()
    for batch in _batches(dataset, cfg):
        result.skips.extend(batch.skipped)
        if not len(batch):
            continue
        loss, parts = compute_loss(model, batch, depth_loss)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # here, so no gradients live through the next forward
        scheduler.step()
        result.steps += 1
        window.append(parts["loss"])
        if result.steps == 1 or result.steps % cfg.log_every == 0 or result.steps == cfg.iters:
            entry = {
                "step": result.steps,
                "loss": sum(window) / len(window),
                "lr": max(g["lr"] / g["lr_mult"] for g in optimizer.param_groups),
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
    seg_mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    depth_crop: tuple[int, int, int, int] | None = None
    max_depth: float = 10.0
    min_depth: float = 1e-3
    max_images: int | None = None


@torch.no_grad()
def evaluate(model: DenseModel, dataset: DenseDataset, cfg: EvalConfig | None = None) -> dict:
    """Metrics over `dataset` (built with ``train=False``), one image at a time."""
    cfg = cfg or EvalConfig()
    model.eval()
    task = model.spec.task
    skips = SkipLog()
    skips.extend(dataset.skipped_at_init)
    seg = SegMetric(model.spec.num_classes) if task == "seg" else None
    depth = DepthMetric(cfg.min_depth, cfg.max_depth, cfg.depth_crop) if task == "depth" else None
    results, image_ids = [], []
    n = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)
    for index in range(n):
        batch = collate([dataset[index]])
        skips.extend(batch.skipped)
        if not len(batch):
            continue
        meta = batch.metas[0]
        pixels = batch.images if isinstance(batch.images, torch.Tensor) else batch.images[0][None]
        if task == "seg":
            gt = meta["gt_seg"]
            logits = predict_seg(
                model,
                pixels,
                mode=cfg.seg_mode,
                crop=cfg.crop,
                stride=cfg.stride,
                out_size=gt.shape,
            )
            seg.update(logits.argmax(1)[0], gt)
        elif task == "depth":
            gt = meta["gt_depth"]
            depth.update(predict_depth(model, pixels, out_size=gt.shape[-2:])[0], gt)
        else:
            detections = model([pixels[0]])[0]
            results += to_coco_results(detections, meta, dataset.cat_ids)
            image_ids.append(meta["image_id"])
    if task == "seg":
        metrics = seg.compute()
    elif task == "depth":
        metrics = {**depth.compute(), "images": depth.count, "empty": depth.empty}
    else:
        metrics = coco_evaluate(dataset.ann_file, results, image_ids)
        metrics["detections"] = len(results)
    metrics["skipped"] = skips.as_dict()
    return metrics
