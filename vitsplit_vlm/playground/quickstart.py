"""`vitsplit-vlm quickstart`: the embedded tiny default, end to end, saying what it does.

1. ViT-Split core on the tiny CLIP and DINOv2 (layers, exactness, trainable parts) and the
   paper's parameter table from the public architectures;
2. the playground: tiny models (with a language-pretrained tiny Llama and a scene-pretrained tiny
   CLIP) and the shapes data;
3. stage 1 (connector only) and stage 2 (connector + LLM), both under ZeRO-2 and reading the
   frozen tower's hidden states from `--cache_features playground/feature-cache` (computed once,
   in stage 1), through the trainer's entry point, ``python -m vitsplit_vlm.vlm.train``, with the
   flags of `scripts/pretrain.sh` and `scripts/finetune.sh` (`recipes.stage_flags`), each skipped
   when already done with the same recipe (trained again, saying why, when the recipe or the data
   set changed since);
4. answers on held-out images, with accuracy against chance and blank/swapped-image controls;
   a summary that fits a screen.

Run it from the repository root (the recipe reads `scripts/zero2.json`). Run it
again and finished steps are skipped; `--retrain` trains again from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .recipes import fingerprint, prepare, stage_argv, stage_flags

SUMMARY = "train_summary.json"
RECIPE = "quickstart_recipe.json"  # what a stage's output was trained with (`fingerprint`)
STAGE_OUTPUTS = {"pretrain": paths.TINY_PRETRAIN, "finetune": paths.TINY_FINETUNE}


@dataclass
class Report:
    """What the closing summary prints."""

    started: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, line: str, ok: bool = True) -> None:
        self.lines.append(line)
        self.ok = self.ok and ok


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


def _core_demo(report: Report) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from ..core import ViTSplit, ViTSplitConfig
    from .shapes import sample_scene
    from .tiny import make_tiny

    tiny = make_tiny(paths.TINY)
    image = sample_scene(random.Random(0)).render()
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
            report.add(f"core: task head at init == frozen DINOv2 output: {exact}", exact)


def _param_table(report: Report) -> None:
    from ..params import paper_report

    rows = paper_report()
    for r in rows:
        print(f"  {r['label']:<30} ours {r['ours_m']:>8.3f}M   paper {r['paper_m']:>7.2f}M")
    ok = all(r["ok"] for r in rows)
    vlm = next(r for r in rows if r["label"].startswith("LLaVA-1.5 vitsplit"))
    report.add(
        f"parameters: {sum(r['ok'] for r in rows)}/{len(rows)} paper rows match; LLaVA-1.5 "
        f"connector {vlm['ours_m']:.3f}M",
        ok,
    )


def stale_reason(stage: str) -> str | None:
    """Why the finished run in the stage's output folder does not match the current recipe (an
    older quickstart's, or trained by other means), or None if it does."""
    try:
        done = json.loads((STAGE_OUTPUTS[stage] / RECIPE).read_text())
    except (OSError, ValueError):
        return f"no {RECIPE} says which recipe trained it"
    if done != json.loads(json.dumps(fingerprint(stage))):
        return "it was trained with another recipe"
    return None


def _train_stage(stage: str, retrain: bool, report: Report) -> None:
    out = STAGE_OUTPUTS[stage]
    if not retrain and (out / SUMMARY).exists() and (why := stale_reason(stage)):
        print(f"training {out} again: {why}")
        retrain = True
    if retrain:
        shutil.rmtree(out, ignore_errors=True)
    if (out / SUMMARY).exists():
        print(f"already trained: {out} (use --retrain to train again)")
    else:
        argv = [sys.executable, "-m", "vitsplit_vlm.vlm.train", *stage_argv(stage)]
        print(f"$ python -m vitsplit_vlm.vlm.train ...   (as bash scripts/{stage}.sh; -> {out})")
        subprocess.run(argv, check=True, env=_train_env())
        (out / RECIPE).write_text(json.dumps(fingerprint(stage), indent=1) + "\n")
    s = json.loads((out / SUMMARY).read_text())
    report.add(
        f"stage {s['stage']}: {s['steps']} steps, {s['seconds_per_step']} s/step, loss "
        f"{s['first_losses'][0]:.3f} -> {s['last_losses'][-1]:.3f}, trains "
        + ", ".join(f"{k} {v:,}" for k, v in s["trainable"].items() if v)
        + f", skipped {s['skipped']['total']}  ({out})"
    )


def _train_env() -> dict[str, str]:
    """One CPU process, as `scripts/_common.sh` runs it (this process's quiet settings too)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _quiet_tiny_runs() -> None:
    """Tiny models load and save in milliseconds: no "Loading weights" / "Writing model shards"
    bar for each (the training bar stays); on a CPU-only machine, tell DeepSpeed so (it warns
    otherwise). Set before transformers is imported here, and inherited by the trainer."""
    import torch

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _heldout(limit: int | None, report: Report) -> None:
    from ..vlm.engine import VLMEngine
    from .heldout import chance, evaluate, load_heldout

    questions = load_heldout(paths.SHAPES / "heldout.jsonl")[:limit]
    engine = VLMEngine.from_pretrained(paths.TINY_FINETUNE)
    results = {
        c: evaluate(engine, questions, paths.SHAPES / "images", control=c)
        for c in ("none", "blank", "swap")
    }
    base = chance(questions)
    types = ["overall", *sorted(t for t in base if t != "overall")]
    rows = [("chance (majority)", base)] + [
        (f"model, {'real' if c == 'none' else c} image", r["accuracy"]) for c, r in results.items()
    ]
    table = [f"  {'':<22}" + "".join(f"{t:>10}" for t in types)]
    table += [
        f"  {label:<22}" + "".join(f"{acc.get(t, float('nan')):>10.3f}" for t in types)
        for label, acc in rows
    ]
    examples = [
        f"    {q['image']}: {q['text'].splitlines()[0]!r} -> {a['answer']!r} (truth {q['answer']!r})"
        for q, a in list(zip(questions, results["none"]["answers"], strict=False))[:4]
    ]
    real = results["none"]["accuracy"]["overall"]
    report.add(f"held-out: {len(questions)} questions on unseen images, exact-match accuracy:")
    report.lines += table + ["  examples:", *examples]
    report.ok = report.ok and real > base["overall"]


def run(args: argparse.Namespace) -> int:
    _quiet_tiny_runs()
    report = Report()
    _step("1. ViT-Split core on tiny Hugging Face models (random weights, from_pretrained)")
    _core_demo(report)
    _step("2. trainable parameters of the paper's models (meta device, no weights allocated)")
    _param_table(report)
    if not args.skip_training:
        _require_repository()
        _step("3. playground: tiny models, pretrained tiny Llama and CLIP, the shapes data")
        prepare()
        _step(
            "4. stage 1: connector only, plain template, ZeRO-2, the frozen tower's features "
            "cached (scripts/pretrain.sh)"
        )
        _train_stage("pretrain", args.retrain, report)
        _step(
            "5. stage 2: connector + LLM, vicuna_v1, ZeRO-2, the cached tower features "
            "(scripts/finetune.sh)"
        )
        _train_stage("finetune", args.retrain, report)
        _step(f"6. answers on held-out images ({paths.TINY_FINETUNE})")
        _heldout(args.heldout_limit, report)
    _summary(report)
    return 0 if report.ok else 1


def _require_repository() -> None:
    configs = sorted({stage_flags(stage)["--deepspeed"] for stage in STAGE_OUTPUTS})
    missing = [p for p in configs if not Path(p).is_file()]
    if missing:
        raise SystemExit(
            f"quickstart: {', '.join(missing)} not found in {Path.cwd()}: run it from the "
            "repository root (`make quickstart`)"
        )


def _summary(report: Report) -> None:
    print(f"\n== summary: quickstart {'OK' if report.ok else 'FAILED'} in "
          f"{time.time() - report.started:.0f}s")  # fmt: skip
    for line in report.lines:
        print(line if line.startswith("  ") else f"- {line}")
    model = paths.TINY_FINETUNE
    print(
        "Next:\n"
        f"  vitsplit-vlm chat --model-path {model} --image-file {paths.SHAPES}/images/heldout_00000.png\n"
        f"  vitsplit-vlm demo --model-path {model} --examples {paths.SHAPES}/heldout.jsonl"
        "   (pip install -e '.[demo]')\n"
        "  bash scripts/eval/vqav2.sh; bash scripts/eval/pope.sh; bash scripts/eval/mmbench.sh\n"
        "  README.md: real weights and data (the same scripts, other paths)"
    )
