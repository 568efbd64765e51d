"""Paper Tab. 6 on the playground: which trainable parts make ViT-Split learn.

Trains the same segmentation head on the playground ADE20K-layout set with every ablation of
paper Tab. 6 plus full fine-tuning, on the random tiny DINOv2 and on the briefly pretrained one
(``make-tiny --pretrain``), all with the same iterations, batch and learning rate, and reports
validation mIoU:

=============  ==============================================================
linear         frozen last layer + final norm -> head            (--method linear)
prior+head     prior head only                                   (--components prior)
task+head      task head only                                    (--components task)
prior+task     both, added without fusion                        (--components prior,task)
vitsplit       prior + task + fusion                             (default)
full           whole backbone fine-tuned + head on its last layer (--method full)
=============  ==============================================================

Measured (2026-11-29, seed 0, 600 steps, batch 8, lr 1e-3, poly; 2000 / 200 playground images;
validation mIoU; the task-head multiplier only affects task+head, prior+task and vitsplit;
pretrained = ``make-tiny --pretrain`` version 2):

==============  ============  ===============  ============  ===============
config          random, 1x    random, 0.1x     pretr., 1x    pretr., 0.1x
==============  ============  ===============  ============  ===============
linear          54.1          54.1             53.6          53.6
prior+head      88.8          88.8             90.1          90.1
task+head       65.3          58.7             66.9          56.2
prior+task      78.6          75.6             79.8          78.7
vitsplit        **91.2**      **91.3**         **92.7**      **91.3**
full            59.1          59.1             61.9          61.9
==============  ============  ===============  ============  ===============

Each run is one ``vitsplit-vlm dense train`` process (1 thread); ``--jobs`` run side by side.
Runs whose ``metrics.json`` already exists in the runs folder are reused (an interrupted table
resumes).

    python benchmarks/dense_learning.py --out benchmarks/results/dense_learning --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vitsplit_vlm.playground import paths

CONFIGS: dict[str, list[str]] = {
    "linear": ["--method", "linear"],
    "prior+head": ["--components", "prior"],
    "task+head": ["--components", "task"],
    "prior+task": ["--components", "prior,task"],
    "vitsplit": [],
    "full": ["--method", "full"],
}
BACKBONES = {"random": str(paths.TINY_DINOV2), "pretrained": str(paths.TINY / "dinov2-pretrained")}


def command(
    args: argparse.Namespace, backbone: str, config: str, seed: int, out: Path
) -> list[str]:
    data = ["--data", str(args.data)] if args.data else ["--preset", "playground"]
    return [
        sys.executable, "-m", "vitsplit_vlm.cli", "dense", "train", "--task", "seg", *data,
        "--backbone", getattr(args, backbone), "--out", str(out), "--iters", str(args.iters),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(seed),
        "--task-head-lr-mult", str(args.task_head_lr_mult), "--threads", "1",
        "--log-every", "100", *CONFIGS[config],
    ]  # fmt: skip


def _row(key: tuple, m: dict, minutes: float | None) -> dict:
    return {
        "backbone": key[0], "config": key[1], "seed": key[2],
        "mIoU": round(m["eval"]["mIoU"], 2), "aAcc": round(m["eval"]["aAcc"], 2),
        "trainable": m["params"]["total"], "last_loss": round(m["last_loss"], 4),
        "train_minutes": round(m["seconds"] / 60, 1),
        "minutes": round(minutes, 1) if minutes is not None else None,
    }  # fmt: skip


def table(results: list[dict]) -> dict[str, dict[str, float]]:
    """{backbone: {config: mean mIoU over seeds}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        out.setdefault(r["backbone"], {}).setdefault(r["config"], []).append(r["mIoU"])
    return {b: {c: round(sum(v) / len(v), 2) for c, v in cs.items()} for b, cs in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="random,pretrained")
    parser.add_argument("--random", default=BACKBONES["random"], help="random tiny DINOv2 folder")
    parser.add_argument("--pretrained", default=BACKBONES["pretrained"], help="pretrained one")
    parser.add_argument(
        "--data", type=Path, default=None, help="ADE20K-layout root (default: the playground's)"
    )
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--task-head-lr-mult",
        type=float,
        default=1.0,
        help="1 on the tiny trunks (at the paper's 0.1 their task head barely moves)",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_learning"))
    parser.add_argument("--runs", type=Path, default=None,
                        help="where the training runs go (default: OUT_runs next to OUT)")  # fmt: skip
    args = parser.parse_args(argv)
    runs_dir = args.runs or args.out.parent / (args.out.name + "_runs")
    queue = [
        (b, c, int(s))
        for b in args.backbones.split(",")
        for c in args.configs.split(",")
        for s in args.seeds.split(",")
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[tuple[tuple, subprocess.Popen, float]] = []
    results: list[dict] = []
    for key in list(queue):  # finished earlier (an interrupted table resumes)
        done = runs_dir / f"{key[0]}-{key[1]}-s{key[2]}" / "metrics.json"
        if done.is_file() and "eval" in json.loads(done.read_text()):
            queue.remove(key)
            results.append(_row(key, json.loads(done.read_text()), minutes=None))
            print(json.dumps(results[-1]), flush=True)
    while queue or running:
        while queue and len(running) < args.jobs:
            key = queue.pop(0)
            out = runs_dir / f"{key[0]}-{key[1]}-s{key[2]}"
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "stdout.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                command(args, *key, out), stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((key, proc, time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            key, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = runs_dir / f"{key[0]}-{key[1]}-s{key[2]}"
            if proc.returncode != 0:
                print(f"{key}: failed, see {out / 'stdout.log'}")
                continue
            m = json.loads((out / "metrics.json").read_text())
            results.append(_row(key, m, minutes=(time.perf_counter() - start) / 60))
            print(json.dumps(results[-1]), flush=True)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": results}
    report["table"] = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report_path = args.out.parent / (args.out.name + ".json")  # --out may hold a dot ("0.1x")
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
