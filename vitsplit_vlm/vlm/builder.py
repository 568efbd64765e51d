"""Compose LLaVA-1.5 + ViT-Split from an LLM folder and a vision-tower folder.

This is LLaVA's `initialize_vision_modules`, done once and explicitly:

    built = build_vlm(model_name_or_path="lmsys/vicuna-7b-v1.5",
                      vision_tower="openai/clip-vit-large-patch14-336",
                      mm_projector_type="vitsplit")
    built.model, built.tokenizer, built.image_processor, built.processor

- the tokenizer gets `<image>` (and `pad = unk`, as LLaVA-1.5 does for Vicuna);
- the task head is copied from the *loaded* tower's blocks at build time;
- `pretrain_mm_mlp_adapter` (a stage-1 connector file) loads into a connector that is never
  partitioned at this point, so there is no ZeRO-3 size-mismatch to work around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..core import ViTSplitConfig
from ..core.trunk import trunk_spec, unwrap_vision_model
from .configuration import ViTSplitLlavaConfig
from .connector import _gathered
from .modeling import ViTSplitLlavaForConditionalGeneration
from .processing import DEFAULT_IMAGE_TOKEN, build_processor

CONNECTOR_PREFIX = "model.multi_modal_projector."


@dataclass
class BuiltVLM:
    model: ViTSplitLlavaForConditionalGeneration
    tokenizer: object
    image_processor: object
    processor: object


def prepare_tokenizer(tokenizer) -> None:
    """Add `<image>` as a special token and use `unk` as pad (LLaVA-1.5 with Vicuna)."""
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token


def build_vlm(
    *,
    model_name_or_path: str | Path,
    vision_tower: str | Path,
    mm_projector_type: str = "vitsplit",
    mm_vision_select_layer: int = -2,
    vitsplit_config: ViTSplitConfig | None = None,
    conv_template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    model_max_length: int = 2048,
    pretrain_mm_mlp_adapter: str | Path | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> BuiltVLM:
    """Load the LLM and the tower with `from_pretrained`, build the connector, return all parts.

    `vitsplit_config` is the connector's `ViTSplitConfig` (default: the projector's preset,
    `connector_preset`); its `feature_layer` must equal `mm_vision_select_layer`.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    load_kw = dict(dtype=dtype) if dtype is not None else {}
    if attn_implementation:
        load_kw["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(
        model_name_or_path, model_max_length=model_max_length, padding_side="right"
    )
    prepare_tokenizer(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(model_name_or_path, **load_kw)
    grow_embeddings(llm, len(tokenizer))
    tower = unwrap_vision_model(AutoModel.from_pretrained(vision_tower, **load_kw))
    image_processor = AutoImageProcessor.from_pretrained(vision_tower)
    spec = trunk_spec(tower)
    grid = spec.image_size // spec.patch_size

    config = ViTSplitLlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        image_seq_length=grid * grid,
        vision_feature_layer=mm_vision_select_layer,
        vision_feature_select_strategy="full",
        mm_projector_type=mm_projector_type,
        vitsplit_config=vitsplit_config,
        conv_template=conv_template,
        image_aspect_ratio=image_aspect_ratio,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = ViTSplitLlavaForConditionalGeneration(
        config, vision_tower=tower, language_model=llm.model, lm_head=llm.lm_head
    )
    model.connector.copy_task_head_from(tower)
    if dtype is not None:
        model.connector.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if pretrain_mm_mlp_adapter:
        load_connector(model, pretrain_mm_mlp_adapter)
    processor = build_processor(
        image_processor, tokenizer, patch_size=spec.patch_size, conv_template=conv_template
    )
    return BuiltVLM(model, tokenizer, image_processor, processor)


def grow_embeddings(llm: nn.Module, size: int) -> None:
    """Give the LLM `size` token rows; new rows (input and output) are the mean of the old ones.

    As LLaVA's `smart_tokenizer_and_embedding_resize`: deterministic, so a rebuild (e.g.
    `merge_lora`, which does not save these rows) gives the rows training used. Row counts come
    from `num_embeddings`, which ZeRO-3 partitioning leaves intact (`weight.shape` becomes (0,)).
    """
    old = llm.get_input_embeddings().num_embeddings
    if old >= size:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    weights = [llm.get_input_embeddings().weight]
    head = llm.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:  # untied head
        weights.append(head.weight)
    with _gathered(weights), torch.no_grad():
        for weight in weights:
            weight[old:] = weight[:old].mean(0, keepdim=True)


def connector_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The connector's weights under their full model keys (`model.multi_modal_projector.*`)."""
    module = model.connector if hasattr(model, "connector") else model
    return {CONNECTOR_PREFIX + k: v for k, v in module.state_dict().items()}


def load_connector(model: ViTSplitLlavaForConditionalGeneration, path: str | Path) -> None:
    """Load a stage-1 connector file (safetensors or LLaVA's `mm_projector.bin`), strictly."""
    path = Path(path)
    if path.is_dir():
        path = path / "mm_projector.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"--pretrain_mm_mlp_adapter {path}: no such file (stage 1 writes "
            "OUTPUT_DIR/mm_projector.safetensors)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    ours = {
        k[len(CONNECTOR_PREFIX) :]: v for k, v in weights.items() if k.startswith(CONNECTOR_PREFIX)
    }
    if not ours:
        raise ValueError(
            f"--pretrain_mm_mlp_adapter {path}: no '{CONNECTOR_PREFIX}*' keys (found e.g. "
            f"{sorted(weights)[:3]}); is it a connector file written by this project's stage 1?"
        )
    target = model.connector.state_dict()
    missing = sorted(set(target) - set(ours))
    unexpected = sorted(set(ours) - set(target))
    shapes = [
        f"{k}: file {tuple(ours[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(ours) & set(target))
        if ours[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"--pretrain_mm_mlp_adapter {path} does not fit the connector "
            f"(mm_projector_type={model.config.mm_projector_type!r}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}. "
            "Use the same --mm_projector_type and --vitsplit_* flags as stage 1."
        )
    model.connector.load_state_dict({k: v.to(target[k].dtype) for k, v in ours.items()})
