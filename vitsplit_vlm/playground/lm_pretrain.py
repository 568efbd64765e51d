"""Language pretraining of the tiny Llama on playground text ("the tiny Vicuna").

The real recipe starts from Vicuna, an LLM that already speaks. A random tiny Llama does not, so
stage 1 (frozen LLM) has little to align to and stage 2 must learn language and vision at once.
This step trains the tiny Llama as a plain causal LM, for a CPU minute or two, on the same kind of
text Vicuna saw before LLaVA, *without images*:

- captions of random scenes (what stage 1 asks it to say about an image);
- Vicuna-v1 conversations about a random scene (the format, vocabulary and answer priors);
- *reading* conversations (version 2): the same questions asked after a written description of
  the scene ("a red circle and a blue square.\nWhat colour is the circle?" -> "Red"): what a real
  LLM can do and the VLM needs, answering from its context.

It never learns what a particular image shows. Rows hold whole documents (version 3): version 2
cut one token stream into 128-token rows, so about half the reading questions lost their
description.

What it buys, measured on the playground (stage 1 and stage 2 unchanged): the stage-1 caption
loss ended at 1.31 instead of 1.81 (version 2); without it stage 2 reads colour 0.26 / shape 0.27
instead of 0.34 / 0.40 (README "It learns", the previous recipe). What it does not buy: the tiny LM
itself does not answer from a written description after 400-800 steps (it gives one colour for
every question); in-context reading is the skill the tiny Vicuna still lacks.

    vitsplit-vlm make-tiny --out playground/tiny --pretrain-llm     # writes playground/tiny/llama-chat
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

VERSION = 3
MANIFEST = "lm_pretrain.json"
DEFAULTS = dict(steps=400, batch_size=16, seq_len=256, lr=3e-3, warmup=20, scenes=6000)


def chat_corpus(num_scenes: int, seed: int) -> list[str]:
    """Captions, conversations and reading conversations about random scenes (no image tokens)."""
    from ..vlm.conversation import get_template, render_conversation
    from .shapes import TEXT_ONLY_QA, all_questions, caption, sample_conversation, sample_scene

    template = get_template("vicuna_v1")

    def rendered(turns: list[tuple[str, str]]) -> str:
        messages = [m for q, a in turns for m in ((template.user, q), (template.assistant, a))]
        return render_conversation(template, messages).text

    lines: list[str] = []
    for i in range(num_scenes):
        rng = random.Random(f"lm-pretrain-{seed}-{i}")
        scene = sample_scene(rng)
        lines.append(caption(scene, rng))
        lines.append(rendered([(qa.prompt, qa.answer) for qa in sample_conversation(scene, rng)]))
    for i in range(num_scenes):
        rng = random.Random(f"lm-reading-{seed}-{i}")
        scene = sample_scene(rng)
        questions = all_questions(scene, rng)
        rng.shuffle(questions)
        turns = [(qa.prompt, qa.answer) for qa in questions]
        turns[0] = (f"{caption(scene, rng)}\n{turns[0][0]}", turns[0][1])
        lines.append(rendered(turns))
    lines += [rendered([qa]) for qa in TEXT_ONLY_QA]
    return lines


def _packed_batches(
    token_lists: list[list[int]], eos: int, seq_len: int, batch_size: int, seed: int
):
    """Endless ``(input_ids, labels)`` batches of shape (B, seq_len), reshuffled every pass.

    Each row holds whole documents, each followed by EOS, and is padded after the last one that
    fits (padding: EOS as input, -100 as label); a document longer than a row is cut. Documents
    are never split across rows, so a question always sits in the same row as the description it
    asks about (versions 1-2 cut one token stream into rows: about half the reading questions lost
    their description).
    """
    import torch

    rng = random.Random(seed)
    order = list(range(len(token_lists)))
    while True:
        rng.shuffle(order)
        rows: list[list[int]] = [[]]
        for i in order:
            doc = (token_lists[i] + [eos])[:seq_len]
            if len(rows[-1]) + len(doc) > seq_len:
                rows.append([])
            rows[-1] += doc
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.full((batch_size, seq_len), eos, dtype=torch.long)
            labels = torch.full((batch_size, seq_len), -100, dtype=torch.long)
            for j, row in enumerate(chunk):
                ids[j, : len(row)] = torch.tensor(row)
                labels[j, : len(row)] = ids[j, : len(row)]
            yield ids, labels


def pretrain_llm(
    src: str | Path, dst: str | Path, *, seed: int = 0, force: bool = False, **overrides
) -> Path:
    """Train the Llama in `src` on `chat_corpus` and save it (with its tokenizer) to `dst`.

    Deterministic for a seed; a second call with the same settings returns at once.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, dst = Path(src), Path(dst)
    settings = {**DEFAULTS, **overrides, "seed": seed, "version": VERSION, "src": str(src)}
    manifest = dst / MANIFEST
    if not force and manifest.exists():
        done = json.loads(manifest.read_text())
        if {k: done.get(k) for k in settings} == settings:
            return dst
    shutil.rmtree(dst, ignore_errors=True)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.train()
    texts = chat_corpus(settings["scenes"], seed)
    token_lists = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    batches = _packed_batches(
        token_lists, tokenizer.eos_token_id, settings["seq_len"], settings["batch_size"], seed
    )
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    steps, warmup = settings["steps"], settings["warmup"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    started, losses = time.time(), []
    for _ in range(steps):
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss  # labels are shifted inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    dst.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    record = {
        **settings,
        "first_loss": round(sum(losses[:10]) / 10, 4),
        "last_loss": round(sum(losses[-10:]) / 10, 4),
        "seconds": round(time.time() - started, 1),
    }
    manifest.write_text(json.dumps(record, indent=1) + "\n")  # last: marks completion
    return dst
