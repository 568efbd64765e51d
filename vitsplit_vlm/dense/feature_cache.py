"""``dense train --cache-features DIR``: the frozen trunk's hidden states, computed once.

Only frozen-trunk methods (``vitsplit``, ``linear``) read a frozen trunk, and a cache is only
right when the trunk sees the same pixels every epoch: the default training pipelines draw random
rescales, crops, flips and colour changes, so a cached run refuses them with the reason;
``--no-augment`` swaps each random step for its fixed counterpart (`fixed_pipeline`). An item's
key is the exact preprocessed input (`tensor_key`: values, shape, dtype), so any change in the
image or the preprocessing makes a new entry; the cache belongs to one trunk fingerprint
(`vitsplit_vlm.core.feature_cache`).

Items of a cached set carry a `FrozenHidden` (``{layer: (T, C)}`` + the pixel shape) in place of
the image; `DenseModel.features` runs only the trainable parts on it. Labels still load and
transform as before (they are cheap next to the trunk).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.feature_cache import (
    FeatureCache,
    FrozenHidden,
    build_features,
    hidden_bytes,
    tensor_key,
    trunk_fingerprint,
)
from ..core.trunk import frozen_hidden_states
from . import transforms as T
from .datasets import DenseDataset, Item
from .tasks import TASKS

DETERMINISTIC = (T.Resize, T.PadTo, T.PadToMultiple, T.CenterCrop)


def _fixed(step):
    """The deterministic counterpart of a random step (None: drop the step)."""
    if isinstance(step, T.RandomResize):
        return T.Resize(step.scale)
    if isinstance(step, T.RandomCrop):
        return T.CenterCrop(step.size)
    if isinstance(step, (T.RandomFlip, T.PhotoMetricDistortion, T.ColorAug)):
        return None
    return step


def fixed_pipeline(steps: list) -> list:
    """`steps` with every random step fixed (rescale at ratio 1, centre crop) or dropped (flip,
    colour); ``dense train --no-augment``."""
    return [fixed for fixed in map(_fixed, steps) if fixed is not None]


def random_steps(steps: list) -> list[str]:
    """Names of the steps that are not known to be deterministic (each changes the trunk's input
    from epoch to epoch)."""
    return [type(step).__name__ for step in steps if not isinstance(step, DETERMINISTIC)]


def cache_refusal(method: str, dataset: DenseDataset) -> str | None:
    """Why ``--cache-features`` cannot serve this run (None when it can)."""
    if method == "full":
        return "--cache-features: method 'full' trains the trunk, so its features change every step"
    refusal = TASKS[dataset.task].cache_refusal
    if refusal:
        return f"--cache-features: not supported for {dataset.task} ({refusal})"
    steps = random_steps(dataset.transforms)
    if steps:
        return (
            f"--cache-features: the training pipeline draws {', '.join(steps)} anew every epoch, "
            "so the frozen trunk never sees the same input twice; pass --no-augment to train on "
            "fixed inputs (rescale at ratio 1, centre crop, no flip or colour change)"
        )
    return None


class CachedDenseDataset(torch.utils.data.Dataset):
    """`dataset` whose items hold a `FrozenHidden` instead of the normalised image."""

    def __init__(self, dataset: DenseDataset, cache: FeatureCache) -> None:
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # records, skipped_at_init, set_epoch, ... of the data set
        if name in ("dataset", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not isinstance(item, Item):
            return item  # Skipped: counted by the trainer as before
        key = tensor_key(item.image)
        if key not in self.cache:
            raise KeyError(
                f"{self.dataset.name} item {index} is not in the feature cache "
                f"{self.cache.folder}: its input changed after the cache was built; run again"
            )
        item.image = FrozenHidden(self.cache.get(key), tuple(item.image.shape))
        return item


class _Inputs(torch.utils.data.Dataset):
    """``(key, image | None)`` of the items `indices` (loaded in DataLoader workers); with
    ``keys_only`` just the key ("" for a skipped item)."""

    def __init__(self, dataset: DenseDataset, indices: list[int], keys_only: bool = False) -> None:
        self.dataset, self.indices, self.keys_only = dataset, indices, keys_only

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item = self.dataset[self.indices[index]]
        if not isinstance(item, Item):
            return "" if self.keys_only else ("", None)
        key = tensor_key(item.image)
        return key if self.keys_only else (key, item.image)


def item_keys(dataset: DenseDataset, workers: int = 0) -> list[str]:
    """Every item's key, in order ("" for skipped items): one pass over the data, no trunk."""
    source = _Inputs(dataset, list(range(len(dataset))), keys_only=True)
    loader = torch.utils.data.DataLoader(source, batch_size=32, num_workers=workers,
                                         collate_fn=list)  # fmt: skip
    return [key for keys in loader for key in keys]


def cache_dense_dataset(
    dataset: DenseDataset,
    trunk: torch.nn.Module,
    layers: tuple[int, ...],
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    workers: int = 0,
    batch_size: int = 8,
    log=print,
) -> CachedDenseDataset:
    """Build the entries of `dataset` missing from `folder` (hidden states `layers` of the
    frozen `trunk`); the cached data set."""
    from ..core.trunk import trunk_spec

    cache = FeatureCache(folder, trunk_fingerprint(trunk, layers), log=log)
    keys = item_keys(dataset, workers)
    missing = list({key: i for i, key in enumerate(keys) if key and key not in cache}.values())
    if missing:
        source = _Inputs(dataset, missing)
        first = source[0][1]
        item_bytes = hidden_bytes(trunk_spec(trunk), first.shape, len(layers),
                                  cache.fingerprint["dtype"])  # fmt: skip

        def compute(pixels: torch.Tensor) -> dict[int, torch.Tensor]:
            return frozen_hidden_states(trunk, pixels.to(device), layers)

        build_features(cache, source, compute, item_bytes=item_bytes, batch_size=batch_size,
                       workers=workers, log=log)  # fmt: skip
    return CachedDenseDataset(dataset, cache)
