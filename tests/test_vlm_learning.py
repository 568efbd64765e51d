"""It learns: the embedded default (scripts/pretrain.sh then scripts/finetune.sh on the tiny
models and the shapes playground) answers held-out questions far above chance, and the answers
come from the image (blank and swapped images score much lower). Slow: ~10 CPU minutes;
`make test-slow` runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_embedded_default_learns(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "pretrain")}
    subprocess.run(["bash", "scripts/pretrain.sh"], cwd=ROOT, env=env, check=True)
    pre = json.loads((tmp_path / "pretrain" / "train_summary.json").read_text())
    assert pre["last_losses"][-1] < pre["first_losses"][0] - 0.5  # the stage-1 loss falls

    env = {**os.environ, "PRETRAIN": str(tmp_path / "pretrain"), "OUT": str(tmp_path / "ft")}
    subprocess.run(["bash", "scripts/finetune.sh"], cwd=ROOT, env=env, check=True)

    from vitsplit_vlm.playground.heldout import chance, evaluate, load_heldout
    from vitsplit_vlm.vlm.engine import VLMEngine

    data = ROOT / "playground/data/shapes"
    questions = load_heldout(data / "heldout.jsonl")
    engine = VLMEngine.from_pretrained(tmp_path / "ft")
    real = evaluate(engine, questions, data / "images", progress=False)["accuracy"]
    blank = evaluate(engine, questions, data / "images", control="blank", progress=False)
    base = chance(questions)
    assert real["overall"] >= base["overall"] + 0.12, (real, base)
    assert real["overall"] >= blank["accuracy"]["overall"] + 0.12, (real, blank["accuracy"])
    assert real["count"] >= 0.9  # counting is read off the image reliably
