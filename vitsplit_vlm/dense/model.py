"""`DenseModel`: a backbone adapter (ViT-Split, linear probe or full fine-tuning) + a task head.

=============  ============================================================================
method         what trains
=============  ============================================================================
``vitsplit``   ViT-Split's task head / prior head / fusion (any `components` subset) + head;
               the trunk is frozen and runs without autograd
``linear``     the head only, on the frozen last layer after the final norm (paper's
               "DINOv2 linear")
``full``       the whole backbone + the same head on its last layer (after the final norm)
=============  ============================================================================

Every method reads one map (B, C, h, w) and hands it to the task head: `SegHead`, `DepthHead`
or `DetHead` (Mask R-CNN). Trainable groups are named once (`trainable_groups`): the ViT-Split
groups of `vitsplit_vlm.core` plus ``"head"`` (and ``"backbone"`` for ``full``); the same names
drive the optimizer's learning rates and what a checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torchvision.models.detection.image_list import ImageList

from vitsplit_vlm.core import ViTSplit, ViTSplitConfig
from vitsplit_vlm.core.layers import tokens_to_map
from vitsplit_vlm.core.trunk import check_pixels, trunk_final_norm, trunk_spec, unwrap_vision_model

from .detector import DetHead, batch_images
from .heads import DepthHead, SegHead

TASKS = ("seg", "depth", "det")
METHODS = ("vitsplit", "linear", "full")


@dataclass(frozen=True)
class DenseSpec:
    """Everything that fixes the trainable architecture (stored in checkpoints).

    `components` follows `ViTSplitConfig.components` (paper Tab. 6 ablations); `num_classes`
    excludes any background / ignore label; ``extra["rcnn"]`` holds keyword arguments for
    torchvision's `MaskRCNN` (RoI sampling sizes, proposal counts).
    """

    task: str
    method: str = "vitsplit"
    k: int = 3
    n: int = 4
    s: int | None = 2
    selection: str = "uniform"
    components: tuple[str, ...] = ("prior", "task", "fusion")
    deform_offset_init: str = "zero"
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    min_depth: float = 1e-3
    max_depth: float = 10.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", tuple(self.components))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.task not in TASKS:
            raise ValueError(f"DenseSpec.task: must be one of {TASKS}, got {self.task!r}")
        if self.method not in METHODS:
            raise ValueError(f"DenseSpec.method: must be one of {METHODS}, got {self.method!r}")
        if self.task in ("seg", "det") and not (self.num_classes and self.num_classes > 0):
            raise ValueError(f"DenseSpec.num_classes: {self.task} needs a positive class count")

    def split_config(self) -> ViTSplitConfig | None:
        """The `ViTSplitConfig` of the frozen-trunk methods (None for ``full``)."""
        if self.method == "full":
            return None
        components = () if self.method == "linear" else self.components
        return ViTSplitConfig(
            k=self.k,
            n=self.n,
            s=self.s,
            selection=self.selection,
            components=components,
            deform_offset_init=self.deform_offset_init,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        d["class_names"] = list(self.class_names) if self.class_names else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> DenseSpec:
        return cls(**dict(d))


class FullBackbone(nn.Module):
    """The whole (trainable) backbone: pixels -> last block -> final norm -> map (B, C, h, w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = unwrap_vision_model(model)
        self.model.requires_grad_(True)
        self.spec = trunk_spec(self.model)
        self.final_norm = trunk_final_norm(self.model)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = check_pixels(self.spec, pixels)
        kwargs = {}
        if not self.spec.model_type.startswith("dinov2"):  # DINOv2 always interpolates
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixels, output_hidden_states=True, **kwargs)
        tokens = out.hidden_states[-1]
        if self.final_norm is not None:
            tokens = self.final_norm(tokens)
        return tokens_to_map(tokens, grid, self.spec.num_prefix_tokens)


def build_head(spec: DenseSpec, channels: int, patch_size: int) -> nn.Module:
    if spec.task == "seg":
        return SegHead(channels, spec.num_classes)
    if spec.task == "depth":
        return DepthHead(channels, min_depth=spec.min_depth)
    return DetHead(channels, spec.num_classes, patch_size=patch_size, **spec.extra.get("rcnn", {}))


class DenseModel(nn.Module):
    """Backbone adapter + task head over one Hugging Face vision trunk.

    Seg / depth: ``model(pixels)`` with pixels (B, 3, H, W), H and W multiples of the patch
    size -> logits (B, K, H, W) / depth (B, 1, H, W) in metres. Det: ``model(images, targets)``
    with a list of (3, H_i, W_i) images -> loss dict (training) or detections (eval).
    """

    def __init__(self, trunk: nn.Module, spec: DenseSpec) -> None:
        super().__init__()
        self.spec = spec
        cfg = spec.split_config()
        self.split: ViTSplit | None = ViTSplit(trunk, cfg) if cfg is not None else None
        self.backbone: FullBackbone | None = FullBackbone(trunk) if cfg is None else None
        trunk_info = self.split.trunk.spec if self.split is not None else self.backbone.spec
        self.trunk_spec = trunk_info
        channels = self.split.out_channels if self.split is not None else trunk_info.hidden_size
        self.head = build_head(spec, channels, trunk_info.patch_size)

    @property
    def patch_size(self) -> int:
        return self.trunk_spec.patch_size

    @property
    def shares_frozen_trunk(self) -> bool:
        """True when the trunk is frozen (vitsplit / linear): hidden states can be shared."""
        return self.split is not None

    @property
    def required_layers(self) -> tuple[int, ...]:
        """Hidden-state indices this model reads from the frozen trunk."""
        if self.split is None:
            raise ValueError("method 'full' fine-tunes its own trunk; it reads no frozen layers")
        return self.split.layers.required_layers

    def trunk_module(self) -> nn.Module:
        """The Hugging Face vision model (frozen for vitsplit / linear)."""
        return self.split.trunk.model if self.split is not None else self.backbone.model

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """`{group: params}`: task_head / prior_head / fusion (vitsplit), backbone (full), head."""
        groups = self.split.trainable_groups() if self.split is not None else {}
        if self.backbone is not None:
            groups["backbone"] = list(self.backbone.parameters())
        groups["head"] = [p for p in self.head.parameters() if p.requires_grad]
        return {name: params for name, params in groups.items() if params}

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.split is not None:
            self.split.trunk.train(False)  # the frozen trunk always stays in eval mode
        return self

    # ---- features ------------------------------------------------------------------------
    def frozen_hidden(self, pixels: torch.Tensor) -> dict[int, torch.Tensor]:
        """`{index: (B, T, C)}` of the frozen trunk, without autograd."""
        return self.split.frozen_features(pixels)

    def features_from_hidden(
        self, hidden: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        """Frozen hidden states -> the map the head reads (B, C, h, w)."""
        return self.split.heads(hidden, grid).fused

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/p, W/p)."""
        if self.split is None:
            return self.backbone(pixels)
        grid = self.split.trunk.check_pixels(pixels)
        return self.features_from_hidden(self.frozen_hidden(pixels), grid)

    # ---- heads ---------------------------------------------------------------------------
    def decode(
        self,
        fused: torch.Tensor,
        size: tuple[int, int] | None,
        images: ImageList | None = None,
        targets: list[dict] | None = None,
    ):
        """Task head on a fused map; `size` = (H, W) of the (padded) input."""
        if self.spec.task == "det":
            return self.head(fused, images, targets)
        return self.head(fused, size)

    def forward(self, pixels, targets: list[dict] | None = None, *, resize: bool = True):
        """See the class docstring. ``resize=False`` (seg only) returns the head's logits at its
        own 4x-grid resolution, for `seg_loss` to resize without full-size activations."""
        if self.spec.task == "det":
            images = (
                pixels if isinstance(pixels, ImageList) else batch_images(pixels, self.patch_size)
            )
            return self.decode(self.features(images.tensors), None, images, targets)
        if not resize and self.spec.task != "seg":
            raise ValueError("resize=False is for segmentation logits; depth is resized in-head")
        size = tuple(pixels.shape[-2:]) if resize else None
        return self.decode(self.features(pixels), size)


def count_parameters(model: DenseModel) -> dict[str, int]:
    """Trainable parameters per group, and their total."""
    counts = {g: sum(p.numel() for p in ps) for g, ps in model.trainable_groups().items()}
    counts["total"] = sum(counts.values())
    return counts
