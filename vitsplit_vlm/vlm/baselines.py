"""Multi-layer connector baselines: Dense Connector (STI / SCI / DCI) and VipLlava.

Both read several frozen hidden states `{index: (B, T, C)}` of the vision tower (patch tokens:
CLS and registers dropped) and return image tokens (B, T', D_llm), as every connector here.
With `f` the feature layer (``vision_feature_layer``, LLaVA-1.5's penultimate state) and `P` its
N patch tokens:

- ``dc_sti`` (sparse token integration, HJYao00/DenseConnector
  ``dc/model/multimodal_projector/dense_connector.py``): the tokens of two more layers
  (`mm_projector_layers`, CLIP-L: 7 and 15) are average-pooled by 8 along the token order and
  appended to `P`: N + 2 * (N // 8) tokens, then ``mlp2x_gelu`` (C -> D);
- ``dc_sci`` (sparse channel integration): `P` and the two layers concatenated along channels
  (3C), then ``mlp2x_gelu`` (3C -> D);
- ``dc_dci`` (dense channel integration): `P`, the mean of hidden states ``0 .. (f+1)/2 - 1``
  and the mean of ``(f+1)/2 .. f`` concatenated along channels (CLIP-L: 0-11 and 12-23), then
  ``mlp2x_gelu`` (3C -> D);
- ``vipllava`` (transformers ``models/vipllava/modeling_vipllava.py``): the layers of
  `mm_projector_layers` (default -2, -5, -8, -11, 6) concatenated along channels, then
  ``LayerNorm(LC) -> Linear(LC -> D) -> GELU -> Linear(D -> D)`` (`VipLlavaProjector`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.trunk import trunk_spec
from .configuration import STI_POOL, ViTSplitLlavaConfig, dci_halves, hidden_index
from .projectors import VipLlavaProjector, mlp_projector


class DenseConnector(nn.Module):
    """Dense Connector's STI / SCI / DCI over `hidden_states`, then ``mlp2x_gelu``."""

    def __init__(self, config: ViTSplitLlavaConfig, vision_tower: nn.Module) -> None:
        super().__init__()
        spec = trunk_spec(vision_tower)
        self.kind = config.mm_projector_type.removeprefix("dc_")
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.feature_layer = hidden_index(config.vision_feature_layer, spec.num_blocks)
        f = self.feature_layer
        if self.kind == "dci":
            self.groups = dci_halves(f)
        else:
            layers = config.mm_projector_layers
            self.groups = tuple((hidden_index(i, spec.num_blocks),) for i in layers)
        width = spec.hidden_size * (1 if self.kind == "sti" else 3)
        self.proj = mlp_projector(width, config.text_config.hidden_size, 2)
        self.required_layers = tuple(sorted({f, *(i for g in self.groups for i in g)}))

    def copy_task_head_from(self, vision_tower: nn.Module) -> None:
        """Nothing to copy: the baseline has no task head."""

    def _patches(self, hidden_states: Mapping[int, torch.Tensor], index: int) -> torch.Tensor:
        return hidden_states[index][:, self.num_prefix_tokens :]

    def forward(
        self, hidden_states: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        """`hidden_states[i]` (B, T, C) -> (B, N + 2 * (N // 8), D) for STI, (B, N, D) else."""
        features = self._patches(hidden_states, self.feature_layer)  # (B, N, C)
        extra = [
            torch.stack([self._patches(hidden_states, i) for i in group]).mean(0)
            for group in self.groups
        ]
        if self.kind == "sti":
            pooled = [F.avg_pool1d(x.transpose(1, 2), STI_POOL).transpose(1, 2) for x in extra]
            return self.proj(torch.cat([features, *pooled], dim=1))
        return self.proj(torch.cat([features, *extra], dim=-1))


class VipLlavaConnector(nn.Module):
    """VipLlava's projector over the patch tokens of `mm_projector_layers`, concatenated."""

    def __init__(self, config: ViTSplitLlavaConfig, vision_tower: nn.Module) -> None:
        super().__init__()
        spec = trunk_spec(vision_tower)
        self.layers = tuple(hidden_index(i, spec.num_blocks) for i in config.mm_projector_layers)
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.proj = VipLlavaProjector(
            len(self.layers) * spec.hidden_size, config.text_config.hidden_size
        )
        self.required_layers = tuple(sorted(set(self.layers)))

    def copy_task_head_from(self, vision_tower: nn.Module) -> None:
        """Nothing to copy: the baseline has no task head."""

    def forward(
        self, hidden_states: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        """`hidden_states[i]` (B, T, C) -> (B, N, D)."""
        p = self.num_prefix_tokens
        return self.proj(torch.cat([hidden_states[i][:, p:] for i in self.layers], dim=-1))
