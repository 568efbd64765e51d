"""COCO 2017 instances: the data set, polygon / RLE masks, and box / mask AP (pycocotools).

Layout: ``ROOT/annotations/instances_{train,val}2017.json`` + ``ROOT/{train,val}2017/``;
category ids map to contiguous labels 1..K (0 is the detector's background). See
`vitsplit_vlm.dense.datasets` for how bad input is skipped and counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import DenseDataset, Skipped, read_rgb
from .transforms import Sample


def _require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "COCO masks and evaluation need pycocotools: pip install 'vitsplit_vlm[dense]'"
        ) from err
    return mask_utils


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) -> (H, W) uint8 mask."""
    mask_utils = _require_pycocotools()
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a harmless copy= warning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


class COCODetection(DenseDataset):
    """Instances in the COCO 2017 layout (see the module doc). Crowd annotations are left out
    of training targets; `train=False` keeps images without instances (they still count as
    false positives at evaluation)."""

    task = "det"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        ann_file: str | Path | None = None,
        train: bool = True,
        **kwargs,
    ) -> None:
        root = Path(root)
        year_split = split if split.endswith("2017") else f"{split}2017"
        self.ann_file = (
            Path(ann_file) if ann_file else root / "annotations" / f"instances_{year_split}.json"
        )
        self.image_dir = root / year_split
        try:
            data = json.loads(self.ann_file.read_text())
            images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"COCO: cannot read {self.ann_file}: {err}") from err
        self.cat_ids = sorted(int(c["id"]) for c in cats)
        self.cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        names = {int(c["id"]): c["name"] for c in cats}
        self.class_names = [names[c] for c in self.cat_ids]
        self.num_classes = len(self.cat_ids)
        by_image: dict[int, list[dict]] = {}
        for ann in anns:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        records, skipped = [], []
        for info in sorted(images, key=lambda i: int(i["id"])):
            path = self.image_dir / info["file_name"]
            own = by_image.get(int(info["id"]), [])
            unknown = {a["category_id"] for a in own} - set(self.cat_to_label)
            if not path.is_file():
                skipped.append(Skipped("unreadable file", str(path), "missing"))
            elif unknown:
                skipped.append(Skipped("label out of range", str(path), f"categories {unknown}"))
            elif train and not [a for a in own if not a.get("iscrowd", 0)]:
                skipped.append(Skipped("no instances", str(path)))
            else:
                records.append({"path": path, "info": info, "anns": own})
        super().__init__(
            records, skipped=skipped, train=train, name=f"COCO {self.ann_file}", **kwargs
        )

    def load(self, record: dict) -> Sample | Skipped:
        image = read_rgb(record["path"])
        h, w = image.shape[:2]
        boxes, labels, masks = [], [], []
        for ann in record["anns"]:
            x, y, bw, bh = ann["bbox"]
            if ann.get("iscrowd", 0) or bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.cat_to_label[ann["category_id"]])
            masks.append(ann_to_mask(ann["segmentation"], h, w))
        if self.train and not boxes:
            return Skipped("no instances", str(record["path"]), "only crowd or degenerate boxes")
        return Sample(
            image,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            masks=np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
            meta={
                "path": str(record["path"]),
                "image_id": int(record["info"]["id"]),
                "ori_size": (h, w),
            },
        )


# --------------------------------------------------------------------------- evaluation

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def to_coco_results(
    detection: dict[str, torch.Tensor],
    meta: dict,
    label_to_cat: list[int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """One image's detections -> COCO result dicts (bbox xywh and RLE mask, original pixels).

    `detection`: boxes (N, 4) xyxy, labels (N,) 1..K, scores (N,), optional masks
    (N, 1, h, w) probabilities, all in the transformed image; `meta` has ``image_id``,
    ``ori_size`` (H, W) and ``scale_xy``; `label_to_cat[label - 1]` is the COCO category id.
    """
    mask_utils = _require_pycocotools()
    sx, sy = meta.get("scale_xy", (1.0, 1.0))
    H, W = meta["ori_size"]
    boxes = detection["boxes"].detach().cpu().double()
    boxes = boxes / torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    masks = detection.get("masks")
    if masks is not None and len(masks):
        masks = F.interpolate(masks.float(), size=(H, W), mode="bilinear", align_corners=False)
        masks = (masks[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
    out = []
    for i, (box, label, score) in enumerate(
        zip(boxes.tolist(), detection["labels"].tolist(), detection["scores"].tolist(), strict=True)
    ):
        x0, y0, x1, y1 = box
        result = {
            "image_id": int(meta["image_id"]),
            "category_id": int(label_to_cat[label - 1]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if masks is not None and len(masks):
            rle = mask_utils.encode(np.asfortranarray(masks[i]))
            rle["counts"] = rle["counts"].decode("ascii")
            result["segmentation"] = rle
        out.append(result)
    return out


def coco_evaluate(
    ann_file: str | Path, results: list[dict], image_ids: list[int], iou_types=("bbox", "segm")
) -> dict[str, float]:
    """``{"bbox_mAP", "bbox_mAP_50", ..., "segm_mAP_l"}`` in percent; 0 with no detections,
    nan where the split has no ground truth of that size (pycocotools reports -1)."""
    _require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        usable = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not usable:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(usable)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for name, value in zip(STAT_NAMES, ev.stats[:6], strict=True):
            metrics[f"{iou_type}_{name}"] = float(value) * 100 if value >= 0 else math.nan
    return metrics
