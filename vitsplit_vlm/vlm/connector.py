"""Connectors (LLaVA's `mm_projector`, transformers' `multi_modal_projector`).

Every connector reads frozen vision hidden states `{index: (B, T, C)}` (keys `required_layers`)
and returns image tokens (B, h*w, D_llm):

- `vitsplit`: the official LLaVA-1.5 ViT-Split connector (paper §4.3; official `mm_projector`): task block copy, plain-conv
  prior head, fusion projected to the LLM width.
- `vitsplit_dense`: the paper's dense variant (deformable convs at the vision width) followed by
  LLaVA's `mlp2x_gelu` to the LLM width.
- `mlp2x_gelu` / `linear`: LLaVA-1.5's baselines on the feature layer's patch tokens;
- `dc_sti` / `dc_sci` / `dc_dci` / `vipllava`: multi-layer baselines (`baselines`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from ..core import ViTSplitHeads
from ..core.layers import DeformBlock
from ..core.trunk import trunk_blocks, trunk_final_norm, trunk_spec
from .baselines import DenseConnector, VipLlavaConnector
from .configuration import ViTSplitLlavaConfig, check_feature_layer
from .projectors import mlp_projector


class ViTSplitConnector(nn.Module):
    def __init__(self, config: ViTSplitLlavaConfig, vision_tower: nn.Module) -> None:
        super().__init__()
        spec = trunk_spec(vision_tower)
        cfg = config.vitsplit
        blocks = trunk_blocks(vision_tower)
        task_blocks = [blocks[i] for i in cfg.resolve(spec.num_blocks).task_blocks]
        # Under ZeRO-3 the tower may be partitioned: gather it so the copies get full weights
        # (a deep-copied Parameter carries no DeepSpeed state; the engine partitions it later).
        with _gathered([p for b in task_blocks for p in b.parameters()]):
            self.heads = ViTSplitHeads(
                cfg, spec, blocks=blocks, final_norm=trunk_final_norm(vision_tower)
            )
        text_hidden = config.text_config.hidden_size
        self.proj = None if cfg.variant == "vlm" else mlp_projector(spec.hidden_size, text_hidden)
        self.required_layers = self.heads.layers.required_layers

    def copy_task_head_from(self, vision_tower: nn.Module) -> None:
        """Load the task head with the (loaded) tower's blocks `f-k .. f-1` (ZeRO-3 aware)."""
        if self.heads.task_head is None:
            return
        blocks = trunk_blocks(vision_tower)
        for dst, idx in zip(
            self.heads.task_head.blocks, self.heads.layers.task_blocks, strict=True
        ):
            src = blocks[idx]
            with _gathered(list(src.parameters()) + list(dst.parameters())):
                dst.load_state_dict(src.state_dict())

    def forward(
        self, hidden_states: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        fused = self.heads(hidden_states, grid).fused  # (B, C', h, w)
        tokens = fused.flatten(2).transpose(1, 2)  # (B, h*w, C')
        return self.proj(tokens) if self.proj is not None else tokens


class MLPConnector(nn.Module):
    """LLaVA-1.5 `mlp2x_gelu` / `linear` on the patch tokens of `hidden_states[f]`."""

    def __init__(self, config: ViTSplitLlavaConfig, vision_tower: nn.Module) -> None:
        super().__init__()
        spec = trunk_spec(vision_tower)
        depth = 2 if config.mm_projector_type == "mlp2x_gelu" else 1
        self.proj = mlp_projector(spec.hidden_size, config.text_config.hidden_size, depth)
        layer = config.vision_feature_layer
        self.feature_layer = layer if layer > 0 else spec.num_blocks + 1 + layer
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.required_layers = (self.feature_layer,)

    def copy_task_head_from(self, vision_tower: nn.Module) -> None:
        """Nothing to copy: the baseline has no task head."""

    def forward(
        self, hidden_states: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        return self.proj(hidden_states[self.feature_layer][:, self.num_prefix_tokens :])


# mm_projector_type -> connector class (explicit registry)
CONNECTORS: dict[str, type[nn.Module]] = {
    "vitsplit": ViTSplitConnector,
    "vitsplit_dense": ViTSplitConnector,
    "mlp2x_gelu": MLPConnector,
    "linear": MLPConnector,
    "dc_sti": DenseConnector,
    "dc_sci": DenseConnector,
    "dc_dci": DenseConnector,
    "vipllava": VipLlavaConnector,
}


def build_connector(config: ViTSplitLlavaConfig, vision_tower: nn.Module) -> nn.Module:
    """The connector of `config.mm_projector_type` over `vision_tower` (its config is checked
    again: fields set after the config was built bypass its own checks)."""
    check_feature_layer(config.vision_feature_layer)
    return CONNECTORS[config.mm_projector_type](config, vision_tower)


def reset_connector_parameters(module: nn.Module, *, zero_offsets: bool = True) -> None:
    """PyTorch's default init (as LLaVA trains its projector), offsets of deformable convs zeroed."""
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and not isinstance(sub, DeformBlock):
            sub.reset_parameters()
    if zero_offsets:
        for sub in module.modules():
            if isinstance(sub, DeformBlock):
                nn.init.zeros_(sub.offsets.weight)
                nn.init.zeros_(sub.offsets.bias)


def _gathered(params: list[nn.Parameter]):
    """`deepspeed.zero.GatheredParameters` for ZeRO-3 partitioned params; a no-op otherwise."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    import contextlib

    return contextlib.nullcontext()
