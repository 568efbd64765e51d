"""`vitsplit-vlm convert --to llava-hf`: an `mlp2x_gelu` model as transformers' own Llava.

transformers' ``LlavaMultiModalProjector`` is LLaVA-1.5's ``mlp2x_gelu`` on one feature layer's
patch tokens (``linear_1``, GELU, ``linear_2``; ``vision_feature_select_strategy "default"``
drops CLS), so such a model maps onto ``LlavaForConditionalGeneration`` key for key; a ViT-Split
connector has no counterpart there and is refused. The processor is a plain ``LlavaProcessor``
with the same chat template; ``image_aspect_ratio pad`` becomes ``LlavaImageProcessor(do_pad)``,
which pads with the mean colour as LLaVA's ``expand2square``.
"""

from __future__ import annotations

from pathlib import Path

from ..core.trunk import trunk_spec
from .checkpoints import KeyReport

# this project's connector names -> transformers' LlavaMultiModalProjector names
PROJECTOR_NAMES = {"proj.0.": "linear_1.", "proj.2.": "linear_2."}
CONNECTOR = "model.multi_modal_projector."


def export_llava_hf(src: str | Path, out: str | Path) -> KeyReport:
    """Write the model folder `src` (mm_projector_type mlp2x_gelu) as a llava-hf folder `out`."""
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
    )

    from . import register
    from .convert import write_report

    register()
    src, out = Path(src), Path(out)
    model = AutoModelForImageTextToText.from_pretrained(src)
    config = model.config
    if getattr(config, "mm_projector_type", None) != "mlp2x_gelu":
        raise ValueError(
            f"{src}: mm_projector_type {getattr(config, 'mm_projector_type', None)!r}; --to "
            "llava-hf writes mlp2x_gelu models only (transformers' Llava projector is LLaVA-1.5's "
            "MLP; a ViT-Split connector has no counterpart there)"
        )
    report = KeyReport()
    weights = {}
    for key, value in model.state_dict().items():
        target = _hf_key(key)
        report.take(key, target)
        weights[target] = value
    strategy = select_strategy(trunk_spec(model.model.vision_tower).num_prefix_tokens, src)
    hf = LlavaForConditionalGeneration.from_pretrained(
        None, config=llava_config(config, strategy), state_dict=weights, dtype=model.dtype
    )
    hf.generation_config = model.generation_config
    hf.save_pretrained(out)
    processor = llava_processor(AutoProcessor.from_pretrained(src), config, strategy)
    processor.save_pretrained(out)
    write_report(out, report, target="llava-hf", src=src)
    return report


def _hf_key(key: str) -> str:
    if not key.startswith(CONNECTOR):
        return key  # tower, LLM and lm_head have transformers' Llava names already
    name = key[len(CONNECTOR) :]
    prefix = next(p for p in PROJECTOR_NAMES if name.startswith(p))
    return CONNECTOR + PROJECTOR_NAMES[prefix] + name[len(prefix) :]


def select_strategy(num_prefix_tokens: int, src: Path) -> str:
    """Llava's name for "drop the tower's prefix tokens": ``default`` drops one (CLS)."""
    strategies = {1: "default", 0: "full"}
    if num_prefix_tokens not in strategies:
        raise ValueError(
            f"{src}: the vision tower has {num_prefix_tokens} prefix tokens (CLS + registers); "
            "transformers' Llava drops one (default) or none (full)"
        )
    return strategies[num_prefix_tokens]


def llava_config(config, strategy: str):
    """transformers' `LlavaConfig` of an mlp2x_gelu `ViTSplitLlavaConfig`."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_index,
        image_seq_length=config.image_seq_length,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def llava_processor(processor, config, strategy: str):
    """A plain `LlavaProcessor`: the same tokenizer and chat template; the prefix tokens counted
    then dropped (``num_additional_image_tokens``, `strategy`), so ``<image>`` still expands to
    ``image_seq_length`` tokens."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    image_processor = processor.image_processor
    if config.image_aspect_ratio == "pad":
        image_processor = LlavaImageProcessor(**_image_settings(image_processor), do_pad=True)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if strategy == "default" else 0,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
    )


def _image_settings(image_processor) -> dict:
    names = ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop")
    names += ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb")
    return {name: getattr(image_processor, name) for name in names}
