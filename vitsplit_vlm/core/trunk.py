"""A frozen Hugging Face ViT that runs without autograd and stops at the deepest layer needed.

Supported families (by `config.model_type`, explicit registry below): CLIP and SigLIP vision
towers, DINOv2 with and without registers, and plain ViT. A full `CLIPModel` / `SiglipModel` is
unwrapped to its vision tower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TrunkSpec:
    """What the heads need to know about a trunk."""

    model_type: str
    hidden_size: int
    num_blocks: int
    patch_size: int
    num_channels: int
    image_size: int
    num_prefix_tokens: int  # CLS + register tokens, dropped before making maps
    has_final_norm: bool  # a LayerNorm over every output token (DINOv2, ViT, SigLIP)


@dataclass(frozen=True)
class _Adapter:
    embed: Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]
    blocks: Callable[[nn.Module], nn.ModuleList]
    final_norm: Callable[[nn.Module], nn.Module | None]
    prefix_tokens: Callable[[object], int]


def _clip_embed(model: nn.Module, px: torch.Tensor, interpolate: bool) -> torch.Tensor:
    return model.pre_layrnorm(model.embeddings(px, interpolate_pos_encoding=interpolate))


def _interp_embed(model: nn.Module, px: torch.Tensor, interpolate: bool) -> torch.Tensor:
    return model.embeddings(px, interpolate_pos_encoding=interpolate)


def _dinov2_embed(model: nn.Module, px: torch.Tensor, interpolate: bool) -> torch.Tensor:
    return model.embeddings(px)  # DINOv2 always interpolates its position embeddings


_ADAPTERS: dict[str, _Adapter] = {
    "clip_vision_model": _Adapter(
        _clip_embed, lambda m: m.encoder.layers, lambda m: None, lambda c: 1
    ),
    "siglip_vision_model": _Adapter(
        _interp_embed, lambda m: m.encoder.layers, lambda m: m.post_layernorm, lambda c: 0
    ),
    "dinov2": _Adapter(
        _dinov2_embed, lambda m: m.encoder.layer, lambda m: m.layernorm, lambda c: 1
    ),
    "dinov2_with_registers": _Adapter(
        _dinov2_embed,
        lambda m: m.encoder.layer,
        lambda m: m.layernorm,
        lambda c: 1 + c.num_register_tokens,
    ),
    "vit": _Adapter(_interp_embed, lambda m: m.layers, lambda m: m.layernorm, lambda c: 1),
}
SUPPORTED_MODEL_TYPES = tuple(_ADAPTERS)


def unwrap_vision_model(model: nn.Module) -> nn.Module:
    """Return the vision tower of `model` (a `CLIPModel` / `SiglipModel` holds one)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS and hasattr(model, "vision_model"):
        return unwrap_vision_model(model.vision_model)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"unsupported trunk {type(model).__name__} (model_type={model_type!r}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return model


def trunk_spec(model: nn.Module) -> TrunkSpec:
    model = unwrap_vision_model(model)
    cfg = model.config
    adapter = _ADAPTERS[cfg.model_type]
    image_size = cfg.image_size
    return TrunkSpec(
        model_type=cfg.model_type,
        hidden_size=cfg.hidden_size,
        num_blocks=len(adapter.blocks(model)),
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        image_size=image_size if isinstance(image_size, int) else image_size[0],
        num_prefix_tokens=adapter.prefix_tokens(cfg),
        has_final_norm=adapter.final_norm(model) is not None,
    )


def trunk_blocks(model: nn.Module) -> nn.ModuleList:
    model = unwrap_vision_model(model)
    return _ADAPTERS[model.config.model_type].blocks(model)


def trunk_final_norm(model: nn.Module) -> nn.Module | None:
    model = unwrap_vision_model(model)
    return _ADAPTERS[model.config.model_type].final_norm(model)


class FrozenTrunk(nn.Module):
    """Frozen vision trunk: eval mode, no `requires_grad`, runs under `torch.no_grad`.

    `forward(pixel_values, layers)` returns `{i: hidden_states[i]}` (B, T, C) for the requested
    indices (all tokens, before any final norm) and runs no block past `max(layers)`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = unwrap_vision_model(model)
        self.spec = trunk_spec(self.model)
        self._adapter = _ADAPTERS[self.spec.model_type]
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def blocks(self) -> nn.ModuleList:
        return self._adapter.blocks(self.model)

    @property
    def final_norm(self) -> nn.Module | None:
        return self._adapter.final_norm(self.model)

    def train(self, mode: bool = True) -> FrozenTrunk:
        """The trunk stays in eval mode whatever the parent does."""
        return super().train(False)

    def check_pixels(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Validate (B, C, H, W) input; return the patch grid (h, w)."""
        return check_pixels(self.spec, pixel_values)

    def forward(self, pixel_values: torch.Tensor, layers: Iterable[int]) -> dict[int, torch.Tensor]:
        return frozen_hidden_states(self.model, pixel_values, layers)


def check_pixels(spec: TrunkSpec, pixel_values: torch.Tensor) -> tuple[int, int]:
    """Validate (B, C, H, W) input against `spec`; return the patch grid (h, w)."""
    p = spec.patch_size
    expected = f"(B, {spec.num_channels}, H, W) with H and W multiples of the patch size {p}"
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values: expected {expected}, got {tuple(pixel_values.shape)}")
    _, c, h, w = pixel_values.shape
    if c != spec.num_channels:
        raise ValueError(f"pixel_values has {c} channels; expected {expected}")
    if h % p or w % p:
        raise ValueError(
            f"pixel_values is {h}x{w}, not divisible into patches; expected {expected}"
        )
    return h // p, w // p


@torch.no_grad()
def frozen_hidden_states(
    model: nn.Module, pixel_values: torch.Tensor, layers: Iterable[int]
) -> dict[int, torch.Tensor]:
    """`{i: hidden_states[i]}` (B, T, C) of a vision model, without autograd, running no block
    past `max(layers)`. All tokens, before any final norm (Hugging Face convention)."""
    model = unwrap_vision_model(model)
    spec = trunk_spec(model)
    adapter = _ADAPTERS[spec.model_type]
    layers = sorted(set(layers))
    if not layers or layers[0] < 0 or layers[-1] > spec.num_blocks:
        raise ValueError(f"layers {layers} outside 0..{spec.num_blocks}")
    check_pixels(spec, pixel_values)
    dtype = next(model.parameters()).dtype
    interpolate = tuple(pixel_values.shape[-2:]) != (spec.image_size, spec.image_size)
    hidden = adapter.embed(model, pixel_values.to(dtype), interpolate)
    out = {0: hidden} if 0 in layers else {}
    blocks = adapter.blocks(model)
    for i in range(layers[-1]):
        hidden = blocks[i](hidden, None)
        if i + 1 in layers:
            out[i + 1] = hidden
    return out
