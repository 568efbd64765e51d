"""The trainable parts of ViT-Split: task head, prior head, fusion net (paper §3.2, Fig. 5-6).

`ViTSplitHeads` owns no trunk weights (only a frozen copy of the final LayerNorm where one is
used), so a VLM can keep its vision tower where transformers expects it and use the heads as its
projector. It reads a dict of frozen hidden states, `{index: (B, T, C)}`, whose keys are
`heads.layers.required_layers`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from .config import ResolvedLayers, ViTSplitConfig
from .layers import conv_block, tokens_to_map
from .selection import SparseGate
from .trunk import TrunkSpec

# The trainable groups, named once: these names drive requires_grad, optimizer groups
# (task-head lr multiplier) and what a checkpoint keeps.
TRAINABLE_GROUPS = ("task_head", "prior_head", "fusion")


@dataclass
class ViTSplitOutput(ModelOutput):
    """Maps (B, C, h, w). `fused` is what downstream reads; `task`/`prior` may be None.

    A `ModelOutput` (an ordered dict of the fields that are not None, with attribute access) so
    that DeepSpeed ZeRO-3's module hooks find the tensors in it: they traverse tuples, lists and
    dicts only.
    """

    fused: torch.Tensor
    task: torch.Tensor | None = None
    prior: torch.Tensor | None = None


class TaskHead(nn.Module):
    """Trainable deep copies of trunk blocks `f-k .. f-1`, fed `hidden_states[f-k]`."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in blocks)
        self.blocks.requires_grad_(True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C).

        Under activation checkpointing (`gradient_checkpointing_enable`) the input, a frozen
        hidden state, is made to require grad: reentrant checkpointing hands back outputs without
        gradient otherwise, and the copied blocks would silently stop training.
        """
        if (
            self.training
            and torch.is_grad_enabled()
            and not tokens.requires_grad
            and any(getattr(block, "gradient_checkpointing", False) for block in self.blocks)
        ):
            tokens = tokens.detach().requires_grad_(True)
        for block in self.blocks:
            tokens = block(tokens, None)
        return tokens


class PriorHead(nn.Module):
    """Frozen intermediate maps -> prior map.

    dense: `Conv1x1(n*C -> C) -> GELU -> DeformBlock -> GELU`;
    vlm:   `Conv1x1(n*C -> n*C) -> GELU -> Conv3x3 -> GELU` (official LLaVA `frozen_conv`).
    With a sparse gate, the n maps are a learned mixture of all candidate layers.
    """

    def __init__(self, cfg: ViTSplitConfig, channels: int, gate_candidates: int) -> None:
        super().__init__()
        n = cfg.n
        self.gate = (
            SparseGate(gate_candidates, n, cfg.gate_temperature) if gate_candidates else None
        )
        out = channels if cfg.variant == "dense" else n * channels
        self.out_channels = out
        self.convs = conv_block(
            n * channels,
            out,
            deform=cfg.variant == "dense",
            offset_init=cfg.deform_offset_init,
            conv_init=cfg.conv_init,
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, L, C, h, w) frozen maps (L = n, or all candidates with a gate) -> (B, C', h, w)."""
        if self.gate is not None:
            maps = self.gate.select(maps)
        return self.convs(maps.flatten(1, 2))


class ViTSplitHeads(nn.Module):
    """Task head + prior head + fusion over frozen hidden states of one trunk."""

    def __init__(
        self,
        cfg: ViTSplitConfig,
        spec: TrunkSpec,
        *,
        blocks: Sequence[nn.Module],
        final_norm: nn.Module | None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.layers: ResolvedLayers = cfg.resolve(spec.num_blocks)
        C = spec.hidden_size
        use_norm = cfg.final_norm
        if use_norm is None:
            use_norm = cfg.variant == "dense" and spec.has_final_norm
        if use_norm and final_norm is None:
            raise ValueError(f"ViTSplitConfig.final_norm: {spec.model_type} has no final norm")
        self.final_norm = copy.deepcopy(final_norm).requires_grad_(False) if use_norm else None

        self.task_head = (
            TaskHead([blocks[i] for i in self.layers.task_blocks]) if cfg.has_task else None
        )
        self.prior_head = PriorHead(cfg, C, self.layers.gate_candidates) if cfg.has_prior else None
        self.fusion = None
        if cfg.has_fusion:
            prior_c = self.prior_head.out_channels
            out = cfg.out_channels or C
            self.fusion = conv_block(
                prior_c + C,
                out,
                deform=cfg.variant == "dense",
                offset_init=cfg.deform_offset_init,
                conv_init=cfg.conv_init,
            )
        elif cfg.has_prior and cfg.has_task and self.prior_head.out_channels != C:
            raise ValueError(
                "ViTSplitConfig.components: prior+task without fusion adds the maps, which needs "
                f"equal widths (prior {self.prior_head.out_channels}, task {C})"
            )
        self.out_channels = self._out_channels()

    def _out_channels(self) -> int:
        if self.fusion is not None:
            return self.cfg.out_channels or self.spec.hidden_size
        if self.prior_head is not None and self.task_head is None:
            return self.prior_head.out_channels
        return self.spec.hidden_size

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """`{group: parameters}` for the groups in `TRAINABLE_GROUPS` that exist."""
        groups = {}
        for name in TRAINABLE_GROUPS:
            module = getattr(self, name)
            if module is not None:
                groups[name] = [p for p in module.parameters() if p.requires_grad]
        return groups

    def _norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.final_norm(tokens) if self.final_norm is not None else tokens

    def _map(self, tokens: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
        return tokens_to_map(self._norm(tokens), grid, num_prefix)

    def forward(
        self, hidden_states: Mapping[int, torch.Tensor], grid: tuple[int, int]
    ) -> ViTSplitOutput:
        """`hidden_states[i]` (B, T, C) for i in `layers.required_layers` -> maps (B, C', h, w)."""
        prefix = self.spec.num_prefix_tokens
        task = prior = None
        if self.task_head is not None:
            tokens = hidden_states[self.layers.task_input_layer]
            if self.cfg.resolved_task_input == "patch":
                tokens, prefix_task = tokens[:, prefix:], 0
            else:
                prefix_task = prefix
            task = self._map(self.task_head(tokens), grid, prefix_task)
        if self.prior_head is not None:
            maps = torch.stack(
                [
                    self._map(hidden_states[i], grid, prefix)
                    for i in self.layers.prior_hidden_layers
                ],
                dim=1,
            )
            prior = self.prior_head(maps)
        if self.fusion is not None:
            fused = self.fusion(torch.cat([prior, task], dim=1))
        elif prior is not None and task is not None:
            fused = prior + task
        elif prior is not None or task is not None:
            fused = prior if prior is not None else task
        else:
            fused = self._map(hidden_states[self.layers.feature_layer], grid, prefix)
        return ViTSplitOutput(fused=fused, task=task, prior=prior)
