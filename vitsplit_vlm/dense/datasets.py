"""Dense data sets in their public layouts, with counted skips instead of mid-epoch crashes.

=========  =====================================================================================
ADE20K     ``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{...}/<stem>.png``;
           label 0 = "other" (ignored), ``reduce_zero_label`` maps 1..K to 0..K-1 and 0 to 255.
           Class names from ``ROOT/objectInfo*.csv`` when present (ADEChallengeData2016 ships
           ``objectInfo150.csv``).
NYU-v2     ``ROOT/nyu_{train,test}.txt``, one ``rgb_path depth_path [focal]`` per line, paths
           relative to ROOT; depth PNGs are 16-bit millimetres (``depth_scale=1000``), 0 = none.
COCO 2017  ``ROOT/annotations/instances_{train,val}2017.json`` + ``ROOT/{train,val}2017/``
           (`vitsplit_vlm.dense.coco.COCODetection`, built on the base class here).
Cityscapes ``ROOT/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` +
           ``ROOT/gtFine/...`` ``*_gtFine_labelTrainIds.png`` (`vitsplit_vlm.dense.seg_datasets`).
Pascal     ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt`` naming
Context    ``VOC2010/JPEGImages/<id>.jpg`` + ``VOC2010/SegmentationClassContext/<id>.png``
           (`vitsplit_vlm.dense.seg_datasets`).
=========  =====================================================================================

Bad input never stops an epoch. What is visible from the file list (an image without its
annotation, a COCO training image without instances, an unknown category) is dropped when the
set is built; what needs the pixels (a label value out of range, a depth map without valid
pixels, an unreadable file) makes ``__getitem__`` return a `Skipped`, which `collate` removes and
the training loop counts. Both kinds end up in one `SkipLog` report. A malformed index file
(split file line, JSON) is one clear ``ValueError`` naming the file; a root without the layout's
folders is a `LayoutError` naming what was expected.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitsplit_vlm.core.feature_cache import FrozenHidden

from .losses import IGNORE_INDEX
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Sample,
    apply,
    normalize,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class LayoutError(ValueError):
    """The data root does not hold the layout a loader reads; the message names what it expected."""


@dataclass(frozen=True)
class Skipped:
    """A sample left out, and why (one of `SKIP_REASONS`)."""

    reason: str
    path: str
    detail: str = ""


SKIP_REASONS = (
    "no annotation",
    "no instances",
    "label out of range",
    "no valid depth",
    "unreadable file",
)


@dataclass
class SkipLog:
    """Skipped samples by reason, each sample counted once however often it was skipped (every
    epoch, at build time and in the loop): `counts` are distinct paths per reason, `total`
    distinct paths, `events` every skip; `examples` the first few distinct paths of each reason
    (with the detail of their first skip)."""

    paths: dict[str, set[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    events: int = 0
    keep_examples: int = 3

    def add(self, skipped: Skipped) -> None:
        self.events += 1
        seen = self.paths.setdefault(skipped.reason, set())
        if skipped.path in seen:
            return
        seen.add(skipped.path)
        shown = self.examples.setdefault(skipped.reason, [])
        if len(shown) < self.keep_examples:
            note = f" ({skipped.detail})" if skipped.detail else ""
            shown.append(skipped.path + note)

    def extend(self, items: Sequence[Skipped]) -> None:
        for item in items:
            self.add(item)

    def merge(self, other: SkipLog) -> None:
        """Add another log's samples (e.g. another process's); a sample both saw counts once."""
        self.events += other.events
        for reason, paths in other.paths.items():
            mine = self.paths.setdefault(reason, set())
            shown = self.examples.setdefault(reason, [])
            for example in other.examples.get(reason, []):
                if example not in shown and len(shown) < self.keep_examples:
                    shown.append(example)
            mine |= paths

    @classmethod
    def from_dict(cls, data: dict) -> SkipLog:
        """Read `as_dict`'s output (a log saved before `paths` existed keeps its examples)."""
        examples = {reason: list(shown) for reason, shown in data.get("examples", {}).items()}
        paths = {
            reason: set(found)
            for reason, found in (data.get("paths") or _paths_of(examples)).items()
        }
        return cls(paths, examples, int(data.get("events", sum(map(len, paths.values())))))

    @property
    def counts(self) -> Counter:
        """Distinct samples per reason."""
        return Counter({reason: len(found) for reason, found in self.paths.items() if found})

    @property
    def total(self) -> int:
        """Distinct samples skipped (a sample skipped for two reasons counts once)."""
        return len(set().union(*self.paths.values())) if self.paths else 0

    def summary(self) -> str:
        if not self.total:
            return "no samples skipped"
        parts = [
            f"{reason}: {n} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in self.counts.most_common()
        ]
        return f"skipped {self.total} sample(s): " + "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "examples": self.examples,
            "events": self.events,
            "paths": {reason: sorted(found) for reason, found in self.paths.items()},
        }


def _paths_of(examples: dict[str, list[str]]) -> dict[str, list[str]]:
    return {reason: [e.split(" (", 1)[0] for e in shown] for reason, shown in examples.items()}


@dataclass
class Item:
    """A sample ready for the model. image: (3, H, W) normalised; seg: (H, W) int64;
    depth: (1, H, W) metres; target: detection dict (boxes (N, 4) xyxy, labels (N,),
    masks (N, H, W) uint8). `gt_*` hold the untransformed ground truth at evaluation time."""

    image: torch.Tensor
    seg: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    target: dict | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Batch:
    """`sharded`: this is one process's shard of a global batch (set by the engine under DDP);
    losses that pool over the batch pool over every shard (`vitsplit_vlm.dense.losses`)."""

    images: torch.Tensor | list[torch.Tensor]  # (B, 3, H, W), or a list when sizes differ
    seg: torch.Tensor | None
    depth: torch.Tensor | None
    targets: list[dict] | None
    metas: list[dict]
    skipped: list[Skipped]
    sharded: bool = False

    def __len__(self) -> int:
        return len(self.metas)


def collate(items: list[Item | Skipped]) -> Batch:
    """Drop `Skipped` entries (kept in ``batch.skipped``) and stack the rest when sizes agree."""
    skipped = [i for i in items if isinstance(i, Skipped)]
    items = [i for i in items if isinstance(i, Item)]
    if not items:
        return Batch(torch.empty(0, 3, 0, 0), None, None, None, [], skipped)
    images = [i.image for i in items]
    same = len({tuple(im.shape) for im in images}) == 1
    stack = FrozenHidden.stack if isinstance(images[0], FrozenHidden) else torch.stack
    stacked = stack(images) if same else images
    seg = torch.stack([i.seg for i in items]) if items[0].seg is not None and same else None
    depth = torch.stack([i.depth for i in items]) if items[0].depth is not None and same else None
    targets = [i.target for i in items] if items[0].target is not None else None
    return Batch(stacked, seg, depth, targets, [i.meta for i in items], skipped)


class DenseDataset(torch.utils.data.Dataset):
    """Base: a list of records, a transform pipeline, the backbone's normalisation.

    Augmentation randomness comes from ``numpy.random.default_rng((seed, epoch, index))``, so a
    sample is reproducible whatever the worker; call `set_epoch` between epochs.
    """

    task: str = ""
    LAYOUT: str = ""  # what a data root holds, for error messages

    @staticmethod
    def matches(root: Path) -> bool:
        """Whether `root` looks like this loader's layout (for a hint naming the right loader)."""
        return False

    def __init__(
        self,
        records: list,
        *,
        transforms: Sequence = (),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = True,
        seed: int = 0,
        skipped: Sequence[Skipped] = (),
        name: str = "",
    ) -> None:
        self.records = records
        self.transforms = list(transforms)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.skipped_at_init = list(skipped)
        self.name = name
        if not records:
            log = SkipLog()
            log.extend(self.skipped_at_init)
            raise ValueError(f"{name}: no usable samples ({log.summary()})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record) -> Sample | Skipped:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item | Skipped:
        record = self.records[index]
        try:
            sample = self.load(record)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError) as err:  # fmt: skip
            return Skipped("unreadable file", str(_record_path(record)), str(err)[:200])
        if isinstance(sample, Skipped):
            return sample
        gt = sample
        rng = np.random.default_rng((self.seed, self.epoch, index))
        sample = apply(self.transforms, sample, rng)
        return self._item(sample, gt)

    def _item(self, sample: Sample, gt: Sample) -> Item:
        item = Item(normalize(sample.image, self.mean, self.std), meta=dict(sample.meta))
        item.meta["size"] = sample.size
        if sample.seg is not None:
            item.seg = torch.from_numpy(np.array(sample.seg, dtype=np.int64))
        if sample.depth is not None:
            item.depth = torch.from_numpy(np.array(sample.depth, dtype=np.float32))[None]
        if sample.boxes is not None:
            item.target = {
                "boxes": torch.from_numpy(sample.boxes).float().reshape(-1, 4),
                "labels": torch.from_numpy(sample.labels).long(),
                "masks": torch.from_numpy(np.array(sample.masks, dtype=np.uint8)),
            }
        if not self.train:  # evaluation compares with the untransformed ground truth
            if gt.seg is not None:
                item.meta["gt_seg"] = torch.from_numpy(np.array(gt.seg, dtype=np.int64))
            if gt.depth is not None:
                item.meta["gt_depth"] = torch.from_numpy(np.array(gt.depth, dtype=np.float32))[None]
        return item


def _record_path(record) -> Path:
    return record[0] if isinstance(record, tuple) else record["path"]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; high-bit-depth images scaled to 8 bits (`vitsplit_vlm.images`)."""
    from vitsplit_vlm.images import open_rgb

    return np.asarray(open_rgb(path))


def read_seg_pair(
    image_path: Path, label_path: Path, *, num_classes: int, reduce_zero_label: bool
) -> Sample | Skipped:
    """An image (H, W, 3) and its label PNG (H, W) as a segmentation `Sample` (class ids 0..K-1,
    255 ignored), or why it is skipped: a label of another size, a value outside the classes.

    `reduce_zero_label` (MMSegmentation's, for ADE20K and Pascal Context 59): PNG value 0 is
    "other" and becomes 255, value k becomes class k-1.
    """
    image = read_rgb(image_path)
    with Image.open(label_path) as im:
        label = np.asarray(im).astype(np.int64)
    if label.ndim != 2 or label.shape != image.shape[:2]:
        return Skipped(
            "label out of range",
            str(label_path),
            f"label {label.shape} vs image {image.shape[:2]}",
        )
    if reduce_zero_label:
        label = np.where(label == 0, IGNORE_INDEX + 1, label) - 1  # 0 -> 255, k -> k-1
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(label[bad].max()) + int(reduce_zero_label)
        return Skipped(
            "label out of range",
            str(label_path),
            f"value {value} for {num_classes} classes",
        )
    return Sample(image, seg=label, meta={"path": str(image_path), "ori_size": label.shape})


# --------------------------------------------------------------------------- ADE20K

ADE_SPLITS = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
}


def read_class_names(root: Path) -> list[str] | None:
    """Names from ``ROOT/objectInfo*.{csv,txt}`` (ADE's ``Idx Ratio Train Val Name`` table,
    comma- or tab-separated)."""
    tables = sorted([*root.glob("objectInfo*.csv"), *root.glob("objectInfo*.txt")])
    if not tables:
        return None
    with open(tables[0], newline="") as f:
        text = f.read()
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    try:
        rows.sort(key=lambda r: int(r["Idx"]))
        return [r["Name"].split(";")[0].strip() for r in rows]
    except (KeyError, ValueError) as err:
        raise ValueError(f"{tables[0]}: expected columns Idx,...,Name ({err})") from err


class ADE20K(DenseDataset):
    """Semantic segmentation in the ADE20K layout (see the module doc)."""

    task = "seg"
    LAYOUT = "ROOT/images/{training,validation}/*.jpg + ROOT/annotations/{...}/<stem>.png"

    @staticmethod
    def matches(root: Path) -> bool:
        """Whether `root` holds this layout's training folders."""
        return all((Path(root) / sub / "training").is_dir() for sub in ("images", "annotations"))

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        num_classes: int | None = None,
        reduce_zero_label: bool = True,
        **kwargs,
    ) -> None:
        root = Path(root)
        if split not in ADE_SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(ADE_SPLITS)}, got {split!r}")
        sub = ADE_SPLITS[split]
        image_dir, label_dir = root / "images" / sub, root / "annotations" / sub
        if not image_dir.is_dir():
            raise LayoutError(f"ADE20K: {image_dir} is not a folder (expected {self.LAYOUT})")
        self.class_names = read_class_names(root)
        if num_classes is None:
            num_classes = len(self.class_names) if self.class_names else 150
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        records, skipped = [], []
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            label = label_dir / f"{image.stem}.png"
            if label.is_file():
                records.append((image, label))
            else:
                skipped.append(Skipped("no annotation", str(image)))
        super().__init__(records, skipped=skipped, name=f"ADE20K {image_dir}", **kwargs)

    def load(self, record: tuple[Path, Path]) -> Sample | Skipped:
        image_path, label_path = record
        return read_seg_pair(
            image_path, label_path, num_classes=self.num_classes,
            reduce_zero_label=self.reduce_zero_label,
        )  # fmt: skip


# --------------------------------------------------------------------------- NYU-v2


class NYUDepthV2(DenseDataset):
    """Monocular depth in the NYU-v2 split-file layout (see the module doc)."""

    task = "depth"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        split_file: str | Path | None = None,
        depth_scale: float = 1000.0,
        max_depth: float = 10.0,
        **kwargs,
    ) -> None:
        root = Path(root)
        split_file = Path(split_file) if split_file else root / f"nyu_{split}.txt"
        if not split_file.is_file():
            raise ValueError(f"NYU-v2: split file {split_file} not found")
        self.depth_scale = depth_scale
        self.max_depth = max_depth
        records, skipped = [], []
        for lineno, line in enumerate(split_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (2, 3):
                raise ValueError(
                    f"{split_file}:{lineno}: expected 'rgb_path depth_path [focal]', got {line!r}"
                )
            rgb, depth = (root / f.lstrip("/") for f in fields[:2])
            if not rgb.is_file():
                skipped.append(Skipped("unreadable file", str(rgb), "missing"))
            elif not depth.is_file():
                skipped.append(Skipped("no annotation", str(rgb), f"{depth} missing"))
            else:
                records.append((rgb, depth))
        super().__init__(records, skipped=skipped, name=f"NYU-v2 {split_file}", **kwargs)

    def load(self, record: tuple[Path, Path]) -> Sample | Skipped:
        rgb_path, depth_path = record
        image = read_rgb(rgb_path)
        with Image.open(depth_path) as im:
            raw = np.asarray(im)
        depth = raw.astype(np.float32) / self.depth_scale
        if depth.ndim != 2 or depth.shape != image.shape[:2]:
            return Skipped(
                "unreadable file", str(depth_path), f"depth {depth.shape} vs {image.shape[:2]}"
            )
        if not ((depth > 0) & (depth <= self.max_depth)).any():
            return Skipped("no valid depth", str(depth_path))
        return Sample(image, depth=depth, meta={"path": str(rgb_path), "ori_size": depth.shape})
