"""Training arguments with LLaVA's flag names (`llava/train/train.py`) plus ViT-Split's own.

`vitsplit-vlm train --help` lists them all. The ViT-Split settings are not declared here: they
are `ViTSplitConfig`'s fields, added as ``--vitsplit_<field>`` options by `vitsplit_vlm.core.flags`
(`add_connector_arguments`), and `connector_config` applies the ones given to the connector's
preset (`connector_preset`: the official LLaVA-1.5 layout for ``--mm_projector_type vitsplit``).
Paths have no defaults: the scripts pass them (`scripts/pretrain.sh` points at the playground).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import transformers

from ..core import ViTSplitConfig, flags
from .configuration import ASPECT_RATIOS, PROJECTOR_TYPES, connector_preset
from .conversation import TEMPLATES

# LLaVA-1.5's scripts use names transformers 5 renamed; accept the old spelling.
FLAG_ALIASES = {
    "--evaluation_strategy": "--eval_strategy",
    "--warmup_ratio": "--warmup_steps",
    "--gradient_checkpointing": "--activation_checkpointing",
    "--gradient_checkpointing_kwargs": "--activation_checkpointing_kwargs",
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "LLM folder or hub name (Vicuna), or a whole ViT-Split LLaVA model folder "
            "(a stage-2 output or `vitsplit-vlm convert`'s) to train further"
        }
    )
    vision_tower: str | None = field(
        default=None,
        metadata={"help": "vision tower folder or hub name (none with a whole model folder)"},
    )
    version: str = field(
        default="vicuna_v1",
        metadata={
            "help": "conversation template: " + " | ".join(TEMPLATES) + " (plain: stage 1; "
            "chat_template: the LLM tokenizer's own)"
        },
    )
    mm_projector_type: str = field(
        default="vitsplit", metadata={"help": "the connector: " + " | ".join(PROJECTOR_TYPES)}
    )
    mm_vision_select_layer: int = field(
        default=-2, metadata={"help": "feature layer (HF index; ViT-Split's feature_layer)"}
    )
    mm_projector_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "hidden states a multi-layer baseline reads besides the feature layer "
            "(dc_sti / dc_sci: two; vipllava: all it concatenates); default: the baseline's "
            "own for the tower's depth"
        },
    )
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "only 'patch'"})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "stage 1: train only the connector"}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "keep the LLM frozen"})
    pretrain_mm_mlp_adapter: str | None = field(
        default=None,
        metadata={
            "help": "stage-1 connector file: mm_projector.safetensors, or LLaVA's / the official "
            "ViT-Split code's mm_projector.bin"
        },
    )
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "unsupported, keep False"})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "unsupported, keep False"})
    mm_patch_merge_type: str = field(default="flat", metadata={"help": "only 'flat'"})
    attn_implementation: str = field(
        default="auto",
        metadata={"help": "auto: flash_attention_2 on CUDA when installed, else sdpa"},
    )


def add_connector_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vitsplit_k``, ``--vitsplit_n``, ... (every `ViTSplitConfig` flag field)."""
    flags.add_arguments(
        parser,
        style="llava",
        title="ViT-Split connector",
        preset_note="default: the official LLaVA-1.5 layout of --mm_projector_type vitsplit",
    )


def connector_config(
    model_args: ModelArguments, connector_args: argparse.Namespace | dict
) -> ViTSplitConfig | None:
    """The connector's preset at ``--mm_vision_select_layer`` with the ``--vitsplit_*`` flags
    given applied (None for the MLP baselines, which refuse those flags)."""
    preset = connector_preset(
        model_args.mm_projector_type, feature_layer=model_args.mm_vision_select_layer
    )
    given = flags.overrides(connector_args, style="llava")
    if preset is None:
        if given:
            names = ", ".join(f"--vitsplit_{name}" for name in given)
            raise ValueError(
                f"{names}: ViT-Split settings, but --mm_projector_type "
                f"{model_args.mm_projector_type} has none (drop them or use a vitsplit connector)"
            )
        return None
    return preset.with_(**given)


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA JSON/JSONL"})
    image_folder: str = field(metadata={"help": "folder the data's image paths are relative to"})
    allow_images_outside_folder: bool = field(
        default=False,
        metadata={
            "help": "accept image paths that leave --image_folder (absolute, '..', symlinks out); "
            "by default such samples are skipped as path_outside_folder"
        },
    )
    lazy_preprocess: bool = field(default=True, metadata={"help": "always lazy; accepted"})
    is_multimodal: bool = field(default=True, metadata={"help": "accepted for LLaVA scripts"})
    image_aspect_ratio: str = field(default="pad", metadata={"help": " | ".join(ASPECT_RATIOS)})
    fail_fast: bool = field(
        default=False, metadata={"help": "stop at the first bad sample instead of skipping it"}
    )
    cache_features: str | None = field(
        default=None,
        metadata={
            "help": "folder of cached frozen-tower hidden states: built once (what is missing), "
            "then every epoch reads them instead of images (vitsplit_vlm.vlm.feature_cache)"
        },
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    model_max_length: int = field(default=2048, metadata={"help": "truncate samples here"})
    group_by_modality_length: bool = field(default=False)
    mm_projector_lr: float | None = field(default=None, metadata={"help": "connector lr (LoRA)"})
    freeze_mm_mlp_adapter: bool = field(default=False)
    lora_enable: bool = field(default=False)
    lora_r: int = field(default=128)
    lora_alpha: int = field(default=256)
    lora_dropout: float = field(default=0.05)
    lora_bias: str = field(default="none")
    bits: int = field(default=16, metadata={"help": "only 16 (no 4/8-bit quantisation here)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "allow a new run in an output_dir that holds one"}
    )
    supervised_logits_only: bool = field(
        default=True,
        metadata={
            "help": "compute the LM head and the loss only where the next token is supervised "
            "(labels != -100; image, prompt and padding positions are not): the same loss as "
            "LLaVA's, without its (batch, length, vocab) logits; False computes logits everywhere"
        },
    )
    allow_pickle_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "resume: load checkpoint files that need pickle (they can run code); by "
            "default they are refused and everything is loaded weights-only"
        },
    )


def normalize_argv(argv: list[str]) -> list[str]:
    """Map LLaVA-era flag spellings onto transformers 5's."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        name = FLAG_ALIASES.get(name, name)
        out.append(name + eq + value if eq else name)
    return out
