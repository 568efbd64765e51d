"""Compose LLaVA-1.5 + ViT-Split from an LLM folder and a vision-tower folder.

This is LLaVA's `initialize_vision_modules`, done once and explicitly:

    built = build_vlm(model_name_or_path="lmsys/vicuna-7b-v1.5",
                      vision_tower="openai/clip-vit-large-patch14-336",
                      mm_projector_type="vitsplit")
    built.model, built.tokenizer, built.image_processor, built.processor

- the tokenizer gets `<image>` and a pad token (its own, else `unk` as LLaVA-1.5 does for
  Vicuna, else `eos`);
- the LLM, the tower and the template are checked before any weight loads (`preflight`);
- the task head is copied from the *loaded* tower's blocks at build time;
- `pretrain_mm_mlp_adapter` (a stage-1 connector file: this project's
  ``mm_projector.safetensors``, or LLaVA's / the official ViT-Split code's ``mm_projector.bin``)
  loads into a connector that is never partitioned at this point, so there is no ZeRO-3
  size-mismatch to work around;
- `model_name_or_path` may also be a whole ViT-Split LLaVA folder (a stage-2 output or a
  converted checkpoint, `vitsplit-vlm convert`): the model, its tower and its processor are
  loaded as they are, to train further (`load_vlm`).

`assemble_vlm` is the part shared with the converters: loaded LLM + tower -> model + processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..core import ViTSplitConfig
from ..core.trunk import trunk_spec, unwrap_vision_model
from .checkpoints import LLAVA_PROJECTOR, connector_keys, read_weight_file
from .configuration import ViTSplitLlavaConfig, extra_image_tokens
from .connector import _gathered, reset_connector_parameters
from .conversation import Template
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
    """Add `<image>` as a special token and give the tokenizer a pad token: its own (Qwen,
    Gemma), else `unk` (LLaVA-1.5 with Vicuna), else `eos` (Llama-3 has neither).

    Batches are padded by this project's collators (right for training, left for generation,
    whatever `padding_side` the tokenizer ships with) and padding is masked by the attention mask
    and by IGNORE_INDEX labels, so a pad id equal to the eos id is harmless. A tokenizer that
    names an image token of its own (Gemma3's ``<image_soft_token>``) is given `<image>` as
    its image token: `LlavaProcessor` expands the tokenizer's image token.
    """
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN]})
    if getattr(tokenizer, "image_token", DEFAULT_IMAGE_TOKEN) != DEFAULT_IMAGE_TOKEN:
        tokenizer.image_token = DEFAULT_IMAGE_TOKEN
    if tokenizer.pad_token is None:
        unk = tokenizer.unk_token
        tokenizer.pad_token = unk if unk is not None else tokenizer.eos_token


def build_vlm(
    *,
    model_name_or_path: str | Path,
    vision_tower: str | Path | None = None,
    mm_projector_type: str = "vitsplit",
    mm_vision_select_layer: int = -2,
    vitsplit_config: ViTSplitConfig | None = None,
    mm_projector_layers: list[int] | None = None,
    conv_template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    model_max_length: int = 2048,
    pretrain_mm_mlp_adapter: str | Path | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> BuiltVLM:
    """Load the LLM and the tower with `from_pretrained`, build the connector, return all parts.

    `vitsplit_config` is the connector's `ViTSplitConfig` (default: the projector's preset,
    `connector_preset`); its `feature_layer` must equal `mm_vision_select_layer`. When
    `model_name_or_path` is a ViT-Split LLaVA folder, `load_vlm` loads it instead (no
    `vision_tower` then; the other settings must be the folder's). Otherwise the LLM, the tower
    and the template are checked (`preflight`) before any weights load.
    """
    settings = dict(
        mm_projector_type=mm_projector_type,
        mm_vision_select_layer=mm_vision_select_layer,
        vitsplit_config=vitsplit_config,
        mm_projector_layers=mm_projector_layers,
        conv_template=conv_template,
        image_aspect_ratio=image_aspect_ratio,
    )
    load_kw = dict(dtype=dtype) if dtype is not None else {}
    if attn_implementation:
        load_kw["attn_implementation"] = attn_implementation
    if is_vlm_folder(model_name_or_path):
        check_sources(model_name_or_path, vision_tower, **settings)
        built = load_vlm(model_name_or_path, model_max_length=model_max_length, **load_kw)
    else:
        built = _build_new(
            model_name_or_path, vision_tower, settings, model_max_length, dtype, load_kw
        )
    if pretrain_mm_mlp_adapter:
        load_connector(built.model, pretrain_mm_mlp_adapter)
    return built


def _build_new(
    model_name_or_path: str | Path,
    vision_tower: str | Path | None,
    settings: dict,
    model_max_length: int,
    dtype: torch.dtype | None,
    load_kw: dict,
) -> BuiltVLM:
    """A new VLM from an LLM folder and a tower folder: tokenizer, image processor and configs
    are read and checked first, then the weights load."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .preflight import checked_parts

    if vision_tower is None:
        raise ValueError(NO_TOWER)
    tokenizer, image_processor = checked_parts(
        model_name_or_path,
        vision_tower,
        settings["conv_template"],
        model_max_length=model_max_length,
    )
    llm = AutoModelForCausalLM.from_pretrained(model_name_or_path, **load_kw)
    tower = unwrap_vision_model(AutoModel.from_pretrained(vision_tower, **load_kw))
    return assemble_vlm(
        llm=llm,
        tower=tower,
        tokenizer=tokenizer,
        image_processor=image_processor,
        dtype=dtype,
        **settings,
    )


def assemble_vlm(
    *,
    llm: nn.Module,
    tower: nn.Module,
    tokenizer,
    image_processor,
    mm_projector_type: str,
    mm_vision_select_layer: int,
    vitsplit_config: ViTSplitConfig | None,
    conv_template: str,
    image_aspect_ratio: str,
    mm_projector_layers: list[int] | None = None,
    dtype: torch.dtype | None = None,
) -> BuiltVLM:
    """A loaded causal LM (embeddings grown to the tokenizer, `grow_embeddings`) and a loaded
    vision tower -> LLaVA + connector and its processor; the task head copies the tower's block.

    The patch grid comes from the image processor's output (`preflight.vision_grid`);
    ``image_seq_length`` is its size plus what the connector adds (`extra_image_tokens`). With
    ``conv_template="chat_template"`` the config records the tokenizer's Jinja.
    """
    from .preflight import vision_grid
    from .tokenizer_chat import bind_template

    prepare_tokenizer(tokenizer)
    template = bind_template(conv_template, tokenizer)
    grow_embeddings(llm, len(tokenizer))
    spec = trunk_spec(tower)
    grid = vision_grid(image_processor, spec.patch_size, "the vision tower")
    extra = extra_image_tokens(mm_projector_type, grid * grid)
    config = ViTSplitLlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        image_seq_length=grid * grid + extra,
        vision_feature_layer=mm_vision_select_layer,
        vision_feature_select_strategy="full",
        mm_projector_type=mm_projector_type,
        vitsplit_config=vitsplit_config,
        mm_projector_layers=mm_projector_layers,
        conv_template=conv_template,
        llm_chat_template=template.chat.source if template.chat is not None else None,
        image_aspect_ratio=image_aspect_ratio,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = ViTSplitLlavaForConditionalGeneration(
        config, vision_tower=tower, language_model=llm.model, lm_head=llm.lm_head
    )
    # A fresh connector starts from PyTorch's default init, as LLaVA's projector: transformers 5
    # skips the model's own `_init_weights` for it (it left every leaf at N(0, 0.02)).
    reset_connector_parameters(model.connector)
    model.connector.copy_task_head_from(tower)
    if dtype is not None:
        model.connector.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = stop_token_ids(template, tokenizer)
    processor = build_processor(
        image_processor,
        tokenizer,
        patch_size=spec.patch_size,
        conv_template=conv_template,
        template=template,
        extra_image_tokens=extra,
    )
    return BuiltVLM(model, tokenizer, image_processor, processor)


def stop_token_ids(template: Template, tokenizer) -> int | list[int]:
    """The ids generation stops at: the tokenizer's eos and the template's end-of-turn token
    (Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``); one int when they agree."""
    ids = [tokenizer.eos_token_id]
    stop = template.stop_str
    token = tokenizer.convert_tokens_to_ids(stop) if stop else None
    if token is not None and token != tokenizer.unk_token_id and token not in ids:
        ids.append(token)
    return ids[0] if len(ids) == 1 else ids


def is_vlm_folder(path: str | Path) -> bool:
    """True when `path` is a local folder whose ``config.json`` is a ViT-Split LLaVA model."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == ViTSplitLlavaConfig.model_type


NO_TOWER = (
    "--vision_tower is required: --model_name_or_path is an LLM, not a ViT-Split LLaVA model folder"
)


def check_sources(
    model_name_or_path: str | Path, vision_tower: str | Path | None, **settings
) -> bool:
    """Check `build_vlm`'s sources before any weights load; True when `model_name_or_path` is a
    whole ViT-Split LLaVA folder (then `settings`, the training flags, must be the folder's),
    False for an LLM and a tower (checked by `preflight.checked_parts`)."""
    if not is_vlm_folder(model_name_or_path):
        if vision_tower is None:
            raise ValueError(NO_TOWER)
        from .preflight import checked_parts

        checked_parts(model_name_or_path, vision_tower, settings["conv_template"])
        return False
    if vision_tower is not None:
        raise ValueError(
            f"--vision_tower {vision_tower}: {model_name_or_path} is a whole ViT-Split LLaVA "
            "model with its own vision tower; drop --vision_tower"
        )
    config = ViTSplitLlavaConfig.from_pretrained(model_name_or_path)
    check_folder_settings(config, model_name_or_path, **settings)
    return True


def load_vlm(path: str | Path, *, model_max_length: int = 2048, **load_kw) -> BuiltVLM:
    """A saved ViT-Split LLaVA folder (model + processor) as `build_vlm` returns it, the
    tokenizer set up for training (right padding, `model_max_length`)."""
    from transformers import AutoProcessor

    model = ViTSplitLlavaForConditionalGeneration.from_pretrained(path, **load_kw)
    processor = AutoProcessor.from_pretrained(path)
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = model_max_length
    tokenizer.padding_side = "right"
    return BuiltVLM(model, tokenizer, processor.image_processor, processor)


def check_folder_settings(
    config: ViTSplitLlavaConfig,
    path: str | Path,
    *,
    mm_projector_type: str,
    mm_vision_select_layer: int,
    vitsplit_config: ViTSplitConfig | None,
    conv_template: str,
    image_aspect_ratio: str,
    mm_projector_layers: list[int] | None = None,
) -> None:
    """One `ValueError` naming every training flag that contradicts the model folder it trains
    (the flags describe a model that exists; their defaults must match it too)."""
    given = {
        "--mm_projector_type": (mm_projector_type, config.mm_projector_type),
        "--mm_vision_select_layer": (mm_vision_select_layer, config.vision_feature_layer),
        "--version": (conv_template, config.conv_template),
        "--image_aspect_ratio": (image_aspect_ratio, config.image_aspect_ratio),
    }
    if mm_projector_layers is not None:
        given["--mm_projector_layers"] = (list(mm_projector_layers), config.mm_projector_layers)
    if vitsplit_config is not None and config.vitsplit_config is not None:
        saved = config.vitsplit_config
        if vitsplit_config.out_channels is None:  # the preset leaves it to the model (LLM width)
            vitsplit_config = vitsplit_config.with_(out_channels=saved.out_channels)
        mine, theirs = vitsplit_config.to_dict(), saved.to_dict()
        given.update({f"--vitsplit_{k}": (mine[k], theirs[k]) for k in mine})
    wrong = [
        f"{flag} {mine!r} (the model has {theirs!r})"
        for flag, (mine, theirs) in given.items()
        if mine != theirs
    ]
    if wrong:
        raise ValueError(
            f"{path} is a whole ViT-Split LLaVA model; these flags describe another one: "
            + "; ".join(wrong)
            + ". Pass the model's values (see its config.json) or drop the flags"
        )


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
    """Load a stage-1 connector file strictly: this project's ``mm_projector.safetensors``
    (``model.multi_modal_projector.*``) or LLaVA's / the official ViT-Split code's
    ``mm_projector.bin`` (``model.mm_projector.*``, `checkpoints.connector_keys`). A folder
    means its ``mm_projector.safetensors``, else its ``mm_projector.bin``."""
    path = Path(path)
    if path.is_dir():
        names = ("mm_projector.safetensors", "mm_projector.bin")
        path = next((path / n for n in names if (path / n).exists()), path / names[0])
    if not path.exists():
        raise FileNotFoundError(
            f"--pretrain_mm_mlp_adapter {path}: no such file (stage 1 writes "
            "OUTPUT_DIR/mm_projector.safetensors; LLaVA's writes OUTPUT_DIR/mm_projector.bin)"
        )
    source = f"--pretrain_mm_mlp_adapter {path}"
    weights = read_weight_file(path)
    ours = {
        k[len(CONNECTOR_PREFIX) :]: v for k, v in weights.items() if k.startswith(CONNECTOR_PREFIX)
    }
    llava = {
        k[len(LLAVA_PROJECTOR) :]: v for k, v in weights.items() if k.startswith(LLAVA_PROJECTOR)
    }
    if not ours and llava:
        names = connector_keys(list(llava), model.config.mm_projector_type, source=source)
        ours = {names[k]: v for k, v in llava.items()}
    if not ours:
        raise ValueError(
            f"{source}: no '{CONNECTOR_PREFIX}*' (this project) or '{LLAVA_PROJECTOR}*' (LLaVA) "
            f"keys (found e.g. {sorted(weights)[:3]}); is it a stage-1 connector file?"
        )
    load_connector_weights(model, ours, source=source)


def load_connector_weights(
    model: ViTSplitLlavaForConditionalGeneration, weights: dict[str, torch.Tensor], *, source: str
) -> None:
    """Load connector weights (connector names, e.g. ``proj.0.weight``) strictly, cast to the
    connector's dtype; any missing, unexpected or differently shaped key is one `ValueError`."""
    target = model.connector.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    shapes = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(weights) & set(target))
        if weights[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not fit the connector "
            f"(mm_projector_type={model.config.mm_projector_type!r}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}. "
            "Use the same --mm_projector_type and --vitsplit_* flags as stage 1."
        )
    model.connector.load_state_dict({k: v.to(target[k].dtype) for k, v in weights.items()})
