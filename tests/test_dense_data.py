"""Playground dense sets in the public layouts, the loaders, augmentations and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.coco import COCODetection
from vitsplit_vlm.dense.datasets import ADE20K, NYUDepthV2, SkipLog, collate
from vitsplit_vlm.dense.engine import TrainConfig, train
from vitsplit_vlm.playground.dense_sets import SEG_CLASSES, write_dense_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=8, num_val=3)


@pytest.fixture()
def copy_of(tmp_path):
    def make(folder):
        dst = tmp_path / folder.name
        shutil.copytree(folder, dst)
        return dst

    return make


def test_ade_layout_and_labels(sets):
    images = sorted((sets.ade / "images" / "training").glob("*.jpg"))
    labels = sorted((sets.ade / "annotations" / "training").glob("*.png"))
    assert len(images) == len(labels) == 8
    assert {p.stem for p in images} == {p.stem for p in labels}
    assert len(list((sets.ade / "images" / "validation").glob("*.jpg"))) == 3
    raw = np.asarray(Image.open(labels[0]))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= set(range(len(SEG_CLASSES) + 1))
    ds = ADE20K(sets.ade, "train")
    assert ds.num_classes == 5 and ds.class_names[1] == "circle"
    item = ds[0]
    seg = item.seg.numpy()
    # reduce_zero_label: 0 -> 255, k -> k - 1
    assert np.array_equal(seg, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    assert item.image.shape == (3, *raw.shape)


def test_nyu_layout_16bit_mm(sets):
    lines = (sets.nyu / "nyu_train.txt").read_text().split("\n")
    rgb, depth, focal = lines[0].split()
    assert rgb.endswith(".jpg") and depth.endswith(".png") and float(focal) > 0
    png = Image.open(sets.nyu / depth.lstrip("/"))
    assert png.mode in ("I;16", "I")
    mm = np.asarray(png)
    assert mm.shape == (112, 140) and mm.max() <= 10000 and mm.max() > 1000
    item = NYUDepthV2(sets.nyu, "train")[0]
    assert torch.allclose(item.depth[0], torch.from_numpy(mm.astype(np.float32) / 1000))


def test_coco_layout_and_masks(sets):
    data = json.loads((sets.coco / "annotations" / "instances_train2017.json").read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 5]  # not contiguous, as COCO
    ann = data["annotations"][0]
    assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
    ds = COCODetection(sets.coco, "train")
    assert ds.num_classes == 4 and ds.cat_ids == [1, 2, 3, 5]
    item = ds[0]
    t = item.target
    assert t["boxes"].shape[1] == 4 and t["labels"].min() >= 1 and t["labels"].max() <= 4
    assert t["masks"].shape[0] == len(t["boxes"]) and t["masks"].shape[1:] == (112, 112)
    for box, mask in zip(t["boxes"], t["masks"], strict=True):  # the mask lies in its box
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.max() <= box[3]


def test_generator_is_deterministic_and_idempotent(sets, tmp_path):
    again = write_dense_sets(tmp_path / "again", num_train=8, num_val=3)
    for rel in ("ade/annotations/training", "nyu/train_scene_0000", "coco/annotations"):
        for a in sorted((sets.root / rel).iterdir()):
            assert a.read_bytes() == (again.root / rel / a.name).read_bytes(), a
    stamp = (sets.root / "manifest.json").stat().st_mtime_ns
    write_dense_sets(sets.root, num_train=8, num_val=3)
    assert (sets.root / "manifest.json").stat().st_mtime_ns == stamp


def test_train_pipelines_keep_targets_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((60, 80, 3), np.uint8)
    image[10:30, 20:50] = 200
    seg = np.zeros((60, 80), np.int64)
    seg[10:30, 20:50] = 1
    masks = (seg[None] == 1).astype(np.uint8)
    sample = T.Sample(
        image,
        seg=seg,
        depth=seg.astype(np.float32) + 1,
        boxes=np.array([[20, 10, 50, 30]], np.float32),
        labels=np.array([1]),
        masks=masks,
    )
    for resize in (False, True):
        steps = [T.RandomCrop((40, 40)), T.RandomFlip(0.5)]
        if resize:
            steps.insert(0, T.RandomResize((160, 60), (0.5, 2.0)))
        for _ in range(10):
            out = T.apply(steps, sample, rng)
            bright, labelled = out.image[..., 0] > 100, out.seg == 1
            if resize:  # bilinear image vs nearest labels: they agree up to the border pixels
                assert (bright != labelled).mean() < 0.1
            else:
                assert np.array_equal(bright, labelled)
            assert np.array_equal(labelled, out.depth == 2)
            if len(out.boxes) and out.masks[0].any():
                ys, xs = np.nonzero(out.masks[0])
                x0, y0, x1, y1 = out.boxes[0]
                assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1
                assert ys.max() <= y1
    padded = T.PadTo((64, 64))(sample, rng)
    assert padded.seg[60:].max() == 255 and padded.depth[60:].max() == 0
    photo = T.PhotoMetricDistortion()(sample, rng)
    assert photo.image.dtype == np.uint8 and np.array_equal(photo.seg, sample.seg)


def test_normalize_uses_backbone_stats():
    image = np.full((2, 2, 3), 255, np.uint8)
    x = T.normalize(image, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (3, 2, 2) and torch.allclose(x, torch.full_like(x, 2.0))


# --------------------------------------------------------------------------- bad input


def test_ade_bad_input_is_skipped_and_counted(sets, copy_of):
    root = copy_of(sets.ade)
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    labels[0].unlink()  # image without annotation
    bad = np.asarray(Image.open(labels[1])).copy()
    bad[0, 0] = 77  # class 76 of 5
    Image.fromarray(bad).save(labels[1])
    ds = ADE20K(root, "train")
    assert len(ds) == 7 and [s.reason for s in ds.skipped_at_init] == ["no annotation"]
    skipped = ds[0]  # the corrupted label is now the first record
    assert skipped.reason == "label out of range" and "77" in skipped.detail
    batch = collate([ds[i] for i in range(len(ds))])
    assert len(batch) == 6 and len(batch.skipped) == 1


def test_nyu_bad_input(sets, copy_of):
    root = copy_of(sets.nyu)
    first = (root / "nyu_train.txt").read_text().split("\n")[0].split()
    Image.fromarray(np.zeros((112, 140), np.uint16)).save(root / first[1].lstrip("/"))
    lines = (root / "nyu_train.txt").read_text().split("\n")
    rgb, depth, focal = lines[1].split()
    (root / depth.lstrip("/")).unlink()
    ds = NYUDepthV2(root, "train")
    assert len(ds) == 7 and ds.skipped_at_init[0].reason == "no annotation"
    assert ds[0].reason == "no valid depth"
    (root / "nyu_train.txt").write_text("only_one_field.jpg\n")
    with pytest.raises(ValueError, match=r"nyu_train.txt:1"):
        NYUDepthV2(root, "train")


def test_coco_bad_input(sets, copy_of):
    root = copy_of(sets.coco)
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]  # no instances
    for a in data["annotations"]:
        if a["image_id"] == 2:
            a["category_id"] = 99  # unknown category
    ann_file.write_text(json.dumps(data))
    ds = COCODetection(root, "train")
    reasons = sorted(s.reason for s in ds.skipped_at_init)
    assert reasons == ["label out of range", "no instances"] and len(ds) == 6
    assert len(COCODetection(root, "train", train=False)) == 7  # eval keeps empty images
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match="instances_train2017.json"):
        COCODetection(root, "train")


def test_training_survives_bad_samples(sets, copy_of, tiny):
    from transformers import AutoModel

    from vitsplit_vlm.dense.model import DenseModel, DenseSpec

    root = copy_of(sets.ade)
    for label in sorted((root / "annotations" / "training").glob("*.png"))[:3]:
        Image.fromarray(np.full((112, 112), 200, np.uint8)).save(label)  # size and range wrong
    ds = ADE20K(root, "train", transforms=T.seg_train_pipeline((224, 56), (56, 56)))
    model = DenseModel(AutoModel.from_pretrained(tiny.dinov2), DenseSpec(task="seg", num_classes=5))
    result = train(model, ds, TrainConfig(iters=4, batch_size=4, lr=1e-3), log=None)
    assert result.steps == 4
    assert result.skips.counts["label out of range"] >= 3
    assert "label out of range" in result.skips.summary()
    assert SkipLog().summary() == "no samples skipped"
