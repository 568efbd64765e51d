"""`vitsplit-vlm merge-lora`: fold a stage-2 LoRA adapter into a full model folder.

    vitsplit-vlm merge-lora --model-path checkpoints/vitsplit-tiny-lora --out checkpoints/merged

The LoRA run's folder says what it was built from (`vitsplit_lora.json`: the LLM and the vision
tower) and holds the adapter, the connector and the config; nothing depends on folder names.
`--model-base` / `--vision-tower` override the recorded sources (e.g. weights moved elsewhere).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, type=Path, help="stage-2 LoRA output dir")
    parser.add_argument("--out", required=True, type=Path, help="where the merged model goes")
    parser.add_argument("--model-base", default=None, help="override the recorded LLM path")
    parser.add_argument("--vision-tower", default=None, help="override the recorded tower path")


def merge_lora(model_path: Path, *, model_base: str | None = None, vision_tower: str | None = None):
    """Return (merged model, processor) rebuilt from a LoRA run folder."""
    from peft import PeftModel

    from .builder import build_vlm
    from .configuration import ViTSplitLlavaConfig
    from .train import LORA_SOURCES

    model_path = Path(model_path)
    sources_file = model_path / LORA_SOURCES
    if not sources_file.exists() or not (model_path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"--model-path {model_path}: expected {LORA_SOURCES} and adapter_config.json written "
            "by a `--lora_enable True` stage-2 run (scripts/finetune_lora.sh)"
        )
    sources = json.loads(sources_file.read_text())
    cfg = ViTSplitLlavaConfig.from_pretrained(model_path)
    built = build_vlm(
        model_name_or_path=model_base or sources["model_name_or_path"],
        vision_tower=vision_tower or sources["vision_tower"],
        mm_projector_type=cfg.mm_projector_type,
        mm_vision_select_layer=cfg.vision_feature_layer,
        vitsplit_config=cfg.vitsplit_config,
        mm_projector_layers=cfg.mm_projector_layers,
        conv_template=cfg.conv_template,
        image_aspect_ratio=cfg.image_aspect_ratio,
        pretrain_mm_mlp_adapter=model_path / "mm_projector.safetensors",
    )
    merged = PeftModel.from_pretrained(built.model, model_path).merge_and_unload()
    return merged, built.processor


def run(args: argparse.Namespace) -> int:
    merged, processor = merge_lora(
        args.model_path, model_base=args.model_base, vision_tower=args.vision_tower
    )
    args.out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"merged {args.model_path} -> {args.out}")
    return 0
