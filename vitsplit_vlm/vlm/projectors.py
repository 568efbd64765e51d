"""LLaVA-1.5's baseline projectors (LLaVA's `llava/model/multimodal_projector/builder.py`): `linear` and `mlp2x_gelu`, (B, T, C) -> (B, T, D)."""

from __future__ import annotations

import torch.nn as nn


def mlp_projector(vision_hidden: int, text_hidden: int, depth: int = 2) -> nn.Sequential:
    """`mlp{depth}x_gelu`: Linear(C -> D) then (GELU, Linear(D -> D)) x (depth - 1)."""
    layers: list[nn.Module] = [nn.Linear(vision_hidden, text_hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(text_hidden, text_hidden)]
    return nn.Sequential(*layers)
