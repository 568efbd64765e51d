"""Checks of a new VLM's parts before any weights load: the LLM, the vision tower, the template.

`build_vlm` (and so `vitsplit-vlm train` before it starts) reads only configs, the tokenizer and
the image processor here; each problem is one `ValueError` naming the flag:

- ``--model_name_or_path``: a text-only causal LM transformers knows, with an integer
  ``hidden_size`` for the connector to map to, whose decoder sits at ``.model``
  (``base_model_prefix``; Llama / Vicuna, Llama-3, Mistral, Qwen2 / Qwen3, Gemma 1-3, ...);
- ``--vision_tower``: a supported ViT family (`core.trunk.SUPPORTED_MODEL_TYPES`; a full
  ``CLIPModel`` / ``SiglipModel`` folder means its vision tower) with a square patch grid, and an
  image processor that gives square images of one size, divisible into patches;
- ``--version``: the template fits the tokenizer (`tokenizer_chat.bind_template`).

`vision_grid` is the one place the patch grid (and so ``image_seq_length``) comes from: the
image processor's output size, which is what the tower sees (DINOv2 checkpoints say
``image_size`` 518 but their processor crops 224).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.trunk import SUPPORTED_MODEL_TYPES

LLM_FLAG, TOWER_FLAG = "--model_name_or_path", "--vision_tower"
# two probe images: a non-square one shows processors that keep the aspect ratio
PROBE_SIZES = ((64, 64), (96, 48))


def check_llm_config(config: Any, path: str | Path) -> None:
    """A text-only causal LM with an integer ``hidden_size``, its decoder at ``.model``."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{LLM_FLAG} {path}: model_type {model_type!r} is not a causal language model "
            "transformers knows (AutoModelForCausalLM)"
        )
    if getattr(config, "vision_config", None) is not None:
        raise ValueError(
            f"{LLM_FLAG} {path}: model_type {model_type!r} is a multimodal model (it has a "
            "vision_config); pass its text-only LLM"
        )
    hidden = getattr(config, "hidden_size", None)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(
            f"{LLM_FLAG} {path}: its config has no integer hidden_size (got {hidden!r}), so no "
            "connector can map image features to its width"
        )
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    prefix = getattr(getattr(transformers, name, None), "base_model_prefix", None)
    if prefix != "model":
        raise ValueError(
            f"{LLM_FLAG} {path}: {name} keeps its decoder in .{prefix}, not .model; supported "
            "LLMs keep the decoder in .model and the head in .lm_head (Llama, Mistral, Qwen2/3, "
            "Gemma)"
        )


def tower_config(path: str | Path) -> Any:
    """The vision config of `path` (a full CLIP / SigLIP config means its vision tower), checked:
    a supported family with a square patch grid."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "vision_config", None) or config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{TOWER_FLAG} {path}: model_type {model_type!r} is not a supported vision tower "
            f"(its blocks are unknown to the trunk adapters); supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    patch = config.patch_size
    if height != width:
        raise ValueError(
            f"{TOWER_FLAG} {path}: image_size {height}x{width} gives a {height // patch}x"
            f"{width // patch} patch grid; LLaVA's image tokens need a square grid"
        )
    return config


def vision_grid(image_processor: Any, patch_size: int, path: str | Path) -> int:
    """Side of the patch grid of the images `image_processor` makes (square, one size for every
    input, a multiple of `patch_size`)."""
    from PIL import Image

    shapes = set()
    for size in PROBE_SIZES:
        pixels = image_processor(Image.new("RGB", size), return_tensors="pt")["pixel_values"]
        shapes.add(tuple(pixels.shape[-2:]))
    (height, width), *others = sorted(shapes)
    if others or height != width:
        raise ValueError(
            f"{TOWER_FLAG} {path}: its image processor makes images of {sorted(shapes)} pixels; "
            "LLaVA needs square images of one size (center crop or a square resize)"
        )
    if height % patch_size:
        raise ValueError(
            f"{TOWER_FLAG} {path}: its image processor makes {height}x{height} images, not a "
            f"multiple of the patch size {patch_size}"
        )
    return height // patch_size


def checked_parts(
    model_name_or_path: str | Path,
    vision_tower: str | Path,
    conv_template: str,
    *,
    model_max_length: int = 2048,
) -> tuple[Any, Any]:
    """(tokenizer, image processor) of a new VLM, after every check above (configs, tokenizer
    and image processor only: no weights). The tokenizer is prepared (`prepare_tokenizer`)
    and pads on the right, as training collates."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from .builder import prepare_tokenizer
    from .tokenizer_chat import bind_template

    check_llm_config(AutoConfig.from_pretrained(model_name_or_path), model_name_or_path)
    config = tower_config(vision_tower)
    image_processor = AutoImageProcessor.from_pretrained(vision_tower)
    vision_grid(image_processor, config.patch_size, vision_tower)
    tokenizer = AutoTokenizer.from_pretrained(
        model_name_or_path, model_max_length=model_max_length, padding_side="right"
    )
    prepare_tokenizer(tokenizer)
    bind_template(conv_template, tokenizer)
    return tokenizer, image_processor
