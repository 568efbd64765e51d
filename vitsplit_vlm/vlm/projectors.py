"""Projectors, (B, T, C) -> (B, T, D): LLaVA-1.5's `linear` and `mlp2x_gelu` (LLaVA's
`llava/model/multimodal_projector/builder.py`) and VipLlava's (transformers
`models/vipllava/modeling_vipllava.py`)."""

from __future__ import annotations

import torch
import torch.nn as nn


def mlp_projector(vision_hidden: int, text_hidden: int, depth: int = 2) -> nn.Sequential:
    """`mlp{depth}x_gelu`: Linear(C -> D) then (GELU, Linear(D -> D)) x (depth - 1)."""
    layers: list[nn.Module] = [nn.Linear(vision_hidden, text_hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(text_hidden, text_hidden)]
    return nn.Sequential(*layers)


class VipLlavaProjector(nn.Module):
    """transformers' `VipLlavaMultiModalProjector` (same parameter names): (B, T, L*C) ->
    ``LayerNorm`` (eps 1e-5) -> ``Linear(L*C -> D)`` -> GELU -> ``Linear(D -> D)``."""

    def __init__(self, in_features: int, text_hidden: int) -> None:
        super().__init__()
        self.projector_layernorm = nn.LayerNorm(in_features, eps=1e-5)
        self.linear_1 = nn.Linear(in_features, text_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(self.projector_layernorm(hidden_states))
        return self.linear_2(self.act(x))
