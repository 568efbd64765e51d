"""Evaluation of a `DenseModel` over a split, one image at a time, sharded over processes.

With N processes, rank r evaluates the r-th of N contiguous blocks of the images; rank 0 gathers
the task metrics' accumulators and merges them in rank order, i.e. in image order, so the result
equals one process's exactly: summed confusion matrices (seg), per-image depth errors added in
order (depth), detections concatenated in order before COCO AP (det). Every rank returns the
same metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .datasets import DenseDataset, SkipLog, collate
from .distributed import Ranks, broadcast_object, gather_objects
from .runtime import Runtime, prepare_model, to_cpu


@dataclass
class EvalConfig:
    """`settings`: the task's own (`DenseTask.eval_settings`; None: its defaults); `max_images`:
    evaluate on the first N only."""

    settings: Any = None
    max_images: int | None = None


def shard_range(n: int, ranks: Ranks) -> range:
    """This rank's contiguous block of ``range(n)`` (blocks differ in size by at most one)."""
    return range(ranks.rank * n // ranks.world_size, (ranks.rank + 1) * n // ranks.world_size)


@torch.no_grad()
def evaluate(
    model,
    dataset: DenseDataset,
    cfg: EvalConfig | None = None,
    *,
    runtime: Runtime | None = None,
) -> dict:
    """The task's metrics over `dataset` (built with ``train=False``), one image at a time, on
    the runtime's device and precision; sharded over its processes (see the module doc)."""
    cfg = cfg or EvalConfig()
    runtime = runtime or Runtime()
    prepare_model(model, runtime)
    model.eval()
    task = model.task
    settings = cfg.settings if cfg.settings is not None else task.eval_settings()
    skips = SkipLog()
    if runtime.is_main:  # the same on every rank: count it once
        skips.extend(dataset.skipped_at_init)
    metric = task.metric(model, dataset, settings)
    n = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)
    for index in shard_range(n, runtime.ranks):
        batch = collate([dataset[index]])
        skips.extend(batch.skipped)
        if not len(batch):
            continue
        meta = batch.metas[0]
        pixels = batch.images if isinstance(batch.images, torch.Tensor) else batch.images[0][None]
        with runtime.autocast():
            prediction = task.predict(model, pixels.to(runtime.device), meta, settings)
        metric.update(to_cpu(prediction), meta)
    return _reduce(metric, skips)


def _reduce(metric, skips: SkipLog) -> dict:
    """Merge every rank's accumulators on rank 0 (rank order), compute, share the result."""
    gathered = gather_objects((metric, skips))
    metrics = None
    if gathered is not None:
        metric, skips = gathered[0]
        for other_metric, other_skips in gathered[1:]:
            metric.merge(other_metric)
            skips.merge(other_skips)
        metrics = metric.compute()
        metrics["skipped"] = skips.as_dict()
    return broadcast_object(metrics)
