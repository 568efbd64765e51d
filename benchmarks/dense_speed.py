"""Training step time, peak memory and FLOPs: ViT-Split vs full fine-tuning (paper Tab. 14 idea).

``--tasks seg,depth,det --precisions bf16,fp32`` extend the segmentation measurement below to the
other tasks (the task's paper input shape and head: depth 416x544 crops and `DepthHead`, det
1024x1024 images with 8 instances each and Mask R-CNN) and to autocast precisions (the engine's
`Runtime`: bf16 casts the frozen trunk); `benchmarks/gpu_check.py` runs them on a GPU.

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

METHODS = ("vitsplit", "full")  # the default pair; --methods adds these:
ALL_METHODS = ("vitsplit", "full", "linear", "vitsplit-cached")
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
        model.features(pixels)  # the deformable convolutions are the adapter's, not the head's
    for handle in handles:
        handle.remove()
    return total


TASK_CLASSES = {"seg": 150, "depth": None, "det": 80}  # ADE20K, NYU, COCO


def paper_shape(task: str) -> tuple[int, int]:
    """(H, W) of a training input in the task's paper recipe (seg / depth crop, det scale)."""
    from vitsplit_vlm.dense.tasks import get_task

    preset = get_task(task).presets["real"]
    return tuple(getattr(preset, "crop_size", None) or preset.scale)


def synthetic_batch(task: str, batch: int, shape: tuple[int, int], patch: int, device: str):
    """A random training `Batch` of `task` at `shape` (padded to the patch size): seg labels,
    depths in metres, or 8 boxes with masks per image."""
    import torch

    from vitsplit_vlm.dense.datasets import Batch
    from vitsplit_vlm.dense.transforms import pad_to_multiple

    pixels = pad_to_multiple(torch.randn(batch, 3, *shape, device=device), patch)
    size = tuple(pixels.shape[-2:])
    seg = depth = targets = None
    if task == "seg":
        seg = torch.randint(0, TASK_CLASSES["seg"], (batch, *size), device=device)
    elif task == "depth":
        depth = torch.rand(batch, 1, *size, device=device) * 9.5 + 0.5
    else:
        targets = [_instances(size, device) for _ in range(batch)]
        return Batch(list(pixels), None, None, targets, [{}] * batch, [])
    return Batch(pixels, seg=seg, depth=depth, targets=targets, metas=[{}] * batch, skipped=[])


def _instances(size: tuple[int, int], device: str, count: int = 8) -> dict:
    import torch

    h, w = size
    xy = torch.rand(count, 2, device=device) * torch.tensor([w * 0.7, h * 0.7], device=device)
    wh = torch.rand(count, 2, device=device) * torch.tensor([w * 0.3, h * 0.3], device=device) + 8
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = torch.zeros(count, h, w, dtype=torch.uint8, device=device)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    labels = torch.randint(1, TASK_CLASSES["det"] + 1, (count,), device=device)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def measure(
    size: str,
    method: str,
    mode: str,
    *,
    steps: int,
    warmup: int,
    batch: int,
    crop: int | None,
    device: str,
    task: str = "seg",
    precision: str = "fp32",
    flops: bool = True,
) -> dict:
    """One configuration in this process: seconds per step, peak memory, FLOPs per step."""
    import torch
    from transformers import AutoModel

    from vitsplit_vlm.core.presets import backbone_config
    from vitsplit_vlm.dense.engine import TrainConfig, start_training, train_step
    from vitsplit_vlm.dense.model import DenseModel, count_parameters
    from vitsplit_vlm.dense.recipes import dense_spec
    from vitsplit_vlm.dense.runtime import Runtime, set_tf32
    from vitsplit_vlm.dense.tasks import get_task

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports only
    torch.manual_seed(0)
    trunk = AutoModel.from_config(backbone_config(size)).to(device)
    dense_task = get_task(task)
    cached = method == "vitsplit-cached"  # ViT-Split on cached trunk features (--cache-features)
    spec, _ = dense_spec(dense_task, "vitsplit" if cached else method, trunk.config,
                         dense_task.presets["real"], num_classes=TASK_CLASSES[task])  # fmt: skip
    model = DenseModel(trunk, spec).to(device)
    config = TrainConfig(lr=1e-4, checkpoint_head=mode == "checkpoint-head")
    cuda = device.startswith("cuda")
    if cuda:
        set_tf32(True)  # as dense train on CUDA (--tf32, the default)
    runtime = Runtime(torch.device(device), precision, channels_last=cuda)
    state = start_training(model, config, runtime)  # device, precision, AdamW, schedule
    shape = (crop, crop) if crop else paper_shape(task)
    data = synthetic_batch(task, batch, shape, model.patch_size, device)
    if cached:  # what a --cache-features batch holds: the hidden states, read back
        from dataclasses import replace

        from vitsplit_vlm.core.feature_cache import FrozenHidden

        hidden = {i: h.clone() for i, h in model.frozen_hidden(data.images).items()}
        data = replace(data, images=FrozenHidden(hidden, tuple(data.images.shape)))

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
    record = {
        "size": size, "method": method, "mode": mode, "task": task, "precision": precision,
        "batch": batch, "input_hw": list(data.images.shape[-2:] if cached else data.images[0].shape[-2:]),
        "seconds_per_step": statistics.median(times), "step_times": times,
        "images_per_second": batch / statistics.median(times),
        "peak_memory_mib": round(peak_mib, 1), "memory_kind": memory_kind,
        "trainable_params": count_parameters(model)["total"],
        "split": spec.split.to_dict() if spec.split is not None else None,
    }  # fmt: skip
    if flops:
        record["gflops_per_step"] = round(_step_flops(model, state, data, step) / 1e9, 1)
    return record


def _step_flops(model, state, data, step) -> float:
    """FLOPs of one training step (the counter + the deformable convolutions it cannot see)."""
    import torch
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
    pixels = torch.stack(data.images) if isinstance(data.images, list) else data.images
    with state.runtime.autocast():
        deform = _deform_flops(model, pixels) * 3  # forward + backward (2x)
    return counter.get_total_flops() + deform


Config = tuple[str, str, str, str, str]  # (size, method, mode, task, precision)


def _child(args: argparse.Namespace, config: Config) -> dict:
    cmd = [
        sys.executable, __file__, "--child", ":".join(config), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--batch", str(args.batch), "--device", args.device,
        "--threads", str(args.threads),
        *(["--crop", str(args.crop)] if args.crop else []), *([] if args.flops else ["--no-flops"]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{'/'.join(config)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_configs(args: argparse.Namespace, groups: list[tuple[str, str, str, str]]) -> list[dict]:
    """Both methods of every (size, mode, task, precision) group, each in its own process, in
    `args.rounds` alternating rounds; one merged record per configuration."""
    configs = [(size, method, mode, task, prec) for size, mode, task, prec in groups
               for method in getattr(args, "methods", METHODS)]  # fmt: skip
    runs: dict[Config, list[dict]] = {c: [] for c in configs}
    for round_index in range(args.rounds):
        for config in configs:
            r = _child(args, config)
            runs[config].append(r)
            flops = f"  {r['gflops_per_step']:.0f} GFLOPs" if "gflops_per_step" in r else ""
            print(f"round {round_index + 1}/{args.rounds}  {':'.join(config):44} "
                  f"{r['seconds_per_step']:.3f} s/step  {r['images_per_second']:.1f} img/s  "
                  f"{r['peak_memory_mib']:.0f} MiB{flops}", flush=True)  # fmt: skip
    return [_merge(runs[c]) for c in configs]


def _merge(runs: list[dict]) -> dict:
    """One configuration's rounds -> one record.

    Time: the lowest of the rounds' median step times (as `timeit` advises, the least disturbed
    estimate when other work shares the machine); every step time is kept. Memory: the highest.
    """
    merged = dict(runs[0])
    merged["round_medians"] = [statistics.median(r["step_times"]) for r in runs]
    merged["step_times"] = [t for r in runs for t in r["step_times"]]
    merged["seconds_per_step"] = min(merged["round_medians"])
    merged["images_per_second"] = merged["batch"] / merged["seconds_per_step"]
    merged["peak_memory_per_round"] = [r["peak_memory_mib"] for r in runs]
    merged["peak_memory_mib"] = max(merged["peak_memory_per_round"])
    return merged


def plot(results: list[dict], path: Path) -> None:
    """Bars per (size, mode) for the two methods: step time, peak memory, FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(_group(r) for r in results))
    panels = [
        ("seconds_per_step", "s / training step"),
        ("peak_memory_mib", f"peak memory, MiB ({results[0]['memory_kind']})"),
        ("gflops_per_step", "GFLOPs / training step"),
    ]
    panels = [p for p in panels if all(p[0] in r for r in results)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(4.2, 0.9 * len(groups)) * len(panels), 3.8)
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        methods = list(dict.fromkeys(r["method"] for r in results))
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            values = [_find(results, size, method, mode, task, prec)[key]
                      for size, mode, task, prec in groups]  # fmt: skip
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, values, width=width, label=method)
        labels = ["\n".join(v for v in g if v not in ("seg", "fp32", "default")) for g in groups]
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _group(r: dict) -> tuple[str, str, str, str]:
    return r["size"], r["mode"], r.get("task", "seg"), r.get("precision", "fp32")


def _find(
    results: list[dict], size: str, method: str, mode: str, task: str = "seg",
    precision: str = "fp32",
) -> dict:  # fmt: skip
    want = (size, mode, task, precision)
    return next(r for r in results if _group(r) == want and r["method"] == method)


def ratios_for(
    results: list[dict], size: str, mode: str, task: str = "seg", precision: str = "fp32"
) -> dict:
    """ViT-Split over full fine-tuning: time, memory (and FLOPs when counted)."""
    vit = _find(results, size, "vitsplit", mode, task, precision)
    full = _find(results, size, "full", mode, task, precision)
    time_ratio = vit["seconds_per_step"] / full["seconds_per_step"]
    memory_ratio = vit["peak_memory_mib"] / full["peak_memory_mib"]
    out = {
        "time_vitsplit_over_full": round(time_ratio, 4),
        "memory_vitsplit_over_full": round(memory_ratio, 4),
        "speedup": round(1 / time_ratio, 4),
        "images_per_second_vitsplit_full": [
            round(vit["images_per_second"], 2),
            round(full["images_per_second"], 2),
        ],  # fmt: skip
        "memory_saving": round(1 - memory_ratio, 4),
    }
    for other in ("linear", "vitsplit-cached"):  # when measured: their speedup over full
        if any(
            r["method"] == other and _group(r) == (size, mode, task, precision) for r in results
        ):
            mine = _find(results, size, other, mode, task, precision)
            out[f"speedup_{other}_over_full"] = round(
                full["seconds_per_step"] / mine["seconds_per_step"], 4
            )
    if "gflops_per_step" in vit and "gflops_per_step" in full:
        flop_ratio = vit["gflops_per_step"] / full["gflops_per_step"]
        out["flops_vitsplit_over_full"] = round(flop_ratio, 4)
        out["flop_ratio_ceiling"] = round(1 / flop_ratio, 4)
        out["speedup_over_flop_ratio"] = round(flop_ratio / time_ratio, 4)
    return out


def ratio_key(size: str, mode: str, task: str, precision: str) -> str:
    return f"{task}/{size}/{precision}/{mode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="dinov2-s,dinov2-b")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {MODES}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=None,
                        help="square input side (default: the task's paper shape, seg 512)")  # fmt: skip
    parser.add_argument("--tasks", default="seg", help="subset of seg,depth,det")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"subset of {','.join(ALL_METHODS)} (vitsplit and full always)")  # fmt: skip
    parser.add_argument("--precisions", default="fp32", help="subset of fp32,bf16,fp16")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="skip counting FLOPs (one extra step per configuration)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_speed"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        size, method, mode, task, precision = args.child.split(":")
        opts = dict(steps=args.steps, warmup=args.warmup, batch=args.batch, crop=args.crop,
                    task=task, precision=precision, flops=args.flops)  # fmt: skip
        print(json.dumps(measure(size, method, mode, device=args.device, **opts)))
        return 0
    args.methods = list(dict.fromkeys([*METHODS, *args.methods.split(",")]))
    if unknown := set(args.methods) - set(ALL_METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {ALL_METHODS}")
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    tasks, precisions = args.tasks.split(","), args.precisions.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {MODES}")
    if unknown := set(tasks) - set(TASK_CLASSES):
        parser.error(f"--tasks: unknown {sorted(unknown)}; choose from {tuple(TASK_CLASSES)}")
    groups = [(size, mode, task, prec) for task in tasks for size in sizes for prec in precisions
              for mode in modes]  # fmt: skip
    results = run_configs(args, groups)
    ratios = {ratio_key(*g): ratios_for(results, *g) for g in groups}
    report = {
        "setup": {
            "device": args.device, "threads": args.threads, "batch": args.batch, "crop": args.crop,
            "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
            "torch": torch.__version__, "machine": platform.machine(),
            "tasks": "the paper's layers per task and size; seg 150 classes (512 crops), depth "
            "(416x544 crops), det 80 classes (1024x1024, 8 instances per image)",
            "precisions": precisions,
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
