"""Training step time, peak memory and FLOPs: ViT-Split vs full fine-tuning (paper Tab. 14 idea).

For each backbone size (DINOv2-S / -B by default, random weights built from the public
architectures) and each method (``vitsplit`` k=3 n=4 s=2, ``full``), one subprocess builds the
segmentation model (150 classes, the paper's linear head) and times training steps (forward,
backward, AdamW step) on a batch of 512x512 crops (padded to 518 = 37 patches, as the official
CenterPadding does). Separate processes keep each peak-memory reading its own: CUDA reports
``max_memory_allocated``, CPU the process's peak resident set size above what the imports alone
took (weights, activations, gradients and optimizer state, plus allocator slack).

FLOPs of one training step come from ``torch.utils.flop_counter.FlopCounterMode`` plus the
deformable convolutions it cannot see (counted as a dense 3x3 conv: 2 * Cin * Cout * 9 * h * w
forward, twice that backward).

    python benchmarks/dense_speed.py --out benchmarks/results/dense_speed  # JSON + PNG
    python benchmarks/dense_speed.py --sizes dinov2-s --steps 2 --device cpu --threads 2
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


def _deform_flops(model, pixels) -> int:
    """Forward FLOPs of every `DeformConv2d` (hooks), for one forward pass."""
    from torchvision.ops import DeformConv2d

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        h, w = output.shape[-2:]
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * module.in_channels * module.out_channels * k * h * w * output.shape[0]

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DeformConv2d)
    ]
    import torch

    with torch.no_grad():
        model(pixels)
    for handle in handles:
        handle.remove()
    return total


def measure(
    size: str, method: str, *, steps: int, warmup: int, batch: int, crop: int, device: str
) -> dict:
    """One configuration in this process: seconds per step, peak memory, FLOPs per step."""
    import torch
    from transformers import AutoModel

    from vitsplit_vlm.core.presets import backbone_config
    from vitsplit_vlm.dense.engine import TrainConfig, build_optimizer
    from vitsplit_vlm.dense.losses import seg_loss
    from vitsplit_vlm.dense.model import DenseModel, DenseSpec, count_parameters
    from vitsplit_vlm.dense.transforms import pad_to_multiple

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports only
    torch.manual_seed(0)
    trunk = AutoModel.from_config(backbone_config(size)).to(device)
    model = (
        DenseModel(trunk, DenseSpec(task="seg", method=method, num_classes=150)).to(device).train()
    )
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4))
    pixels = pad_to_multiple(torch.randn(batch, 3, crop, crop, device=device), model.patch_size)
    labels = torch.randint(0, 150, (batch, *pixels.shape[-2:]), device=device)

    def step():
        loss = seg_loss(model(pixels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

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
        memory_kind = "peak RSS above the imports"
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    deform = _deform_flops(model, pixels) * 3  # forward + backward (2x)
    return {
        "size": size,
        "method": method,
        "seconds_per_step": statistics.median(times),
        "step_times": times,
        "peak_memory_mib": round(peak_mib, 1),
        "memory_kind": memory_kind,
        "gflops_per_step": round((counter.get_total_flops() + deform) / 1e9, 1),
        "trainable_params": count_parameters(model)["total"],
    }


def _child(args: argparse.Namespace, size: str, method: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", f"{size}:{method}", "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--batch", str(args.batch), "--crop", str(args.crop),
        "--device", args.device, "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{size}/{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in results}, key=[r["size"] for r in results].index)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(
        axes,
        ("seconds_per_step", "peak_memory_mib", "gflops_per_step"),
        ("s / training step", f"peak memory (MiB, {results[0]['memory_kind']})", "GFLOPs / step"),
        strict=True,
    ):
        for j, method in enumerate(METHODS):
            values = [
                next(r[key] for r in results if r["size"] == s and r["method"] == method)
                for s in sizes
            ]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
            ax.bar(xs, values, width=0.38, label=method)
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="dinov2-s,dinov2-b")
    parser.add_argument("--steps", type=int, default=3)
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
        size, method = args.child.split(":")
        opts = dict(steps=args.steps, warmup=args.warmup, batch=args.batch, crop=args.crop)
        print(json.dumps(measure(size, method, device=args.device, **opts)))
        return 0
    results = []
    for size in args.sizes.split(","):
        for method in METHODS:
            results.append(_child(args, size, method))
            r = results[-1]
            print(f"{size:9} {method:8} {r['seconds_per_step']:.2f} s/step  "
                  f"{r['peak_memory_mib']:.0f} MiB  {r['gflops_per_step']:.0f} GFLOPs")  # fmt: skip
    ratios = {}
    for size in args.sizes.split(","):
        by = {r["method"]: r for r in results if r["size"] == size}
        ratios[size] = {
            "time_vitsplit_over_full": by["vitsplit"]["seconds_per_step"]
            / by["full"]["seconds_per_step"],
            "memory_vitsplit_over_full": by["vitsplit"]["peak_memory_mib"]
            / by["full"]["peak_memory_mib"],
            "flops_vitsplit_over_full": by["vitsplit"]["gflops_per_step"]
            / by["full"]["gflops_per_step"],
        }
    report = {
        "setup": {
            "device": args.device, "threads": args.threads, "batch": args.batch, "crop": args.crop,
            "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
            "machine": platform.machine(), "task": "seg, 150 classes, k=3 n=4 s=2",
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
