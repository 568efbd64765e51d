"""Semantic segmentation (ADE20K, Cityscapes, Pascal Context): linear head, cross-entropy, mIoU,
whole / sliding inference. The data sets, their presets and layers: `seg_data.SEG_DATASETS`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .. import transforms as T
from ..datasets import DenseDataset, LayoutError
from ..heads import SegHead
from ..inference import SEG_MODES, predict_seg
from ..losses import seg_loss
from ..metrics import SegMetric
from ..visualize import seg_overlay
from .base import CROP_SIZE, MapTask, TaskOption, parse_pair
from .seg_data import (
    ADE20K_PLAYGROUND,
    ADE20K_REAL,
    DEFAULT_DATASET,
    SEG_DATASETS,
    SegDataSet,
    SegPreset,
    get_seg_dataset,
)

REAL, PLAYGROUND = ADE20K_REAL, ADE20K_PLAYGROUND  # the default data set's (ADE20K) presets
DATASET = TaskOption(
    "dataset",
    f"data set (default {DEFAULT_DATASET}): its layout, presets and paper layers",
    choices=tuple(SEG_DATASETS),
)


@dataclass(frozen=True)
class SegEval:
    """Inference for evaluation: ``whole`` image, or ``slide`` windows of `crop` every `stride`."""

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None


@dataclass
class SegScore:
    """mIoU / pixel accuracy over a split (one confusion matrix, MMSegmentation's rule)."""

    confusion: SegMetric

    def update(self, prediction: torch.Tensor, meta: dict) -> None:
        """prediction: (H, W) class ids at the ground truth's size (``meta["gt_seg"]``)."""
        self.confusion.update(prediction, meta["gt_seg"])

    def merge(self, other: SegScore) -> None:
        self.confusion.merge(other.confusion)

    def compute(self) -> dict:
        return self.confusion.compute()


class SegTask(MapTask):
    """Semantic segmentation on a registered data set (`seg_data.SEG_DATASETS`, ``--dataset``);
    the class attributes are the default data set's (ADE20K)."""

    name = "seg"
    playground_set = SEG_DATASETS[DEFAULT_DATASET].playground_set
    paper_layers = SEG_DATASETS[DEFAULT_DATASET].paper_layers
    presets = SEG_DATASETS[DEFAULT_DATASET].presets
    data_sets = tuple(SEG_DATASETS)
    options = (
        CROP_SIZE,
        DATASET,
        TaskOption("eval_mode", "inference (window = crop)", choices=SEG_MODES),
        TaskOption("eval_stride", "sliding-window stride N or H,W", parse_pair),
        TaskOption(
            "num_classes",
            "classes (default: the data set's; ADE20K: objectInfo*.csv or 150)",
            int,
        ),
    )
    needs_classes = True
    head_resolution_output = True  # seg_loss resizes the 4x-grid logits itself
    best_metric = ("mIoU", "max")

    # ---- the data set ----------------------------------------------------------------------
    @staticmethod
    def data_set(name: str | None) -> SegDataSet:
        """The registered data set `name` (None: the default, ADE20K)."""
        return get_seg_dataset(name or DEFAULT_DATASET)

    def preset_for(self, kind: str, choice: Mapping[str, Any]) -> SegPreset:
        return self.data_set(choice.get("dataset")).presets[kind]

    def playground_folder(self, choice: Mapping[str, Any]) -> str:
        return self.data_set(choice.get("dataset")).playground_set

    def paper_setting(self, preset: SegPreset | None) -> tuple[Mapping[str, tuple], str]:
        data = self.data_set(preset.dataset if preset is not None else None)
        if data is SEG_DATASETS[DEFAULT_DATASET]:
            return data.paper_layers, self.name
        return data.paper_layers, f"{self.name} ({data.title})"

    def build_head(self, spec, channels, patch_size):
        return SegHead(channels, spec.num_classes)

    def loss(self, model, batch):
        loss = seg_loss(model(batch.images, resize=False), batch.seg, sharded=batch.sharded)
        return loss, {"loss": float(loss.detach())}

    def train_transforms(self, preset: SegPreset) -> list:
        return T.seg_train_pipeline(preset.scale, preset.crop_size)

    def eval_transforms(self, preset: SegPreset) -> list:
        return T.eval_pipeline(preset.scale)

    def dataset(self, root: Path, split, preset: SegPreset, *, transforms, **common):
        """The preset's data set (`SegPreset.dataset`) at `root`; when `root` does not hold its
        layout but another registered one, the error says which ``--dataset`` to pass."""
        data = self.data_set(preset.dataset)
        try:
            return data.loader(
                root, split, num_classes=preset.num_classes, transforms=transforms, **common
            )
        except LayoutError as err:
            others = [
                name for name, other in SEG_DATASETS.items()
                if other is not data and other.loader.matches(Path(root))
            ]  # fmt: skip
            if not others:
                raise
            hint = f"; {root} looks like the {others[0]} layout: pass --dataset {others[0]}"
            raise LayoutError(f"{err}{hint}") from None

    def eval_settings(self, preset: SegPreset | None = None, sample_size=None) -> SegEval:
        if preset is None:
            return SegEval()
        return SegEval(
            mode=preset.eval_mode or "whole",
            crop=tuple(preset.crop_size) if preset.crop_size else None,
            stride=tuple(preset.eval_stride) if preset.eval_stride else None,
        )

    def metric(self, model, dataset: DenseDataset, settings: SegEval) -> SegScore:
        return SegScore(SegMetric(model.spec.num_classes))

    def predict(self, model, pixels, meta, settings: SegEval) -> torch.Tensor:
        """(1, 3, H, W) -> (H_gt, W_gt) class ids."""
        gt = meta["gt_seg"]
        logits = predict_seg(
            model, pixels, mode=settings.mode, crop=settings.crop, stride=settings.stride,
            out_size=gt.shape,
        )  # fmt: skip
        return logits.argmax(1)[0]

    def render(self, spec, output: torch.Tensor, image: Image.Image, scale_xy) -> Image.Image:
        logits = F.interpolate(
            output, size=(image.height, image.width), mode="bilinear", align_corners=False
        )
        return seg_overlay(image, logits.argmax(1)[0])
