"""The embedded tiny default's training recipe: what `scripts/*.sh` run with ``PRESET=playground``.

The quickstart runs the trainer's Python entry point (``python -m vitsplit_vlm.vlm.train``) with
`stage_flags(stage)`; the scripts are what users read and edit, so `tests/test_scripts.py`
holds the two to the same flags (``DRY_RUN=1 bash scripts/pretrain.sh`` prints the scripts').
`prepare` builds what both need: the tiny models (with the language-pretrained tiny Llama and the
scene-pretrained tiny CLIP) and the shapes data set.

Why this recipe reads colour and shape (README "It learns", measured over seeds): the tower is the
tiny CLIP pretrained on scenes (a random one's patch tokens hardly carry shape), and stage 2 reads
`finetune.json` in file order, colour and shape questions first (with every question type mixed
from the start, counting is learned first and crowds out the reading colour and shape need). The
scenes hold 1-3 objects (`SHAPES_ARGS`): with up to 4, the tiny LLM's lookups (the colour of the
square) failed in most multi-object scenes, and one seed in three lost shape.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import paths

STAGES = ("pretrain", "finetune", "finetune_lora")
BATCH = 32
FINETUNE_STEPS = 600
# One pass over finetune.json in stage 2 (scripts/_common.sh: PLAYGROUND_FINETUNE).
SHAPES_ARGS = dict(
    num_train=6000,
    num_heldout=200,
    image_size=112,
    seed=0,
    num_finetune=FINETUNE_STEPS * BATCH,
    max_objects=3,
)

# LLaVA's flag names; values as the scripts pass them.
_COMMON = {
    "--model_name_or_path": str(paths.TINY / "llama-chat"),
    "--vision_tower": str(paths.TINY_CLIP_PRETRAINED),
    "--image_folder": str(paths.SHAPES / "images"),
    "--mm_projector_type": "vitsplit",
    "--mm_vision_select_layer": "-2",
    "--mm_use_im_start_end": "False",
    "--mm_use_im_patch_token": "False",
    "--image_aspect_ratio": "pad",
    "--save_strategy": "steps",
    "--weight_decay": "0.",
    "--warmup_ratio": "0.03",
    "--lr_scheduler_type": "cosine",
    "--logging_steps": "10",
    "--report_to": "none",
    "--per_device_train_batch_size": str(BATCH),
    "--gradient_accumulation_steps": "1",
    "--model_max_length": "512",
    "--dataloader_num_workers": "0",
    "--save_total_limit": "1",
    # The 8x8 patch grid is coarse next to the connector's 3x3 convs: with PyTorch's init they mix
    # neighbouring objects and the LLM never binds a colour to its shape; starting them as 1x1
    # convs (centre tap), with stage 1 at 400 steps, raised held-out shape accuracy from 0.225 to
    # 0.349 over 3 seeds (README "It learns"). ViT-Split only: `stage_argv` drops it when
    # --mm_projector_type is another connector.
    "--vitsplit_conv_init": "center",
}
_STAGE2 = {
    "--version": "vicuna_v1",
    "--data_path": str(paths.SHAPES / "finetune.json"),
    "--pretrain_mm_mlp_adapter": str(paths.TINY_PRETRAIN / "mm_projector.safetensors"),
    "--save_steps": "200",
}
# Full stage 2 runs under ZeRO-2 here (LLaVA's and the paper preset's: ZeRO-3): on one CPU
# process ZeRO-3 partitions nothing, and its gather/release hooks cost time: 40 steps took 35.9 s
# against ZeRO-2's 20.3 s on 2 cores, with the same losses step for step. The tests train stage 2
# under ZeRO-3 (tests/test_vlm_train.py), and the LoRA recipe keeps it.
_STAGES: dict[str, dict[str, str]] = {
    "pretrain": {
        "--version": "plain",
        "--data_path": str(paths.SHAPES / "pretrain.json"),
        "--deepspeed": "scripts/zero2.json",
        "--tune_mm_mlp_adapter": "True",
        "--output_dir": str(paths.TINY_PRETRAIN),
        "--lazy_preprocess": "True",
        # The tower is frozen: stage 1 computes its hidden states for the 5,999 images once
        # (381 MiB, 9-16 s) and both stages read them back instead of decoding, preprocessing and
        # running the tower (losses as without the cache to ~1e-7).
        "--cache_features": str(paths.FEATURE_CACHE),
        "--max_steps": "400",
        "--learning_rate": "1e-3",
        "--save_steps": "100",
    },
    "finetune": {
        **_STAGE2,
        "--deepspeed": "scripts/zero2.json",
        "--output_dir": str(paths.TINY_FINETUNE),
        "--lazy_preprocess": "True",
        "--cache_features": str(paths.FEATURE_CACHE),
        # finetune.json is in training order (reading questions first): read it in order
        "--train_sampling_strategy": "sequential",
        "--max_steps": str(FINETUNE_STEPS),
        "--learning_rate": "1e-3",
        "--gradient_checkpointing": "False",  # tiny: checkpointing only costs time
    },
    "finetune_lora": {
        **_STAGE2,
        "--deepspeed": "scripts/zero3.json",
        "--output_dir": str(paths.TINY_LORA),
        "--lora_enable": "True",
        "--lora_r": "128",
        "--lora_alpha": "256",
        "--max_steps": "300",
        "--learning_rate": "2e-3",
        "--mm_projector_lr": "1e-3",
        "--gradient_checkpointing": "True",
    },
}


def stage_flags(stage: str) -> dict[str, str]:
    """``{flag: value}`` of one stage of the tiny default (`STAGES`)."""
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return {**_COMMON, **_STAGES[stage]}


def stage_argv(stage: str, **overrides: object) -> list[str]:
    """`stage_flags` as an argument list; ``overrides`` (``output_dir=...``) replace values, and
    ``None`` leaves a flag out (``cache_features=None``: read the images). With a connector other
    than ViT-Split (``mm_projector_type="mlp2x_gelu"``) the ``--vitsplit_*`` settings are left
    out, as the trainer refuses them there."""
    from ..vlm.configuration import connector_preset

    flags = stage_flags(stage)
    for name, value in overrides.items():
        if value is None:
            flags.pop(f"--{name}", None)
        else:
            flags[f"--{name}"] = str(value)
    if connector_preset(flags["--mm_projector_type"]) is None:
        flags = {k: v for k, v in flags.items() if not k.startswith("--vitsplit_")}
    return [item for flag, value in flags.items() for item in (flag, value)]


# Flags that change how a run is logged, saved or fed, never what it computes.
_NOT_IN_RESULTS = (
    "--logging_steps", "--report_to", "--save_steps", "--save_total_limit",
    "--dataloader_num_workers",
)  # fmt: skip


def fingerprint(stage: str) -> dict:
    """What a run of one stage of this recipe depends on besides its seed: the stage's flags
    (those in `_NOT_IN_RESULTS` left out), the tiny models' spec, the tiny Llama's and the
    tower's pretraining settings, the shapes set's arguments and generator; stage 2's holds
    stage 1's (its connector starts from stage 1's).

    The quickstart reuses a finished stage only if its recorded fingerprint equals this one, and
    `benchmarks/vlm_connectors.py` keys its logged runs by it.
    """
    from .clip_pretrain import DEFAULTS as TOWER
    from .clip_pretrain import VERSION as TOWER_VERSION
    from .lm_pretrain import DEFAULTS as LLM
    from .lm_pretrain import VERSION as LLM_VERSION
    from .shapes import GENERATOR_VERSION
    from .tiny import spec_fingerprint

    record = {
        "flags": {k: v for k, v in stage_flags(stage).items() if k not in _NOT_IN_RESULTS},
        "tiny_models": spec_fingerprint(),  # prepare() builds them with the default seed
        "llm_pretrain": {**LLM, "version": LLM_VERSION},
        "tower_pretrain": {**TOWER, "version": TOWER_VERSION},
        "shapes": SHAPES_ARGS,
        "generator": GENERATOR_VERSION,
    }
    if stage != "pretrain":
        record["pretrain"] = fingerprint("pretrain")
    return record


def prepare(*, progress: bool = True) -> Path:
    """The tiny models, the language-pretrained tiny Llama, the scene-pretrained tiny CLIP and the
    shapes set (each skipped when already current); returns the shapes folder."""
    from .clip_pretrain import describe, pretrain_clip
    from .lm_pretrain import pretrain_llm
    from .shapes import write_llava_dataset
    from .tiny import make_tiny

    tiny = make_tiny(paths.TINY)
    pretrain_llm(tiny.llama, paths.TINY / "llama-chat")
    tower = pretrain_clip(tiny.clip, paths.TINY_CLIP_PRETRAINED, threads=os.cpu_count(), log=None)
    if progress:
        print(describe(tower))
    write_llava_dataset(paths.SHAPES, progress=progress, **SHAPES_ARGS)
    return paths.SHAPES
