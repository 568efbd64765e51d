"""A fourth dense task, defined in this file and registered with one line, runs through the real
engine, checkpoints, shared-trunk predictor and ``dense`` command line: adding a task touches no
other module.

The task: per-pixel foreground / background on ADE20K-layout images (the playground's shape
scenes), its foreground classes a task flag of its own (``--fg-values``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel

from vitsplit_vlm.cli import main
from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.checkpoint import TrunkRef, fingerprint, load_dense_model, save_checkpoint
from vitsplit_vlm.dense.datasets import DenseDataset, read_rgb
from vitsplit_vlm.dense.engine import TrainConfig, evaluate, train
from vitsplit_vlm.dense.heads import SegHead
from vitsplit_vlm.dense.inference import predict_seg
from vitsplit_vlm.dense.losses import IGNORE_INDEX, seg_loss
from vitsplit_vlm.dense.metrics import SegMetric
from vitsplit_vlm.dense.model import DenseModel
from vitsplit_vlm.dense.predict import SharedTrunkPredictor, predict_folder
from vitsplit_vlm.dense.recipes import build_dataset, dense_spec, eval_config, first_size
from vitsplit_vlm.dense.tasks import TASKS
from vitsplit_vlm.dense.tasks.base import CROP_SIZE, MapTask, Preset, TaskOption
from vitsplit_vlm.dense.tasks.seg import SegScore
from vitsplit_vlm.dense.transforms import Sample
from vitsplit_vlm.dense.visualize import seg_overlay
from vitsplit_vlm.playground.dense_sets import write_dense_sets

# ----------------------------------------------------------------- the task (one module's worth)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected A,B,..., got {text!r}") from err


FG_VALUES = TaskOption("fg_values", "annotation PNG values that are foreground", _ints)


@dataclass(frozen=True, kw_only=True)
class ForegroundPreset(Preset):
    crop_size: tuple[int, int]
    fg_values: tuple[int, ...] = (2, 3, 4, 5)  # the playground's shapes (1 = background)


class ForegroundSet(DenseDataset):
    """ADE20K layout; target 1 where the annotation holds a foreground value, 0 elsewhere, 255
    where it is 0 ("other")."""

    num_classes = 2
    class_names = ("background", "foreground")

    def __init__(self, root: Path, split: str, *, fg_values: tuple[int, ...], **kwargs) -> None:
        sub = {"train": "training", "val": "validation"}[split]
        images = sorted((Path(root) / "images" / sub).glob("*.jpg"))
        records = [(p, Path(root) / "annotations" / sub / f"{p.stem}.png") for p in images]
        self.fg_values = fg_values
        super().__init__(records, name=f"foreground {root}", **kwargs)

    def load(self, record: tuple[Path, Path]) -> Sample:
        image_path, label_path = record
        with Image.open(label_path) as im:
            label = np.asarray(im)
        fg = np.isin(label, self.fg_values).astype(np.int64)
        seg = np.where(label == 0, IGNORE_INDEX, fg)
        meta = {"path": str(image_path), "ori_size": seg.shape}
        return Sample(read_rgb(image_path), seg=seg, meta=meta)


class ForegroundTask(MapTask):
    name = "fg"
    playground_set = "ade"
    paper_layers = {}  # not a paper task: every trunk gets the fallback layers
    presets = {
        "real": ForegroundPreset(
            iters=20000, batch_size=16, lr=3e-4, weight_decay=1e-2, schedule="poly",
            warmup_iters=1500, grad_clip=None, crop_size=(512, 512), scale=(2048, 512),
        ),
        "playground": ForegroundPreset(
            iters=20, batch_size=4, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=0,
            grad_clip=None, crop_size=(56, 56), scale=(224, 56),
        ),
    }  # fmt: skip
    options = (CROP_SIZE, FG_VALUES)  # --crop-size shared with seg and depth
    needs_classes = True
    head_resolution_output = True

    def build_head(self, spec, channels, patch_size):
        return SegHead(channels, spec.num_classes)

    def loss(self, model, batch):
        loss = seg_loss(model(batch.images, resize=False), batch.seg)
        return loss, {"loss": float(loss.detach())}

    def train_transforms(self, preset):
        return T.seg_train_pipeline(preset.scale, preset.crop_size)

    def eval_transforms(self, preset):
        return T.eval_pipeline(preset.scale)

    def dataset(self, root, split, preset, *, transforms, **common):
        return ForegroundSet(
            root, split, fg_values=preset.fg_values, transforms=transforms, **common
        )

    def metric(self, model, dataset, settings):
        return SegScore(SegMetric(model.spec.num_classes))

    def predict(self, model, pixels, meta, settings):
        return predict_seg(model, pixels, out_size=meta["gt_seg"].shape).argmax(1)[0]

    def render(self, spec, output, image, scale_xy):
        size = (image.height, image.width)
        logits = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
        return seg_overlay(image, logits.argmax(1)[0])


# ----------------------------------------------------------------- registration and runs


@pytest.fixture
def fg(monkeypatch):
    task = ForegroundTask()
    monkeypatch.setitem(TASKS, task.name, task)  # the one registry line
    return task


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=6, num_val=2)


def test_fourth_task_through_engine_checkpoint_and_predictor(fg, tiny, sets, tmp_path):
    trunk = AutoModel.from_pretrained(tiny.dinov2)
    preset = fg.presets["playground"]
    mean, std = T.IMAGENET_MEAN, T.IMAGENET_STD
    train_set = build_dataset(fg, sets.ade, "train", preset, mean, std, train=True)
    val_set = build_dataset(fg, sets.ade, "val", preset, mean, std, train=False)
    spec, origin = dense_spec(fg, "vitsplit", trunk.config, preset, num_classes=2)
    assert origin == "default for a 8-block, width-192 trunk"
    torch.manual_seed(0)
    model = DenseModel(trunk, spec)
    cfg = TrainConfig(iters=8, batch_size=4, lr=1e-3, schedule="constant", log_every=1)
    result = train(model, train_set, cfg, log=None)
    losses = [h["loss"] for h in result.history]
    assert result.steps == 8 and losses[-1] < 0.8 * losses[0], losses
    metrics = evaluate(model, val_set, eval_config(fg, preset, first_size(val_set)))
    assert 0 <= metrics["mIoU"] <= 100 and len(metrics["IoU"]) == 2

    c = trunk.config
    ref = TrunkRef(str(tiny.dinov2), fingerprint(trunk), c.model_type, c.num_hidden_layers,
                   c.hidden_size)  # fmt: skip
    path = save_checkpoint(tmp_path / "fg.pt", model, trunk=ref, mean=mean, std=std)
    loaded, payload = load_dense_model(path)
    assert payload["spec"]["task"] == "fg" and loaded.spec == model.spec
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)

    predictor = SharedTrunkPredictor.from_checkpoints([path])
    images = sorted((sets.ade / "images" / "validation").iterdir())
    written = predict_folder(predictor, images[:1], tmp_path / "pred", scale=preset.scale)
    assert [p.name for p in written] == [f"{images[0].stem}_fg.png"]
    assert Image.open(written[0]).size == Image.open(images[0]).size


def test_fourth_task_through_the_command_line(fg, tiny, sets, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["dense", "train", "--task", "fg", "--backbone", str(tiny.dinov2), "--data",
            str(sets.ade), "--iters", "2", "--batch-size", "2", "--fg-values", "2,3",
            "--crop-size", "56", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "metrics.json").read_text())
    assert info["task"] == "fg" and info["opts"]["fg_values"] == [2, 3]
    assert info["opts"]["iters"] == 2 and "mIoU" in info["eval"]  # playground preset, overridden
    capsys.readouterr()
    assert main(["dense", "eval", "--checkpoint", str(out / "checkpoint.pt")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mIoU"] >= 0
    images = sets.ade / "images" / "validation"
    pred = tmp_path / "pred"
    argv = ["dense", "predict", "--checkpoint", str(out / "checkpoint.pt"), "--images",
            str(images), "--out", str(pred)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in pred.iterdir()) == sorted(
        f"{p.stem}_fg.png" for p in images.iterdir()
    )
    with pytest.raises(SystemExit, match="--fg-values is a fg option; --task seg has none"):
        main(["dense", "train", "--task", "seg", "--fg-values", "2"])
