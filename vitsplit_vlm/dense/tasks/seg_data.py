"""The segmentation data sets ``dense train --task seg --dataset NAME`` reads, in one registry.

Each `SegDataSet` brings its loader (a public layout), its ``real`` and ``playground`` presets and
the paper's ViT-Split layers per DINOv2 size. ``ade20k`` comes first: it is the default, so runs
without ``--dataset`` (and run records written before the flag existed) read ADE20K.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..datasets import ADE20K, DenseDataset
from ..seg_datasets import Cityscapes, PascalContext59
from .base import PRESET_KINDS, Preset

DEFAULT_DATASET = "ade20k"


@dataclass(frozen=True, kw_only=True)
class SegPreset(Preset):
    """Segmentation recipe: random rescale of `scale` x [0.5, 2], `crop_size` crops; evaluation
    `eval_mode` whole or slide (windows of `crop_size` every `eval_stride`); `dataset` names the
    `SEG_DATASETS` entry whose loader reads the data."""

    crop_size: tuple[int, int]
    eval_mode: str = "whole"
    eval_stride: tuple[int, int] | None = None
    num_classes: int | None = None  # None: the loader's (ADE20K: ROOT/objectInfo*.csv, else 150)
    dataset: str = DEFAULT_DATASET


@dataclass(frozen=True)
class SegDataSet:
    """One segmentation data set: its loader class, called as ``loader(root, split, *,
    num_classes, transforms, **common)`` (its ``LAYOUT`` and ``matches(root)`` name the layout),
    presets by kind, the paper's (k, n, s) by DINOv2 size letter, and its ``make-data dense``
    subfolder."""

    title: str
    loader: type[DenseDataset]
    presets: Mapping[str, SegPreset]
    paper_layers: Mapping[str, tuple[int, int, int]]
    playground_set: str

    def __post_init__(self) -> None:
        if set(self.presets) != set(PRESET_KINDS):
            raise ValueError(f"SegDataSet.presets: need {PRESET_KINDS}, got {sorted(self.presets)}")


# --------------------------------------------------------------------------- ADE20K

# The paper's MMSegmentation recipe (40k iterations, poly, 1500 warmup, slide 512/341);
# playground: a few-minute CPU run on the 112-168 px shape scenes.
ADE20K_REAL = SegPreset(
    iters=40000, batch_size=16, lr=3e-4, weight_decay=1e-2, schedule="poly", warmup_iters=1500,
    grad_clip=None, crop_size=(512, 512), scale=(2048, 512), eval_mode="slide",
    eval_stride=(341, 341),
)  # fmt: skip
ADE20K_PLAYGROUND = SegPreset(
    iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=50,
    grad_clip=None, crop_size=(112, 112), scale=(448, 112), eval_mode="whole",
    eval_stride=(74, 74),
)  # fmt: skip

# --------------------------------------------------------------------------- Cityscapes

# iters 20k: paper Tab. 3 (ViT-Split-B/L, 20k) and the official ``*_896_20k_cityscapes`` configs.
# batch 16, AdamW lr 2e-4, wd 1e-2: paper Sec. 4.1 (the official DINOv2-L config uses lr 1e-4:
# --lr 1e-4 for it). Crop and slide window 896: paper Tab. 10 and Sec. 4.1 ("896x896"). Scale
# (2048, 1024) with ratios 0.5-2 and the keep-ratio test resize: MMSegmentation's
# ``cityscapes.py`` / ``cityscapes_896x896.py``. Slide stride 512, poly 0.9 with a 1500-iteration
# linear warmup: the official ``linear_dinov2_vitsplit_*_896_20k_cityscapes.py``.
CITYSCAPES_REAL = SegPreset(
    iters=20000, batch_size=16, lr=2e-4, weight_decay=1e-2, schedule="poly", warmup_iters=1500,
    grad_clip=None, crop_size=(896, 896), scale=(2048, 1024), eval_mode="slide",
    eval_stride=(512, 512), num_classes=19, dataset="cityscapes",
)  # fmt: skip
# Playground: the ADE20K playground's schedule on 112x224 scenes (Cityscapes' 1:2), slide
# inference with Cityscapes' window / stride ratio (112 / 64 ~ 896 / 512).
CITYSCAPES_PLAYGROUND = SegPreset(
    iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=50,
    grad_clip=None, crop_size=(112, 112), scale=(224, 112), eval_mode="slide",
    eval_stride=(64, 64), num_classes=19, dataset="cityscapes",
)  # fmt: skip

# --------------------------------------------------------------------------- Pascal Context

# AdamW lr 1e-4, wd 1e-2, 20k iterations, batch 16: paper Sec. D.6. Crop 480: paper Tab. 10.
# Scale (520, 520) with ratios 0.5-2, the keep-ratio test resize to it: MMSegmentation's
# ``pascal_context_59.py``. Slide 480 every 320: MMSegmentation's ``*_pascal-context-59-480x480``
# configs (the official ViT-Split config writes stride 512 > window 480). Poly 0.9 with a
# 1500-iteration warmup: the official ``linear_dinov2_vitsplit_*_480_20k_pascal_context_59.py``.
PASCAL_CONTEXT_REAL = SegPreset(
    iters=20000, batch_size=16, lr=1e-4, weight_decay=1e-2, schedule="poly", warmup_iters=1500,
    grad_clip=None, crop_size=(480, 480), scale=(520, 520), eval_mode="slide",
    eval_stride=(320, 320), num_classes=59, dataset="pascal_context",
)  # fmt: skip
# Playground: the ADE20K playground's schedule on 84-168 px scenes, resized to a long side of
# 120 (crop / scale ~ 480 / 520), slide windows of 112 every 74 (~ 480 / 320).
PASCAL_CONTEXT_PLAYGROUND = SegPreset(
    iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=50,
    grad_clip=None, crop_size=(112, 112), scale=(120, 120), eval_mode="slide",
    eval_stride=(74, 74), num_classes=59, dataset="pascal_context",
)  # fmt: skip

# --------------------------------------------------------------------------- the registry

SEG_DATASETS: dict[str, SegDataSet] = {
    "ade20k": SegDataSet(
        title="ADE20K",
        loader=ADE20K,
        presets={"real": ADE20K_REAL, "playground": ADE20K_PLAYGROUND},
        paper_layers={"S": (3, 4, 2), "B": (3, 4, 2), "L": (4, 8, 2)},  # paper Tab. 10
        playground_set="ade",
    ),
    "cityscapes": SegDataSet(
        title="Cityscapes",
        loader=Cityscapes,
        presets={"real": CITYSCAPES_REAL, "playground": CITYSCAPES_PLAYGROUND},
        # L: paper Tab. 10. B: the official DINOv2-B config (5 tuned blocks, the last 5 as
        # priors); only k=5, n=5 give Tab. 3's 55.2M. The paper reports no DINOv2-S run (the
        # official S config: --k 5 --n 4 --s 8), so S gets the default layers.
        paper_layers={"B": (5, 5, 7), "L": (10, 8, 2)},
        playground_set="cityscapes",
    ),
    "pascal_context": SegDataSet(
        title="Pascal Context",
        loader=PascalContext59,
        presets={"real": PASCAL_CONTEXT_REAL, "playground": PASCAL_CONTEXT_PLAYGROUND},
        # L: paper Tab. 10 (the official config takes the last 10 blocks as priors, s=14).
        # B: the official DINOv2-B config (4 tuned blocks, the last 4 as priors); only k=4, n=4
        # give Tab. 15's 47.5M. No DINOv2-S run in the paper: S gets the default layers.
        paper_layers={"B": (4, 4, 8), "L": (6, 10, 2)},
        playground_set="pascal_context",
    ),
}


def get_seg_dataset(name: str) -> SegDataSet:
    """The registered segmentation data set called `name`."""
    try:
        return SEG_DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown segmentation data set {name!r}; choose from {', '.join(SEG_DATASETS)}"
        ) from None
