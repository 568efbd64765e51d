"""The dense tasks, one module each, in one explicit registry.

Adding a task is one module (a `DenseTask` subclass, see `base`) plus one line in `TASKS`; the
engine, model, predictor, checkpoints and ``dense train`` flags ask the task object.
"""

from __future__ import annotations

from vitsplit_vlm.core.config import ViTSplitConfig

from .base import DINOV2_SIZES, FALLBACK_LAYERS, PRESET_KINDS, DenseTask, Preset, TaskOption
from .depth import DepthTask
from .det import DetTask
from .seg import SegTask

TASKS: dict[str, DenseTask] = {
    "seg": SegTask(),
    "depth": DepthTask(),
    "det": DetTask(),
}


def get_task(name: str) -> DenseTask:
    """The registered task called `name`."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown dense task {name!r}; choose from {', '.join(TASKS)}") from None


def default_split_config(
    task_name: str, num_blocks: int, hidden_size: int, *, preset: Preset | None = None
) -> tuple[ViTSplitConfig, str]:
    """The ViT-Split layers for a task on a trunk of this depth / width, and where they come from.

    DINOv2-S/B/L shapes get the task's paper setting for the data set `preset` reads
    (`DenseTask.paper_setting`; None: the task's default data set); any other trunk (the tiny
    playground one, DINOv2-g, which the paper does not train) and sizes the paper gives no setting
    for get k=3, n=4, s=2, clipped so the task head leaves at least one frozen block.
    """
    task = get_task(task_name)
    size = DINOV2_SIZES.get((num_blocks, hidden_size))
    layers, what = task.paper_setting(preset)
    if size in layers:
        k, n, s = layers[size]
        return ViTSplitConfig(k=k, n=n, s=s), f"paper setting for {what} on DINOv2-{size}"
    k, n, s = FALLBACK_LAYERS
    k = max(1, min(k, num_blocks - 1))
    n = max(1, min(n, num_blocks - 1))
    s = max(0, min(s, num_blocks - n))  # n distinct prior blocks fit after s
    origin = f"default for a {num_blocks}-block, width-{hidden_size} trunk"
    return ViTSplitConfig(k=k, n=n, s=s), origin


__all__ = [
    "PRESET_KINDS",
    "TASKS",
    "DenseTask",
    "Preset",
    "TaskOption",
    "default_split_config",
    "get_task",
]
