"""Stage-1 step time and peak memory, side by side: `vitsplit` vs `mlp2x_gelu` connector, or
(``--compare logits``) the LM head on the supervised positions only vs on all positions.

    python benchmarks/vlm_stage1.py                       # tiny playground models, CPU
    python benchmarks/vlm_stage1.py --compare logits      # --supervised_logits_only True/False
    python benchmarks/vlm_stage1.py --llm /models/vicuna-7b-v1.5 \
        --vision /models/clip-vit-large-patch14-336 --data /data/blip_laion_cc_sbu_558k.json \
        --images /data/LLaVA-Pretrain/images --batch-size 8   # real sizes on a GPU

Each measurement is the shipped training run itself: ``python -m vitsplit_vlm.vlm.train`` with
stage 1's flags (`vitsplit_vlm.playground.recipes`, as `scripts/pretrain.sh`: DeepSpeed ZeRO-2,
frozen tower and LLM, the connector trains) for `--warmup + --steps` optimizer steps, in a child
process of its own (so peak memory is that connector's alone: `ru_maxrss` of the child on CPU,
`torch.cuda.max_memory_allocated` from its `train_summary.json` on GPU). Step times are the
trainer's own (`step_seconds` in `train_summary.json`), the first `--warmup` dropped. Children
alternate (A B A B ...) for `--repeats` rounds; medians are compared. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# what each side of a comparison overrides in stage 1's flags; the first is "a", the second "b"
COMPARISONS = {
    "connectors": {
        "vitsplit": {"mm_projector_type": "vitsplit"},
        "mlp2x_gelu": {"mm_projector_type": "mlp2x_gelu"},
    },
    "logits": {
        "supervised": {"mm_projector_type": "vitsplit", "supervised_logits_only": True},
        "all": {"mm_projector_type": "vitsplit", "supervised_logits_only": False},
    },
}
REPO = Path(__file__).resolve().parents[1]


def train_argv(args: argparse.Namespace, variant: dict, out: Path) -> list[str]:
    from vitsplit_vlm.playground.recipes import stage_argv

    overrides = dict(
        **variant,
        output_dir=out,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        save_strategy="no",
        logging_steps=args.warmup + args.steps,
        deepspeed=REPO / "scripts" / "zero2.json",
        cache_features=None,  # the step with the tower, as on images read from disk
    )
    given = {
        "model_name_or_path": args.llm,
        "vision_tower": args.vision,
        "data_path": args.data,
        "image_folder": args.images,
    }
    overrides.update({flag: value for flag, value in given.items() if value is not None})
    return [sys.executable, "-m", "vitsplit_vlm.vlm.train", *stage_argv("pretrain", **overrides)]


def run_child(args: argparse.Namespace, name: str) -> dict:
    """One training run; its summary's step times, trainable count and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DS_ACCELERATOR": "cpu"}
        if _cuda():
            env.pop("DS_ACCELERATOR")
        log = Path(tmp) / "train.log"
        with open(log, "w") as stderr:
            proc = subprocess.Popen(
                train_argv(args, COMPARISONS[args.compare][name], out),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
        if status != 0:
            raise SystemExit(f"training failed ({name}):\n{log.read_text()[-3000:]}")
        summary = json.loads((out / "train_summary.json").read_text())
    times = summary["step_seconds"][args.warmup :]
    return {
        "variant": name,
        "trainable": summary["trainable"]["connector"],
        "median_step_s": statistics.median(times),
        "step_s": times,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "peak_cuda_gib": summary["peak_cuda_memory_gib"],
        "precision": summary["precision"],
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", help="LLM folder (default: the playground's tiny Llama)")
    parser.add_argument("--vision", help="vision tower folder (default: the tiny CLIP)")
    parser.add_argument("--data", help="stage-1 data JSON (default: the playground's)")
    parser.add_argument("--images", help="image folder (default: the playground's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", choices=list(COMPARISONS), default="connectors")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vlm_stage1.json")
    args = parser.parse_args(argv)
    if args.llm is None:
        from vitsplit_vlm.playground.recipes import prepare

        os.chdir(REPO)  # the playground lives in the repository
        prepare(progress=False)
    names = list(COMPARISONS[args.compare])
    runs: dict[str, list] = {name: [] for name in names}
    for round_index in range(args.repeats):
        for name in names:  # alternate so drift hits both alike
            runs[name].append(run_child(args, name))
            print(f"round {round_index + 1}/{args.repeats} {name}: "
                  f"{runs[name][-1]['median_step_s']:.4f} s/step", flush=True)  # fmt: skip
    summary = {}
    for name, rs in runs.items():
        rss = [r["peak_rss_mib"] for r in rs if r["peak_rss_mib"] is not None]
        summary[name] = {
            "trainable": rs[0]["trainable"],
            "median_step_s": statistics.median(r["median_step_s"] for r in rs),
            "peak_rss_mib": statistics.median(rss) if rss else None,
            "peak_cuda_gib": rs[0]["peak_cuda_gib"],
        }
    a, b = (summary[name] for name in names)
    ratio = {
        "step_time": a["median_step_s"] / b["median_step_s"],
        "trainable": a["trainable"] / b["trainable"],
        "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"] if a["peak_rss_mib"] else None,
    }
    report = {
        "benchmark": "stage-1 training step (python -m vitsplit_vlm.vlm.train, ZeRO-2)",
        "compare": args.compare,
        "llm": args.llm or "playground tiny llama-chat",
        "vision": args.vision or "playground tiny clip-vit",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": args.threads,
        "precision": runs[names[0]][0]["precision"],
        args.compare: summary,
        f"ratio_{names[0]}_over_{names[1]}": ratio,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in (args.compare, f"ratio_{names[0]}_over_{names[1]}")},
                     indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
