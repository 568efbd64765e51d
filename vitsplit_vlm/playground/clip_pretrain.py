"""A pretrained tower for the VLM playground: the tiny CLIP, briefly trained so that its patch
tokens say which object they belong to, as a real CLIP's patch features carry what they show
(``vitsplit-vlm make-tiny --pretrain-clip``; train with ``--vision_tower
playground/tiny/clip-vit-pretrained``).

Why: LLaVA's recipe assumes a pretrained tower. A random tiny CLIP's patch tokens separate colours
(a linear probe 0.99) but hardly shapes: objects are 2-3 patches wide, no token sees a whole
shape, and a linear probe on ``hidden_states[-2]`` names a lone object's shape from its
best-covered patch 0.64 of the time (0.69 from the object's patches pooled; chance 0.25). Trained
here for ~80 s (400 steps, batch 32, 2 threads), every patch an object touches classifies that
object's (shape, colour) pair (25 classes with the background) at the hidden state the VLM reads
(``hidden_states[-2]``, LLaVA's ``mm_vision_select_layer``), and the last layer's CLS token labels
which pairs the image holds (as the DINOv2 pretraining); the same probes then read 0.88 and 0.97.
The manifest's `object_token_accuracy` is the share of object patches whose pair the trained
head names on unseen scenes.

What it buys (README "It learns"): it is the embedded default's tower. With it, colour and shape
questions are learned within a few hundred stage-2 steps when stage 2 asks them first; with the
random tower shape never is.

Deterministic for a given seed and thread count; saved with ``save_pretrained`` next to the
random tower (``playground/tiny/clip-vit-pretrained``) with a ``pretrain.json`` manifest, and a
no-op when the manifest matches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dinov2_pretrain import MANIFEST, _lr, _pair_index, make_batch, save_trunk, train_once

VERSION = 3
# The playground's settings (`pretrain_clip`'s defaults; `recipes.fingerprint` records them).
DEFAULTS = dict(steps=400, batch_size=32, lr=3e-3, feature_layer=-2)


def object_targets(pixel_pairs: torch.Tensor, patch: int, num_pairs: int) -> torch.Tensor:
    """(B, H, W) per-pixel pair indices (``num_pairs`` = background) -> (B, h*w) per-patch class:
    the pair covering most of the patch among those that touch it, background if none does."""
    onehot = F.one_hot(pixel_pairs, num_pairs + 1).permute(0, 3, 1, 2).float()
    share = F.avg_pool2d(onehot, patch).flatten(2).transpose(1, 2)  # (B, h*w, pairs + 1)
    best_share, best = share[..., :num_pairs].max(-1)
    return torch.where(best_share > 0, best, torch.full_like(best, num_pairs))


def pretrain_clip(
    src: str | Path,
    dst: str | Path,
    *,
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    feature_layer: int = DEFAULTS["feature_layer"],
    seed: int = 0,
    force: bool = False,
    threads: int | None = None,
    log=print,
) -> Path:
    """Pretrain the tiny CLIP at `src` and save it to `dst` (a no-op when `dst`'s manifest
    matches). `threads`: torch threads while training (default ``OMP_NUM_THREADS`` or 1)."""
    src, dst = Path(src), Path(dst)
    args = {"steps": steps, "batch_size": batch_size, "lr": lr, "feature_layer": feature_layer,
            "seed": seed, "version": VERSION}  # fmt: skip
    return train_once(src, dst, args, lambda: _pretrain(src, dst, args, log), force, threads)


def describe(dst: str | Path) -> str:
    """One line on the pretrained tower at `dst`, from its manifest."""
    info = json.loads((Path(dst) / MANIFEST).read_text())
    first, last = info["first"], info["last"]
    return (
        f"{dst}  CLIPVisionModel pretrained on generated scenes in {info['args']['steps']} steps: "
        f"patch loss {first['token']:.2f} -> {last['token']:.2f}, CLS loss {first['cls']:.2f} -> "
        f"{last['cls']:.2f}; object patches named right {info['object_token_accuracy']:.3f} "
        "(unseen scenes)"
    )


def _pretrain(src: Path, dst: Path, args: dict, log) -> Path:
    from transformers import AutoModel

    steps, batch_size, layer = args["steps"], args["batch_size"], args["feature_layer"]
    num_pairs = len(_pair_index())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args["seed"])
        model = AutoModel.from_pretrained(src)
        width, patch = model.config.hidden_size, model.config.patch_size
        cls_head = nn.Linear(width, num_pairs)
        token_head = nn.Linear(width, num_pairs + 1)
        processor = json.loads((src / "preprocessor_config.json").read_text())
        mean, std = processor["image_mean"], processor["image_std"]
        params = [*model.parameters(), *cls_head.parameters(), *token_head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=args["lr"], weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr(s, steps, 20))
        model.train()
        history, start = [], time.perf_counter()
        for step in range(steps):
            pixels, labels, pixel_pairs = make_batch(step, batch_size, args["seed"], mean, std)
            hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
            target = object_targets(pixel_pairs, patch, num_pairs)
            token_logits = token_head(hidden[layer][:, 1:])
            token_loss = F.cross_entropy(token_logits.flatten(0, 1), target.flatten())
            cls_loss = F.binary_cross_entropy_with_logits(cls_head(hidden[-1][:, 0]), labels)
            optimizer.zero_grad(set_to_none=True)
            (token_loss + cls_loss).backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            history.append(
                {
                    "step": step + 1,
                    "token": float(token_loss.detach()),
                    "cls": float(cls_loss.detach()),
                }
            )
            if log and (step == 0 or (step + 1) % 50 == 0 or step + 1 == steps):
                log(json.dumps({**history[-1], "s": round(time.perf_counter() - start, 1)}))
        seconds = round(time.perf_counter() - start, 1)
        model.eval()
        accuracy = _object_token_accuracy(model, token_head, layer, args["seed"], mean, std)
    save_trunk(model, src, dst)
    tail = history[-25:]
    manifest = {
        "source": str(src),
        "args": args,
        "objective": (
            f"per patch of hidden_states[{layer}]: the (shape, colour) pair of the object it "
            "belongs to (25 classes with the background); CLS of the last layer: multi-label pairs"
        ),
        "first": history[0],
        "last": {k: sum(h[k] for h in tail) / len(tail) for k in ("token", "cls")},
        "object_token_accuracy": accuracy,
        "seconds": seconds,
    }
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return dst


@torch.no_grad()
def _object_token_accuracy(model, head, layer: int, seed: int, mean, std) -> float:
    """Share of object patches whose pair the trained head names, on 64 scenes never trained on."""
    pixels, _, pixel_pairs = make_batch(10**6, 64, seed + 1, mean, std)
    target = object_targets(pixel_pairs, model.config.patch_size, len(_pair_index()))
    hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
    on_object = target < len(_pair_index())
    return round(float((head(hidden).argmax(-1) == target)[on_object].float().mean()), 4)
