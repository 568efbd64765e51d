"""Answers per second of `VLMEngine` (what `vitsplit-vlm eval answer` runs) at batch 1 vs 8.

Same questions (the playground VQAv2-style set) for both batch sizes, measured side by side:
repetitions alternate 1, 8, 1, 8, ... so that a busy machine slows both alike, and the medians and
their ratio are reported. Every answer is exactly ``--new-tokens`` tokens long
(``min_new_tokens = max_new_tokens``), so both batch sizes do the same work whatever the model
says. Images are opened beforehand: this measures the model, not the disk.

    .venv/bin/python benchmarks/eval_throughput.py                # untrained tiny model, 1 thread
    .venv/bin/python benchmarks/eval_throughput.py --model checkpoints/vitsplit-tiny --threads 2

Writes ``benchmarks/results/eval_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.json"
TARGET_SPEEDUP = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="saved model folder (default: an untrained tiny one)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--questions", type=int, default=32, help="questions per repetition")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens per answer")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per batch size")
    p.add_argument("--batch-sizes", type=int, nargs=2, default=(1, 8), metavar=("SMALL", "LARGE"))
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def tiny_model(folder: Path) -> Path:
    """An untrained LLaVA + ViT-Split built from the tiny Llama and CLIP (`make-tiny`)."""
    from vitsplit_vlm.playground.tiny import make_tiny
    from vitsplit_vlm.vlm.builder import build_vlm

    tiny = make_tiny(folder / "tiny")
    built = build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)
    built.model.save_pretrained(folder / "vlm")
    built.processor.save_pretrained(folder / "vlm")
    return folder / "vlm"


def requests(folder: Path, count: int, user: str) -> list:
    from PIL import Image

    from vitsplit_vlm.playground.evalsets import write_evalsets
    from vitsplit_vlm.vlm.engine import Request

    sets = write_evalsets(folder / "eval", vqav2_scenes=max(4, count // 3), pope_images=1,
                          mmbench_scenes=1, photos=False)  # fmt: skip
    lines = [json.loads(x) for x in sets.vqav2_questions.read_text().splitlines()][:count]
    out = []
    for line in lines:
        with Image.open(sets.vqav2_images / line["image"]) as image:
            out.append(Request(image.convert("RGB"), [(user, line["text"])]))
    return out


def time_once(engine, reqs, settings, batch_size: int) -> float:
    start = time.perf_counter()
    answers = list(engine.generate_batches(reqs, settings, batch_size=batch_size))
    seconds = time.perf_counter() - start
    assert len(answers) == len(reqs)
    return len(reqs) / seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from vitsplit_vlm.vlm.engine import GenerationSettings, VLMEngine

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp))
        engine = VLMEngine.from_pretrained(model, device="cpu")
        reqs = requests(Path(tmp), args.questions, engine.template.user)
    n = args.new_tokens
    settings = GenerationSettings(max_new_tokens=n, extra={"min_new_tokens": n})
    small, large = args.batch_sizes
    for batch_size in (small, large):  # warm-up
        time_once(engine, reqs[: 2 * large], settings, batch_size)
    runs: dict[int, list[float]] = {small: [], large: []}
    for _ in range(args.repeats):
        for batch_size in (small, large):
            runs[batch_size].append(time_once(engine, reqs, settings, batch_size))
    medians = {b: statistics.median(r) for b, r in runs.items()}
    report = {
        "model": str(args.model or "untrained tiny (make-tiny llama + clip-vit)"),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "questions": len(reqs),
        "new_tokens_per_answer": n,
        "repeats": args.repeats,
        **{
            f"batch_{b}": {
                "answers_per_second_median": round(m, 3),
                "runs": [round(x, 3) for x in runs[b]],
            }
            for b, m in medians.items()
        },
        "speedup": round(medians[large] / medians[small], 3),
        "target_speedup": TARGET_SPEEDUP,
    }
    report["meets_target"] = report["speedup"] >= TARGET_SPEEDUP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    main()
