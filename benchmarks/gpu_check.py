"""GPU check of dense training (run through ``bash benchmarks/gpu_check.sh``; refuses without CUDA).

1. ``environment``: GPU, compute capability, bf16 support, library versions.
2. ``smoke``: ``vitsplit-vlm dense train`` itself on the GPU (``--device cuda``) for seg, depth and
   det in bf16 and fp16, on small generated playground sets and the tiny DINOv2 (built in a
   temporary folder): losses finite, evaluation metrics written, the frozen trunk run in half
   precision, TF32, channels-last, the CUDA ``deform_conv2d`` and the fp16 gradient scaler used.
3. ``speed``: `dense_speed.py`'s measurement (the engine's own `train_step` on synthetic batches at
   the paper's input shapes, each configuration in its own process) for DINOv2-S/B (random
   weights, `vitsplit_vlm.core.presets.BACKBONES`) x seg / depth / det x bf16 / fp32 x ViT-Split /
   full fine-tuning, batch 2 per GPU (the paper's 16 over 8 GPUs): step time, images/s,
   ``max_memory_allocated`` and the ViT-Split / full fine-tuning ratios.

Writes ``benchmarks/results/gpu_check.json`` (everything), ``gpu_check.md`` (the tables) and
``gpu_check.png``. Default: 200 timed steps after 20 warm-up steps per configuration, about 20
minutes on one H100/H200-class GPU (24 configurations of 10-60 s each, plus ~3 minutes of smoke
runs); ``--quick`` (DINOv2-S, 30 steps) takes about 5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import dense_speed  # noqa: E402  (the measurement this check reuses)

TASKS = ("seg", "depth", "det")
NO_GPU = (
    "gpu_check: no CUDA GPU is visible to this process (torch.cuda.is_available() is False); "
    "this check measures GPU training and refuses to run on CPU. On a GPU machine: "
    "bash benchmarks/gpu_check.sh"
)
SMOKE_SHAPES = {"seg": ["--crop-size", "112", "--scale", "448,112"], "depth": ["--crop-size", "112"],
                "det": ["--scale", "112,112", "--roi-batch", "64"]}  # fmt: skip


def environment() -> dict:
    import torch
    import torchvision

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name, "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(), "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "machine": platform.machine(),
    }  # fmt: skip


# --------------------------------------------------------------------------- smoke


def run_cli(args: Sequence[str], cwd: Path) -> None:
    """``python -m vitsplit_vlm *args`` in its own process; raises with its stderr on failure."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-m", "vitsplit_vlm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"vitsplit-vlm {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def smoke(
    workdir: Path,
    *,
    device: str = "cuda",
    precisions: Sequence[str] = ("bf16", "fp16"),
    iters: int = 20,
    backbone: Path | None = None,
    runner: Callable[[Sequence[str], Path], None] = run_cli,
) -> list[dict]:
    """``dense train`` per task and precision on generated sets (and the tiny DINOv2 unless
    `backbone` is given); one record per run."""
    from vitsplit_vlm.playground.dense_sets import write_dense_sets

    if backbone is None:
        from vitsplit_vlm.playground.tiny import make_tiny

        backbone = make_tiny(workdir / "tiny").dinov2
    sets = write_dense_sets(workdir / "data", num_train=8, num_val=4)
    records = []
    for task in TASKS:
        root = getattr(sets, {"seg": "ade", "depth": "nyu", "det": "coco"}[task])
        for precision in precisions:
            out = workdir / f"{task}-{precision}"
            args = ["dense", "train", "--task", task, "--backbone", str(backbone), "--data",
                    str(root), "--iters", str(iters), "--global-batch", "4", "--log-every", "1",
                    "--device", device, "--precision", precision, "--out", str(out),
                    *SMOKE_SHAPES[task]]  # fmt: skip
            start = time.perf_counter()
            runner(args, workdir)
            info = json.loads((out / "metrics.json").read_text())
            losses = [json.loads(line)["loss"] for line in
                      (out / "train_log.jsonl").read_text().splitlines()]  # fmt: skip
            records.append({
                "task": task, "precision": precision, "steps": info["steps"],
                "first_loss": losses[0], "last_loss": losses[-1],
                "finite": all(v == v and abs(v) != float("inf") for v in losses),
                "eval": {k: v for k, v in info["eval"].items() if isinstance(v, (int, float))},
                "runtime": info["runtime"], "seconds": round(time.perf_counter() - start, 1),
            })  # fmt: skip
    return records


# --------------------------------------------------------------------------- speed


def speed(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """`dense_speed.run_configs` over sizes x tasks x precisions (default memory mode)."""
    sizes = ["dinov2-s"] if args.quick else ["dinov2-s", "dinov2-b"]
    bench = argparse.Namespace(
        steps=args.steps, warmup=args.warmup, batch=args.batch, device="cuda", threads=4,
        rounds=1, crop=None, flops=False,
    )  # fmt: skip
    groups = [(size, "default", task, prec) for task in TASKS for size in sizes
              for prec in args.precisions]  # fmt: skip
    results = dense_speed.run_configs(bench, groups)
    ratios = {dense_speed.ratio_key(*g): dense_speed.ratios_for(results, *g) for g in groups}
    return results, ratios


def tables(report: dict) -> str:
    """Markdown: the environment, the smoke runs and the speed table."""
    env = report["environment"]
    lines = [f"# GPU check: {env['gpu']} (capability {env['capability']}, "
             f"{env['memory_gib']} GiB), torch {env['torch']}", ""]  # fmt: skip
    if report.get("smoke"):
        lines += ["| smoke run | steps | first -> last loss | finite | eval | s |",
                  "|---|---:|---|---|---|---:|"]  # fmt: skip
        for r in report["smoke"]:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in list(r["eval"].items())[:3])
            lines.append(f"| {r['task']} {r['precision']} | {r['steps']} | {r['first_loss']:.4g} "
                         f"-> {r['last_loss']:.4g} | {r['finite']} | {shown} | {r['seconds']} |")  # fmt: skip
        lines.append("")
    lines += ["| task | DINOv2 | precision | s/step ViT-Split / full | img/s ViT-Split / full | "
              "max_memory_allocated MiB ViT-Split / full | speed-up | memory saved |",
              "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    results = report.get("speed", [])
    for key, ratio in report.get("ratios", {}).items():
        task, size, precision, mode = key.split("/")
        vit = dense_speed._find(results, size, "vitsplit", mode, task, precision)
        full = dense_speed._find(results, size, "full", mode, task, precision)
        lines.append(
            f"| {task} | {size[-1].upper()} | {precision} | {vit['seconds_per_step']:.4f} / "
            f"{full['seconds_per_step']:.4f} | {vit['images_per_second']:.1f} / "
            f"{full['images_per_second']:.1f} | {vit['peak_memory_mib']:.0f} / "
            f"{full['peak_memory_mib']:.0f} | {ratio['speedup']:.2f}x | "
            f"{ratio['memory_saving']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2, help="images per step (one GPU)")
    parser.add_argument("--precisions", default="bf16,fp32", type=lambda s: s.split(","))
    parser.add_argument("--quick", action="store_true", help="DINOv2-S only, 30 steps")
    parser.add_argument("--skip-smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(f"gpu_check: {sys.executable} cannot import torch; run `make install` (the "
              ".venv this script prefers) or set PYTHON=/path/to/python", file=sys.stderr)  # fmt: skip
        return 3
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 3
    if args.quick:
        args.steps, args.warmup = 30, 5
    report: dict = {"environment": environment(), "settings": vars(args) | {"out": str(args.out)}}
    print(json.dumps(report["environment"]), flush=True)
    if not args.skip_smoke:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            report["smoke"] = smoke(Path(tmp), precisions=("bf16", "fp16"))
        print(json.dumps(report["smoke"], indent=1), flush=True)
    report["speed"], report["ratios"] = speed(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(tables(report))
    dense_speed.plot(report["speed"], args.out.with_suffix(".png"))
    print(tables(report))
    print(f"wrote {args.out.with_suffix('.json')}, .md and .png")
    bad = [r for r in report.get("smoke", []) if not r["finite"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
