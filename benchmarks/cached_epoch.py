"""A training epoch on cached frozen-trunk features vs the same epoch computing them.

Two measurements, each alternating uncached / cached runs for ``--rounds`` rounds (medians):

- ``vlm``: stage 1 as ``scripts/pretrain.sh`` runs it (``python -m vitsplit_vlm.vlm.train``,
  DeepSpeed ZeRO-2, connector only) for one epoch over a shapes set, without and with
  ``--cache_features``; the epoch time is the trainer's ``train_runtime`` (data loading
  included; the one-off cache build happens before it and is reported on its own).
- ``dense``: ``engine.train`` (what ``dense train`` runs) for one epoch of the playground ADE20K
  set with ``--no-augment``'s fixed pipeline, without and with `cache_dense_dataset`.

Both report every logged loss of both runs and their largest difference (fp32: the cache must
not change training). ``--quick`` uses the tiny trunks (seconds); the default uses the tiny VLM
(the playground default) and an architecture-sized DINOv2 (random weights, ``--dense-trunk``,
default DINOv2-B) on ``--dense-side`` crops (default 512, the paper's ADE20K crop, padded to 518 =
37 patches as ``dense train`` pads it), where the frozen trunk is most of an uncached step as at
real scale. ``--dense-methods`` picks the frozen-trunk methods timed (ViT-Split, linear probe).

    python benchmarks/cached_epoch.py --out benchmarks/results/cached_epoch.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- VLM


def vlm_argv(tiny, data, out: Path, args, cache: Path | None) -> list[str]:
    flags = [
        "--model_name_or_path", tiny.llama, "--vision_tower", tiny.clip,
        "--data_path", data.pretrain, "--image_folder", data.image_folder, "--output_dir", out,
        "--version", "plain", "--tune_mm_mlp_adapter", "True",
        "--deepspeed", REPO / "scripts" / "zero2.json", "--mm_projector_type", "vitsplit",
        "--per_device_train_batch_size", args.vlm_batch, "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--model_max_length", "256", "--seed", "0",
        "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if cache is not None:
        flags += ["--cache_features", cache]
    return [sys.executable, "-m", "vitsplit_vlm.vlm.train", *map(str, flags)]


def vlm_run(tiny, data, folder: Path, args, cache: Path | None) -> dict:
    out = folder / f"run-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if _cuda():
        env.pop("DS_ACCELERATOR")
    proc = subprocess.run(vlm_argv(tiny, data, out, args, cache), env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    built = [line for line in proc.stdout.splitlines() if "computed" in line and "cache" in line]
    return {
        "epoch_s": summary["train_runtime_s"],
        "wall_s": summary["wall_s"],
        "steps": summary["steps"],
        "losses": summary["first_losses"] + summary["last_losses"],
        "cache_build": built[0] if built else None,
        "peak_cuda_memory_gib": summary["peak_cuda_memory_gib"],
        "precision": summary["precision"],
    }


def vlm_case(args, folder: Path) -> dict:
    from vitsplit_vlm.playground.shapes import write_llava_dataset
    from vitsplit_vlm.playground.tiny import make_tiny

    tiny = make_tiny(folder / "tiny")
    data = write_llava_dataset(folder / "shapes", num_train=args.vlm_images, num_heldout=0,
                               image_size=112, seed=0)  # fmt: skip
    cache = folder / "vlm-cache"
    build = vlm_run(tiny, data, folder, args, cache)  # the first cached run builds the cache
    measured = _alternate(lambda: vlm_run(tiny, data, folder, args, None),
                          lambda: vlm_run(tiny, data, folder, args, cache), args.rounds,
                          {"images": args.vlm_images, "batch": args.vlm_batch,
                           "models": "playground tiny CLIP (112 px) + tiny Llama, ZeRO-2 stage 1",
                           "build_run": build})  # fmt: skip
    return {"vitsplit": measured}


# --------------------------------------------------------------------------- dense


def dense_case(args, folder: Path) -> dict:
    import torch
    from transformers import AutoModel

    from vitsplit_vlm.core.presets import backbone_config
    from vitsplit_vlm.dense import transforms as T
    from vitsplit_vlm.dense.datasets import ADE20K
    from vitsplit_vlm.dense.engine import TrainConfig, train
    from vitsplit_vlm.dense.feature_cache import cache_dense_dataset, fixed_pipeline
    from vitsplit_vlm.dense.model import DenseModel, DenseSpec
    from vitsplit_vlm.playground.dense_sets import write_dense_sets

    sets = write_dense_sets(folder / "dense", num_train=args.dense_images, num_val=1)
    if args.quick:
        from vitsplit_vlm.playground.tiny import make_tiny

        trunk, side, name = (
            AutoModel.from_pretrained(make_tiny(folder / "tiny").dinov2),
            112,
            "tiny DINOv2",
        )
    else:
        torch.manual_seed(0)
        trunk, side, name = (
            AutoModel.from_config(backbone_config(args.dense_trunk)),
            args.dense_side,
            f"DINOv2-{args.dense_trunk.rsplit('-', 1)[-1].upper()} (random)",
        )
    pad = T.PadToMultiple(trunk.config.patch_size)  # as `recipes.build_dataset` pads training
    steps = [*fixed_pipeline(T.seg_train_pipeline((side, side), (side, side))), pad]
    data = ADE20K(sets.ade, "train", num_classes=150, transforms=steps)
    cfg = TrainConfig(iters=len(data) // args.dense_batch, batch_size=args.dense_batch, lr=1e-3,
                      schedule="constant", log_every=1)  # fmt: skip
    out = {}
    for method in args.dense_methods.split(","):
        spec = DenseSpec(task="seg", method=method, num_classes=150)
        layers = DenseModel(trunk, spec).required_layers
        started = time.perf_counter()
        cached = cache_dense_dataset(data, trunk, layers, folder / f"cache-{method}", log=None)
        build_s = time.perf_counter() - started

        def run(dataset, spec=spec) -> dict:
            torch.manual_seed(0)
            result = train(DenseModel(trunk, spec), dataset, cfg, log=None)
            return {"epoch_s": result.seconds, "steps": result.steps,
                    "losses": [h["loss"] for h in result.history]}  # fmt: skip

        print(f" {method}:", flush=True)
        out[method] = _alternate(
            lambda: run(data), lambda cached=cached: run(cached), args.rounds,
            {"images": len(data), "batch": args.dense_batch, "crop": side,
             "input": side + -side % pad.multiple, "trunk": name,
             "method": method, "layers": list(layers), "cache_build_s": round(build_s, 2),
             "pipeline": [type(t).__name__ for t in steps]},
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------- shared


def _alternate(uncached, cached, rounds: int, setup: dict) -> dict:
    """Uncached / cached runs in alternating rounds; medians, ratio, loss agreement."""
    runs: dict[str, list[dict]] = {"uncached": [], "cached": []}
    for index in range(rounds):
        for name, fn in (("uncached", uncached), ("cached", cached)):
            runs[name].append(fn())
            print(f"  round {index + 1}/{rounds} {name}: {runs[name][-1]['epoch_s']:.2f} s/epoch",
                  flush=True)  # fmt: skip
    medians = {name: statistics.median(r["epoch_s"] for r in rs) for name, rs in runs.items()}
    print(f"  -> {medians['uncached'] / medians['cached']:.2f}x", flush=True)
    loss_diff = max(abs(a - b) for a, b in zip(runs["uncached"][0]["losses"],
                                               runs["cached"][0]["losses"], strict=True))  # fmt: skip
    return {
        "setup": setup,
        "epoch_s_median": medians,
        "speedup": round(medians["uncached"] / medians["cached"], 4),
        "max_loss_difference": loss_diff,
        "runs": runs,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny trunks only")
    parser.add_argument("--cases", default="vlm,dense", help="subset of vlm,dense")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vlm-images", type=int, default=128)
    parser.add_argument("--vlm-batch", type=int, default=32)
    parser.add_argument("--dense-images", type=int, default=8)
    parser.add_argument("--dense-batch", type=int, default=2)
    parser.add_argument("--dense-trunk", default="dinov2-b", help="dinov2-s, -b, -l or -g")
    parser.add_argument(
        "--dense-side",
        type=int,
        default=512,
        help="crop side in pixels (padded to a multiple of the patch size, as dense train does)",
    )
    parser.add_argument("--dense-methods", default="vitsplit,linear",
                        help="frozen-trunk methods to time, of vitsplit,linear")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cached_epoch.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cases = {"vlm": vlm_case, "dense": dense_case}
    report = {"setup": {"quick": args.quick, "rounds": args.rounds, "threads": args.threads}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            print(f"cached epoch, {name}:", flush=True)
            report[name] = cases[name](args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
