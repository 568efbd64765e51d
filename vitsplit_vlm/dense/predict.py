"""Prediction with one or several adapters; frozen-trunk adapters share one trunk pass.

`SharedTrunkPredictor` holds adapters trained on the same frozen trunk (checked by fingerprint).
Per image it runs the trunk once, up to the deepest hidden state any adapter needs (the union
of their required layers), and hands those hidden states to every adapter's heads. A ``full``
adapter (its own fine-tuned backbone) runs on its own. Adapters from different trunks are
refused with `TrunkMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList

from vitsplit_vlm.core.trunk import frozen_hidden_states
from vitsplit_vlm.images import open_rgb

from .checkpoint import (
    TrunkMismatchError,
    fingerprint,
    load_dense_model,
    load_trunk,
    read_checkpoint,
)
from .datasets import IMAGE_EXTENSIONS, SkipLog, Skipped
from .model import DenseModel
from .transforms import Sample, normalize, pad_to_multiple, rescale_size, resize


@dataclass
class Adapter:
    name: str
    model: DenseModel
    info: dict


class SharedTrunkPredictor:
    """Several `DenseModel`s; the frozen-trunk ones read one shared trunk pass per image."""

    def __init__(
        self, adapters: list[Adapter], *, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        if not adapters:
            raise ValueError("no adapters given")
        self.adapters = adapters
        self.mean, self.std = mean, std
        shared = [a for a in adapters if a.model.shares_frozen_trunk]
        self.trunk = shared[0].model.trunk_module() if shared else None
        for a in shared[1:]:
            if a.model.trunk_module() is not self.trunk:
                raise ValueError(f"adapter {a.name} was not built on the shared trunk")
        self.layers = tuple(sorted({i for a in shared for i in a.model.required_layers}))
        self.patch_size = adapters[0].model.patch_size

    @classmethod
    def from_checkpoints(
        cls, paths: list[str | Path], *, trunk_path: str | Path | None = None
    ) -> SharedTrunkPredictor:
        """Load adapters; frozen-trunk ones must share one trunk fingerprint."""
        payloads = [read_checkpoint(p) for p in paths]
        frozen = [
            (p, c) for p, c in zip(paths, payloads, strict=True) if c["spec"]["method"] != "full"
        ]
        if frozen:
            first_path, first = frozen[0]
            for path, payload in frozen[1:]:
                if payload["trunk"]["fingerprint"] != first["trunk"]["fingerprint"]:
                    raise TrunkMismatchError(
                        f"adapters trained on different trunks cannot share one: {first_path} "
                        f"(trunk {first['trunk']['path']}, fingerprint "
                        f"{first['trunk']['fingerprint']}) vs {path} (trunk "
                        f"{payload['trunk']['path']}, fingerprint {payload['trunk']['fingerprint']})"
                    )
            source = str(trunk_path or first["trunk"]["path"])
            trunk = load_trunk(source)
            found = fingerprint(trunk)
        adapters = []
        names = _adapter_names([c["spec"]["task"] for c in payloads])
        for path, payload, name in zip(paths, payloads, names, strict=True):
            if payload["spec"]["method"] == "full":
                model, _ = load_dense_model(path)
            else:
                model, _ = load_dense_model(
                    path, trunk=trunk, trunk_path=source, trunk_fingerprint=found
                )
            adapters.append(Adapter(name, model, payload.get("info", {})))
        norm = payloads[0]["normalization"]
        return cls(adapters, mean=tuple(norm["mean"]), std=tuple(norm["std"]))

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, object]:
        """pixels (1, 3, H, W) normalised -> {adapter name: its task's output at (H, W): seg
        logits (1, K, H, W), depth (1, 1, H, W), a detections dict (`DenseTask.crop_output`)}."""
        H, W = pixels.shape[-2:]
        padded = pad_to_multiple(pixels, self.patch_size)
        grid = (padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size)
        hidden = frozen_hidden_states(self.trunk, padded, self.layers) if self.layers else None
        outputs: dict[str, object] = {}
        for adapter in self.adapters:
            model = adapter.model.eval()
            if model.shares_frozen_trunk:
                fused = model.features_from_hidden(hidden, grid)
            else:
                fused = model.features(padded)
            images = ImageList(padded, [(H, W)])
            out = model.decode(fused, tuple(padded.shape[-2:]), images)
            outputs[adapter.name] = model.task.crop_output(out, (H, W))
        return outputs


def _adapter_names(tasks: list[str]) -> list[str]:
    """Each adapter is named after its task; repeated tasks get ``-1``, ``-2``, ..."""
    return [
        t if tasks.count(t) == 1 else f"{t}-{tasks[:i].count(t) + 1}" for i, t in enumerate(tasks)
    ]


def list_images(source: str | Path) -> list[Path]:
    """A folder's images (sorted) or a single image file."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if source.is_file():
        return [source]
    raise ValueError(f"--images {source}: no such file or folder")


def prepare(
    path: Path, scale: tuple[int, int] | None, mean, std
) -> tuple[Image.Image, torch.Tensor, tuple[float, float]]:
    """Image file -> (original PIL image, normalised (1, 3, H', W'), (sx, sy) scale)."""
    image = open_rgb(path)
    sample = Sample(np.asarray(image))
    if scale is not None:
        sample = resize(sample, rescale_size(sample.size, scale))
    sx, sy = sample.meta.get("scale_xy", (1.0, 1.0))
    return image, normalize(sample.image, mean, std)[None], (sx, sy)


def render(
    adapter: Adapter, output, image: Image.Image, scale_xy: tuple[float, float]
) -> Image.Image:
    """One adapter's output as an overlay on the original `image` (`DenseTask.render`)."""
    model = adapter.model
    return model.task.render(model.spec, output, image, scale_xy)


# what PIL raises for a file it cannot decode (empty, truncated, not an image, too large)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def predict_folder(
    predictor: SharedTrunkPredictor,
    images: list[Path],
    out_dir: str | Path,
    *,
    scale: tuple[int, int] | None = None,
    skips: SkipLog | None = None,
) -> list[Path]:
    """Write ``OUT/<image stem>_<adapter>.png`` for every image and adapter (adapters are named
    after their task, e.g. seg, depth, det). An image that cannot be read is skipped and counted
    in `skips` ("unreadable file"); the others are still predicted."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skips = SkipLog() if skips is None else skips
    written = []
    for path in images:
        try:
            image, pixels, scale_xy = prepare(path, scale, predictor.mean, predictor.std)
        except UNREADABLE as err:
            skips.add(Skipped("unreadable file", str(path), str(err)[:200]))
            continue
        outputs = predictor(pixels)
        for adapter in predictor.adapters:
            target = out_dir / f"{path.stem}_{adapter.name}.png"
            render(adapter, outputs[adapter.name], image, scale_xy).save(target)
            written.append(target)
    return written
