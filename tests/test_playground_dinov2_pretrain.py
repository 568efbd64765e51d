"""`make-tiny --pretrain` machinery and the `make-data dense` command, kept to a few steps."""

from __future__ import annotations

import json

import torch
from transformers import AutoModel

from vitsplit_vlm.cli import main
from vitsplit_vlm.dense.checkpoint import fingerprint
from vitsplit_vlm.playground.dinov2_pretrain import (
    MANIFEST,
    layer_cka,
    linear_cka,
    patch_targets,
    pretrain_dinov2,
)


def test_pretrain_is_deterministic_and_loadable(tiny, tmp_path):
    a = pretrain_dinov2(tiny.dinov2, tmp_path / "a", steps=3, batch_size=4, log=None)
    b = pretrain_dinov2(tiny.dinov2, tmp_path / "b", steps=3, batch_size=4, log=None)
    ma, mb = AutoModel.from_pretrained(a), AutoModel.from_pretrained(b)
    assert fingerprint(ma) == fingerprint(mb)
    assert fingerprint(ma) != fingerprint(AutoModel.from_pretrained(tiny.dinov2))
    info = json.loads((a / MANIFEST).read_text())
    assert info["args"]["steps"] == 3 and len(info["cka_with_last"]["pretrained"]) == 8
    assert (a / "preprocessor_config.json").is_file()
    stamp = (a / MANIFEST).stat().st_mtime_ns
    pretrain_dinov2(tiny.dinov2, a, steps=3, batch_size=4, log=None)  # up to date: no-op
    assert (a / MANIFEST).stat().st_mtime_ns == stamp


def test_cka_and_patch_targets():
    x = torch.randn(50, 6)
    assert abs(linear_cka(x, x) - 1) < 1e-6
    assert abs(linear_cka(x, 3 * x + 1) - 1) < 1e-5
    pixels = torch.arange(2 * 3 * 28 * 28, dtype=torch.float32).view(2, 3, 28, 28)
    targets = patch_targets(pixels, 14)
    assert targets.shape == (2, 4, 12)
    assert targets[0, 0, 0] == pixels[0, 0, :7, :7].mean()
    fine = patch_targets(pixels, 14, grid=4)  # the default objective's 4x4 colours per patch
    assert fine.shape == (2, 4, 48)
    assert fine[0, 0, 0] == pixels[0, 0, :4, :4].mean()  # 14 px -> 4 bins: [0, 4), [3, 7), ...
    assert fine[1, 3, 47] == pixels[1, 2, 24:, 24:].mean()  # last patch, last bin, blue


def test_layer_cka_last_is_one(tiny):
    values = layer_cka(AutoModel.from_pretrained(tiny.dinov2), torch.randn(2, 3, 56, 56))
    assert len(values) == 8 and abs(values[-1] - 1) < 1e-5


def test_make_data_dense_command(tmp_path, capsys):
    out = tmp_path / "dense"
    assert (
        main(["make-data", "dense", "--out", str(out), "--num-train", "2", "--num-val", "1"]) == 0
    )
    assert (out / "ade" / "objectInfo.csv").is_file() and (out / "nyu" / "nyu_test.txt").is_file()
    assert (out / "coco" / "annotations" / "instances_val2017.json").is_file()
    assert "COCO" in capsys.readouterr().out


def test_pair_map_equals_drawing_each_object_alone():
    """The pair map read from one render (each object's pixels are the non-background pixels of
    its own box) equals drawing every object alone, two objects of one colour included."""
    import random

    import numpy as np

    from vitsplit_vlm.playground.dinov2_pretrain import BACKGROUND, _pair_index, _pair_map
    from vitsplit_vlm.playground.shapes import Scene, sample_scene

    pairs = _pair_index()
    same_colour = 0
    for i in range(200):
        scene = sample_scene(random.Random(f"pair-map-{i}"))
        expected = np.full((scene.image_size, scene.image_size), len(pairs))
        for obj in scene.objects:
            alone = np.asarray(Scene(scene.image_size, (obj,)).render())
            expected[(alone != np.asarray(BACKGROUND, dtype=np.uint8)).any(-1)] = pairs[
                (obj.shape, obj.colour)
            ]
        assert np.array_equal(_pair_map(scene, pairs), expected), i
        colours = [o.colour for o in scene.objects]
        same_colour += len(set(colours)) < len(colours)
    assert same_colour > 0  # the case the map must keep apart occurred


def test_object_targets_label_every_patch_an_object_touches():
    """Each patch an object touches gets that object's pair (the larger share if two touch it),
    every other patch the background class; the centre of each object is under its own pair."""
    import random

    from vitsplit_vlm.playground.clip_pretrain import object_targets
    from vitsplit_vlm.playground.dinov2_pretrain import _pair_index, _pair_map
    from vitsplit_vlm.playground.shapes import sample_scene

    pairs = _pair_index()
    scene = sample_scene(random.Random(3))
    index = torch.from_numpy(_pair_map(scene, pairs))
    target = object_targets(index[None], 14, len(pairs))[0]
    assert target.shape == (64,)
    for obj in scene.objects:
        x, y = obj.centre  # the centre of a box lies inside its shape
        assert target[(y // 14) * 8 + x // 14] == pairs[(obj.shape, obj.colour)]
    touched = index.view(8, 14, 8, 14).permute(0, 2, 1, 3).reshape(64, -1) < len(pairs)
    assert torch.equal(target < len(pairs), touched.any(-1))  # background exactly where untouched
    assert set(target[target < len(pairs)].tolist()) == {
        pairs[(o.shape, o.colour)] for o in scene.objects
    }


def test_pretrain_clip_is_deterministic_and_skips_when_current(tiny, tmp_path):
    """The VLM tower's pretraining: trains (weights change), records its settings and the
    held-out object-patch accuracy, gives the same weights twice, and is a no-op when current."""
    from vitsplit_vlm.playground.clip_pretrain import pretrain_clip

    a = pretrain_clip(tiny.clip, tmp_path / "a", steps=2, batch_size=2, log=None)
    b = pretrain_clip(tiny.clip, tmp_path / "b", steps=2, batch_size=2, log=None)
    assert fingerprint(AutoModel.from_pretrained(a)) == fingerprint(AutoModel.from_pretrained(b))
    assert fingerprint(AutoModel.from_pretrained(a)) != fingerprint(
        AutoModel.from_pretrained(tiny.clip)
    )
    info = json.loads((a / MANIFEST).read_text())
    assert info["args"]["feature_layer"] == -2 and info["last"]["token"] > 0
    assert 0.0 <= info["object_token_accuracy"] <= 1.0
    assert (a / "preprocessor_config.json").is_file()
    stamp = (a / MANIFEST).stat().st_mtime_ns
    pretrain_clip(tiny.clip, tmp_path / "a", steps=2, batch_size=2, log=None)
    assert (a / MANIFEST).stat().st_mtime_ns == stamp
