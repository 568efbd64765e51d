"""Playground dense sets: shape scenes written in the ADE20K, NYU-v2, COCO 2017, Cityscapes and
Pascal Context layouts.

`write_dense_sets(out)` writes five folders that the real loaders in `vitsplit_vlm.dense`
read unchanged (see `vitsplit_vlm.dense.datasets` and `.seg_datasets` for the layouts):

- ``ade/``: semantic masks. Classes (ADE ``Idx`` = PNG value): 1 background, 2 circle,
  3 square, 4 triangle, 5 cross; 0 marks small grey "clutter" patches, an "other" region that
  ``reduce_zero_label`` ignores as ADE20K does. Images are 112, 140 or 168 px squares.
- ``nyu/``: rendered metric depth, 112x140 (HxW) crops of 140 px scenes, 16-bit PNG in mm.
  The background is a tilted plane (2-8 m) whose grey level darkens with distance; objects
  stand at 1.5-5.5 m, nearer the larger they are; circles bulge as spheres, triangles lean
  back; about a third of the images have a rectangle of missing depth (0).
- ``coco/``: instances with polygons; category ids 1 circle, 2 square, 3 triangle, 5 cross
  (not contiguous, as in COCO).
- ``cityscapes/``: 112x224 (HxW, Cityscapes' 1:2) pairs of 112 px scenes as
  ``*_gtFine_labelTrainIds.png``: train ids 0 background, 1 circle, 2 square, 3 triangle,
  4 cross (the first five of the 19; their Cityscapes names do not apply), 255 on clutter.
- ``pascal_context/VOCdevkit/VOC2010/``: 112-168 px scenes cut to 3:4 or 4:3, JPEG images,
  split files and labels valued as ``ade/`` (0 = clutter, the background that
  ``reduce_zero_label`` ignores; 1..5 become classes 0..4 of the 59).

Every image comes from `vitsplit_vlm.playground.shapes.sample_scene` with its own string-seeded
``random.Random``, so sets are deterministic (and one set's images do not depend on which other
sets are written); object masks are the exact pixels of the object's colour inside its box (the
renderer draws without anti-aliasing and keeps boxes apart).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import BACKGROUND, COLOURS, SHAPES, Scene, SceneObject, sample_scene

GENERATOR_VERSION = 1
SEG_CLASSES = ("background", *SHAPES)  # PNG value = index + 1; 0 = other (ignored)
COCO_CATEGORY_IDS = {"circle": 1, "square": 2, "triangle": 3, "cross": 5}
NYU_FOCAL = 518.8579
CLUTTER = (128, 128, 128)


CITYSCAPES_CITIES = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau")}
CITYSCAPES_IGNORE = 255
VOC2010 = Path("VOCdevkit") / "VOC2010"


@dataclass(frozen=True)
class DenseSetPaths:
    root: Path
    ade: Path
    nyu: Path
    coco: Path
    cityscapes: Path
    pascal_context: Path


def dense_set_paths(out: str | Path) -> DenseSetPaths:
    root = Path(out)
    return DenseSetPaths(
        root, root / "ade", root / "nyu", root / "coco", root / "cityscapes",
        root / "pascal_context",
    )  # fmt: skip


def object_mask(image: np.ndarray, obj: SceneObject) -> np.ndarray:
    """(H, W) bool: pixels of `obj`'s colour inside its box in the rendered `image`."""
    mask = np.zeros(image.shape[:2], bool)
    x0, y0, x1, y1 = obj.bbox
    mask[y0:y1, x0:x1] = (image[y0:y1, x0:x1] == COLOURS[obj.colour]).all(-1)
    return mask


def _add_clutter(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """Grey patches on background pixels only; returns their (H, W) bool mask."""
    size = image.shape[0]
    clutter = np.zeros(image.shape[:2], bool)
    for _ in range(rng.randint(0, 3)):
        w, h = rng.randint(3, max(4, size // 14)), rng.randint(3, max(4, size // 14))
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        region = image[y : y + h, x : x + w]
        if (region == BACKGROUND).all():
            region[:] = CLUTTER
            clutter[y : y + h, x : x + w] = True
    return clutter


# --------------------------------------------------------------------------- ADE20K


def _ade_sample(split: str, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(f"dense-ade-{split}-{seed}-{i}")
    scene = sample_scene(rng, image_size=rng.choice((112, 140, 168)))
    image = np.array(scene.render())
    label = np.full(image.shape[:2], 1, np.uint8)  # background
    for obj in scene.objects:
        label[object_mask(image, obj)] = SEG_CLASSES.index(obj.shape) + 1
    label[_add_clutter(image, rng)] = 0
    return image, label


def write_ade(root: Path, num: dict[str, int], seed: int) -> None:
    for split, sub in (("train", "training"), ("val", "validation")):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        for i in range(num[split]):
            image, label = _ade_sample(split, seed, i)
            stem = f"ADE_{sub[:5]}_{i:08d}"  # ADE_train_... / ADE_valid_...
            Image.fromarray(image).save(root / "images" / sub / f"{stem}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(root / "annotations" / sub / f"{stem}.png")
    rows = ["Idx,Ratio,Train,Val,Name"]
    rows += [f"{k + 1},0,0,0,{name}" for k, name in enumerate(SEG_CLASSES)]
    (root / "objectInfo.csv").write_text("\n".join(rows) + "\n")


def _labelled_scene(rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `size` px scene: image (H, W, 3) uint8, label (H, W) uint8 = `SEG_CLASSES` index, and
    the (H, W) bool mask of its clutter patches."""
    scene = sample_scene(rng, image_size=size)
    image = np.array(scene.render())
    label = np.zeros(image.shape[:2], np.uint8)  # SEG_CLASSES[0]: background
    for obj in scene.objects:
        label[object_mask(image, obj)] = SEG_CLASSES.index(obj.shape)
    return image, label, _add_clutter(image, rng)


# --------------------------------------------------------------------------- Cityscapes


def _cityscapes_sample(split: str, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """A 112x224 image and its train ids: two scenes side by side, clutter 255."""
    rng = random.Random(f"dense-cityscapes-{split}-{seed}-{i}")
    halves = [_labelled_scene(rng, 112) for _ in range(2)]
    image = np.concatenate([h[0] for h in halves], axis=1)
    label = np.concatenate([h[1] for h in halves], axis=1)
    label[np.concatenate([h[2] for h in halves], axis=1)] = CITYSCAPES_IGNORE
    return image, label


def write_cityscapes(root: Path, num: dict[str, int], seed: int) -> None:
    for split, cities in CITYSCAPES_CITIES.items():
        for i in range(num[split]):
            image, label = _cityscapes_sample(split, seed, i)
            city = cities[i % len(cities)]
            name = f"{city}_{i:06d}_000019"  # city_sequence_frame, as Cityscapes names them
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(
                root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
            )
            Image.fromarray(label, mode="L").save(
                root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png"
            )


# --------------------------------------------------------------------------- Pascal Context


def _pascal_context_sample(split: str, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene cut to 3:4 or 4:3 and its labels: 0 clutter, `SEG_CLASSES` index + 1 elsewhere."""
    rng = random.Random(f"dense-pascal_context-{split}-{seed}-{i}")
    size = rng.choice((112, 140, 168))
    image, label, clutter = _labelled_scene(rng, size)
    label = np.where(clutter, 0, label + 1).astype(np.uint8)
    short = size * 3 // 4
    start = rng.randint(0, size - short)
    if rng.random() < 0.5:  # landscape, as most VOC photos
        return image[start : start + short], label[start : start + short]
    return image[:, start : start + short], label[:, start : start + short]


def write_pascal_context(root: Path, num: dict[str, int], seed: int) -> None:
    voc = root / VOC2010
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, year in (("train", 2008), ("val", 2010)):  # ids unique across the two splits
        ids = []
        for i in range(num[split]):
            image, label = _pascal_context_sample(split, seed, i)
            name = f"{year}_{i:06d}"
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(voc / "SegmentationClassContext" / f"{name}.png")
            ids.append(name)
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text(
            "\n".join(ids) + "\n"
        )


# --------------------------------------------------------------------------- NYU-v2


def render_depth(scene: Scene, image: np.ndarray, rng: random.Random) -> np.ndarray:
    """(H, W) float32 metres for a rendered scene; repaints the background grey by depth."""
    size = scene.image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    tilt = rng.uniform(-1.0, 1.0)
    depth = 8.0 - 5.0 * yy + tilt * (xx - 0.5)  # far at the top, near at the bottom
    background = (image == BACKGROUND).all(-1)
    grey = np.clip(250 - 14 * depth, 0, 255).astype(np.uint8)
    image[background] = grey[background][:, None]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        side = (x1 - x0) / size
        d = 1.5 + 40.0 * (0.3 - side)
        mask = object_mask(image, obj)
        if obj.shape == "circle":
            cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2
            rr = np.clip(((xx * (size - 1) - cx) ** 2 + (yy * (size - 1) - cy) ** 2) / r**2, 0, 1)
            obj_depth = d - 0.3 * np.sqrt(1 - rr)
        elif obj.shape == "triangle":
            obj_depth = d + 0.3 * (y1 - yy * (size - 1)) / (y1 - y0)
        else:
            obj_depth = np.full_like(depth, d)
        depth[mask] = obj_depth[mask]
    return depth.astype(np.float32)


def _nyu_sample(split: str, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(f"dense-nyu-{split}-{seed}-{i}")
    scene = sample_scene(rng, image_size=140)
    image = np.array(scene.render())
    depth = render_depth(scene, image, rng)
    image, depth = image[14:126], depth[14:126]  # 112 x 140, NYU's landscape shape
    if rng.random() < 1 / 3:  # a hole in the measurement, as in raw NYU
        h, w = rng.randint(8, 30), rng.randint(8, 40)
        y, x = rng.randint(0, 112 - h), rng.randint(0, 140 - w)
        depth[y : y + h, x : x + w] = 0
    return image, depth


def write_nyu(root: Path, num: dict[str, int], seed: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = []
        for i in range(num["train" if split == "train" else "val"]):
            image, depth = _nyu_sample(split, seed, i)
            scene_dir = f"{split}_scene_{i // 100:04d}"
            (root / scene_dir).mkdir(exist_ok=True)
            rgb, dep = f"{scene_dir}/rgb_{i:05d}.jpg", f"{scene_dir}/sync_depth_{i:05d}.png"
            Image.fromarray(image).save(root / rgb, quality=95)
            mm = np.round(depth * 1000).astype(np.uint16)
            Image.fromarray(mm).save(root / dep)  # 16-bit PNG
            lines.append(f"/{rgb} /{dep} {NYU_FOCAL}")
        (root / f"nyu_{split}.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- COCO


def polygon(obj: SceneObject) -> list[float]:
    """The object's outline as a flat COCO polygon ``[x1, y1, x2, y2, ...]`` (pixel edges)."""
    x0, y0, x1, y1 = (float(v) for v in obj.bbox)
    if obj.shape == "square":
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif obj.shape == "triangle":
        pts = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    elif obj.shape == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        pts = [
            (cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
            for k in range(24)
        ]
    else:  # cross: two bars of width side/3
        side = x1 - x0
        arm = max(1, round(side / 3))
        a0, b0 = x0 + (side - arm) // 2, y0 + (side - arm) // 2
        a1, b1 = a0 + arm, b0 + arm
        pts = [(a0, y0), (a1, y0), (a1, b0), (x1, b0), (x1, b1), (a1, b1), (a1, y1), (a0, y1)]
        pts += [(a0, b1), (x0, b1), (x0, b0), (a0, b0)]
    return [round(c, 2) for p in pts for c in p]


def write_coco(root: Path, num: dict[str, int], seed: int) -> None:
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for name, cid in COCO_CATEGORY_IDS.items()
    ]
    ann_id = 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(num[split]):
            rng = random.Random(f"dense-coco-{split}-{seed}-{i}")
            scene = sample_scene(rng, image_size=112)
            image = np.array(scene.render())
            image_id = i + 1
            name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": 112, "width": 112})
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.bbox
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": COCO_CATEGORY_IDS[obj.shape],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": int(object_mask(image, obj).sum()),
                        "iscrowd": 0,
                        "segmentation": [polygon(obj)],
                    }
                )
                ann_id += 1
        data = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- all sets

Writer = Callable[[Path, dict[str, int], int], None]  # (folder, {"train", "val"} counts, seed)
SET_WRITERS: dict[str, Writer] = {
    "ade": write_ade,
    "nyu": write_nyu,
    "coco": write_coco,
    "cityscapes": write_cityscapes,
    "pascal_context": write_pascal_context,
}
FIRST_SETS = ("ade", "nyu", "coco")  # what a manifest without a "sets" list holds


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sets_done(recorded: dict | None, manifest: dict) -> set[str]:
    """The sets a recorded manifest marks complete for the same generator, version and args."""
    if recorded is None or any(recorded.get(key) != value for key, value in manifest.items()):
        return set()
    return set(recorded.get("sets", FIRST_SETS))


def write_dense_sets(
    out: str | Path, *, num_train: int = 2000, num_val: int = 200, seed: int = 0
) -> DenseSetPaths:
    """Write every set of `SET_WRITERS` under `out`. A no-op when ``manifest.json`` records the
    same arguments and all sets; sets it does not list (e.g. added to the generator since) are
    written alone, leaving the others untouched; other arguments rewrite everything."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need num_train, num_val >= 1, got {num_train}, {num_val}")
    paths = dense_set_paths(out)
    manifest = {
        "generator": "dense",
        "version": GENERATOR_VERSION,
        "args": {"num_train": num_train, "num_val": num_val, "seed": seed},
    }
    manifest_path = paths.root / "manifest.json"
    done = _sets_done(_read_manifest(manifest_path), manifest)
    missing = [name for name in SET_WRITERS if name not in done]
    if not missing:
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    if not done:
        manifest_path.unlink(missing_ok=True)
    num = {"train": num_train, "val": num_val}
    for name in missing:
        shutil.rmtree(paths.root / name, ignore_errors=True)  # a partial earlier attempt
        SET_WRITERS[name](paths.root / name, num, seed)
    manifest["sets"] = list(SET_WRITERS)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks completion
    return paths


def complete_dense_sets(out: str | Path) -> DenseSetPaths:
    """`write_dense_sets` with the arguments `out`'s manifest records (the defaults without
    one): adds the sets a folder written by an earlier generator lacks."""
    recorded = _read_manifest(Path(out) / "manifest.json") or {}
    args = recorded.get("args") if recorded.get("generator") == "dense" else None
    return write_dense_sets(out, **(args or {}))
