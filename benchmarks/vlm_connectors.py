"""Paper Tab. 4 on the playground: held-out accuracy of VLM connectors trained on one budget.

    python benchmarks/vlm_connectors.py                          # the quickstart's recipe, 3 seeds
    python benchmarks/vlm_connectors.py --stage1-steps 60 --stage2-steps 200 --seeds 0 1 2

Every run is the shipped training itself: stage 1 then stage 2 through
``python -m vitsplit_vlm.vlm.train`` with the embedded default's flags
(`vitsplit_vlm.playground.recipes`, as ``bash scripts/pretrain.sh`` / ``finetune.sh``), only
``--mm_projector_type``, ``--seed``, ``--max_steps`` and the output folders changed; then
``vitsplit-vlm heldout`` on the real image and on a blank one. Connectors run in alternation within
each seed, so machine drift hits all alike. Writes, per connector, every run's accuracy per
question type and their mean and spread (sample standard deviation, min, max) to ``--out`` (JSON),
a bar chart next to it (PNG) and the Markdown table the README shows. Each finished run is also
appended to ``<out stem>-runs.jsonl`` at once, so a stopped benchmark loses at most the runs in
flight: run the same command again and the runs logged there with the same connector, seed and
budget are read back instead of trained again (``--fresh`` ignores the log).

Adding a connector is one entry in `CONNECTORS` (its ``--mm_projector_type`` and any flags it
needs on the tiny tower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# --mm_projector_type -> extra trainer flags, one entry per connector. VipLlava's own layers
# (-2, -5, -8, -11, 6 of CLIP-L's 24 blocks) do not exist in the 4-block tiny CLIP: it reads every
# hidden state from block 1 to the penultimate one, as its default spans CLIP-L's upper blocks.
CONNECTORS: dict[str, list[str]] = {
    "vitsplit": [],
    "mlp2x_gelu": [],
    "dc_sti": [],
    "dc_sci": [],
    "dc_dci": [],
    "vipllava": ["--mm_projector_layers", "-2", "-3", "-4"],
}
QTYPES = ("overall", "colour", "shape", "count", "position", "presence")


def stage_command(stage: str, connector: str, seed: int, steps: int, run_dir: Path) -> list[str]:
    """The trainer's argv for one stage of one run (the recipe's flags, a few overridden)."""
    from vitsplit_vlm.playground.recipes import stage_argv, stage_flags

    overrides = dict(
        mm_projector_type=connector,
        seed=seed,
        max_steps=steps,
        output_dir=run_dir / stage,
        save_strategy="no",
    )
    if "--cache_features" in stage_flags(stage):
        # each run its own: connectors that read other layers have other caches
        overrides["cache_features"] = run_dir / "feature-cache"
    if stage == "finetune":
        overrides["pretrain_mm_mlp_adapter"] = run_dir / "pretrain" / "mm_projector.safetensors"
    extra = CONNECTORS.get(connector, [])
    return [sys.executable, "-m", "vitsplit_vlm.vlm.train", *stage_argv(stage, **overrides), *extra]


def _run(argv: list[str], log: Path, env: dict[str, str]) -> str:
    """Run a child, its output in `log`; stop with the log's tail when it fails."""
    with open(log, "a") as f:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv[:4])} ...\n{log.read_text()[-3000:]}")
    return proc.stdout


def budget(args: argparse.Namespace) -> dict:
    """What a run's result depends on besides connector and seed: the steps, the questions, and
    the recipe (`recipes.fingerprint`: flags, tiny models, pretraining, data set): a run logged
    under an older recipe is not reused."""
    import hashlib

    from vitsplit_vlm.playground.recipes import fingerprint

    recipe = json.dumps(fingerprint("finetune"), sort_keys=True)  # holds the tower's path too
    return {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
            "limit": args.limit, "recipe": hashlib.sha256(recipe.encode()).hexdigest()[:12]}  # fmt: skip


def train_and_evaluate(args: argparse.Namespace, connector: str, seed: int) -> dict:
    """Stage 1, stage 2 and the held-out evaluation (real and blank image) of one run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, log = Path(tmp), Path(tmp) / "run.log"
        started = time.perf_counter()
        for stage, steps in (("pretrain", args.stage1_steps), ("finetune", args.stage2_steps)):
            _run(stage_command(stage, connector, seed, steps, run_dir), log, env)
        trained = time.perf_counter() - started
        summary = json.loads((run_dir / "finetune" / "train_summary.json").read_text())
        accuracy = {}
        for control in ("none", "blank"):
            out = _run(
                [sys.executable, "-m", "vitsplit_vlm", "heldout", "--model-path",
                 str(run_dir / "finetune"), "--control", control, "--json",
                 *(["--limit", str(args.limit)] if args.limit else [])],
                log, env,
            )  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            accuracy[control] = result[f"accuracy_{control}"]
            chance = result["chance"]
    return {
        "connector": connector,
        "seed": seed,
        "budget": budget(args),
        "trainable": summary["trainable"]["connector"],
        "final_losses": summary["last_losses"],  # the trainer's last logged losses
        "train_seconds": round(trained, 1),
        "accuracy": accuracy["none"],
        "blank": accuracy["blank"],
        "chance": chance,
    }


def run_key(run: dict) -> tuple:
    """What makes two runs the same: connector, seed and the budget (steps, questions)."""
    return (run["connector"], run["seed"], json.dumps(run["budget"], sort_keys=True))


def read_log(path: Path) -> dict[tuple, dict]:
    """`{run_key: run}` of the runs an earlier invocation logged in `path` (none if absent)."""
    if not path.exists():
        return {}
    runs = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            run = json.loads(line)
            runs[run_key(run)] = run
        except (json.JSONDecodeError, KeyError, TypeError):
            print(f"{path}:{number}: not a run record, ignored", file=sys.stderr)
    return runs


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max, rounded."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(std, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Per connector: accuracy (real and blank image) per question type over its seeds."""
    out = {}
    for name in dict.fromkeys(r["connector"] for r in runs):
        mine = [r for r in runs if r["connector"] == name]
        out[name] = {
            "seeds": [r["seed"] for r in mine],
            "trainable": mine[0]["trainable"],
            "accuracy": {t: spread([r["accuracy"][t] for r in mine]) for t in QTYPES},
            "blank": {t: spread([r["blank"][t] for r in mine]) for t in QTYPES},
        }
    return out


def markdown_table(report: dict) -> str:
    """The README's table: mean ± std over seeds per question type, chance and blank image."""
    head = "| connector | trainable | " + " | ".join(QTYPES) + " | blank image, overall |"
    lines = [head, "|---|---:|" + "---:|" * (len(QTYPES) + 1)]
    chance = report["chance"]
    lines.append("| chance (majority answer) | | " + " | ".join(
        f"{chance[t]:.3f}" for t in QTYPES) + " | |")  # fmt: skip
    for name, row in report["connectors"].items():
        cells = [f"{row['accuracy'][t]['mean']:.3f} ± {row['accuracy'][t]['std']:.3f}"
                 for t in QTYPES]  # fmt: skip
        blank = row["blank"]["overall"]
        lines.append(
            f"| `{name}` | {row['trainable']:,} | "
            + " | ".join(cells)
            + f" | {blank['mean']:.3f} ± {blank['std']:.3f} |"
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Grouped bars (mean over seeds, std as error bars) per question type, chance as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["connectors"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, name in enumerate(names):
        acc = report["connectors"][name]["accuracy"]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(QTYPES))]
        ax.bar(xs, [acc[t]["mean"] for t in QTYPES], width, yerr=[acc[t]["std"] for t in QTYPES],
               capsize=3, label=name)  # fmt: skip
    ax.scatter(range(len(QTYPES)), [report["chance"][t] for t in QTYPES], marker="_", s=400,
               color="black", label="chance", zorder=3)  # fmt: skip
    ax.set_xticks(range(len(QTYPES)), QTYPES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out exact match")
    budget = report["budget"]
    ax.set_title(
        f"playground, {len(report['seeds'])} seeds: stage 1 {budget['stage1_steps']} + "
        f"stage 2 {budget['stage2_steps']} steps x {budget['batch_size']}",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=len(names) + 1, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from vitsplit_vlm.playground.recipes import stage_flags

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connectors", nargs="+", default=list(CONNECTORS),
                        help="--mm_projector_type values (default: all of CONNECTORS)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stage1-steps", type=int,
                        default=int(stage_flags("pretrain")["--max_steps"]))  # fmt: skip
    parser.add_argument("--stage2-steps", type=int,
                        default=int(stage_flags("finetune")["--max_steps"]))  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="first N held-out questions")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS per run")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (e.g. --jobs 2 --threads 1 on two cores)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vlm_connectors.json")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run again, ignoring <out stem>-runs.jsonl")  # fmt: skip
    args = parser.parse_args(argv)

    from vitsplit_vlm.playground.recipes import prepare

    os.chdir(REPO)  # the recipe's paths are relative to the repository
    prepare(progress=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_name(args.out.stem + "-runs.jsonl")
    if args.fresh:
        log.unlink(missing_ok=True)
    done = read_log(log)
    runs, started = [], time.perf_counter()
    # Seed-major order, connectors alternating within a seed, so drift hits every connector alike.
    jobs = [(name, seed) for seed in args.seeds for name in args.connectors]
    keys = {job: run_key({"connector": job[0], "seed": job[1], "budget": budget(args)})
            for job in jobs}  # fmt: skip
    todo = [job for job in jobs if keys[job] not in done]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs read back from {log} "
              "(--fresh trains them again)", flush=True)  # fmt: skip
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
        futures = {job: pool.submit(train_and_evaluate, args, *job) for job in todo}
        for job in jobs:
            if keys[job] in done:
                runs.append(done[keys[job]])
                continue
            runs.append(futures[job].result())
            with open(log, "a") as f:
                f.write(json.dumps(runs[-1]) + "\n")
            r, acc = runs[-1], runs[-1]["accuracy"]
            print(f"seed {r['seed']} {r['connector']}: "
                  + ", ".join(f"{t} {acc[t]:.3f}" for t in QTYPES), flush=True)  # fmt: skip
    flags = stage_flags("finetune")
    report = {
        "benchmark": "held-out accuracy after stage 1 + stage 2 (python -m vitsplit_vlm.vlm.train)",
        "budget": {
            "stage1_steps": args.stage1_steps,
            "stage2_steps": args.stage2_steps,
            "batch_size": int(flags["--per_device_train_batch_size"]),
            "note": "the same steps, data, learning rates and seed for every connector",
        },
        "seeds": args.seeds,
        "vision_tower": flags["--vision_tower"],
        "questions": args.limit or "all",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "jobs": args.jobs,
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "chance": runs[0]["chance"],
        "connectors": aggregate(runs),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    table = markdown_table(report)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
