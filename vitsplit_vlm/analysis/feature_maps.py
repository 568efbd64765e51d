"""Per-layer feature maps (paper Fig. 4): the frozen trunk's layers beside a trained task head.

ViT-Split's task head is a trainable copy of the trunk's blocks ``f-k .. f-1`` (`ViTSplitHeads`);
after training, its block ``i`` and the frozen block ``i`` read the same kind of input but may
have learnt different features. For each image this draws one map per frozen layer and, in the
row below, one per task-head block under the frozen layer it was copied from. A map is one
number per patch token (`REDUCTIONS`). The task heads come from a dense checkpoint (``dense
train``) or a VLM model folder (stage 2 / ``merge-lora``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitsplit_vlm.core.heads import ViTSplitHeads

from .cka import linear_cka
from .inputs import Backbone, ImageSource, all_hidden_states, resize_normalize, wrap_backbone


def first_component(tokens: torch.Tensor) -> torch.Tensor:
    """(P, C) -> (P,) projection on the first principal component, signed so that the
    projection's third moment is positive (a component's sign is arbitrary)."""
    centred = tokens.double() - tokens.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    score = centred @ v[0]
    return score if (score**3).sum() >= 0 else -score


# --map: one number per patch token, (P, C) -> (P,)
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pca": first_component,
    "channel0": lambda tokens: tokens[:, 0],  # the paper's choice: the first channel
    "norm": lambda tokens: tokens.norm(dim=1),
}


@dataclass
class TaskHeadSource:
    """A trained ViT-Split task head and the frozen trunk it was trained on."""

    label: str  # "dense seg checkpoint PATH", "VLM PATH"
    backbone: Backbone
    heads: ViTSplitHeads


@dataclass
class LayerMaps:
    """The maps of one image: `frozen[layer]` and `task[layer]` are (h, w) arrays."""

    name: str
    thumbnail: np.ndarray  # (H, W, 3) uint8
    frozen: dict[int, np.ndarray]
    task: dict[int, np.ndarray] = field(default_factory=dict)


def load_dense_source(
    path: str | Path, *, trunk_path: str | Path | None, device: torch.device
) -> TaskHeadSource:
    """A dense checkpoint's task head, its trunk (fingerprint checked) and its normalisation."""
    from vitsplit_vlm.dense.checkpoint import load_dense_model, read_checkpoint

    source = Path(trunk_path or read_checkpoint(path)["trunk"]["path"])
    if not (source / "config.json").is_file():
        raise ValueError(
            f"{path} was trained on the trunk {source}, which is not there; pass --backbone with "
            "the trunk's folder"
        )
    model, payload = load_dense_model(path, trunk_path=source)
    heads = model.split.heads if model.split is not None else None
    _require_task_head(heads, f"{path} (method {model.spec.method})")
    norm, size = payload["normalization"], model.trunk_spec.image_size
    mean, std = tuple(norm["mean"]), tuple(norm["std"])  # what the heads were trained on
    preprocess = (lambda images: resize_normalize(images, size, mean, std), mean, std)
    backbone = wrap_backbone(model.trunk_module(), source, device, preprocessing=preprocess)
    return TaskHeadSource(f"dense {model.spec.task} {Path(path).name}", backbone, heads.to(device))


def load_vlm_source(path: str | Path, *, device: torch.device) -> TaskHeadSource:
    """A VLM folder's ViT-Split connector and vision tower, with the model's image preparation."""
    from vitsplit_vlm.vlm.engine import VLMEngine

    try:
        engine = VLMEngine.from_pretrained(path, device=str(device), dtype=torch.float32)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    connector = engine.model.model.multi_modal_projector
    heads = getattr(connector, "heads", None)
    _require_task_head(heads, f"{path} ({type(connector).__name__})")
    processor = engine.image_processor
    preprocess = (
        lambda images: torch.stack([engine.prepare_image(im) for im in images]),
        tuple(processor.image_mean),
        tuple(processor.image_std),
    )
    backbone = wrap_backbone(
        engine.model.model.vision_tower, path, device, preprocessing=preprocess
    )
    return TaskHeadSource(f"VLM {Path(path).name}", backbone, heads)


def _require_task_head(heads: ViTSplitHeads | None, what: str) -> None:
    if heads is None or heads.task_head is None:
        raise ValueError(f"{what} has no ViT-Split task head to show")


@torch.no_grad()
def task_head_states(heads: ViTSplitHeads, hidden: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """`{layer: (B, T', C)}`: the output of each task-head block, keyed by the frozen
    hidden-state index its frozen twin produces (block ``i`` -> ``i + 1``). T' drops the prefix
    tokens when the head reads patch tokens only (the official VLM connector)."""
    tokens = hidden[heads.layers.task_input_layer]
    if heads.cfg.resolved_task_input == "patch":
        tokens = tokens[:, heads.spec.num_prefix_tokens :]
    out = {}
    for block_index, block in zip(heads.layers.task_blocks, heads.task_head.blocks, strict=True):
        tokens = block(tokens, None)
        out[block_index + 1] = tokens
    return out


def to_map(tokens: torch.Tensor, grid: tuple[int, int], prefix: int, reduce: str) -> np.ndarray:
    """(T, C) tokens of one image -> (h, w) map of `REDUCTIONS[reduce]` over its patch tokens."""
    patches = tokens[prefix:].float()
    if patches.shape[0] != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0]}x{grid[1]} patch tokens, got {patches.shape[0]}")
    return REDUCTIONS[reduce](patches).reshape(grid).cpu().numpy().astype(np.float32)


@dataclass
class FeatureMapRun:
    images: list[LayerMaps]
    layers: list[int]  # frozen hidden-state indices shown (1..N)
    task_layers: list[int]  # those the task head has a trained twin of
    task_cka: dict[int, float]  # linear CKA (patch tokens, all images) frozen vs task head
    skipped: list[str]


def run_feature_maps(
    backbone: Backbone,
    images: ImageSource,
    *,
    heads: ViTSplitHeads | None = None,
    reduce: str = "pca",
    progress: Callable[[int], None] | None = None,
) -> FeatureMapRun:
    """Maps of every frozen layer (and of `heads`' task-head blocks) for each image."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"--map: one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    layers = list(range(1, backbone.num_blocks + 1))
    prefix = backbone.num_prefix_tokens
    results, frozen_tokens, task_tokens = [], {}, {}
    for name, image in images:
        pixels = backbone.preprocess([image])
        grid = backbone.grid(pixels)
        hidden = all_hidden_states(backbone, pixels)
        maps = LayerMaps(name, _thumbnail(image), {i: to_map(hidden[i][0], grid, prefix, reduce)
                                                   for i in layers})  # fmt: skip
        if heads is not None:
            for layer, tokens in task_head_states(heads, hidden).items():
                task_prefix = prefix if tokens.shape[1] == hidden[layer].shape[1] else 0
                maps.task[layer] = to_map(tokens[0], grid, task_prefix, reduce)
                frozen_tokens.setdefault(layer, []).append(hidden[layer][0, prefix:].cpu())
                task_tokens.setdefault(layer, []).append(tokens[0, task_prefix:].cpu())
        results.append(maps)
        if progress:
            progress(1)
    if not results:
        raise ValueError(f"{images.origin}: no readable image")
    task_cka = {
        layer: linear_cka(torch.cat(frozen_tokens[layer]), torch.cat(task_tokens[layer]))
        for layer in task_tokens
    }
    return FeatureMapRun(results, layers, sorted(task_tokens), task_cka, list(images.skipped))


def _thumbnail(image, size: int = 96) -> np.ndarray:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    return np.asarray(thumb)
