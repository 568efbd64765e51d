"""What both analyses read: images (a folder, or the photos scikit-image ships), a backbone
loaded by path, its preprocessing, and every layer's hidden states.

Images are listed first and opened one by one (`ImageSource`), so a run over a large folder holds
one batch in memory, shows a progress bar over images, and skips unreadable files (counted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

# scikit-image's bundled photos (public domain / CC0; in its wheel, no download); grey ones are
# repeated over three channels.
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "text", "page", "cell",
)  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSource:
    """Named images, each opened only when iterated; `skipped` lists the unreadable ones."""

    names: list[str]
    open: Callable[[str], Image.Image]
    origin: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        for name in self.names:
            try:
                yield name, self.open(name)
            except (OSError, ValueError) as err:  # a truncated / non-image file: skip, count
                self.skipped.append(f"{name} ({err})")


def image_source(images: Path | None, *, limit: int | None = None) -> ImageSource:
    """`--images`: a folder (its image files, sorted) or one file; None: scikit-image's photos."""
    if images is None:
        source = _skimage_source()
    else:
        source = _folder_source(Path(images))
    if limit is not None:
        source.names = source.names[:limit]
    return source


def _folder_source(folder: Path) -> ImageSource:
    from vitsplit_vlm.dense.datasets import IMAGE_EXTENSIONS
    from vitsplit_vlm.dense.predict import list_images

    files = list_images(folder)
    if not files:
        raise ValueError(
            f"--images {folder}: no image files in it (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    by_name = {str(p.relative_to(folder)) if folder.is_dir() else p.name: p for p in files}

    def open_file(name: str) -> Image.Image:
        with Image.open(by_name[name]) as im:
            return im.convert("RGB")

    return ImageSource(list(by_name), open_file, str(folder))


def _skimage_source() -> ImageSource:
    try:
        import skimage.data
    except ImportError:
        raise ValueError(
            "no --images given and scikit-image (whose photos are the default) is not installed: "
            "pip install 'vitsplit_vlm[analysis]', or pass --images DIR"
        ) from None

    def open_photo(name: str) -> Image.Image:
        return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")

    return ImageSource(list(SKIMAGE_PHOTOS), open_photo, "scikit-image photos")


# ---- the backbone ---------------------------------------------------------------------------


@dataclass
class Backbone:
    """A vision model loaded by path, with its preprocessing and token layout."""

    model: nn.Module
    path: str
    num_blocks: int
    num_prefix_tokens: int  # CLS (+ registers) before the patch tokens
    patch_size: int
    preprocess: Callable[[list[Image.Image]], torch.Tensor]  # -> (B, 3, H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN  # the normalisation `preprocess` applies
    std: tuple[float, ...] = IMAGENET_STD

    def grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size

    def resize_to(self, size: int) -> None:
        """Preprocess by a square resize to `size` (a multiple of the patch size; position
        embeddings are interpolated) with the same normalisation: finer maps for small models."""
        if size < self.patch_size or size % self.patch_size:
            raise ValueError(f"--size {size}: not a multiple of the patch size {self.patch_size}")
        self.preprocess = lambda images: resize_normalize(images, size, self.mean, self.std)


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> Backbone:
    """`AutoModel.from_pretrained(path)` in eval mode (a CLIP / SigLIP model's vision tower), with
    `AutoImageProcessor` from the same folder, or a square resize to the model's image size and
    ImageNet statistics when the folder has none."""
    from transformers import AutoModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"--backbone {path}: not a Hugging Face model folder (no config.json)")
    model = AutoModel.from_pretrained(str(path))
    return wrap_backbone(model, path, device)


def wrap_backbone(
    model: nn.Module,
    path: str | Path,
    device: torch.device | str,
    *,
    preprocessing: tuple[Callable, tuple, tuple] | None = None,
) -> Backbone:
    """`Backbone` around an already loaded model (the trunk of a checkpoint, for instance);
    `preprocessing` = (images -> pixels, mean, std), by default the folder's (`load_backbone`)."""
    from vitsplit_vlm.core.trunk import SUPPORTED_MODEL_TYPES, trunk_spec, unwrap_vision_model

    if getattr(model.config, "model_type", None) in SUPPORTED_MODEL_TYPES or hasattr(
        model, "vision_model"
    ):
        model = unwrap_vision_model(model)
        spec = trunk_spec(model)
        blocks, prefix, patch = spec.num_blocks, spec.num_prefix_tokens, spec.patch_size
    else:  # any other model with hidden states: read its config
        cfg = model.config
        blocks = cfg.num_hidden_layers
        patch = _as_int(getattr(cfg, "patch_size", None), f"{path}: config has no patch_size")
        prefix = 1 if hasattr(getattr(model, "embeddings", None), "cls_token") else 0
    model = model.to(device).eval().requires_grad_(False)
    preprocess, mean, std = preprocessing or _preprocessor(Path(path), model.config)
    return Backbone(model, str(path), blocks, prefix, patch, preprocess, mean, std)


def _as_int(value, message: str) -> int:
    if value is None:
        raise ValueError(message)
    return value if isinstance(value, int) else int(value[0])


def _preprocessor(path: Path, config) -> tuple[Callable, tuple, tuple]:
    """(images -> pixels, mean, std) from the folder's image processor, else a square resize."""
    if (path / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(str(path))
        mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
        std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
        return (
            lambda images: processor(images=images, return_tensors="pt")["pixel_values"],
            mean,
            std,
        )
    size = _as_int(getattr(config, "image_size", None), f"{path}: no image processor, no size")
    print(f"{path}: no preprocessor_config.json; resizing to {size}x{size} with ImageNet stats")
    return (
        lambda images: resize_normalize(images, size, IMAGENET_MEAN, IMAGENET_STD),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


def resize_normalize(images: list[Image.Image], size: int, mean, std) -> torch.Tensor:
    """PIL images -> (B, 3, size, size), bilinear resize, normalised with `mean` / `std`."""
    arrays = [
        np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255 for im in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


@torch.no_grad()
def all_hidden_states(backbone: Backbone, pixels: torch.Tensor) -> list[torch.Tensor]:
    """`hidden_states[0..N]`, each (B, T, C): the embeddings and every block's output (before
    any final norm)."""
    from vitsplit_vlm.core.trunk import SUPPORTED_MODEL_TYPES, frozen_hidden_states

    model = backbone.model
    pixels = pixels.to(next(model.parameters()).device)
    if model.config.model_type in SUPPORTED_MODEL_TYPES:
        hidden = frozen_hidden_states(model, pixels, range(backbone.num_blocks + 1))
        return [hidden[i] for i in range(backbone.num_blocks + 1)]
    states = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    if states is None or any(h.ndim != 3 or h.shape[1] != states[0].shape[1] for h in states):
        raise ValueError(
            f"{backbone.path}: its hidden states are not token sequences (B, T, C) of one length; "
            "CKA and feature maps need a plain ViT"
        )
    return list(states)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
