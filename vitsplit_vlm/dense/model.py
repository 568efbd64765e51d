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

Every method reads one map (B, C, h, w) and hands it to the head its task builds (a registered
`vitsplit_vlm.dense.tasks.DenseTask`: `SegHead`, `DepthHead`, `DetHead` = Mask R-CNN); the task
also runs the forward pass. Trainable groups are named once (`trainable_groups`): the ViT-Split
groups of `vitsplit_vlm.core` plus ``"head"`` (and ``"backbone"`` for ``full``); the same names
drive the optimizer's learning rates and what a checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torchvision.models.detection.image_list import ImageList

from vitsplit_vlm.core import ViTSplit, ViTSplitConfig
from vitsplit_vlm.core.feature_cache import FrozenHidden
from vitsplit_vlm.core.layers import tokens_to_map
from vitsplit_vlm.core.trunk import check_pixels, trunk_final_norm, trunk_spec, unwrap_vision_model

from .tasks import DenseTask, get_task

METHODS = ("vitsplit", "linear", "full")


@dataclass(frozen=True)
class DenseSpec:
    """Everything that fixes the trainable architecture (stored in checkpoints).

    `split` is the ViT-Split setting of the frozen-trunk methods: ``None`` (the default
    `ViTSplitConfig`) for ``vitsplit``; ``linear`` keeps its layers but no component (the frozen
    last layer after the final norm); ``full`` fine-tunes the trunk and takes none. `task` names a
    registered `DenseTask`, which checks the fields it uses: `num_classes` (excluding any
    background / ignore label) for seg / det, ``extra["rcnn"]`` (torchvision `MaskRCNN` keyword
    arguments) for det.
    """

    task: str
    method: str = "vitsplit"
    split: ViTSplitConfig | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    min_depth: float = 1e-3
    max_depth: float = 10.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        try:
            task = get_task(self.task)
        except ValueError as err:
            raise ValueError(f"DenseSpec.task: {err}") from None
        if self.method not in METHODS:
            raise ValueError(f"DenseSpec.method: must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "split", _method_split(self.method, self.split))
        task.check_spec(self)

    @property
    def task_object(self) -> DenseTask:
        return get_task(self.task)

    def to_dict(self) -> dict:
        """Plain data (loads with ``torch.load(weights_only=True)``); `from_dict` reads it."""
        return {
            "task": self.task,
            "method": self.method,
            "split": self.split.to_dict() if self.split is not None else None,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> DenseSpec:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"DenseSpec.from_dict: unknown fields {unknown}; known {sorted(known)}"
            )
        split = d.pop("split", None)
        return cls(**d, split=ViTSplitConfig.from_dict(split) if split is not None else None)


def _method_split(method: str, split: ViTSplitConfig | None) -> ViTSplitConfig | None:
    """`DenseSpec.split` for `method` (see the class doc), checked."""
    if method == "full":
        if split is not None:
            raise ValueError("DenseSpec.split: method 'full' fine-tunes the trunk; give no split")
        return None
    split = ViTSplitConfig() if split is None else split
    if not isinstance(split, ViTSplitConfig):
        raise ValueError(f"DenseSpec.split: expected a ViTSplitConfig, got {type(split).__name__}")
    if split.variant != "dense":
        raise ValueError(
            f"DenseSpec.split: dense heads need variant 'dense', got {split.variant!r}"
        )
    return split.with_(components=()) if method == "linear" else split


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


class DenseModel(nn.Module):
    """Backbone adapter + task head over one Hugging Face vision trunk.

    Seg / depth: ``model(pixels)`` with pixels (B, 3, H, W), H and W multiples of the patch
    size -> logits (B, K, H, W) / depth (B, 1, H, W) in metres. Det: ``model(images, targets)``
    with a list of (3, H_i, W_i) images -> loss dict (training) or detections (eval).
    """

    def __init__(self, trunk: nn.Module, spec: DenseSpec) -> None:
        super().__init__()
        self.spec = spec
        self.task = spec.task_object
        cfg = spec.split
        self.split: ViTSplit | None = ViTSplit(trunk, cfg) if cfg is not None else None
        self.backbone: FullBackbone | None = FullBackbone(trunk) if cfg is None else None
        trunk_info = self.split.trunk.spec if self.split is not None else self.backbone.spec
        self.trunk_spec = trunk_info
        channels = self.split.out_channels if self.split is not None else trunk_info.hidden_size
        self.head = self.task.build_head(spec, channels, trunk_info.patch_size)

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

    def features(self, pixels: torch.Tensor | FrozenHidden) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/p, W/p); cached hidden states (``--cache-features``) skip
        the frozen trunk."""
        if isinstance(pixels, FrozenHidden):
            if self.split is None:
                raise ValueError("method 'full' trains its trunk: it cannot read cached features")
            p = self.patch_size
            return self.features_from_hidden(
                pixels.hidden, (pixels.shape[-2] // p, pixels.shape[-1] // p)
            )
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
        return self.task.decode(self.head, fused, size, images, targets)

    def forward(self, pixels, targets: list[dict] | None = None, *, resize: bool = True):
        """See the class docstring. ``resize=False`` (seg only) returns the head's logits at its
        own 4x-grid resolution, for `seg_loss` to resize without full-size activations."""
        return self.task.forward(self, pixels, targets, resize=resize)


def count_parameters(model: DenseModel) -> dict[str, int]:
    """Trainable parameters per group, and their total."""
    counts = {g: sum(p.numel() for p in ps) for g, ps in model.trainable_groups().items()}
    counts["total"] = sum(counts.values())
    return counts
