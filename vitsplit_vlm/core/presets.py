"""Configs of the public architectures the paper uses (random weights are enough to count)."""

from __future__ import annotations

from collections.abc import Callable


def _dinov2(hidden: int, layers: int, heads: int, **kw) -> Callable:
    def make():
        from transformers import Dinov2Config

        return Dinov2Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            patch_size=14,
            image_size=518,
            **kw,
        )

    return make


def _clip_l_336():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )


# name -> config factory (explicit registry).
BACKBONES: dict[str, Callable] = {
    "dinov2-s": _dinov2(384, 12, 6),
    "dinov2-b": _dinov2(768, 12, 12),
    "dinov2-l": _dinov2(1024, 24, 16),
    "dinov2-g": _dinov2(1536, 40, 24, use_swiglu_ffn=True),
    "clip-l-336": _clip_l_336,
}


def backbone_config(name_or_path: str):
    """A preset name from `BACKBONES`, or a folder / config.json of any supported HF model."""
    if name_or_path in BACKBONES:
        return BACKBONES[name_or_path]()
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--backbone {name_or_path!r}: not a preset ({', '.join(BACKBONES)}) and not a "
            f"readable Hugging Face config ({err})"
        ) from err
    return getattr(cfg, "vision_config", None) or cfg


def build_on_meta(config):
    """Instantiate the vision model for `config` without allocating weights."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config)
