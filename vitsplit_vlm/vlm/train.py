"""LLaVA-1.5 two-stage training of the ViT-Split connector on HF Trainer + DeepSpeed.

    vitsplit-vlm train --help                       # every flag (LLaVA's names + ViT-Split's)
    python -m vitsplit_vlm.vlm.train ...            # what scripts/*.sh launch per process

Stage 1 (`--tune_mm_mlp_adapter True --version plain`): only the connector trains; the output is
`mm_projector.safetensors` (connector weights only) + `config.json`.
Stage 2 (`--pretrain_mm_mlp_adapter .../mm_projector.safetensors --version vicuna_v1`): the
connector and the LLM train (or LoRA on the LLM with `--lora_enable True`); the output is a full
Hugging Face model folder with its processor (or a LoRA adapter + connector, see `merge-lora`).
The vision tower is always frozen and runs without autograd.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

logger = logging.getLogger("vitsplit_vlm.train")

SUMMARY = "train_summary.json"
SKIP_LOG = "skipped_samples.jsonl"
LORA_SOURCES = "vitsplit_lora.json"


# --------------------------------------------------------------------------- setup


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def choose_precision(argv: list[str]) -> list[str]:
    """bf16 on CUDA GPUs that support it unless --bf16/--fp16 is given; fp32 on CPU."""
    given = {flag: _flag_value(argv, flag) for flag in ("--bf16", "--fp16")}
    if all(value is None for value in given.values()):
        import torch

        if _cuda() and torch.cuda.is_bf16_supported():
            return [*argv, "--bf16", "True"]
        return argv
    for flag, value in given.items():
        if value is not None and value.lower() in ("true", "1") and not _cuda():
            raise SystemExit(
                f"{flag} True needs a CUDA GPU (DeepSpeed refuses half precision on CPU): drop "
                f"the flag to let the trainer pick fp32 here, or pass {flag} False"
            )
    return argv


def choose_attention(name: str) -> str:
    if name != "auto":
        return name
    if _cuda():
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def prepare_distributed(argv: list[str]) -> list[str]:
    """CPU runs: one process gets a local rendezvous; several get gloo (accelerate needs that
    process group made before `TrainingArguments`, or every rank thinks it is alone)."""
    if _cuda():
        return argv
    uses_deepspeed = _flag_value(argv, "--deepspeed") is not None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and uses_deepspeed and "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
        )
    if world > 1:
        if uses_deepspeed:
            os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")
        from accelerate import PartialState

        PartialState(backend="gloo")
        if _flag_value(argv, "--accelerator_config") is None:
            argv = [*argv, "--accelerator_config", json.dumps({"use_configured_state": True})]
    return argv


def parse_args(argv: list[str]):
    """`(model_args, data_args, training_args, connector)`: the three LLaVA argument groups and
    the connector's `ViTSplitConfig` (None for the MLP baselines), checked before any weights
    load."""
    from transformers import HfArgumentParser

    from .arguments import (
        DataArguments,
        ModelArguments,
        TrainingArguments,
        add_connector_arguments,
        connector_config,
        normalize_argv,
    )
    from .builder import check_sources

    argv = prepare_distributed(choose_precision(normalize_argv(argv)))
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments), prog="vitsplit-vlm train"
    )
    add_connector_arguments(parser)
    model_args, data_args, training_args, connector_args = parser.parse_args_into_dataclasses(argv)
    _check_args(model_args, training_args)
    try:
        connector = connector_config(model_args, connector_args)
        check_sources(
            model_args.model_name_or_path,
            model_args.vision_tower,
            **model_settings(model_args, data_args, connector),
        )
    except ValueError as err:
        raise SystemExit(str(err)) from err
    return model_args, data_args, training_args, connector


def model_settings(model_args, data_args, connector) -> dict:
    """The model-describing flags as `build_vlm` takes them (the config records the template
    the run trains with: `plain` for stage 1, whatever the LLM's tokenizer)."""
    return dict(
        mm_projector_type=model_args.mm_projector_type,
        mm_vision_select_layer=model_args.mm_vision_select_layer,
        vitsplit_config=connector,
        mm_projector_layers=model_args.mm_projector_layers,
        conv_template=model_args.version,
        image_aspect_ratio=data_args.image_aspect_ratio,
    )


def resume_arg(training_args) -> str | bool | None:
    """`--resume_from_checkpoint` as the Trainer takes it: True/False (any case; ``auto``, as
    dense training's ``--resume auto``, is True) or a path."""
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        return value.lower() != "false"
    return value or None


def _check_args(model_args, training_args) -> None:
    """One line naming the flag (not argparse's page of usage), before any weights load."""
    from .configuration import PROJECTOR_TYPES, check_choice
    from .conversation import TEMPLATES

    try:
        check_choice("--version", model_args.version, tuple(TEMPLATES))
        check_choice("--mm_projector_type", model_args.mm_projector_type, PROJECTOR_TYPES)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    for flag, value, ok in [
        ("--mm_use_im_start_end", model_args.mm_use_im_start_end, False),
        ("--mm_use_im_patch_token", model_args.mm_use_im_patch_token, False),
        ("--mm_vision_select_feature", model_args.mm_vision_select_feature, "patch"),
        ("--mm_patch_merge_type", model_args.mm_patch_merge_type, "flat"),
        ("--bits", training_args.bits, 16),
    ]:
        if value != ok:
            raise SystemExit(f"{flag} {value!r} is not supported (LLaVA-1.5 uses {ok!r})")
    out = Path(training_args.output_dir)
    resuming = bool(resume_arg(training_args))
    earlier = (out / SUMMARY).exists() or any(out.glob("checkpoint-*"))
    if earlier and not resuming and not training_args.overwrite_output_dir:
        raise SystemExit(
            f"--output_dir {out} already holds a run ({SUMMARY} or checkpoint-*): pass "
            "--resume_from_checkpoint True to continue it, --overwrite_output_dir True to replace "
            "it, or choose another --output_dir"
        )


def set_trainable(model, model_args, training_args) -> dict[str, int]:
    """Vision tower always frozen; stage 1 trains only the connector. Returns counts by group."""
    model.requires_grad_(False)
    connector, llm = model.connector, model.model.language_model
    stage1 = model_args.tune_mm_mlp_adapter
    if not training_args.freeze_mm_mlp_adapter:
        connector.requires_grad_(True)
    if not stage1 and not model_args.freeze_backbone and not training_args.lora_enable:
        llm.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    return trainable_counts(model)


def trainable_counts(model) -> dict[str, int]:
    """Trainable parameters per group; full sizes under ZeRO-3 (`ds_numel`), where a model
    loaded whole with `from_pretrained` is partitioned (its `numel()` is 0)."""

    def count(module) -> int:
        return sum(
            getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad
        )

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "vision_tower": count(base.model.vision_tower),
        "connector": count(base.connector),
        "llm": count(base.model.language_model) + count(base.lm_head),
    }


def apply_lora(model, training_args):
    """peft LoRA on the LLM's linear layers (not the tower, the connector or lm_head)."""
    import torch.nn as nn
    from peft import LoraConfig, get_peft_model

    targets = [
        f"model.language_model.{name}"
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if not training_args.freeze_mm_mlp_adapter:
        peft_model.get_base_model().connector.requires_grad_(True)
    return peft_model


def use_feature_cache(dataset, model, data_args, training_args):
    """``--cache_features DIR``: the dataset reading cached tower hidden states and its
    collator; the main process builds what is missing, the others wait and read it."""
    from .feature_cache import CachedCollator, cache_dataset

    main = training_args.process_index == 0
    cached = cache_dataset(
        dataset, model, data_args.cache_features, device=training_args.device,
        workers=training_args.dataloader_num_workers, log=print if main else None, is_main=main,
    )  # fmt: skip
    return cached, CachedCollator(dataset.tokenizer.pad_token_id, dataset.model_max_length)


# --------------------------------------------------------------------------- saving


def _connector_weights(trainer, model) -> dict:
    """Full connector weights on every rank (gathered under ZeRO-3), detached on CPU."""
    from .builder import connector_state_dict
    from .connector import _gathered

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with _gathered(list(base.connector.parameters())):
        return {k: v.detach().cpu().clone() for k, v in connector_state_dict(base).items()}


def _publish(staging: Path, out: Path) -> None:
    """Move finished files into `out` (only after everything was written)."""
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def save_outputs(trainer, model, built, model_args, training_args, summary: dict) -> None:
    from safetensors.torch import save_file

    out = Path(training_args.output_dir)
    staging = out / ".saving"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)  # left by a run that died while saving: never publish its files
    weights = _connector_weights(trainer, model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not model_args.tune_mm_mlp_adapter:
        # stage 2: the full model (gathered under ZeRO-3, a collective), or the peft adapter
        trainer.save_model(str(staging))
    if not trainer.is_world_process_zero():
        return
    staging.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(staging / "mm_projector.safetensors"))
    base.config.save_pretrained(staging)
    if not model_args.tune_mm_mlp_adapter:
        built.processor.save_pretrained(staging)
    if training_args.lora_enable:
        sources = {
            "model_name_or_path": model_args.model_name_or_path,
            "vision_tower": model_args.vision_tower,
        }
        (staging / LORA_SOURCES).write_text(json.dumps(sources, indent=2) + "\n")
    (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    _publish(staging, out)


# --------------------------------------------------------------------------- main


def train(argv: list[str]) -> dict:
    import torch
    from transformers import set_seed

    from ..quiet import quiet_third_party
    from . import check_data, resume
    from .builder import build_vlm
    from .data import DataCollator, LazySupervisedDataset, summarize_skips
    from .tokenizer_chat import bind_template
    from .trainer import StepTimer, VLMTrainer

    quiet_third_party()  # known third-party warnings that would flood the output
    model_args, data_args, training_args, connector = parse_args(argv)
    # before any weights load: data with no usable sample, the checkpoint to resume
    records = check_data.usable_records(data_args, model_args.version)
    resume_from = resume.resume_from(training_args.output_dir, resume_arg(training_args),
                                     allow_pickle=training_args.allow_pickle_checkpoints)  # fmt: skip
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    started = time.time()
    built = build_vlm(
        model_name_or_path=model_args.model_name_or_path,
        vision_tower=model_args.vision_tower,
        **model_settings(model_args, data_args, connector),
        model_max_length=training_args.model_max_length,
        pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter,
        attn_implementation=choose_attention(model_args.attn_implementation),
    )
    model = built.model
    template = bind_template(
        model_args.version, built.tokenizer, source=model.config.llm_chat_template
    )
    counts = set_trainable(model, model_args, training_args)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
        counts = trainable_counts(model)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    logger.info("trainable parameters: %s", counts)

    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skip_log = out / SKIP_LOG
    if training_args.process_index == 0 and resume_from is None:
        skip_log.unlink(missing_ok=True)
    dataset = LazySupervisedDataset(
        data_args.data_path,
        data_args.image_folder,
        built.tokenizer,
        built.image_processor,
        template,
        model_max_length=training_args.model_max_length,
        num_image_tokens=model.config.image_seq_length,
        image_token_id=model.config.image_token_id,
        image_aspect_ratio=data_args.image_aspect_ratio,
        fail_fast=data_args.fail_fast,
        skip_log=skip_log,
        allow_images_outside_folder=data_args.allow_images_outside_folder,
        records=records,
    )
    collator = DataCollator(built.tokenizer.pad_token_id, training_args.model_max_length)
    if data_args.cache_features:
        dataset, collator = use_feature_cache(dataset, model, data_args, training_args)
    trainer = VLMTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator
    )
    timer = StepTimer()
    trainer.add_callback(timer)
    result = trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    steps_this_run = max(trainer.state.global_step - timer.start_step, 1)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "stage": 1 if model_args.tune_mm_mlp_adapter else 2,
        "mm_projector_type": model_args.mm_projector_type,
        "vitsplit_config": connector.to_dict() if connector is not None else None,
        "template": model_args.version,
        "trainable": counts,
        "steps": trainer.state.global_step,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "resumed_at_step": timer.start_step,
        "resumed_from": None if resume_from is None else str(resume_from),
        "seconds_per_step": round(result.metrics.get("train_runtime", 0.0) / steps_this_run, 4),
        "step_seconds": timer.step_seconds,
        "first_losses": losses[:5],
        "last_losses": losses[-5:],
        "skipped": summarize_skips(skip_log),
        "world_size": training_args.world_size,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "deepspeed": training_args.deepspeed,
        "wall_s": round(time.time() - started, 2),
        "peak_cuda_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if torch.cuda.is_available()
        else None,
    }
    save_outputs(trainer, model, built, model_args, training_args, summary)
    if trainer.is_world_process_zero():
        skipped = summary["skipped"]
        print(
            f"[vitsplit-vlm train] stage {summary['stage']}: {summary['steps']} steps, "
            f"loss {losses[0] if losses else float('nan'):.4f} -> "
            f"{losses[-1] if losses else float('nan'):.4f}; skipped samples: "
            f"{skipped.get('total', 0)} {skipped.get('by_reason', {})}; output: {out}"
        )
    _finish_distributed()
    return summary


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    train(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
