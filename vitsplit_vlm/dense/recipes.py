"""Recipes for `vitsplit-vlm dense`: which preset applies, the model factory, data sets, eval.

Each task holds a ``real`` preset (the paper's recipe) and a ``playground`` one (a few-minute CPU
run) in `vitsplit_vlm.dense.tasks`; ``auto`` picks from the data (`preset_kind`: a set written by
``make-data dense`` is the playground). `dense_spec` is the one factory of the model ``dense
train`` trains: the task's paper layers for the trunk, overridden by the ViT-Split flags given.
Every path is an argument here; playground defaults are the command line's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitsplit_vlm.core.config import ViTSplitConfig

from . import transforms as T
from .datasets import DenseDataset
from .engine import EvalConfig
from .model import DenseSpec
from .tasks import PRESET_KINDS, DenseTask, Preset, default_split_config
from .tasks.base import SPLITS

PRESET_CHOICES = ("auto", *PRESET_KINDS)


def is_playground(data: Path) -> bool:
    """True for a set written by ``make-data dense`` (its parent holds the generator manifest)."""
    try:
        manifest = json.loads((Path(data).parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("generator") == "dense"


def preset_kind(choice: str, data: Path) -> str:
    """``"real"`` or ``"playground"``; ``"auto"`` looks at the data set."""
    if choice not in PRESET_CHOICES:
        raise ValueError(f"--preset: must be one of {PRESET_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "playground" if is_playground(data) else "real"


def normalization(backbone: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's image mean / std (its preprocessor_config.json), ImageNet otherwise."""
    from .transforms import IMAGENET_MEAN, IMAGENET_STD

    try:
        cfg = json.loads((backbone / "preprocessor_config.json").read_text())
        return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    except (OSError, ValueError, KeyError):
        return IMAGENET_MEAN, IMAGENET_STD


def trunk_patch_size(backbone: Path) -> int:
    """The patch size in the backbone's config.json (a CLIP model's vision config's), read
    without loading the weights; ValueError naming ``--backbone`` when there is none."""
    from transformers import AutoConfig

    if not Path(backbone).is_dir():
        raise ValueError(f"--backbone {backbone}: no such folder")
    try:
        cfg = AutoConfig.from_pretrained(str(backbone))
        cfg = getattr(cfg, "vision_config", cfg)
        return int(cfg.patch_size)
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(
            f"--backbone {backbone}: not a Hugging Face vision model folder with a patch size in "
            f"its config.json ({str(err).splitlines()[0]})"
        ) from None


def split_config(
    task: DenseTask,
    method: str,
    num_blocks: int,
    hidden_size: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    preset: Preset | None = None,
) -> tuple[ViTSplitConfig | None, str]:
    """The ViT-Split settings of `method` on this trunk and where they come from: the task's
    paper layers for the data set `preset` reads (`default_split_config`) with `overrides`
    (`core.flags.overrides`) applied; ``linear`` keeps no component, ``full`` has none."""
    if method == "full":
        return None, "method full fine-tunes the whole trunk"
    base, origin = default_split_config(task.name, num_blocks, hidden_size, preset=preset)
    changes = dict(overrides or {})
    if method == "linear":
        changes["components"] = ()
    return base.with_(**changes), origin


def dense_spec(
    task: DenseTask,
    method: str,
    trunk_config,
    preset: Preset,
    *,
    overrides: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
) -> tuple[DenseSpec, str]:
    """The `DenseSpec` ``dense train`` builds (`DenseModel(trunk, spec)` is the model), and
    where its layers come from. `trunk_config`: the trunk's Hugging Face config."""
    split, origin = split_config(
        task, method, trunk_config.num_hidden_layers, trunk_config.hidden_size, overrides,
        preset=preset,
    )  # fmt: skip
    spec = DenseSpec(
        task=task.name, method=method, split=split, num_classes=num_classes,
        class_names=class_names, **task.spec_fields(preset),
    )  # fmt: skip
    return spec, origin


def build_dataset(
    task: DenseTask,
    root: Path,
    split: str,
    preset: Preset,
    mean,
    std,
    *,
    train: bool,
    seed: int = 0,
    patch_size: int = 1,
) -> DenseDataset:
    """`split` ("train" / "val") of the data at `root`, with the task's train or eval transforms.

    Training samples are then padded to multiples of `patch_size` (the trunk's,
    `trunk_patch_size`) where the task asks for it (`DenseTask.pad_to_patch`), so any crop size
    reaches the trunk whole; evaluation pads each image itself (`vitsplit_vlm.dense.inference`)
    and compares at the original size."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if train:
        transforms = task.train_transforms(preset)
        if patch_size > 1 and task.pad_to_patch:
            transforms = [*transforms, T.PadToMultiple(patch_size)]
    else:
        transforms = task.eval_transforms(preset)
    return task.dataset(
        root, split, preset, transforms=transforms, mean=mean, std=std, train=train, seed=seed
    )


def eval_config(
    task: DenseTask,
    preset: Preset,
    sample_size: tuple[int, int] | None,
    *,
    max_images: int | None = None,
) -> EvalConfig:
    """The task's evaluation settings from its preset; `sample_size`: first image's (H, W)."""
    return EvalConfig(task.eval_settings(preset, sample_size), max_images=max_images)


def first_size(dataset) -> tuple[int, int] | None:
    item = dataset[0]
    meta = getattr(item, "meta", None)
    return tuple(meta["ori_size"]) if meta and "ori_size" in meta else None
