"""Semantic segmentation in the Cityscapes and Pascal Context 59 layouts (MMSegmentation's
``CityscapesDataset`` and ``PascalContextDataset59``), with the counted skips of `datasets`.

==============  ===============================================================================
Cityscapes      ``ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` with
                ``ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png``: 19 train ids,
                255 ignored. cityscapesscripts' ``createTrainIdLabelImgs`` (what MMSegmentation's
                ``tools/dataset_converters/cityscapes.py`` runs) writes them from the
                ``*_gtFine_labelIds.png`` that ship with the data set.
Pascal Context  ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt`` (one image id per line)
(59 classes)    naming ``VOC2010/JPEGImages/<id>.jpg`` and ``VOC2010/SegmentationClassContext/
                <id>.png`` (label 0 = background, ignored through ``reduce_zero_label``: value k
                is class k-1). ROOT is the ``VOC2010`` folder or one holding
                ``VOCdevkit/VOC2010``. MMSegmentation's ``tools/dataset_converters/
                pascal_context.py`` writes the label PNGs from the Detail API's annotations.
==============  ===============================================================================
"""

from __future__ import annotations

from pathlib import Path

from .datasets import DenseDataset, LayoutError, Skipped, read_seg_pair
from .transforms import Sample

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
PASCAL_CONTEXT_59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood",
)  # fmt: skip
SPLITS = ("train", "val")


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"{name} split must be one of {SPLITS}, got {split!r}")


def _names_for(names: tuple[str, ...], num_classes: int) -> tuple[str, ...] | None:
    """The data set's class names when the class count is its own, else None."""
    return names if num_classes == len(names) else None


# --------------------------------------------------------------------------- Cityscapes


class Cityscapes(DenseDataset):
    """Cityscapes fine annotations as train ids (see the module doc); no reduce_zero_label."""

    task = "seg"
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
    LAYOUT = (
        "ROOT/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png + "
        "ROOT/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png"
    )

    @staticmethod
    def matches(root: Path) -> bool:
        """Whether `root` holds this layout's two top folders."""
        return all((Path(root) / sub).is_dir() for sub in ("leftImg8bit", "gtFine"))

    def __init__(
        self, root: str | Path, split: str = "train", *, num_classes: int | None = None, **kwargs
    ) -> None:
        root = Path(root)
        _check_split("Cityscapes", split)
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise LayoutError(f"Cityscapes: {folder} is not a folder (expected {self.LAYOUT})")
        images = sorted(image_dir.rglob(f"*{self.IMAGE_SUFFIX}"))
        if not images:
            raise LayoutError(f"Cityscapes: no *{self.IMAGE_SUFFIX} under {image_dir}")
        self.num_classes = num_classes or len(CITYSCAPES_CLASSES)
        self.class_names = _names_for(CITYSCAPES_CLASSES, self.num_classes)
        records, skipped = [], []
        for image in images:
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
            label = label_dir / image.parent.relative_to(image_dir) / f"{stem}{self.LABEL_SUFFIX}"
            if label.is_file():
                records.append((image, label))
            else:
                skipped.append(Skipped("no annotation", str(image)))
        if not records:
            self._explain_missing_train_ids(label_dir)
        super().__init__(records, skipped=skipped, name=f"Cityscapes {image_dir}", **kwargs)

    def _explain_missing_train_ids(self, label_dir: Path) -> None:
        """No image has a train-id label: say how to make them when the raw label ids are there."""
        if next(label_dir.rglob("*_gtFine_labelIds.png"), None) is not None:
            raise LayoutError(
                f"Cityscapes: {label_dir} holds *_gtFine_labelIds.png but no "
                f"*{self.LABEL_SUFFIX}; write them with cityscapesscripts' createTrainIdLabelImgs "
                "(MMSegmentation's tools/dataset_converters/cityscapes.py)"
            )

    def load(self, record: tuple[Path, Path]) -> Sample | Skipped:
        image_path, label_path = record
        return read_seg_pair(
            image_path, label_path, num_classes=self.num_classes, reduce_zero_label=False
        )


# --------------------------------------------------------------------------- Pascal Context


def voc2010_root(root: Path) -> Path:
    """`root` itself, or ``root/VOCdevkit/VOC2010`` when that folder exists."""
    nested = root / "VOCdevkit" / "VOC2010"
    return nested if nested.is_dir() else root


def read_split_ids(split_file: Path) -> list[tuple[int, str]]:
    """(line number, image id) of every non-empty line; a line that is not one id (no spaces,
    no path separators, no extension) is a ``ValueError`` naming the file and line."""
    try:
        text = split_file.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{split_file}: not a text file of image ids ({err})") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if len(name.split()) != 1 or any(c in name for c in "/\\") or name.endswith(".jpg"):
            raise ValueError(
                f"{split_file}:{lineno}: expected one image id per line (e.g. 2008_000002), "
                f"got {line!r}"
            )
        ids.append((lineno, name))
    return ids


class PascalContext59(DenseDataset):
    """Pascal Context with 59 classes (see the module doc)."""

    task = "seg"
    LAYOUT = (
        "VOC2010/ImageSets/SegmentationContext/{train,val}.txt + VOC2010/JPEGImages/<id>.jpg + "
        "VOC2010/SegmentationClassContext/<id>.png (ROOT = VOC2010 or a folder holding "
        "VOCdevkit/VOC2010)"
    )

    @staticmethod
    def matches(root: Path) -> bool:
        """Whether `root` (or its ``VOCdevkit/VOC2010``) holds this layout's split folder."""
        return (voc2010_root(Path(root)) / "ImageSets" / "SegmentationContext").is_dir()

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        num_classes: int | None = None,
        reduce_zero_label: bool = True,
        **kwargs,
    ) -> None:
        _check_split("Pascal Context", split)
        voc = voc2010_root(Path(root))
        split_file = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not split_file.is_file():
            raise LayoutError(
                f"Pascal Context: split file {split_file} not found (expected {self.LAYOUT})"
            )
        self.num_classes = num_classes or len(PASCAL_CONTEXT_59_CLASSES)
        self.class_names = _names_for(PASCAL_CONTEXT_59_CLASSES, self.num_classes)
        self.reduce_zero_label = reduce_zero_label
        records, skipped = [], []
        for _, name in read_split_ids(split_file):
            image = voc / "JPEGImages" / f"{name}.jpg"
            label = voc / "SegmentationClassContext" / f"{name}.png"
            if not image.is_file():
                skipped.append(Skipped("unreadable file", str(image), "missing"))
            elif not label.is_file():
                skipped.append(Skipped("no annotation", str(image)))
            else:
                records.append((image, label))
        super().__init__(records, skipped=skipped, name=f"Pascal Context {split_file}", **kwargs)

    def load(self, record: tuple[Path, Path]) -> Sample | Skipped:
        image_path, label_path = record
        return read_seg_pair(
            image_path, label_path, num_classes=self.num_classes,
            reduce_zero_label=self.reduce_zero_label,
        )  # fmt: skip
