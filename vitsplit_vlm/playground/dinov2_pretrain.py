"""A briefly pretrained tiny DINOv2: a layer hierarchy (paper §3.1: early and late layers
differ) for the dense playground.

A randomly initialised ViT has no early / late split: every layer's features are nearly the same
(CKA 0.985-1.0 with the last layer), so ViT-Split's reasons to exist cannot show on it. This
module trains the tiny DINOv2 for a few CPU minutes on generated shape scenes with objectives
that are *not* the dense downstream tasks:

- multi-label classification of which (shape, colour) pairs the image contains, from the CLS
  token (24 binary labels: an image-level, binding-of-features objective);
- patch reconstruction: 30% of the patches are replaced by DINOv2's mask token and the model
  regresses every patch's 4x4-pooled normalised colours (48 values) from its output token, the
  masked ones from context and the visible ones as an auto-encoder (weight 1 each).

Version 1 regressed only the masked patches' 2x2-pooled colours: its last layers kept so little
of the image that on the playground segmentation set it scored below the random trunk (linear
34.7 vs 54.1 mIoU, ViT-Split 80.2 vs 91.4). Version 2 (this one, ``target_grid=4,
visible_weight=1``) measured linear 53.6, prior+head 90.1, ViT-Split 92.7, with a clearer layer
hierarchy (CKA with the last layer from 0.48 in the middle blocks, against 0.73-0.99 before).

The VLM default's tower, the tiny CLIP, is pretrained by `clip_pretrain` instead (per-patch
object labels at the layer LLaVA reads).

The small heads are thrown away; the backbone is saved with ``save_pretrained`` next to the
random one (``playground/tiny/dinov2-pretrained``), with the image processor and a
``pretrain.json`` manifest. Training is deterministic for a given seed and thread count
(scenes come from string-seeded RNGs, weights from a forked torch RNG).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitsplit_vlm.analysis.cka import linear_cka
from vitsplit_vlm.playground.shapes import BACKGROUND

MANIFEST = "pretrain.json"
VERSION = 2
MASK_RATIO = 0.3


def _pair_index() -> dict[tuple[str, str], int]:
    from vitsplit_vlm.playground.shapes import COLOURS, SHAPES

    return {(s, c): i for i, (s, c) in enumerate((s, c) for s in SHAPES for c in COLOURS)}


def make_batch(
    step: int, batch_size: int, seed: int, mean, std
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, 112, 112) normalised scenes (random flips), (B, 24) multi-hot pair labels and
    (B, 112, 112) per-pixel pair indices (24 = background), flipped with the image."""
    from vitsplit_vlm.playground.shapes import sample_scene

    pairs = _pair_index()
    images, labels = [], torch.zeros(batch_size, len(pairs))
    pixel_pairs = []
    for b in range(batch_size):
        rng = random.Random(f"dinov2-pretrain-{seed}-{step}-{b}")
        scene = sample_scene(rng)
        rgb = np.asarray(scene.render())
        index = _pair_map(scene, pairs, rgb)
        if rng.random() < 0.5:
            rgb, index = rgb[:, ::-1], index[:, ::-1]
        images.append(torch.from_numpy(rgb.copy()))
        pixel_pairs.append(torch.from_numpy(index.copy()))
        for obj in scene.objects:
            labels[b, pairs[(obj.shape, obj.colour)]] = 1.0
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s, labels, torch.stack(pixel_pairs)


def _pair_map(
    scene, pairs: dict[tuple[str, str], int], rgb: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) int64 map of each pixel's (shape, colour) pair index, ``len(pairs)`` on the
    background. `rgb`: the scene's render, if already drawn. Objects are drawn inside their own
    boxes, which lie apart (`sample_scene`), so each object's pixels are the non-background pixels
    of its box, and two objects of one colour stay apart."""
    if rgb is None:
        rgb = np.asarray(scene.render())
    out = np.full(rgb.shape[:2], len(pairs), dtype=np.int64)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        drawn = (rgb[y0:y1, x0:x1] != np.asarray(BACKGROUND, dtype=np.uint8)).any(-1)
        out[y0:y1, x0:x1][drawn] = pairs[(obj.shape, obj.colour)]
    return out


def patch_targets(pixels: torch.Tensor, patch: int, grid: int = 2) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h*w, 3*grid*grid): each patch's colours average-pooled to grid x grid."""
    g = grid
    pooled = F.adaptive_avg_pool2d(
        pixels, (pixels.shape[-2] // patch * g, pixels.shape[-1] // patch * g)
    )
    B, C, H2, W2 = pooled.shape
    pooled = pooled.view(B, C, H2 // g, g, W2 // g, g).permute(0, 2, 4, 1, 3, 5)
    return pooled.reshape(B, (H2 // g) * (W2 // g), C * g * g)


def _lr(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain_trunk(
    src: str | Path,
    dst: str | Path,
    *,
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 5e-4,
    seed: int = 0,
    force: bool = False,
    threads: int | None = None,
    target_grid: int = 4,
    visible_weight: float = 1.0,
    log=print,
) -> Path:
    """Pretrain the tiny trunk at `src` (DINOv2 or CLIP) and save it to `dst` (a no-op when
    `dst`'s manifest matches).

    `threads`: torch threads while training (default ``OMP_NUM_THREADS`` or 1); the result is
    bit-identical for the same seed and thread count.
    """

    src, dst = Path(src), Path(dst)
    args = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "version": VERSION,
            "target_grid": target_grid, "visible_weight": visible_weight}  # fmt: skip
    return train_once(src, dst, args, lambda: _pretrain(src, dst, args, log), force, threads)


def train_once(src: Path, dst: Path, args: dict, train, force: bool, threads: int | None) -> Path:
    """`dst` as it is when its manifest records the same `args` and `src` (and not `force`);
    else `train()` with `threads` torch threads (default ``OMP_NUM_THREADS`` or 1), restored after.
    Shared by this module and `clip_pretrain`."""
    try:
        done = json.loads((dst / MANIFEST).read_text())
        if not force and done.get("args") == args and done.get("source") == str(src):
            return dst
    except (OSError, ValueError):
        pass
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        return train()
    finally:
        torch.set_num_threads(previous_threads)


def save_trunk(model: nn.Module, src: Path, dst: Path) -> None:
    """Replace `dst` with `model` (``save_pretrained``) and `src`'s image processor config."""
    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(dst)
    shutil.copy(src / "preprocessor_config.json", dst / "preprocessor_config.json")


def _pretrain(src: Path, dst: Path, args: dict, log) -> Path:
    """Train and save; `args` is the manifest's record of the settings (`pretrain_dinov2`)."""
    from transformers import AutoModel

    steps, batch_size, lr, seed = args["steps"], args["batch_size"], args["lr"], args["seed"]
    target_grid, visible_weight = args["target_grid"], args["visible_weight"]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_pretrained(src)
        cfg = model.config
        cls_head = nn.Linear(cfg.hidden_size, len(_pair_index()))
        pix_head = nn.Linear(cfg.hidden_size, 3 * target_grid**2)
        processor = json.loads((src / "preprocessor_config.json").read_text())
        mean, std = processor["image_mean"], processor["image_std"]
        heads = [cls_head, pix_head]
        params = [*model.parameters(), *(p for h in heads for p in h.parameters())]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr(s, steps, 20))
        mask_gen = torch.Generator().manual_seed(seed)
        model.train()
        history, start = [], time.perf_counter()
        for step in range(steps):
            pixels, labels, _ = make_batch(step, batch_size, seed, mean, std)
            num_patches = (pixels.shape[-1] // cfg.patch_size) ** 2
            masked = torch.rand(batch_size, num_patches, generator=mask_gen) < MASK_RATIO
            tokens = masked_forward(model, pixels, masked)
            cls_loss = F.binary_cross_entropy_with_logits(cls_head(tokens[:, 0]), labels)
            pred = pix_head(tokens[:, 1:])
            target = patch_targets(pixels, cfg.patch_size, target_grid)
            pix_loss = F.mse_loss(pred[masked], target[masked])
            if visible_weight:
                pix_loss = pix_loss + visible_weight * F.mse_loss(pred[~masked], target[~masked])
            loss = cls_loss + pix_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            entry = {
                "step": step + 1,
                "cls": float(cls_loss.detach()),
                "pix": float(pix_loss.detach()),
            }
            history.append(entry)
            if log and (step == 0 or (step + 1) % 25 == 0 or step + 1 == steps):
                log(json.dumps({**entry, "s": round(time.perf_counter() - start, 1)}))
    model.eval()
    save_trunk(model, src, dst)
    tail = history[-25:]
    probe, _, _ = make_batch(10**6, 32, seed + 1, mean, std)  # scenes never trained on
    manifest = {
        "source": str(src),
        "args": args,
        "objective": (
            "multi-label (shape, colour) pairs from CLS + masked-context and visible "
            f"{target_grid}x{target_grid}-colour patch regression (visible weight {visible_weight})"
        ),
        "first": history[0],
        "last": {k: sum(h[k] for h in tail) / len(tail) for k in ("cls", "pix")},
        "seconds": round(time.perf_counter() - start, 1),
        "cka_with_last": {
            "random": [round(v, 4) for v in layer_cka(AutoModel.from_pretrained(src), probe)],
            "pretrained": [round(v, 4) for v in layer_cka(model, probe)],
        },
    }
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return dst


# Existing callers name the trunk they pretrain.
pretrain_dinov2 = pretrain_trunk


def masked_forward(model: nn.Module, pixels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state with the `masked` (B, h*w) patches hidden from it.

    DINOv2 swaps their embeddings for its learned mask token (``bool_masked_pos``); a trunk
    without one (CLIP) sees those patches' pixels set to 0, the normalised mean colour (as
    SimMIM-style pixel masking)."""
    if "bool_masked_pos" in inspect.signature(model.forward).parameters:
        return model(pixel_values=pixels, bool_masked_pos=masked).last_hidden_state
    patch = model.config.patch_size
    grid = pixels.shape[-1] // patch
    keep = (~masked).view(-1, 1, grid, 1, grid, 1).to(pixels.dtype)
    shaped = pixels.view(pixels.shape[0], pixels.shape[1], grid, patch, grid, patch)
    return model(pixel_values=(shaped * keep).view_as(pixels)).last_hidden_state


@torch.no_grad()
def layer_cka(model: nn.Module, pixels: torch.Tensor) -> list[float]:
    """CKA of every block's patch tokens with the last block's, (B, 3, H, W) -> N values."""
    from vitsplit_vlm.core.trunk import frozen_hidden_states, trunk_spec

    spec = trunk_spec(model)
    hidden = frozen_hidden_states(model.eval(), pixels, range(1, spec.num_blocks + 1))
    feats = {i: h[:, spec.num_prefix_tokens :].reshape(-1, h.shape[-1]) for i, h in hidden.items()}
    last = feats[spec.num_blocks]
    return [linear_cka(feats[i], last) for i in range(1, spec.num_blocks + 1)]
