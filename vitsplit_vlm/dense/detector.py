"""Mask R-CNN on one fused map: `DetNeck` -> FPN(256) -> torchvision's RPN and RoI heads.

A ViT's patch grid gives strides p/4, p/2, p, 2p (p = 14 for DINOv2: 3.5, 7, 14, 28), which
torchvision would get wrong twice: `AnchorGenerator` derives integer strides from
``image_size // grid`` and `MultiScaleRoIAlign` rounds scales to powers of two. Both are
replaced here by versions that use the exact strides. Images are not resized inside the
detector (the data pipeline does that); they are only padded to a multiple of the patch size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from .neck import DetNeck

FEATURE_NAMES = ("0", "1", "2", "3")


class FixedStrideAnchorGenerator(AnchorGenerator):
    """`AnchorGenerator` with known (possibly fractional) strides, one per feature map."""

    def __init__(self, sizes, aspect_ratios, strides: tuple[float, ...]) -> None:
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(float(s) for s in strides)

    def forward(
        self, image_list: ImageList, feature_maps: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} strides")
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        self.set_cell_anchors(dtype, device)
        per_level = []
        for fmap, stride, base in zip(feature_maps, self.strides, self.cell_anchors, strict=True):
            h, w = fmap.shape[-2:]
            ys = torch.arange(h, dtype=dtype, device=device) * stride
            xs = torch.arange(w, dtype=dtype, device=device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
            per_level.append((shifts + base.view(1, -1, 4)).reshape(-1, 4))
        anchors = torch.cat(per_level)
        return [anchors for _ in image_list.image_sizes]


def exact_roi_align(output_size: int, strides: tuple[float, ...]) -> MultiScaleRoIAlign:
    """`MultiScaleRoIAlign` over `FEATURE_NAMES` with scales ``1 / stride`` (not rounded) and FPN
    levels ``round(log2(stride))`` for the box-size heuristic."""
    pool = MultiScaleRoIAlign(list(FEATURE_NAMES), output_size=output_size, sampling_ratio=2)
    levels = [round(math.log2(s)) for s in strides]
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(levels[0], levels[-1])
    return pool


class NeckFPN(nn.Module):
    """Fused map (B, C, h, w) -> OrderedDict of five 256-channel maps ("0".."3", "pool")."""

    def __init__(self, channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.neck = DetNeck(channels)
        self.fpn = FeaturePyramidNetwork(
            [channels] * 4, out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, fused: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict(zip(FEATURE_NAMES, self.neck(fused), strict=True)))


class DetHead(nn.Module):
    """Neck + FPN + Mask R-CNN (torchvision) reading a fused stride-`patch_size` map.

    `num_classes` excludes the background. Anchor sizes are 8x each level's stride (the usual
    32..512 for stride 4..64), aspect ratios 0.5 / 1 / 2.
    """

    def __init__(self, channels: int, num_classes: int, *, patch_size: int, **rcnn_kwargs) -> None:
        super().__init__()
        self.num_classes = num_classes
        strides = tuple(patch_size * f for f in DetNeck.strides_in_patches)
        anchor_strides = (*strides, strides[-1] * 2)  # the FPN's extra max-pool level
        anchors = FixedStrideAnchorGenerator(
            tuple((int(round(8 * s)),) for s in anchor_strides),
            ((0.5, 1.0, 2.0),) * len(anchor_strides),
            anchor_strides,
        )
        self.rcnn = MaskRCNN(
            NeckFPN(channels),
            num_classes=num_classes + 1,
            rpn_anchor_generator=anchors,
            box_roi_pool=exact_roi_align(7, strides),
            mask_roi_pool=exact_roi_align(14, strides),
            **rcnn_kwargs,
        )

    def forward(
        self, fused: torch.Tensor, images: ImageList, targets: list[dict] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """fused (B, C, h, w) of the padded batch `images` -> training: loss dict; eval: per image
        ``{"boxes" (N, 4) xyxy, "labels" (N,), "scores" (N,), "masks" (N, 1, H, W) in [0, 1]}``."""
        features = self.rcnn.backbone(fused)
        proposals, rpn_losses = self.rcnn.rpn(images, features, targets)
        detections, roi_losses = self.rcnn.roi_heads(
            features, proposals, images.image_sizes, targets
        )
        if self.training:
            return {**rpn_losses, **roi_losses}
        sizes = images.image_sizes
        return self.rcnn.transform.postprocess(detections, sizes, sizes)


def batch_images(images: list[torch.Tensor], multiple: int) -> ImageList:
    """Pad (3, H_i, W_i) images bottom/right into one (B, 3, H, W) tensor, H and W multiples of
    `multiple`; `image_sizes` keeps each (H_i, W_i)."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    H = math.ceil(max(h for h, _ in sizes) / multiple) * multiple
    W = math.ceil(max(w for _, w in sizes) / multiple) * multiple
    batch = images[0].new_zeros(len(images), images[0].shape[0], H, W)
    for out, im in zip(batch, images, strict=True):
        out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return ImageList(batch, sizes)
