"""Training step time, peak memory and FLOPs: ViT-Split vs full fine-tuning (paper Tab. 14 idea).

For each backbone size (DINOv2-S / -B by default, random weights built from the public
architectures), each method (``vitsplit`` with the paper's segmentation layers for the size,
k=3 n=4 s=2 on S and B; ``full``) and each memory mode (``default``; ``checkpoint-head``: the
head's upsampling stack recomputed in backward, as ``dense train --checkpoint-head``), one
subprocess builds the segmentation model (150 classes, the paper's linear head) through the
factory ``dense train`` uses (`recipes.dense_spec` -> `DenseModel`) and times the engine's own
training step (`engine.train_step`: the task's loss, backward, AdamW step, lr schedule) on a
batch of 512x512 crops (padded to 518 = 37 patches, as the official CenterPadding does). The
loss is the training loss (`seg_loss` on the head's 4x-grid logits, resized inside the loss).
Configurations
run in `--rounds` alternating rounds; a configuration's step time is the lowest of its rounds'
median step times, its memory the highest of its rounds' peaks.

Separate processes keep each peak-memory reading its own: CUDA reports
``max_memory_allocated``; on CPU the children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so every
large tensor is its own mapping, returned to the OS when freed, and the process's peak resident
set size above what the imports took then tracks the live tensors (weights, activations,
gradients, optimizer state) rather than allocator reuse patterns.

FLOPs of one training step come from ``torch.utils.flop_counter.FlopCounterMode`` plus the
deformable convolutions it cannot see (counted as a dense 3x3 conv: 2 * Cin * Cout * 9 * h * w
forward, twice that backward). ``speedup_over_flop_ratio`` = (t_full / t_vitsplit) /
(FLOPs_full / FLOPs_vitsplit): 1.0 means the whole FLOP saving turned into time.

    python benchmarks/dense_speed.py --out benchmarks/results/dense_speed  # JSON + PNG
    python benchmarks/dense_speed.py --sizes dinov2-s --steps 2 --rounds 1 --modes default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("vitsplit", "full")
MODES = ("default", "checkpoint-head")


def _deform_flops(model, pixels) -> int:
    """Forward FLOPs of every deformable conv (hooks), for one forward pass."""
    import torch

    from vitsplit_vlm.core.layers import DeformBlock

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        weight = module.deform.weight
        total += 2 * weight[0].numel() * output.shape[1] * output[0, 0].numel() * output.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DeformBlock)]
    with torch.no_grad():
        model(pixels)
    for handle in handles:
        handle.remove()
    return total


def measure(
    size: str,
    method: str,
    mode: str,
    *,
    steps: int,
    warmup: int,
    batch: int,
    crop: int,
    device: str,
) -> dict:
    """One configuration in this process: seconds per step, peak memory, FLOPs per step."""
    import torch
    from transformers import AutoModel

    from vitsplit_vlm.core.presets import backbone_config
    from vitsplit_vlm.dense.datasets import Batch
    from vitsplit_vlm.dense.engine import TrainConfig, start_training, train_step
    from vitsplit_vlm.dense.model import DenseModel, count_parameters
    from vitsplit_vlm.dense.recipes import dense_spec
    from vitsplit_vlm.dense.tasks import get_task
    from vitsplit_vlm.dense.transforms import pad_to_multiple

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports only
    torch.manual_seed(0)
    trunk = AutoModel.from_config(backbone_config(size)).to(device)
    task = get_task("seg")
    spec, _ = dense_spec(task, method, trunk.config, task.presets["real"], num_classes=150)
    model = DenseModel(trunk, spec).to(device)
    config = TrainConfig(lr=1e-4, checkpoint_head=mode == "checkpoint-head")
    state = start_training(model, config)  # training mode, head recomputation, AdamW, schedule
    pixels = pad_to_multiple(torch.randn(batch, 3, crop, crop, device=device), model.patch_size)
    labels = torch.randint(0, 150, (batch, *pixels.shape[-2:]), device=device)
    data = Batch(pixels, seg=labels, depth=None, targets=None, metas=[{}] * batch, skipped=[])

    def step():
        train_step(state, data)  # the step dense train's loop runs

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "cuda max_memory_allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mib
        memory_kind = "peak RSS above the imports, mmap threshold 64 KiB"
    from torch.utils.flop_counter import FlopCounterMode

    from vitsplit_vlm.core.layers import DeformBlock

    # The counter cannot see torchvision's deformable kernel, so count those with a hook instead
    # (forcing that kernel keeps the sampled path's matmul from being counted twice).
    for module in model.modules():
        if isinstance(module, DeformBlock):
            module.impl = "torchvision"
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    deform = _deform_flops(model, pixels) * 3  # forward + backward (2x)
    return {
        "size": size,
        "method": method,
        "mode": mode,
        "seconds_per_step": statistics.median(times),
        "step_times": times,
        "peak_memory_mib": round(peak_mib, 1),
        "memory_kind": memory_kind,
        "gflops_per_step": round((counter.get_total_flops() + deform) / 1e9, 1),
        "trainable_params": count_parameters(model)["total"],
        "split": spec.split.to_dict() if spec.split is not None else None,
    }


def _child(args: argparse.Namespace, size: str, method: str, mode: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", f"{size}:{method}:{mode}", "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--batch", str(args.batch), "--crop", str(args.crop),
        "--device", args.device, "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{size}/{method}/{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _merge(runs: list[dict]) -> dict:
    """One configuration's rounds -> one record.

    Time: the lowest of the rounds' median step times (as `timeit` advises, the least disturbed
    estimate when other work shares the machine); every step time is kept. Memory: the highest.
    """
    merged = dict(runs[0])
    merged["round_medians"] = [statistics.median(r["step_times"]) for r in runs]
    merged["step_times"] = [t for r in runs for t in r["step_times"]]
    merged["seconds_per_step"] = min(merged["round_medians"])
    merged["peak_memory_per_round"] = [r["peak_memory_mib"] for r in runs]
    merged["peak_memory_mib"] = max(merged["peak_memory_per_round"])
    return merged


def plot(results: list[dict], path: Path) -> None:
    """Bars per (size, mode) for the two methods: step time, peak memory, FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["size"], r["mode"]) for r in results))
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 3.8))
    panels = (
        ("seconds_per_step", "s / training step"),
        ("peak_memory_mib", f"peak memory, MiB ({results[0]['memory_kind']})"),
        ("gflops_per_step", "GFLOPs / training step"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for j, method in enumerate(METHODS):
            values = [_find(results, size, method, mode)[key] for size, mode in groups]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(groups))]
            ax.bar(xs, values, width=0.38, label=method)
        labels = [f"{size}\n{mode}" for size, mode in groups]
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _find(results: list[dict], size: str, method: str, mode: str) -> dict:
    return next(r for r in results if (r["size"], r["method"], r["mode"]) == (size, method, mode))


def ratios_for(results: list[dict], size: str, mode: str) -> dict:
    vit, full = _find(results, size, "vitsplit", mode), _find(results, size, "full", mode)
    time_ratio = vit["seconds_per_step"] / full["seconds_per_step"]
    flop_ratio = vit["gflops_per_step"] / full["gflops_per_step"]
    memory_ratio = vit["peak_memory_mib"] / full["peak_memory_mib"]
    return {
        "time_vitsplit_over_full": round(time_ratio, 4),
        "flops_vitsplit_over_full": round(flop_ratio, 4),
        "memory_vitsplit_over_full": round(memory_ratio, 4),
        "speedup": round(1 / time_ratio, 4),
        "flop_ratio_ceiling": round(1 / flop_ratio, 4),
        "speedup_over_flop_ratio": round(flop_ratio / time_ratio, 4),
        "memory_saving": round(1 - memory_ratio, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="dinov2-s,dinov2-b")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {MODES}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_speed"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        size, method, mode = args.child.split(":")
        opts = dict(steps=args.steps, warmup=args.warmup, batch=args.batch, crop=args.crop)
        print(json.dumps(measure(size, method, mode, device=args.device, **opts)))
        return 0
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {MODES}")
    configs = [(size, method, mode) for size in sizes for mode in modes for method in METHODS]
    runs: dict[tuple[str, str, str], list[dict]] = {c: [] for c in configs}
    for round_index in range(args.rounds):
        for config in configs:
            r = _child(args, *config)
            runs[config].append(r)
            print(f"round {round_index + 1}/{args.rounds}  {':'.join(config):34} "
                  f"{r['seconds_per_step']:.2f} s/step  {r['peak_memory_mib']:.0f} MiB  "
                  f"{r['gflops_per_step']:.0f} GFLOPs", flush=True)  # fmt: skip
    results = [_merge(runs[c]) for c in configs]
    ratios = {f"{size}/{mode}": ratios_for(results, size, mode) for size in sizes for mode in modes}
    report = {
        "setup": {
            "device": args.device, "threads": args.threads, "batch": args.batch, "crop": args.crop,
            "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
            "torch": torch.__version__, "machine": platform.machine(),
            "task": "seg, 150 classes, the paper's layers per size (S/B: k=3 n=4 s=2)",
        },
        "results": results,
        "ratios": ratios,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
