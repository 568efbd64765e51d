"""CKA between every pair of a backbone's layers over an image set (paper Fig. 3).

Images go through the frozen backbone one minibatch at a time; each layer's tokens become the
examples of that minibatch (`TOKEN_MODES`) and `MinibatchCKA` accumulates the unbiased HSIC of
every layer pair, so memory stays at one batch whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from .cka import MIN_BATCH, MinibatchCKA
from .inputs import Backbone, ImageSource, all_hidden_states

# --tokens: what one example is
TOKEN_MODES = {
    "patch": "every patch token of every image (CLS / registers dropped)",
    "mean": "the mean of an image's patch tokens",
    "cls": "an image's CLS token",
}


@dataclass
class LayerCKA:
    """The result `run_layer_cka` returns and `to_json` writes."""

    matrix: torch.Tensor  # (L, L)
    layers: list[int]  # hidden_states indices: 0 = embeddings, i = output of block i
    tokens: str
    images: int  # images that entered the estimate
    examples: int  # rows of the Gram matrices, summed over minibatches
    batches: int
    skipped: list[str] = field(default_factory=list)  # unreadable images
    unused: int = 0  # images of a last batch too small for the estimator

    def to_json(self, **extra) -> dict:
        return {
            **extra,
            "layers": self.layers,
            "layer_index": "hidden_states index: 0 = embeddings, i = output of block i",
            "tokens": self.tokens,
            "tokens_meaning": TOKEN_MODES[self.tokens],
            "num_images": self.images,
            "num_examples": self.examples,
            "num_batches": self.batches,
            "images_skipped": self.skipped,
            "images_unused": self.unused,
            "estimator": "linear CKA, minibatch unbiased HSIC (Nguyen et al. 2021)",
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
        }


def pool_tokens(
    hidden: torch.Tensor, mode: str, prefix: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T, C) hidden state -> (n, C) examples for `mode`; `keep` indexes a subset of the
    patch tokens (mode "patch")."""
    if mode == "cls":
        if prefix < 1:
            raise ValueError("--tokens cls: this model has no CLS token; use mean or patch")
        return hidden[:, 0]
    patches = hidden[:, prefix:]
    if mode == "mean":
        return patches.mean(1)
    if keep is not None:
        patches = patches[:, keep]
    return patches.reshape(-1, patches.shape[-1])


def gram_bytes(num_layers: int, examples_per_batch: int) -> int:
    """Memory of one minibatch's Gram matrices (float64)."""
    return num_layers * examples_per_batch**2 * 8


def run_layer_cka(
    backbone: Backbone,
    images: ImageSource,
    *,
    tokens: str = "patch",
    batch_size: int = 8,
    tokens_per_image: int | None = None,
    include_embeddings: bool = False,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> LayerCKA:
    """Linear CKA between all layers of `backbone` over `images` (see the module doc).

    `tokens_per_image` keeps that many patch tokens per image (the same random positions for
    every layer and image, from `seed`) to bound the Gram matrices of mode "patch";
    `progress(n)` is called after each batch of n images.
    """
    if tokens not in TOKEN_MODES:
        raise ValueError(f"--tokens: one of {', '.join(TOKEN_MODES)}, got {tokens!r}")
    if batch_size < (1 if tokens == "patch" else MIN_BATCH):
        raise ValueError(f"--batch-size {batch_size}: too small for --tokens {tokens}")
    if tokens_per_image is not None and tokens_per_image < 1:
        raise ValueError(f"--tokens-per-image {tokens_per_image}: must be at least 1")
    layers = list(range(0 if include_embeddings else 1, backbone.num_blocks + 1))
    prefix = backbone.num_prefix_tokens
    acc = MinibatchCKA(len(layers))
    keep, used, unused = None, 0, 0
    for batch in _batches(images, batch_size):
        hidden = all_hidden_states(backbone, backbone.preprocess(batch))
        if tokens == "patch" and tokens_per_image is not None and keep is None:
            keep = _token_subset(hidden[0].shape[1] - prefix, tokens_per_image, seed)
        feats = [pool_tokens(hidden[i], tokens, prefix, keep) for i in layers]
        if feats[0].shape[0] >= MIN_BATCH:
            acc.update(feats)
            used += len(batch)
        else:  # a last batch too small for the unbiased estimator
            unused += len(batch)
        if progress:
            progress(len(batch))
    if not acc.batches:
        raise ValueError(
            f"{images.origin}: {used + unused} readable image(s), too few for the estimator "
            f"(needs {MIN_BATCH} examples per batch; try --tokens patch)"
        )
    return LayerCKA(
        acc.compute(), layers, tokens, used, acc.examples, acc.batches, images.skipped, unused
    )


def _batches(images: ImageSource, size: int) -> Iterator[list[Image.Image]]:
    """Lists of up to `size` opened images."""
    batch = []
    for _, image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _token_subset(num_patches: int, count: int, seed: int) -> torch.Tensor | None:
    if count >= num_patches:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_patches, generator=generator)[:count].sort().values
