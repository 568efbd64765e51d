"""What a dense task is: the interface the engine, model, predictor and command line call.

A task object owns everything that differs between segmentation, depth and detection: the head
it puts on the fused map (B, C, h, w), its training loss, its transforms and data layout, its
metric, its inference (evaluation and ``dense predict`` overlays), its typed preset (hyper-
parameters; a ``real`` and a ``playground`` instance), the paper's layers per DINOv2 size and its
own ``dense train`` flags. `MapTask` adds the parts shared by tasks whose head outputs a map at
the input resolution (segmentation logits, depth).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from PIL import Image
    from torchvision.models.detection.image_list import ImageList

    from ..datasets import Batch, DenseDataset
    from ..model import DenseModel, DenseSpec

PRESET_KINDS = ("real", "playground")
SPLITS = ("train", "val")

# (num_blocks, hidden_size) -> DINOv2 size letter, for the paper's per-size layers
DINOV2_SIZES = {(12, 384): "S", (12, 768): "B", (24, 1024): "L", (40, 1536): "g"}
FALLBACK_LAYERS = (3, 4, 2)  # (k, n, s) for trunks the paper does not train


def parse_pair(text: str) -> tuple[int, int]:
    """``"N"`` or ``"H,W"`` (or ``"HxW"``) -> (H, W)."""
    parts = [int(v) for v in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return parts[0], parts[1]


def parse_floats(text: str) -> tuple[float, float]:
    """``"A,B"`` -> (A, B)."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected A,B, got {text!r}") from err
    return a, b


P = TypeVar("P", bound="Preset")


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Hyper-parameters of one dense recipe; subclasses add their task's settings.

    Every field but a task's non-flag extras has a ``dense train`` flag of the same name that
    overrides it (`override`). `scale` is the keep-ratio test resize (LONG, SHORT) that
    ``dense predict`` reuses; tasks that rescale in training read it there too.
    """

    iters: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    warmup_iters: int
    grad_clip: float | None
    scale: tuple[int, int] | None = None

    def override(self: P, values: Mapping[str, Any]) -> P:
        """A copy with every field given in `values` (not None) replaced; grad_clip 0 = off."""
        given = {f.name: values[f.name] for f in fields(self) if values.get(f.name) is not None}
        out = replace(self, **given)
        return replace(out, grad_clip=None) if out.grad_clip == 0 else out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any]) -> P:
        """Read `to_dict`'s output (JSON lists back to tuples). Keys of other settings are
        ignored: version-1 run records held every task's settings in one dict."""
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(
                f"{cls.__name__}: incomplete settings {sorted(values)} ({err})"
            ) from err


@dataclass(frozen=True)
class TaskOption:
    """One task-specific ``dense train`` flag; it overrides the preset field named `field`.

    Tasks that share a flag list the same `TaskOption` object; the command line adds it once.
    """

    field: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


CROP_SIZE = TaskOption("crop_size", "training crop N or H,W", parse_pair)


class TaskMetric(Protocol):
    """A metric accumulated one image at a time over an evaluation split."""

    def update(self, prediction: Any, meta: dict) -> None:
        """Add one image: the task's evaluation prediction and the item's meta (ground truth)."""

    def merge(self, other: Any) -> None:
        """Reduce: add another accumulator's state (e.g. a shard evaluated elsewhere)."""

    def compute(self) -> dict:
        """The metrics of everything added so far."""


class DenseTask:
    """One dense task (see the module doc). Subclasses set the class attributes and implement
    every method that raises `NotImplementedError`."""

    name: ClassVar[str]
    playground_set: ClassVar[str]  # subfolder of the playground dense sets (make-data dense)
    paper_layers: ClassVar[Mapping[str, tuple[int, int, int]]]  # DINOv2 size -> (k, n, s)
    presets: ClassVar[Mapping[str, Preset]]  # PRESET_KINDS -> preset
    options: ClassVar[tuple[TaskOption, ...]] = ()
    needs_classes: ClassVar[bool] = False  # DenseSpec.num_classes must be positive
    # names a ``--dataset`` task option chooses from (the first is the default); () = one layout
    data_sets: ClassVar[tuple[str, ...]] = ()
    # the metric `dense train --eval-every` keeps the best checkpoint by: (key, "max" | "min")
    best_metric: ClassVar[tuple[str, str] | None] = None
    # why ``--cache-features`` cannot serve this task (None: it can)
    cache_refusal: ClassVar[str | None] = None
    # training samples padded to a multiple of the patch size (`T.PadToMultiple`) by the data
    # set; False where the task's forward pads each batch itself and keeps the true sizes
    pad_to_patch: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def preset_from_dict(self, data: Mapping[str, Any]) -> Preset:
        """The preset a run recorded (``info["opts"]`` of its checkpoint)."""
        return type(self.presets["real"]).from_dict(data)

    # ---- data set choice (tasks reading several data sets override these) ------------------
    def preset_for(self, kind: str, choice: Mapping[str, Any]) -> Preset:
        """The `kind` preset ``dense train`` starts from before its flags override single values;
        `choice`: the flags given (a task with `data_sets` reads ``choice["dataset"]``)."""
        return self.presets[kind]

    def playground_folder(self, choice: Mapping[str, Any]) -> str:
        """The ``make-data dense`` subfolder of the data set `choice` names."""
        return self.playground_set

    def paper_setting(
        self, preset: Preset | None
    ) -> tuple[Mapping[str, tuple[int, int, int]], str]:
        """(DINOv2 size -> the paper's (k, n, s), what they are for: the task and, where it
        reads several, the data set) for a run with `preset` (None: the default data set)."""
        return self.paper_layers, self.name

    # ---- architecture ----------------------------------------------------------------------
    def check_spec(self, spec: DenseSpec) -> None:
        """Raise a ``ValueError`` naming the `DenseSpec` field this task cannot use."""
        if self.needs_classes and not (spec.num_classes and spec.num_classes > 0):
            raise ValueError(f"DenseSpec.num_classes: {self.name} needs a positive class count")
        self.check_extra(spec.extra)

    def check_extra(self, extra: Mapping[str, Any]) -> None:
        """`DenseSpec.extra` holds task-specific architecture settings; none by default."""
        if extra:
            raise ValueError(
                f"DenseSpec.extra: {self.name} takes no extra settings, got {sorted(extra)}"
            )

    def spec_fields(self, preset: Preset) -> dict:
        """`DenseSpec` fields that come from the preset (e.g. detection's RoI batch)."""
        return {}

    def build_head(self, spec: DenseSpec, channels: int, patch_size: int) -> nn.Module:
        """The trainable head on a fused map (B, `channels`, h, w) of stride `patch_size`."""
        raise NotImplementedError

    def forward(self, model: DenseModel, pixels, targets=None, *, resize: bool = True):
        """`DenseModel.forward` for this task."""
        raise NotImplementedError

    def decode(
        self,
        head: nn.Module,
        fused: torch.Tensor,
        size: tuple[int, int] | None,
        images: ImageList | None = None,
        targets: list[dict] | None = None,
    ):
        """The head on a fused map (B, C, h, w); `size` = (H, W) of the (padded) input."""
        raise NotImplementedError

    # ---- training --------------------------------------------------------------------------
    def loss(self, model: DenseModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one training batch: (scalar loss, its parts as floats, "loss" first).

        Under DDP `batch` is one process's shard (``batch.sharded``): a loss that pools over the
        batch should pool over every shard (``sharded=`` of `vitsplit_vlm.dense.losses`); a
        per-image mean needs nothing, as DDP averages the processes' gradients."""
        raise NotImplementedError

    def train_transforms(self, preset: Preset) -> list:
        raise NotImplementedError

    def eval_transforms(self, preset: Preset) -> list:
        raise NotImplementedError

    def dataset(
        self, root: Path, split: str, preset: Preset, *, transforms: list, **common
    ) -> DenseDataset:
        """The data set at `root` for `split` (one of `SPLITS`) in this task's public layout;
        `common`: mean, std, train, seed for `DenseDataset`."""
        raise NotImplementedError

    # ---- evaluation ------------------------------------------------------------------------
    def eval_settings(
        self, preset: Preset | None = None, sample_size: tuple[int, int] | None = None
    ) -> Any:
        """How `predict` / `metric` run; defaults without a preset. `sample_size`: (H, W) of the
        first validation image (some protocols depend on it)."""
        return None

    def metric(self, model: DenseModel, dataset: DenseDataset, settings: Any) -> TaskMetric:
        """An empty accumulator for evaluating `model` on `dataset`."""
        raise NotImplementedError

    def predict(self, model: DenseModel, pixels: torch.Tensor, meta: dict, settings: Any):
        """Evaluation prediction for one normalised image (1, 3, H, W), as `metric` reads it."""
        raise NotImplementedError

    # ---- dense predict ---------------------------------------------------------------------
    def crop_output(self, output, size: tuple[int, int]):
        """A padded one-image `decode` output cut back to the image's (H, W)."""
        raise NotImplementedError

    def render(
        self, spec: DenseSpec, output, image: Image.Image, scale_xy: tuple[float, float]
    ) -> Image.Image:
        """One `crop_output` result as an overlay on the original `image`; `scale_xy`: how much
        the image was resized before inference (x, y)."""
        raise NotImplementedError


class MapTask(DenseTask):
    """A task whose head maps the fused map to a (B, K, H, W) map at the input resolution."""

    head_resolution_output: ClassVar[bool] = False  # forward(resize=False) allowed

    def forward(self, model: DenseModel, pixels, targets=None, *, resize: bool = True):
        """pixels (B, 3, H, W) -> (B, K, H, W); ``resize=False`` (where allowed) keeps the
        head's own resolution (4x the patch grid)."""
        if not resize and not self.head_resolution_output:
            raise ValueError(
                f"resize=False is for segmentation logits; the {self.name} head resizes itself"
            )
        size = tuple(pixels.shape[-2:]) if resize else None
        return model.decode(model.features(pixels), size)

    def decode(self, head, fused, size, images=None, targets=None):
        return head(fused, size)

    def crop_output(self, output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return output[..., : size[0], : size[1]]
