"""Detection and instance segmentation (COCO 2017): Mask R-CNN on the fused map, box / mask AP."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.image_list import ImageList

from .. import transforms as T
from ..coco import COCODetection, coco_evaluate, to_coco_results
from ..detector import DetHead, batch_images
from ..visualize import detection_overlay
from .base import DenseTask, Preset, TaskOption, parse_floats

SPEC_EXTRA_KEYS = ("rcnn",)
# keyword arguments DetHead sets itself (or may not be overridden)
_OWN_RCNN_ARGS = {"self", "backbone", "num_classes", "kwargs", "rpn_anchor_generator",
                  "box_roi_pool", "mask_roi_pool"}  # fmt: skip


def rcnn_arguments() -> frozenset[str]:
    """torchvision `MaskRCNN` keyword arguments a spec may set (``extra["rcnn"]``)."""
    names = {
        *inspect.signature(MaskRCNN.__init__).parameters,
        *inspect.signature(FasterRCNN.__init__).parameters,
    }
    return frozenset(names - _OWN_RCNN_ARGS)


@dataclass(frozen=True, kw_only=True)
class DetPreset(Preset):
    """Detection recipe: random rescale of `scale` x `ratio_range`, `roi_batch` RoIs sampled per
    image; `rcnn`: further torchvision `MaskRCNN` arguments (proposal / detection counts)."""

    ratio_range: tuple[float, float]
    roi_batch: int
    rcnn: dict = field(default_factory=dict)


# COCO: MMDetection's 1x schedule as the paper (AdamW 1e-4, wd 0.05, batch 16, 12 epochs).
# Playground: scenes hold at most 4 objects, so fewer proposals and detections.
REAL = DetPreset(
    iters=88000, batch_size=16, lr=1e-4, weight_decay=0.05, schedule="step", warmup_iters=500,
    grad_clip=None, scale=(1024, 1024), ratio_range=(0.8, 1.25), roi_batch=512,
)  # fmt: skip
PLAYGROUND = DetPreset(
    iters=300, batch_size=2, lr=3e-4, weight_decay=0.05, schedule="poly", warmup_iters=30,
    grad_clip=None, scale=(112, 112), ratio_range=(0.8, 1.25), roi_batch=32,
    rcnn=dict(box_detections_per_img=20, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100),
)  # fmt: skip


@dataclass
class DetScore:
    """COCO box and mask AP (pycocotools) over the images added."""

    ann_file: Path
    label_to_cat: list[int]
    results: list[dict] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)

    def update(self, prediction: dict[str, torch.Tensor], meta: dict) -> None:
        """prediction: one image's detections in the transformed image (see `DetHead`)."""
        self.results += to_coco_results(prediction, meta, self.label_to_cat)
        self.image_ids.append(meta["image_id"])

    def merge(self, other: DetScore) -> None:
        self.results += other.results
        self.image_ids += other.image_ids

    def compute(self) -> dict:
        metrics = coco_evaluate(self.ann_file, self.results, self.image_ids)
        metrics["detections"] = len(self.results)
        return metrics


class DetTask(DenseTask):
    """COCO-layout detection + instance masks (`vitsplit_vlm.dense.coco.COCODetection`)."""

    name = "det"
    playground_set = "coco"
    # the official code's n = 5/5/8 (the paper's Tab. 10 prints n = 4/6/8)
    paper_layers = {"S": (11, 5, 2), "B": (11, 5, 2), "L": (23, 8, 2)}
    presets = {"real": REAL, "playground": PLAYGROUND}
    options = (
        TaskOption("ratio_range", "random rescale range, e.g. 0.8,1.25", parse_floats),
        TaskOption("roi_batch", "RoIs sampled per image (COCO 512)", int),
    )
    needs_classes = True
    best_metric = ("bbox_mAP", "max")
    cache_refusal = "Mask R-CNN batches images of varying size"
    pad_to_patch = False  # `batch_images` pads each batch and keeps each image's size for RoIs

    def check_extra(self, extra) -> None:
        unknown = sorted(set(extra) - set(SPEC_EXTRA_KEYS))
        if unknown:
            raise ValueError(f"DenseSpec.extra: det takes only {SPEC_EXTRA_KEYS}, got {unknown}")
        bad = sorted(set(extra.get("rcnn", {})) - rcnn_arguments())
        if bad:
            raise ValueError(f"DenseSpec.extra['rcnn']: not MaskRCNN arguments: {bad}")

    def spec_fields(self, preset: DetPreset) -> dict:
        return {"extra": {"rcnn": {"box_batch_size_per_image": preset.roi_batch, **preset.rcnn}}}

    def build_head(self, spec, channels, patch_size):
        return DetHead(
            channels, spec.num_classes, patch_size=patch_size, **spec.extra.get("rcnn", {})
        )

    def forward(self, model, pixels, targets=None, *, resize: bool = True):
        """A list of (3, H_i, W_i) images (or an `ImageList`) -> training: loss dict; eval:
        detections per image."""
        images = pixels if isinstance(pixels, ImageList) else batch_images(pixels, model.patch_size)
        return model.decode(model.features(images.tensors), None, images, targets)

    def decode(self, head, fused, size, images=None, targets=None):
        return head(fused, images, targets)

    def loss(self, model, batch):
        images = list(batch.images) if isinstance(batch.images, torch.Tensor) else batch.images
        parts = model(images, batch.targets)
        loss = sum(parts.values())
        floats = {k: float(v.detach()) for k, v in parts.items()}
        return loss, {"loss": float(loss.detach()), **floats}

    def train_transforms(self, preset: DetPreset) -> list:
        return T.det_train_pipeline(preset.scale, preset.ratio_range)

    def eval_transforms(self, preset: DetPreset) -> list:
        return T.eval_pipeline(preset.scale)

    def dataset(self, root: Path, split, preset: DetPreset, *, transforms, **common):
        return COCODetection(root, split, transforms=transforms, **common)

    def metric(self, model, dataset: COCODetection, settings) -> DetScore:
        return DetScore(dataset.ann_file, dataset.cat_ids)

    def predict(self, model, pixels, meta, settings) -> dict[str, torch.Tensor]:
        return model([pixels[0]])[0]

    def crop_output(self, output: list[dict], size: tuple[int, int]) -> dict:
        return output[0]  # boxes and masks already refer to the unpadded image

    def render(self, spec, output: dict, image: Image.Image, scale_xy) -> Image.Image:
        sx, sy = scale_xy
        det = dict(output)
        det["boxes"] = det["boxes"] / torch.tensor([sx, sy, sx, sy])
        if "masks" in det and len(det["masks"]):
            size = (image.height, image.width)
            det["masks"] = F.interpolate(
                det["masks"], size=size, mode="bilinear", align_corners=False
            )
        names = list(spec.class_names) if spec.class_names else None
        return detection_overlay(image, det, names)
