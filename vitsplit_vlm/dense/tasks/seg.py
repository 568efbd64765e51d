"""Semantic segmentation (ADE20K): linear head, cross-entropy, mIoU, whole / sliding inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .. import transforms as T
from ..datasets import ADE20K, DenseDataset
from ..heads import SegHead
from ..inference import SEG_MODES, predict_seg
from ..losses import seg_loss
from ..metrics import SegMetric
from ..visualize import seg_overlay
from .base import CROP_SIZE, MapTask, Preset, TaskOption, parse_pair


@dataclass(frozen=True, kw_only=True)
class SegPreset(Preset):
    """Segmentation recipe: random rescale of `scale` x [0.5, 2], `crop_size` crops; evaluation
    `eval_mode` whole or slide (windows of `crop_size` every `eval_stride`)."""

    crop_size: tuple[int, int]
    eval_mode: str = "whole"
    eval_stride: tuple[int, int] | None = None
    num_classes: int | None = None  # None: ROOT/objectInfo*.csv, else 150


# ADE20K: the paper's MMSegmentation recipe (40k iterations, poly, 1500 warmup, slide 512/341);
# playground: a few-minute CPU run on the 112-168 px shape scenes.
REAL = SegPreset(
    iters=40000, batch_size=16, lr=3e-4, weight_decay=1e-2, schedule="poly", warmup_iters=1500,
    grad_clip=None, crop_size=(512, 512), scale=(2048, 512), eval_mode="slide",
    eval_stride=(341, 341),
)  # fmt: skip
PLAYGROUND = SegPreset(
    iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=50,
    grad_clip=None, crop_size=(112, 112), scale=(448, 112), eval_mode="whole",
    eval_stride=(74, 74),
)  # fmt: skip


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
    """ADE20K-layout semantic segmentation (`vitsplit_vlm.dense.datasets.ADE20K`)."""

    name = "seg"
    playground_set = "ade"
    paper_layers = {"S": (3, 4, 2), "B": (3, 4, 2), "L": (4, 8, 2)}  # paper Tab. 10
    presets = {"real": REAL, "playground": PLAYGROUND}
    options = (
        CROP_SIZE,
        TaskOption("eval_mode", "inference (window = crop)", choices=SEG_MODES),
        TaskOption("eval_stride", "sliding-window stride N or H,W", parse_pair),
        TaskOption("num_classes", "classes (default: objectInfo*.csv or 150)", int),
    )
    needs_classes = True
    head_resolution_output = True  # seg_loss resizes the 4x-grid logits itself
    best_metric = ("mIoU", "max")

    def build_head(self, spec, channels, patch_size):
        return SegHead(channels, spec.num_classes)

    def loss(self, model, batch):
        loss = seg_loss(model(batch.images, resize=False), batch.seg, sharded=batch.sharded)
        return loss, {"loss": float(loss.detach())}

    def train_transforms(self, preset: SegPreset) -> list:
        return T.seg_train_pipeline(preset.scale, preset.crop_size)

    def eval_transforms(self, preset: SegPreset) -> list:
        return T.eval_pipeline(preset.scale)

    def dataset(self, root: Path, split, preset: SegPreset, *, transforms, **common) -> ADE20K:
        return ADE20K(root, split, num_classes=preset.num_classes, transforms=transforms, **common)

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
