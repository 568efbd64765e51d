"""`vitsplit-vlm quickstart`: the embedded tiny default, end to end, saying what it does.

1. builds the tiny models (`make-tiny`) under `playground/tiny`;
2. wraps the tiny CLIP tower in the official LLaVA-1.5 connector and the tiny DINOv2 in the dense
   ViT-Split, runs both on a rendered playground image, checks the task head's exactness;
3. prints the paper's trainable-parameter table from the public architectures.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

DEFAULT_ROOT = Path("playground")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="where generated models and data go (default: playground/)",
    )
    parser.add_argument("--seed", type=int, default=0)


def _step(title: str) -> None:
    print(f"\n== {title}")


def _vitsplit_demo(name: str, path: Path, cfg, image) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from .core import ViTSplit

    trunk = AutoModel.from_pretrained(path)
    pixels = AutoImageProcessor.from_pretrained(path)(image, return_tensors="pt")["pixel_values"]
    model = ViTSplit(trunk, cfg)
    layers = model.layers
    counts = {g: sum(p.numel() for p in ps) for g, ps in model.trainable_groups().items()}
    with torch.no_grad():
        out = model(pixels)
    N = layers.num_blocks
    print(
        f"{name}: {type(trunk).__name__} from {path} ({N} blocks, width {trunk.config.hidden_size})"
    )
    print(
        f"  feature layer f={layers.feature_layer}; task head = copy of blocks "
        f"{list(layers.task_blocks)} fed hidden_states[{layers.task_input_layer}] "
        f"({cfg.resolved_task_input} tokens)"
    )
    print(
        f"  prior head reads hidden_states{list(layers.prior_hidden_layers)}; trunk stops at "
        f"hidden_states[{layers.deepest_layer}] ({N - layers.deepest_layer} block(s) skipped)"
    )
    print("  trainable: " + ", ".join(f"{g} {c:,}" for g, c in counts.items()))
    print(f"  frozen: {sum(p.numel() for p in trunk.parameters()):,} trunk parameters, no autograd")
    print(
        f"  fused {tuple(out.fused.shape)}, task {tuple(out.task.shape)}, "
        f"prior {tuple(out.prior.shape)}"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .core import ViTSplit, ViTSplitConfig
    from .params import paper_report
    from .playground.shapes import sample_scene
    from .tiny import make_tiny

    t0 = time.time()
    _step("1. tiny Hugging Face models (random weights, saved with save_pretrained)")
    tiny = make_tiny(args.root / "tiny", seed=args.seed)
    for name in ("clip", "dinov2", "dinov2_reg", "siglip", "llama"):
        print(f"  {name:<10} {getattr(tiny, name)}")

    _step("2. ViT-Split on a rendered playground scene")
    scene = sample_scene(random.Random(args.seed))
    print("  scene: " + ", ".join(o.name for o in scene.objects))
    image = scene.render()
    _vitsplit_demo("LLaVA-1.5 connector", tiny.clip, ViTSplitConfig.llava(out_channels=128), image)
    dense_cfg = ViTSplitConfig(k=3, n=4, s=2, task_input="all")
    _vitsplit_demo("dense ViT-Split", tiny.dinov2, dense_cfg, image)
    from transformers import AutoImageProcessor, AutoModel

    trunk = AutoModel.from_pretrained(tiny.dinov2)
    px = AutoImageProcessor.from_pretrained(tiny.dinov2)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        task = ViTSplit(trunk, dense_cfg)(px).task
        frozen = trunk(px).last_hidden_state[:, 1:].transpose(1, 2).reshape(task.shape)
    exact = torch.equal(task, frozen)
    print(f"  task head at init == frozen DINOv2 output (after its final LayerNorm): {exact}")

    _step("3. trainable parameters of the paper's models (meta device, no weights allocated)")
    rows = paper_report()
    for r in rows:
        print(f"  {r['label']:<30} ours {r['ours_m']:>8.3f}M   paper {r['paper_m']:>7.2f}M")
    ok = exact and all(r["ok"] for r in rows)
    print(
        f"\nquickstart {'OK' if ok else 'FAILED'} in {time.time() - t0:.1f}s. Next: "
        "`vitsplit-vlm params --help`, and README.md for real weights."
    )
    return 0 if ok else 1
