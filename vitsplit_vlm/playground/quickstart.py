"""`vitsplit-vlm quickstart`: the embedded tiny default, end to end, saying what it does.

1. ViT-Split core on the tiny CLIP and DINOv2 (layers, exactness, trainable parts) and the
   paper's parameter table from the public architectures;
2. `bash scripts/pretrain.sh` (stage 1, ZeRO-2, connector only) then `bash scripts/finetune.sh`
   (stage 2, ZeRO-3, connector + LLM) on the playground, each skipped when already done;
3. answers on held-out images, with accuracy against chance and blank/swapped-image controls.

Run it again and finished steps are skipped; `--retrain` trains again from scratch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

PRETRAIN_OUT = Path("checkpoints/vitsplit-tiny-pretrain")
FINETUNE_OUT = Path("checkpoints/vitsplit-tiny")
DATA = Path("playground/data/shapes")
SUMMARY = "train_summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrain", action="store_true", help="train both stages again")
    parser.add_argument(
        "--skip-training", action="store_true", help="only the core demo and the parameter table"
    )
    parser.add_argument(
        "--heldout-limit",
        type=int,
        default=None,
        help="evaluate on the first N held-out questions (default: all)",
    )


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _core_demo() -> bool:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from ..core import ViTSplit, ViTSplitConfig
    from .shapes import sample_scene
    from .tiny import make_tiny

    tiny = make_tiny("playground/tiny")
    image = sample_scene(random.Random(0)).render()
    exact = True
    for name, path, cfg in [
        ("LLaVA-1.5 connector on tiny CLIP", tiny.clip, ViTSplitConfig.llava(out_channels=128)),
        ("dense ViT-Split on tiny DINOv2", tiny.dinov2, ViTSplitConfig(k=3, n=4, s=2)),
    ]:
        trunk = AutoModel.from_pretrained(path)
        px = AutoImageProcessor.from_pretrained(path)(image, return_tensors="pt")["pixel_values"]
        model = ViTSplit(trunk, cfg)
        lay = model.layers
        counts = {g: sum(p.numel() for p in ps) for g, ps in model.trainable_groups().items()}
        with torch.no_grad():
            out = model(px)
        print(
            f"{name}: task head = copy of blocks {list(lay.task_blocks)} fed "
            f"hidden_states[{lay.task_input_layer}] ({cfg.resolved_task_input} tokens); prior "
            f"reads hidden_states{list(lay.prior_hidden_layers)}; trunk stops at "
            f"hidden_states[{lay.deepest_layer}] of {lay.num_blocks}; fused "
            f"{tuple(out.fused.shape)}; trainable "
            + ", ".join(f"{g} {c:,}" for g, c in counts.items())
        )
        if cfg.variant == "dense":
            with torch.no_grad():
                frozen = trunk(px).last_hidden_state[:, 1:].transpose(1, 2).reshape(out.task.shape)
            exact = torch.equal(out.task, frozen)
            print(f"  task head at init == frozen DINOv2 output, bit for bit: {exact}")
    return exact


def _param_table() -> bool:
    from ..params import paper_report

    rows = paper_report()
    for r in rows:
        print(f"  {r['label']:<30} ours {r['ours_m']:>8.3f}M   paper {r['paper_m']:>7.2f}M")
    return all(r["ok"] for r in rows)


def _train_stage(script: str, out: Path, retrain: bool) -> dict:
    if retrain:
        shutil.rmtree(out, ignore_errors=True)
    if not (out / SUMMARY).exists():
        print(f"$ bash {script}   (output: {out})", flush=True)
        subprocess.run(["bash", script], check=True)
    else:
        print(f"already trained: {out} (use --retrain to train again)")
    summary = json.loads((out / SUMMARY).read_text())
    print(
        f"  stage {summary['stage']}: {summary['steps']} steps in {summary['train_runtime_s']}s "
        f"({summary['seconds_per_step']}s/step), loss {summary['first_losses'][0]:.3f} -> "
        f"{summary['last_losses'][-1]:.3f}; trainable {summary['trainable']}; skipped samples "
        f"{summary['skipped']['total']}"
    )
    return summary


def _heldout(limit: int | None) -> dict:
    from ..vlm.engine import VLMEngine
    from .heldout import chance, evaluate, load_heldout

    questions = load_heldout(DATA / "heldout.jsonl")[:limit]
    engine = VLMEngine.from_pretrained(FINETUNE_OUT)
    results = {
        c: evaluate(engine, questions, DATA / "images", control=c, progress=False)
        for c in ("none", "blank", "swap")
    }
    base = chance(questions)
    types = ["overall", *sorted(t for t in base if t != "overall")]
    print(f"  {len(questions)} held-out questions; exact-match accuracy:")
    print(f"  {'':<22}" + "".join(f"{t:>10}" for t in types))
    rows = [("chance (majority)", base)] + [
        (f"model, {'real' if c == 'none' else c} image", r["accuracy"]) for c, r in results.items()
    ]
    for label, acc in rows:
        print(f"  {label:<22}" + "".join(f"{acc.get(t, float('nan')):>10.3f}" for t in types))
    print("  examples:")
    for q, a in list(zip(questions, results["none"]["answers"], strict=False))[:6]:
        print(
            f"    {q['image']}: {q['text'].splitlines()[0]!r} -> {a['answer']!r} "
            f"(truth {q['answer']!r})"
        )
    return {"chance": base["overall"], **{c: r["accuracy"]["overall"] for c, r in results.items()}}


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    _step("1. ViT-Split core on tiny Hugging Face models (random weights, from_pretrained)")
    exact = _core_demo()
    _step("2. trainable parameters of the paper's models (meta device, no weights allocated)")
    params_ok = _param_table()
    if args.skip_training:
        return 0 if exact and params_ok else 1
    _step("3. stage 1: bash scripts/pretrain.sh (connector only, plain template, ZeRO-2)")
    _train_stage("scripts/pretrain.sh", PRETRAIN_OUT, args.retrain)
    _step("4. stage 2: bash scripts/finetune.sh (connector + LLM, vicuna_v1, ZeRO-3)")
    _train_stage("scripts/finetune.sh", FINETUNE_OUT, args.retrain)
    _step(f"5. answers on held-out images ({FINETUNE_OUT})")
    acc = _heldout(args.heldout_limit)
    ok = exact and params_ok and acc["none"] > acc["chance"]
    print(
        f"\nquickstart {'OK' if ok else 'FAILED'} in {time.time() - t0:.0f}s. Next: "
        f"`vitsplit-vlm chat --model-path {FINETUNE_OUT} --image-file <png>`, "
        "`vitsplit-vlm demo`, scripts/eval/*.sh; README.md for real weights."
    )
    return 0 if ok else 1
