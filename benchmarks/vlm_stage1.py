"""Stage-1 step time and peak memory: `vitsplit` vs `mlp2x_gelu` connector, side by side.

    python benchmarks/vlm_stage1.py                       # tiny playground models, CPU
    python benchmarks/vlm_stage1.py --llm /models/vicuna-7b-v1.5 \
        --vision /models/clip-vit-large-patch14-336 --batch-size 8   # real sizes on a GPU

Each connector runs in its own child process (so peak memory is that connector's alone:
`ru_maxrss` of the child on CPU, `torch.cuda.max_memory_allocated` on GPU); the children
alternate (A B A B ...) for `--repeats` rounds and the medians are compared. Stage 1 as in
training: frozen tower and LLM, only the connector gets gradients and AdamW steps, real batches
from the playground pretrain set through the project's dataset and collator.
Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONNECTORS = ("vitsplit", "mlp2x_gelu")


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from vitsplit_vlm.vlm.builder import build_vlm
    from vitsplit_vlm.vlm.conversation import get_template
    from vitsplit_vlm.vlm.data import DataCollator, LazySupervisedDataset

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    built = build_vlm(
        model_name_or_path=args.llm,
        vision_tower=args.vision,
        mm_projector_type=args.child,
        dtype=dtype,
    )
    model = built.model.to(device)
    model.requires_grad_(False)
    model.connector.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    data = LazySupervisedDataset(
        args.data,
        args.images,
        built.tokenizer,
        built.image_processor,
        get_template("plain"),
        model_max_length=512,
        num_image_tokens=model.config.image_seq_length,
        image_token_id=model.config.image_token_id,
    )
    collate = DataCollator(built.tokenizer.pad_token_id, 512)
    batches = [
        collate([data[(i * args.batch_size + j) % len(data)] for j in range(args.batch_size)])
        for i in range(args.warmup + args.steps)
    ]
    times = []
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {
        "connector": args.child,
        "trainable": sum(p.numel() for p in params),
        "median_step_s": statistics.median(times),
        "step_s": times,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype),
    }


def run_child(argv: list[str]) -> tuple[dict, float]:
    """Run one child; return its JSON and its own peak RSS in MiB."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": argv[argv.index("--threads") + 1]},
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(argv)}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="playground/tiny/llama-chat")
    parser.add_argument("--vision", default="playground/tiny/clip-vit")
    parser.add_argument("--data", default="playground/data/shapes/pretrain.json")
    parser.add_argument("--images", default="playground/data/shapes/images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vlm_stage1.json"))
    parser.add_argument("--child", choices=CONNECTORS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    base = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("child", "out", "repeats", "threads")
    ] + ["--threads", str(args.threads)]
    runs: dict[str, list] = {c: [] for c in CONNECTORS}
    for _ in range(args.repeats):
        for name in CONNECTORS:  # alternate so drift hits both alike
            result, rss = run_child([*base, "--child", name])
            runs[name].append({**result, "peak_rss_mib": rss})
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "trainable": rs[0]["trainable"],
            "median_step_s": statistics.median(r["median_step_s"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "peak_cuda_gib": rs[0]["peak_cuda_gib"],
        }
    a, b = summary["vitsplit"], summary["mlp2x_gelu"]
    report = {
        "benchmark": "stage-1 step (connector trains; tower + LLM frozen)",
        "llm": args.llm,
        "vision": args.vision,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": runs["vitsplit"][0]["device"],
        "dtype": runs["vitsplit"][0]["dtype"],
        "connectors": summary,
        "ratio_vitsplit_over_mlp": {
            "step_time": a["median_step_s"] / b["median_step_s"],
            "trainable": a["trainable"] / b["trainable"],
            "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"],
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("connectors", "ratio_vitsplit_over_mlp")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
