"""``--cache_features DIR`` for stage 1 / stage 2: the frozen tower's hidden states, read from disk.

The vision tower is frozen and LLaVA's image preprocessing is deterministic (pad or resize, then
the CLIP processor), so the hidden states the connector reads are computed once
(`vitsplit_vlm.core.feature_cache`) and every epoch reads them back instead of decoding images and
running the tower. An image's key is its file's content hash plus the preprocessing (the image
processor's settings and ``--image_aspect_ratio``); the cache belongs to one tower fingerprint
(weights, config, the connector's layers, dtype) and is rebuilt when any of them changes.

Training items then carry ``pixel_values`` as ``{layer: (T, C)}`` and batches as
``{layer: (B, T, C)}``; `ViTSplitLlavaModel.get_image_features` takes that mapping in place of
pixels and runs only the connector. Losses equal those of the uncached run (fp32: to ~1e-7).

    vitsplit-vlm train ... --cache_features runs/cache/stage1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.feature_cache import (
    FeatureCache,
    build_features,
    content_key,
    hidden_bytes,
    trunk_fingerprint,
)
from ..core.trunk import frozen_hidden_states, trunk_spec
from .connector import _gathered
from .data import BadSample, DataCollator, LazySupervisedDataset, SampleReader, image_path


def preprocessing(image_processor: Any, image_aspect_ratio: str | None) -> str:
    """What turns an image file into pixels, as text: part of every image's key."""
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else {}
    settings.pop("processor_class", None)
    return json.dumps({"processor": settings, "aspect": image_aspect_ratio}, sort_keys=True,
                      default=str)  # fmt: skip


class CachedSampleReader(SampleReader):
    """The dataset's `SampleReader` whose image items are the cached hidden states
    ``{layer: (T, C)}``. Text, labels and bad-sample handling are the reader's: a missing or
    unreadable image is still skipped and counted with its reason."""

    cache: FeatureCache
    preprocessing: str

    @classmethod
    def from_reader(cls, reader: SampleReader, cache: FeatureCache) -> CachedSampleReader:
        out = cls.__new__(cls)
        out.__dict__.update(reader.__dict__)
        out.cache = cache
        out.preprocessing = preprocessing(reader.image_processor, reader.image_aspect_ratio)
        return out

    def image_key(self, path: Path) -> str:
        return content_key(self.cache.file_digest(path), self.preprocessing)

    def pixels(self, path: Path, sample_id: str) -> dict[int, torch.Tensor]:
        key = self.image_key(path) if path.is_file() else None
        if key is None or key not in self.cache:
            super().pixels(path, sample_id)  # a missing or undecodable file: its BadSample
            raise BadSample(
                "missing_image", sample_id,
                f"{path} is not in the feature cache {self.cache.folder} (changed since it was "
                "built?); run again to add it",
            )  # fmt: skip
        return self.cache.get(key)


class CachedSupervisedDataset(LazySupervisedDataset):
    """`LazySupervisedDataset` reading its samples with a `CachedSampleReader`."""

    @classmethod
    def from_dataset(cls, dataset: LazySupervisedDataset, cache: FeatureCache):
        out = cls.__new__(cls)
        out.__dict__.update(dataset.__dict__)
        out.reader = CachedSampleReader.from_reader(dataset.reader, cache)
        return out

    @property
    def cache(self) -> FeatureCache:
        return self.reader.cache


class CachedCollator(DataCollator):
    """`DataCollator` for cached items: ``pixel_values`` becomes ``{layer: (N, T, C)}``."""

    def __call__(self, instances):
        hidden = [x["pixel_values"] for x in instances if "pixel_values" in x]
        text = [{k: v for k, v in x.items() if k != "pixel_values"} for x in instances]
        batch = super().__call__(text)
        if hidden:
            batch["pixel_values"] = {i: torch.stack([h[i] for h in hidden]) for i in hidden[0]}
        return batch


class _ImageSource(Dataset):
    """``(key, pixels | None)`` of the images to compute (loaded in DataLoader workers)."""

    def __init__(self, dataset: LazySupervisedDataset, jobs: list[tuple[str, Path, str]]) -> None:
        self.dataset, self.jobs = dataset, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | None]:
        key, path, sample_id = self.jobs[index]
        try:
            return key, self.dataset.reader.pixels(path, sample_id)
        except BadSample:
            return key, None


def image_jobs(dataset: LazySupervisedDataset, cache: FeatureCache) -> list[tuple[str, Path, str]]:
    """``(key, path, sample id)`` of every existing image file not cached yet, each once."""
    prep = preprocessing(dataset.image_processor, dataset.image_aspect_ratio)
    jobs: dict[str, tuple[str, Path, str]] = {}
    for index, record in enumerate(dataset.records):
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str):
            continue  # no image, or a malformed record: the dataset skips it with its reason
        try:
            path = image_path(
                dataset.image_folder, image, None,
                allow_outside=dataset.reader.allow_images_outside_folder,
            )  # fmt: skip
        except BadSample:
            continue  # missing or outside the folder: the dataset skips it with its reason
        key = content_key(cache.file_digest(path), prep)
        if key not in cache and key not in jobs:
            jobs[key] = (key, path, dataset.sample_id(index))
    return list(jobs.values())


def cache_dataset(
    dataset: LazySupervisedDataset,
    model: torch.nn.Module,
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    workers: int = 0,
    batch_size: int = 16,
    log=print,
    is_main: bool = True,
) -> CachedSupervisedDataset:
    """Build what is missing of `folder` for `model`'s tower and connector; the cached dataset.

    With several processes every one calls this: the tower is gathered together (ZeRO-3
    partitions a loaded tower; gathering is collective), the main process builds, the others
    wait for it and then read the manifest it wrote."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.model.vision_tower
    layers = base.connector.required_layers
    with _gathered(list(tower.parameters())):
        fingerprint = trunk_fingerprint(tower, layers)
        if is_main:
            cache = FeatureCache(folder, fingerprint, log=log)
            jobs = image_jobs(dataset, cache)
            cache.save_files()  # the digests just read: later runs only stat the files
            if jobs:
                _build(cache, dataset, jobs, tower, layers, device, workers, batch_size, log)
        _barrier()
    cache = FeatureCache(folder, fingerprint, log=None)
    return CachedSupervisedDataset.from_dataset(dataset, cache)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _build(cache, dataset, jobs, tower, layers, device, workers, batch_size, log) -> None:
    source = _ImageSource(dataset, jobs)
    first = next((px for _, px in (source[i] for i in range(len(source))) if px is not None), None)
    if first is None:
        return
    spec = trunk_spec(tower)
    item_bytes = hidden_bytes(spec, first.shape, len(layers), cache.fingerprint["dtype"])
    home = next(tower.parameters()).device
    tower.to(device)

    def compute(pixels: torch.Tensor) -> dict[int, torch.Tensor]:
        return frozen_hidden_states(tower, pixels.to(device), layers)

    try:
        build_features(cache, source, compute, item_bytes=item_bytes, batch_size=batch_size,
                       workers=workers, log=log)  # fmt: skip
    finally:
        tower.to(home)
