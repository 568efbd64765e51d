"""`vitsplit-vlm heldout`: accuracy of a trained model on the playground's held-out questions.

    vitsplit-vlm heldout --model-path checkpoints/vitsplit-tiny [--control blank|swap] [--json]

Exact match (case-insensitive, trailing period ignored) per question type, against two honest
baselines: `chance` (always the most frequent answer of each type) and the same model with the
image blanked (`--control blank`: a mean-grey image) or swapped for another held-out image
(`--control swap`). Answers that only come from text priors score the same under the controls.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from . import paths

CONTROLS = ("none", "blank", "swap")


def normalize(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


def load_heldout(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chance(questions: list[dict]) -> dict[str, float]:
    """Accuracy of always giving each question type's most frequent answer."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for q in questions:
        by_type[q["qtype"]][normalize(q["answer"])] += 1
    per = {t: c.most_common(1)[0][1] / sum(c.values()) for t, c in by_type.items()}
    per["overall"] = sum(c.most_common(1)[0][1] for c in by_type.values()) / len(questions)
    return per


def evaluate(
    engine,
    questions: list[dict],
    image_folder: Path,
    *,
    control: str = "none",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Accuracy overall and per qtype, plus every answer given."""
    from PIL import Image
    from tqdm import tqdm

    from ..vlm.engine import Request

    if control not in CONTROLS:
        raise ValueError(f"--control must be one of {CONTROLS}, got {control!r}")
    images = sorted({q["image"] for q in questions})
    swap = dict(zip(images, random.Random(seed).sample(images, len(images)), strict=True))
    answers, correct = [], defaultdict(list)
    for start in tqdm(range(0, len(questions), batch_size), disable=not progress, desc=control):
        chunk = questions[start : start + batch_size]
        requests = []
        for q in chunk:
            name = swap[q["image"]] if control == "swap" else q["image"]
            image = Image.open(image_folder / name).convert("RGB")
            if control == "blank":
                image = Image.new("RGB", image.size, (128, 128, 128))
            requests.append(Request(image, [(engine.template.user, q["text"])]))
        for q, text in zip(chunk, engine.generate(requests), strict=True):
            ok = normalize(text) == normalize(q["answer"])
            correct[q["qtype"]].append(ok)
            correct["overall"].append(ok)
            answers.append({"question_id": q["question_id"], "answer": text, "correct": ok})
    accuracy = {t: round(sum(v) / len(v), 4) for t, v in sorted(correct.items())}
    return {"control": control, "n": len(questions), "accuracy": accuracy, "answers": answers}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, default=paths.TINY_FINETUNE)
    parser.add_argument(
        "--data",
        type=Path,
        default=paths.SHAPES,
        help="folder with heldout.jsonl and images/",
    )
    parser.add_argument(
        "--control",
        default="all",
        choices=(*CONTROLS, "all"),
        help="image control; 'all' runs none, blank and swap",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--out", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..vlm.engine import VLMEngine

    questions = load_heldout(args.data / "heldout.jsonl")[: args.limit]
    engine = VLMEngine.from_pretrained(args.model_path)
    controls = CONTROLS if args.control == "all" else (args.control,)
    results = {
        c: evaluate(
            engine,
            questions,
            args.data / "images",
            control=c,
            batch_size=args.batch_size,
            progress=not args.json,
        )
        for c in controls
    }
    summary = {
        "model": str(args.model_path),
        "n": len(questions),
        "chance": {k: round(v, 4) for k, v in chance(questions).items()},
        **{f"accuracy_{c}": r["accuracy"] for c, r in results.items()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {**summary, "answers": {c: r["answers"] for c, r in results.items()}}, indent=1
            )
            + "\n"
        )
    if args.json:
        print(json.dumps(summary))
    else:
        types = list(summary["chance"])
        print(f"{'':<16}" + "".join(f"{t:>10}" for t in types))
        for row in ["chance", *(f"accuracy_{c}" for c in controls)]:
            print(
                f"{row:<16}" + "".join(f"{summary[row].get(t, float('nan')):>10.3f}" for t in types)
            )
    return 0
