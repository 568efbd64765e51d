"""Training arguments with LLaVA's flag names (`llava/train/train.py`) plus ViT-Split's own.

`vitsplit-vlm train --help` lists them all; defaults point at the embedded playground.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers

PLAYGROUND = "playground"

# LLaVA-1.5's scripts use names transformers 5 renamed; accept the old spelling.
FLAG_ALIASES = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=f"{PLAYGROUND}/tiny/llama-chat",
        metadata={"help": "LLM folder or hub name (Vicuna)"},
    )
    version: str = field(
        default="vicuna_v1", metadata={"help": "conversation template: plain (stage 1), vicuna_v1"}
    )
    vision_tower: str = field(
        default=f"{PLAYGROUND}/tiny/clip-vit", metadata={"help": "vision tower folder or hub name"}
    )
    mm_projector_type: str = field(
        default="vitsplit", metadata={"help": "vitsplit | vitsplit_dense | mlp2x_gelu | linear"}
    )
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "feature layer (HF index)"})
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "only 'patch'"})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "stage 1: train only the connector"}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "keep the LLM frozen"})
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "stage-1 connector file (mm_projector.safetensors)"}
    )
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "unsupported, keep False"})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "unsupported, keep False"})
    mm_patch_merge_type: str = field(default="flat", metadata={"help": "only 'flat'"})
    vitsplit_k: int = field(default=1, metadata={"help": "blocks copied into the task head"})
    vitsplit_n: int = field(default=1, metadata={"help": "frozen layers the prior head reads"})
    vitsplit_s: int | None = field(default=None, metadata={"help": "first prior block"})
    vitsplit_task_input: str = field(
        default="patch", metadata={"help": "patch (official) | all (exact init)"}
    )
    vitsplit_selection: str = field(default="uniform", metadata={"help": "uniform | sparse_gate"})
    attn_implementation: str = field(
        default="auto",
        metadata={"help": "auto: flash_attention_2 on CUDA when installed, else sdpa"},
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default=f"{PLAYGROUND}/data/shapes/finetune.json", metadata={"help": "LLaVA JSON/JSONL"}
    )
    image_folder: str = field(default=f"{PLAYGROUND}/data/shapes/images")
    lazy_preprocess: bool = field(default=True, metadata={"help": "always lazy; accepted"})
    is_multimodal: bool = field(default=True, metadata={"help": "accepted for LLaVA scripts"})
    image_aspect_ratio: str = field(default="pad", metadata={"help": "pad | square"})
    fail_fast: bool = field(
        default=False, metadata={"help": "stop at the first bad sample instead of skipping it"}
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    output_dir: str = field(default="checkpoints/vitsplit-llava")
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


def normalize_argv(argv: list[str]) -> list[str]:
    """Map LLaVA-era flag spellings onto transformers 5's."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        name = FLAG_ALIASES.get(name, name)
        out.append(name + eq + value if eq else name)
    return out
