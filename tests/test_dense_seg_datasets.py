"""Cityscapes and Pascal Context: the playground sets in their layouts, the loaders, bad input, the
``--dataset`` choice with its recipes and paper layers, and CLI train + eval on both sets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vitsplit_vlm.cli import main
from vitsplit_vlm.core.presets import backbone_config
from vitsplit_vlm.dense.datasets import LayoutError, collate
from vitsplit_vlm.dense.recipes import dense_spec
from vitsplit_vlm.dense.seg_datasets import (
    CITYSCAPES_CLASSES,
    PASCAL_CONTEXT_59_CLASSES,
    Cityscapes,
    PascalContext59,
)
from vitsplit_vlm.dense.tasks import default_split_config, get_task
from vitsplit_vlm.dense.tasks.seg_data import SEG_DATASETS
from vitsplit_vlm.params import count
from vitsplit_vlm.playground.dense_sets import SET_WRITERS, write_dense_sets

NUM_TRAIN, NUM_VAL = 6, 3


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(
        tmp_path_factory.mktemp("dense") / "data", num_train=NUM_TRAIN, num_val=NUM_VAL
    )


@pytest.fixture()
def copy_of(tmp_path):
    def make(folder):
        dst = tmp_path / "data" / folder.name  # keeps the playground's manifest out of the copy
        shutil.copytree(folder, dst)
        return dst

    return make


def _voc(root):
    return root / "VOCdevkit" / "VOC2010"


# --------------------------------------------------------------------------- layouts


def test_cityscapes_layout_loads_train_ids(sets):
    root = sets.cityscapes
    for split, num in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        labels = sorted((root / "gtFine" / split).glob("*/*_gtFine_labelTrainIds.png"))
        assert len(images) == len(labels) == num
        ds = Cityscapes(root, split)
        assert len(ds) == num and ds.num_classes == 19 and ds.class_names == CITYSCAPES_CLASSES
    raw = np.asarray(Image.open(labels[0]))
    assert raw.shape == (112, 224) and set(np.unique(raw)) <= {0, 1, 2, 3, 4, 255}
    item = Cityscapes(root, "val", train=False)[0]
    assert np.array_equal(item.seg.numpy(), raw)  # train ids as they are: no reduce_zero_label
    assert item.image.shape == (3, 112, 224) and item.meta["gt_seg"].shape == (112, 224)


def test_pascal_context_layout_reduces_zero_label(sets):
    voc = _voc(sets.pascal_context)
    for split, num in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        ids = (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").read_text().split()
        assert len(ids) == num and all((voc / "JPEGImages" / f"{i}.jpg").is_file() for i in ids)
        for root in (sets.pascal_context, voc):  # a folder holding VOCdevkit/VOC2010, or VOC2010
            ds = PascalContext59(root, split)
            assert len(ds) == num and ds.class_names == PASCAL_CONTEXT_59_CLASSES
    assert len(PASCAL_CONTEXT_59_CLASSES) == 59
    first = ids[0]
    raw = np.asarray(Image.open(voc / "SegmentationClassContext" / f"{first}.png"))
    seg = PascalContext59(voc, "val")[0].seg.numpy()
    assert np.array_equal(seg, np.where(raw == 0, 255, raw.astype(np.int64) - 1))  # 0 ignored
    assert raw.shape[0] != raw.shape[1]  # cut to 3:4 or 4:3, as VOC photos


def test_new_sets_do_not_change_the_others_and_are_added_to_old_folders(sets, tmp_path):
    again = write_dense_sets(tmp_path / "again", num_train=NUM_TRAIN, num_val=NUM_VAL)
    for rel in ("cityscapes/gtFine/val/frankfurt", "pascal_context/VOCdevkit/VOC2010/JPEGImages"):
        for a in sorted((sets.root / rel).iterdir()):
            assert a.read_bytes() == (again.root / rel / a.name).read_bytes(), a
    # a folder written before these sets existed: its manifest lists no sets
    manifest = json.loads((again.root / "manifest.json").read_text())
    assert manifest.pop("sets") == list(SET_WRITERS)
    (again.root / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(again.cityscapes)
    shutil.rmtree(again.pascal_context)
    ade_label = next((again.ade / "annotations" / "training").iterdir())
    stamp = ade_label.stat().st_mtime_ns
    write_dense_sets(again.root, num_train=NUM_TRAIN, num_val=NUM_VAL)
    assert ade_label.stat().st_mtime_ns == stamp  # untouched
    assert len(Cityscapes(again.cityscapes, "train")) == NUM_TRAIN
    assert len(PascalContext59(again.pascal_context, "val")) == NUM_VAL


# --------------------------------------------------------------------------- bad input


def test_cityscapes_bad_samples_are_skipped_and_counted(sets, copy_of):
    root = copy_of(sets.cityscapes)
    labels = sorted((root / "gtFine" / "train").glob("*/*_labelTrainIds.png"))
    labels[0].unlink()  # image without annotation
    bad = np.asarray(Image.open(labels[1])).copy()
    bad[0, 0] = 33  # a raw label id, not a train id
    Image.fromarray(bad).save(labels[1])
    image = sorted((root / "leftImg8bit" / "train").glob("*/*.png"))[2]
    image.write_bytes(b"not a png")
    ds = Cityscapes(root, "train")
    assert len(ds) == NUM_TRAIN - 1 and [s.reason for s in ds.skipped_at_init] == ["no annotation"]
    batch = collate([ds[i] for i in range(len(ds))])
    reasons = sorted(s.reason for s in batch.skipped)
    assert reasons == ["label out of range", "unreadable file"] and len(batch) == NUM_TRAIN - 3
    assert any("value 33 for 19 classes" in s.detail for s in batch.skipped)


def test_cityscapes_without_train_ids_says_how_to_make_them(sets, copy_of):
    root = copy_of(sets.cityscapes)
    for label in (root / "gtFine" / "val").glob("*/*_labelTrainIds.png"):
        label.rename(label.with_name(label.name.replace("labelTrainIds", "labelIds")))
    with pytest.raises(LayoutError, match="createTrainIdLabelImgs"):
        Cityscapes(root, "val")
    shutil.rmtree(root / "gtFine")
    with pytest.raises(LayoutError, match=r"gtFine/train is not a folder \(expected ROOT/leftImg"):
        Cityscapes(root, "train")


def test_pascal_context_bad_samples_and_malformed_split_file(sets, copy_of):
    voc = _voc(copy_of(sets.pascal_context))
    split_file = voc / "ImageSets" / "SegmentationContext" / "train.txt"
    ids = split_file.read_text().split()
    (voc / "SegmentationClassContext" / f"{ids[0]}.png").unlink()
    split_file.write_text("\n".join([*ids, "2009_999999", ""]))  # listed, no image
    bad = np.asarray(Image.open(voc / "SegmentationClassContext" / f"{ids[1]}.png")).copy()
    bad[0, 0] = 60  # the 60-class labels' last id: out of range for 59
    Image.fromarray(bad).save(voc / "SegmentationClassContext" / f"{ids[1]}.png")
    ds = PascalContext59(voc, "train")
    assert sorted(s.reason for s in ds.skipped_at_init) == ["no annotation", "unreadable file"]
    assert len(ds) == NUM_TRAIN - 1 and ds[0].reason == "label out of range"
    split_file.write_text(f"{ids[1]}\n{ids[2]} {ids[3]}\n")
    with pytest.raises(ValueError, match=r"SegmentationContext/train.txt:2: expected one image id"):
        PascalContext59(voc, "train")
    split_file.write_text(f"JPEGImages/{ids[1]}.jpg\n")
    with pytest.raises(ValueError, match=r"train.txt:1"):
        PascalContext59(voc, "train")
    split_file.unlink()
    with pytest.raises(LayoutError, match=r"split file .*train.txt not found \(expected VOC2010"):
        PascalContext59(voc, "train")


def test_wrong_layout_is_one_line_naming_the_expected_layout_and_the_flag(tiny, sets):
    argv = ["dense", "train", "--task", "seg", "--backbone", str(tiny.dinov2), "--iters", "1"]
    with pytest.raises(SystemExit) as err:  # Cityscapes data, ADE20K (the default) expected
        main([*argv, "--data", str(sets.cityscapes)])
    text = str(err.value)
    assert text.startswith("vitsplit-vlm dense train: error: ADE20K: ") and "\n" not in text
    assert "expected ROOT/images/{training,validation}" in text
    assert text.endswith("looks like the cityscapes layout: pass --dataset cityscapes")
    with pytest.raises(SystemExit, match="Pascal Context: split file .* not found"):
        main([*argv, "--dataset", "pascal_context", "--data", str(sets.ade)])
    with pytest.raises(SystemExit, match="--dataset is a seg option; --task depth has none"):
        main([*argv[:3], "depth", *argv[4:], "--dataset", "cityscapes"])


# --------------------------------------------------------------------------- recipes, layers


def test_each_data_set_brings_its_recipes():
    seg = get_task("seg")
    assert list(SEG_DATASETS) == ["ade20k", "cityscapes", "pascal_context"] == list(seg.data_sets)
    assert seg.preset_for("real", {}) is seg.presets["real"]  # ADE20K stays the default
    city, pc = (seg.preset_for("real", {"dataset": name}) for name in seg.data_sets[1:])
    assert (city.iters, city.batch_size, city.lr, city.crop_size) == (20000, 16, 2e-4, (896, 896))
    assert (city.eval_mode, city.eval_stride, city.scale) == ("slide", (512, 512), (2048, 1024))
    assert (pc.iters, pc.batch_size, pc.lr, pc.weight_decay) == (20000, 16, 1e-4, 1e-2)
    assert (pc.crop_size, pc.eval_mode, pc.eval_stride) == ((480, 480), "slide", (320, 320))
    assert (city.num_classes, pc.num_classes) == (19, 59)
    for name in seg.data_sets:
        kinds = {kind: seg.preset_for(kind, {"dataset": name}) for kind in ("real", "playground")}
        assert {p.dataset for p in kinds.values()} == {name}
        assert seg.preset_from_dict(kinds["playground"].to_dict()) == kinds["playground"]
    record = seg.presets["real"].to_dict()
    del record["dataset"]  # a run recorded before --dataset existed read ADE20K
    assert seg.preset_from_dict(record) == seg.presets["real"]


@pytest.mark.parametrize(
    ("dataset", "size", "shape", "layers", "paper_m"),
    [
        ("cityscapes", "L", (24, 1024), (10, 8, 2), 164.1),  # Tab. 10; Tab. 3's count
        ("cityscapes", "B", (12, 768), (5, 5, 7), 55.2),
        ("pascal_context", "L", (24, 1024), (6, 10, 2), 115.8),  # Tab. 10; Tab. 15's count
        ("pascal_context", "B", (12, 768), (4, 4, 8), 47.5),
    ],
)
def test_paper_layers_per_data_set_reach_dense_train_and_params(
    dataset, size, shape, layers, paper_m, capsys
):
    seg = get_task("seg")
    preset = seg.preset_for("real", {"dataset": dataset})
    title = SEG_DATASETS[dataset].title
    cfg, origin = default_split_config("seg", *shape, preset=preset)
    assert (cfg.k, cfg.n, cfg.s) == layers
    assert origin == f"paper setting for seg ({title}) on DINOv2-{size}"
    vision = backbone_config(f"dinov2-{size.lower()}")
    spec, spec_origin = dense_spec(seg, "vitsplit", vision, preset, num_classes=19)
    assert (spec.split.k, spec.split.n, spec.split.s) == layers and spec_origin == origin
    result = count(backbone=f"dinov2-{size.lower()}", task="seg", dataset=dataset)
    assert abs(result["trainable"] / 1e6 - paper_m) <= 0.05 and origin in result["layers"]
    argv = ["params", "--backbone", f"dinov2-{size.lower()}", "--dataset", dataset, "--json"]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out) == result


def test_sizes_without_a_paper_setting_and_the_default_data_set_are_unchanged(capsys):
    city = get_task("seg").preset_for("real", {"dataset": "cityscapes"})
    cfg, origin = default_split_config("seg", 12, 384, preset=city)
    assert (cfg.k, cfg.n, cfg.s) == (
        3,
        4,
        2,
    ) and origin == "default for a 12-block, width-384 trunk"
    assert default_split_config("seg", 24, 1024)[1] == "paper setting for seg on DINOv2-L"
    assert main(["params", "--backbone", "dinov2-s", "--task", "depth", "--dataset", "ade20k"]) == 2
    assert "--dataset ade20k: --task depth reads one data set" in capsys.readouterr().err


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("dataset", "classes"), [("cityscapes", 19), ("pascal_context", 59)])
def test_playground_sets_train_and_evaluate_from_the_cli(
    tiny, sets, dataset, classes, tmp_path, capsys
):
    out = tmp_path / dataset
    data = getattr(sets, dataset)
    argv = ["dense", "train", "--task", "seg", "--dataset", dataset, "--backbone",
            str(tiny.dinov2), "--data", str(data), "--iters", "2", "--batch-size", "2",
            "--log-every", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "metrics.json").read_text())
    playground = get_task("seg").preset_for("playground", {"dataset": dataset})
    assert info["opts"] == json.loads(
        json.dumps({**playground.to_dict(), "iters": 2, "batch_size": 2, "max_eval_images": None})
    )  # --preset auto picked the data set's playground recipe, two flags overrode it
    assert info["steps"] == 2 and len(info["eval"]["IoU"]) == classes
    assert info["skipped"]["total"] == 0
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    capsys.readouterr()
    assert main(["dense", "eval", "--checkpoint", str(out / "checkpoint.pt")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["mIoU"] == round(info["eval"]["mIoU"], 4)  # same data set, same protocol
