"""Crops that are not a multiple of the patch size: the paper's ADE20K crop is 512 and DINOv2's
patch is 14. Training samples are padded bottom/right to the next multiple (518) with labels the
losses ignore, so ``dense train`` and ``--cache-features`` take such crops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.losses import IGNORE_INDEX
from vitsplit_vlm.dense.recipes import build_dataset, trunk_patch_size
from vitsplit_vlm.dense.tasks import get_task
from vitsplit_vlm.playground.dense_sets import write_dense_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=1)


def test_pad_to_multiple_fills_what_the_losses_ignore():
    rng = np.random.default_rng(0)
    sample = T.Sample(
        image=rng.integers(1, 255, (50, 45, 3), dtype=np.uint8),
        seg=rng.integers(0, 5, (50, 45)),
        depth=rng.uniform(1, 5, (50, 45)).astype(np.float32),
        masks=np.ones((2, 50, 45), dtype=np.uint8),
    )
    out = T.PadToMultiple(14)(sample, rng)
    assert out.size == (56, 56)
    np.testing.assert_array_equal(out.image[:50, :45], sample.image)
    np.testing.assert_array_equal(out.seg[:50, :45], sample.seg)
    assert (out.image[50:] == 0).all() and (out.image[:, 45:] == 0).all()
    assert (out.seg[50:] == IGNORE_INDEX).all() and (out.seg[:, 45:] == IGNORE_INDEX).all()
    assert (out.depth[50:] == 0).all() and (out.depth[:, 45:] == 0).all()  # 0 = no measurement
    assert out.masks.shape == (2, 56, 56) and out.masks[:, 50:].sum() == 0
    assert T.PadToMultiple(14)(out, rng) is out  # already a multiple: untouched


@pytest.mark.parametrize("task_name", ["seg", "depth"])
def test_real_presets_reach_the_trunk_as_patch_multiples(sets, task_name):
    """The real presets crop 512x512 (ADE20K) and 416x544 (NYU); on patch 14 every training item
    is padded to the next multiple of 14 (518x518, 420x546), the crop untouched at the top left."""
    task = get_task(task_name)
    preset = task.presets["real"]
    root = getattr(sets, task.playground_set)
    common = dict(mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD, train=True)
    padded = build_dataset(task, root, "train", preset, patch_size=14, **common)
    plain = build_dataset(task, root, "train", preset, **common)
    ch, cw = preset.crop_size
    for i in range(2):
        a, b = padded[i], plain[i]
        H, W = a.image.shape[-2:]
        assert H % 14 == 0 and W % 14 == 0
        h, w = b.image.shape[-2:]
        assert (h, w) == (ch, cw)
        assert (H, W) == (-(-h // 14) * 14, -(-w // 14) * 14)
        np.testing.assert_array_equal(a.image[:, :h, :w].numpy(), b.image.numpy())
        if task_name == "seg":
            assert (a.seg[h:] == IGNORE_INDEX).all() and (a.seg[:, w:] == IGNORE_INDEX).all()
            np.testing.assert_array_equal(a.seg[:h, :w].numpy(), b.seg.numpy())
        else:
            assert (a.depth[..., h:, :] == 0).all() and (a.depth[..., w:] == 0).all()


def test_trunk_patch_size_reads_the_config(tiny, tmp_path):
    assert trunk_patch_size(tiny.dinov2) == 14
    assert trunk_patch_size(tiny.clip) == 14
    with pytest.raises(ValueError, match="--backbone .*missing: no such folder"):
        trunk_patch_size(tmp_path / "missing")
    with pytest.raises(ValueError, match=f"--backbone {tmp_path}: not a Hugging Face vision model"):
        trunk_patch_size(tmp_path)


@pytest.mark.parametrize("cache", [False, True], ids=["plain", "cached"])
def test_dense_train_takes_a_crop_that_is_not_a_patch_multiple(tiny, sets, tmp_path, cache):
    """Crop 50 on the tiny DINOv2 (patch 14), as 512 on DINOv2: training pads to 56."""
    from vitsplit_vlm.cli import main

    argv = ["dense", "train", "--task", "seg", "--data", str(sets.ade), "--backbone",
            str(tiny.dinov2), "--iters", "2", "--batch-size", "2", "--crop-size", "50",
            "--scale", "100,50", "--no-eval", "--out", str(tmp_path / "run")]  # fmt: skip
    if cache:
        argv += ["--no-augment", "--cache-features", str(tmp_path / "cache")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    if cache:
        assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 1


def test_detection_keeps_its_image_sizes(sets):
    """Mask R-CNN pads each batch itself and clips RoIs to each image's true size, so its data
    set pads nothing (the real preset rescales to sizes that are not multiples of 14)."""
    task = get_task("det")
    common = dict(mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD, train=True)
    data = build_dataset(task, sets.coco, "train", task.presets["real"], patch_size=14, **common)
    sizes = [tuple(data[i].image.shape[-2:]) for i in range(len(data))]
    assert not any(isinstance(step, T.PadToMultiple) for step in data.transforms)
    assert any(h % 14 or w % 14 for h, w in sizes)
