"""Per-layer feature maps: the frozen trunk beside a task head read from a real dense checkpoint
or VLM folder, the map reductions, and `vitsplit-vlm analyze feature-maps`'s JSON and PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_analysis_cka import photo_folder
from transformers import AutoModel

from vitsplit_vlm.analysis.feature_maps import REDUCTIONS, first_component
from vitsplit_vlm.cli import main
from vitsplit_vlm.core import ViTSplitConfig
from vitsplit_vlm.dense.checkpoint import TrunkRef, fingerprint, save_checkpoint
from vitsplit_vlm.dense.model import DenseModel, DenseSpec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(folder, count=2):
    return photo_folder(folder, count, size=(70, 84))


def _seg_checkpoint(tiny, path, *, method="vitsplit", train_steps=0, recorded_trunk=None):
    """A seg checkpoint on the tiny DINOv2 (k=3, all tokens into the task head); with
    `train_steps`, that many AdamW steps on a fixed batch (the head and task head learn)."""
    trunk = AutoModel.from_pretrained(tiny.dinov2)
    split = ViTSplitConfig(k=3, n=4, s=2, task_input="all") if method == "vitsplit" else None
    model = DenseModel(trunk, DenseSpec(task="seg", method=method, num_classes=3, split=split))
    if train_steps:
        torch.manual_seed(0)
        pixels, labels = torch.randn(2, 3, 56, 56), torch.randint(0, 3, (2, 56, 56))
        params = [p for ps in model.trainable_groups().values() for p in ps]
        optimizer = torch.optim.AdamW(params, lr=3e-3)
        model.train()
        for _ in range(train_steps):
            loss = torch.nn.functional.cross_entropy(model(pixels), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    recorded = str(recorded_trunk or tiny.dinov2)
    ref = TrunkRef(recorded, fingerprint(model.trunk_module()), "dinov2", 8, 192)
    return save_checkpoint(path, model.eval(), trunk=ref, mean=MEAN, std=STD)


def _run(args):
    assert main(["analyze", "feature-maps", *map(str, args), "--no-progress"]) == 0


def test_reductions():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(40, 6, generator=g) @ torch.diag(torch.tensor([5.0, 1, 1, 1, 1, 1]))
    score = first_component(tokens)
    centred = (tokens - tokens.mean(0)).double().numpy()
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    assert np.allclose(np.abs(score.numpy()), np.abs(centred @ vectors[:, -1]), atol=1e-8)
    assert (score**3).sum() > 0 and torch.allclose(first_component(-tokens), score)
    assert torch.equal(REDUCTIONS["channel0"](tokens), tokens[:, 0])
    assert torch.allclose(REDUCTIONS["norm"](tokens), tokens.norm(dim=1))


def test_untrained_task_head_equals_its_frozen_blocks(tiny, tmp_path):
    """At initialisation the task head is an exact copy fed the same tokens: same maps."""
    from vitsplit_vlm.analysis.feature_maps import load_dense_source, run_feature_maps
    from vitsplit_vlm.analysis.inputs import image_source

    path = _seg_checkpoint(tiny, tmp_path / "seg.pt")
    source = load_dense_source(path, trunk_path=None, device=torch.device("cpu"))
    run = run_feature_maps(source.backbone, image_source(_images(tmp_path / "im")),
                           heads=source.heads, reduce="channel0")  # fmt: skip
    assert run.layers == list(range(1, 9)) and run.task_layers == [6, 7, 8]
    for maps in run.images:
        assert set(maps.task) == {6, 7, 8} and maps.frozen[8].shape == (8, 8)
        for layer in (6, 7, 8):
            np.testing.assert_allclose(maps.task[layer], maps.frozen[layer], atol=1e-5)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in run.task_cka.values())


def test_cli_trained_dense_checkpoint_writes_json_and_png(tiny, tmp_path):
    path = _seg_checkpoint(tiny, tmp_path / "seg.pt", train_steps=4)
    out = tmp_path / "out"
    _run(["--checkpoint", path, "--images", _images(tmp_path / "im", 3), "--out", out,
          "--map", "channel0", "--size", "168"])  # fmt: skip
    record = json.loads((out / "feature_maps.json").read_text())
    assert record["task_head"] == "dense seg seg.pt" and record["task_head_layers"] == [6, 7, 8]
    assert record["images"] == ["img0.png", "img1.png", "img2.png"]
    assert record["grid"] == [12, 12]  # --size 168 / patch 14
    cka = record["task_head_cka_with_frozen"]
    assert cka["8"] < 0.999  # training moved the task head's last block away from the frozen one
    with Image.open(out / "feature_maps.png") as png:
        assert png.size[0] > 400 and png.size[1] > 300


def test_cli_vlm_folder(vlm_dir, tmp_path):
    """The VLM connector's task head (k=1, the block making the penultimate state, patch tokens
    in as in the official connector)."""
    out = tmp_path / "out"
    _run(["--model-path", vlm_dir, "--images", _images(tmp_path / "im", 1), "--out", out])
    record = json.loads((out / "feature_maps.json").read_text())
    assert record["layers"] == [1, 2, 3, 4] and record["task_head_layers"] == [3]
    assert record["task_head"].startswith("VLM ")
    assert (out / "feature_maps.png").stat().st_size > 1000


def test_cli_frozen_only_and_errors(tiny, tmp_path):
    out = tmp_path / "out"
    _run(["--backbone", tiny.clip, "--images", _images(tmp_path / "im", 1), "--out", out,
          "--map", "norm"])  # fmt: skip
    record = json.loads((out / "feature_maps.json").read_text())
    assert record["task_head"] is None and record["task_head_layers"] == []

    linear = _seg_checkpoint(tiny, tmp_path / "linear.pt", method="linear")
    for args, message in [
        (["--checkpoint", tmp_path / "nope.pt"], f"--checkpoint {tmp_path / 'nope.pt'}: no such"),
        (["--checkpoint", linear], f"{linear} (method linear) has no ViT-Split task head"),
        (["--model-path", tmp_path], f"--model-path {tmp_path}: no config.json"),
        (["--backbone", tiny.clip, "--size", "100"], "--size 100: not a multiple of the patch"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["analyze", "feature-maps", *map(str, args), "--out", str(out), "--no-progress"])
        text = str(exit_info.value.code)
        assert text.startswith("vitsplit-vlm analyze feature-maps: error: ") and message in text


def test_cli_moved_trunk_is_named_and_found_with_backbone(tiny, tmp_path):
    moved = _seg_checkpoint(tiny, tmp_path / "seg.pt", recorded_trunk=tmp_path / "gone")
    images = _images(tmp_path / "im", 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "feature-maps", "--checkpoint", str(moved), "--images", str(images),
              "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert f"trained on the trunk {tmp_path / 'gone'}, which is not there; pass --backbone" in str(
        exit_info.value.code
    )
    _run(["--checkpoint", moved, "--backbone", tiny.dinov2, "--images", images,
          "--out", tmp_path / "o"])  # fmt: skip
    record = json.loads((tmp_path / "o" / "feature_maps.json").read_text())
    assert record["task_head_layers"] == [6, 7, 8]
