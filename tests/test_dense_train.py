"""Training steps, checkpoints (trainable parts + trunk fingerprint), shared-trunk prediction,
and the `vitsplit-vlm dense` command line, on the tiny DINOv2 and small playground sets."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList
from transformers import AutoModel

from vitsplit_vlm.cli import main
from vitsplit_vlm.core import ViTSplitConfig
from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.checkpoint import (
    TrunkMismatchError,
    TrunkRef,
    fingerprint,
    load_dense_model,
    save_checkpoint,
)
from vitsplit_vlm.dense.coco import COCODetection
from vitsplit_vlm.dense.datasets import ADE20K, NYUDepthV2
from vitsplit_vlm.dense.engine import TrainConfig, lr_factor, train
from vitsplit_vlm.dense.model import DenseModel, DenseSpec
from vitsplit_vlm.dense.predict import SharedTrunkPredictor
from vitsplit_vlm.playground.dense_sets import write_dense_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=2)


@pytest.fixture(scope="module")
def trunk(tiny):
    return AutoModel.from_pretrained(tiny.dinov2)


def _ref(tiny, trunk) -> TrunkRef:
    c = trunk.config
    return TrunkRef(
        str(tiny.dinov2), fingerprint(trunk), c.model_type, c.num_hidden_layers, c.hidden_size
    )


def _train(model, dataset, iters, lr, batch_size=4):
    cfg = TrainConfig(iters=iters, batch_size=batch_size, lr=lr, schedule="constant", log_every=1)
    return train(model, dataset, cfg, log=None)


def test_seg_steps_reduce_loss(sets, trunk):
    ds = ADE20K(sets.ade, "train", transforms=[T.Resize((56, 56))])
    torch.manual_seed(0)
    model = DenseModel(trunk, DenseSpec(task="seg", num_classes=5))
    result = _train(model, ds, 12, 1e-3)
    losses = [h["loss"] for h in result.history]
    assert result.steps == 12 and losses[-1] < 0.7 * losses[0], losses


def test_depth_steps_reduce_loss(sets, trunk):
    ds = NYUDepthV2(sets.nyu, "train", transforms=[T.Resize((70, 56))])
    torch.manual_seed(0)
    model = DenseModel(trunk, DenseSpec(task="depth"))
    result = _train(model, ds, 12, 1e-3)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_det_steps_reduce_loss(sets, trunk):
    ds = COCODetection(sets.coco, "train")
    torch.manual_seed(0)
    spec = DenseSpec(task="det", num_classes=4, extra={"rcnn": {"box_batch_size_per_image": 32}})
    model = DenseModel(trunk, spec)
    result = _train(model, ds, 6, 3e-4, batch_size=2)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_schedules():
    poly = lr_factor(TrainConfig(iters=100, schedule="poly", warmup_iters=10))
    assert poly(0) == pytest.approx(1e-6) and poly(10) == pytest.approx(0.9**0.9)
    assert poly(100) == 0.0
    cycle = lr_factor(TrainConfig(iters=100, schedule="onecycle"))
    assert cycle(0) == pytest.approx(1 / 25) and max(cycle(i) for i in range(100)) == pytest.approx(
        1
    )
    assert cycle(99) == pytest.approx(1 / 2500)
    step = lr_factor(TrainConfig(iters=120, schedule="step"))
    assert (step(79), step(80), step(109), step(110)) == (
        1.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
        pytest.approx(0.01),
    )


def test_task_head_lr_multiplier(trunk):
    from vitsplit_vlm.dense.engine import build_optimizer

    model = DenseModel(trunk, DenseSpec(task="depth"))
    opt = build_optimizer(model, TrainConfig(lr=1e-3, task_head_lr_mult=0.1))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {
        "task_head": pytest.approx(1e-4),
        "prior_head": 1e-3,
        "fusion": 1e-3,
        "head": 1e-3,
    }


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_trunk_refusal(tiny, trunk, tmp_path):
    torch.manual_seed(0)
    split = ViTSplitConfig(k=2, n=3, s=2)
    model = DenseModel(trunk, DenseSpec(task="seg", num_classes=5, split=split)).eval()
    with torch.no_grad():
        model.head.norm.running_mean.uniform_()  # buffers travel too
    path = save_checkpoint(tmp_path / "seg.pt", model, trunk=_ref(tiny, trunk), mean=(0.5,) * 3,
                           std=(0.5,) * 3)  # fmt: skip
    payload = torch.load(path, weights_only=True)
    assert not [k for k in payload["state_dict"] if k.startswith("split.trunk.")]
    trunk_numel = sum(p.numel() for p in trunk.parameters())
    assert sum(v.numel() for v in payload["state_dict"].values()) < trunk_numel
    loaded, _ = load_dense_model(path)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)

    other = AutoModel.from_pretrained(tiny.dinov2)
    with torch.no_grad():
        other.encoder.layer[0].mlp.fc1.weight.mul_(1.01)
    other.save_pretrained(tmp_path / "other-trunk")
    with pytest.raises(TrunkMismatchError, match="fingerprint"):
        load_dense_model(path, trunk_path=tmp_path / "other-trunk")


def test_version_1_checkpoints_still_load(tiny, trunk, tmp_path):
    """Version 1 kept the ViT-Split settings as flat spec fields; they load into `split`."""
    from vitsplit_vlm.dense.checkpoint import upgrade_spec_v1

    split = ViTSplitConfig(
        k=2, n=3, s=1, components=("prior", "task"), deform_offset_init="default"
    )
    torch.manual_seed(0)
    model = DenseModel(trunk, DenseSpec(task="seg", num_classes=5, split=split)).eval()
    path = save_checkpoint(tmp_path / "v2.pt", model, trunk=_ref(tiny, trunk), mean=(0.5,) * 3,
                           std=(0.5,) * 3)  # fmt: skip
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == 2 and payload["spec"]["split"] == split.to_dict()
    v1_spec = {"task": "seg", "method": "vitsplit", "k": 2, "n": 3, "s": 1,
               "selection": "uniform", "components": ["prior", "task"],
               "deform_offset_init": "default", "num_classes": 5, "class_names": None,
               "min_depth": 0.001, "max_depth": 10.0, "extra": {}}  # fmt: skip
    torch.save({**payload, "version": 1, "spec": v1_spec}, tmp_path / "v1.pt")
    loaded, _ = load_dense_model(tmp_path / "v1.pt")
    assert loaded.spec == model.spec
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    linear = DenseSpec.from_dict(upgrade_spec_v1({**v1_spec, "method": "linear"}))
    assert linear.split == split.with_(components=())
    full = DenseSpec.from_dict(upgrade_spec_v1({**v1_spec, "task": "depth", "method": "full"}))
    assert full.split is None
    torch.save({**payload, "version": 3}, tmp_path / "v3.pt")
    with pytest.raises(ValueError, match="checkpoint version 3, expected one of"):
        load_dense_model(tmp_path / "v3.pt")


def test_full_checkpoint_keeps_its_backbone(tiny, tmp_path):
    trunk = AutoModel.from_pretrained(tiny.dinov2)
    model = DenseModel(trunk, DenseSpec(task="depth", method="full")).eval()
    ref = _ref(tiny, AutoModel.from_pretrained(tiny.dinov2))
    with torch.no_grad():
        trunk.encoder.layer[3].attention.q_proj.weight.add_(0.1)  # "fine-tuned"
    path = save_checkpoint(tmp_path / "full.pt", model, trunk=ref, mean=(0,) * 3, std=(1,) * 3)
    loaded, _ = load_dense_model(path)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


# --------------------------------------------------------------------------- shared trunk


def _adapters(tiny, trunk, tmp_path):
    specs = {
        "seg": DenseSpec(task="seg", num_classes=5, split=ViTSplitConfig(k=3, n=4, s=2)),
        "depth": DenseSpec(task="depth", method="linear"),
        "det": DenseSpec(
            task="det",
            num_classes=4,
            split=ViTSplitConfig(k=2, n=2, s=1),
            class_names=("a", "b", "c", "d"),
        ),
    }
    paths = []
    for name, spec in specs.items():
        torch.manual_seed(0)
        model = DenseModel(trunk, spec).eval()
        ref = _ref(tiny, trunk)
        paths.append(save_checkpoint(tmp_path / f"{name}.pt", model, trunk=ref, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))  # fmt: skip
    return paths


def test_shared_trunk_runs_once_per_image(tiny, trunk, tmp_path):
    paths = _adapters(tiny, trunk, tmp_path)
    predictor = SharedTrunkPredictor.from_checkpoints(paths)
    # seg: prior blocks 2,3,5,7 -> states 3,4,6,8, task input 5; depth (linear): 8;
    # det: prior blocks 1,7 -> states 2,8, task input 6
    assert predictor.layers == (2, 3, 4, 5, 6, 8)
    calls = []
    blocks = predictor.trunk.encoder.layer
    hooks = [
        b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(blocks)
    ]
    x = torch.randn(1, 3, 60, 75)
    outputs = predictor(x)
    assert calls == list(range(8))  # each block once, for three adapters
    calls.clear()
    for adapter in predictor.adapters:  # each alone: same outputs, but its own trunk pass
        alone = adapter.model.eval()
        if adapter.model.spec.task == "det":
            with torch.no_grad():
                own = alone(ImageList(T.pad_to_multiple(x, 14), [(60, 75)]))[0]
            assert len(own["scores"]) > 0
            assert torch.allclose(own["scores"], outputs[adapter.name]["scores"], atol=1e-5)
        else:
            with torch.no_grad():
                own = alone(T.pad_to_multiple(x, 14))[..., :60, :75]
            assert torch.allclose(own, outputs[adapter.name], atol=1e-5)
    for h in hooks:
        h.remove()
    assert len(calls) > 8
    assert outputs["seg"].shape == (1, 5, 60, 75) and outputs["depth"].shape == (1, 1, 60, 75)


def test_shared_trunk_refuses_other_trunks(tiny, trunk, tmp_path):
    seg_path = _adapters(tiny, trunk, tmp_path)[0]
    other = AutoModel.from_pretrained(tiny.dinov2)
    with torch.no_grad():
        other.embeddings.cls_token.add_(1.0)
    model = DenseModel(other, DenseSpec(task="depth"))
    other_path = save_checkpoint(tmp_path / "other.pt", model, trunk=_ref(tiny, other), mean=(0,) * 3, std=(1,) * 3)  # fmt: skip
    with pytest.raises(TrunkMismatchError, match="different trunks") as err:
        SharedTrunkPredictor.from_checkpoints([seg_path, other_path])
    assert "seg.pt" in str(err.value) and "other.pt" in str(err.value)


# --------------------------------------------------------------------------- command line


def test_cli_train_eval_predict(tiny, sets, tmp_path, capsys):
    common = [
        "--backbone",
        str(tiny.dinov2),
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--log-every",
        "1",
    ]
    seg_out, det_out = tmp_path / "seg", tmp_path / "det"
    assert main(["dense", "train", "--task", "seg", "--data", str(sets.ade), "--out", str(seg_out),
                 "--crop-size", "56", "--scale", "224,56", "--eval-mode", "slide",
                 "--eval-stride", "28", "--checkpoint-head", *common]) == 0  # fmt: skip
    metrics = json.loads((seg_out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "mIoU" in metrics["eval"]
    assert metrics["train"]["checkpoint_head"] is True
    assert main(["dense", "train", "--task", "det", "--data", str(sets.coco), "--out", str(det_out),
                 "--scale", "56,56", "--roi-batch", "16", "--k", "2", "--n", "2", *common]) == 0  # fmt: skip
    assert "bbox_mAP" in json.loads((det_out / "metrics.json").read_text())["eval"]
    capsys.readouterr()
    assert main(["dense", "eval", "--checkpoint", str(seg_out / "checkpoint.pt")]) == 0
    assert "mIoU" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    images = sets.ade / "images" / "validation"
    adapters = f"{seg_out / 'checkpoint.pt'},{det_out / 'checkpoint.pt'}"
    pred = tmp_path / "pred"
    assert main(["dense", "predict", "--adapters", adapters, "--images", str(images),
                 "--out", str(pred)]) == 0  # fmt: skip
    written = sorted(p.name for p in pred.iterdir())
    assert len(written) == 4 and all(name.endswith(".png") for name in written)
    first = sorted(images.iterdir())[0]
    assert Image.open(pred / f"{first.stem}_seg.png").size == Image.open(first).size
    assert (pred / f"{first.stem}_det.png").is_file()


def _layers(task: str, num_blocks: int, hidden_size: int) -> tuple[int, int, int | None]:
    from vitsplit_vlm.dense.tasks import default_split_config

    cfg, _ = default_split_config(task, num_blocks, hidden_size)
    return cfg.k, cfg.n, cfg.s


def test_layer_defaults_follow_the_paper_per_task_and_size():
    from vitsplit_vlm.dense.tasks import default_split_config

    assert _layers("seg", 12, 384) == (3, 4, 2)
    assert _layers("seg", 24, 1024) == (4, 8, 2)
    assert _layers("depth", 24, 1024) == (3, 4, 6)
    assert default_split_config("det", 12, 768) == (
        ViTSplitConfig(k=11, n=5, s=2),
        "paper setting for det on DINOv2-B",
    )
    assert _layers("det", 24, 1024) == (23, 8, 2)
    # the tiny playground trunk (8 blocks, width 192) and trunks the paper never trained
    assert _layers("det", 8, 192) == (3, 4, 2)
    assert _layers("seg", 40, 1536) == (3, 4, 2)
    assert _layers("seg", 3, 64) == (2, 2, 1)  # clipped: a frozen block, 2 priors


@pytest.mark.parametrize("task", ["seg", "depth", "det"])
def test_paper_layer_defaults_train_on_the_dinov2_s_architecture(sets, task):
    """The settings `dense train` picks for a real DINOv2-S (det: k=11, n=5, s=2) build and take
    an optimizer step on that architecture (random weights; nothing downloaded)."""
    from vitsplit_vlm.core.presets import backbone_config

    torch.manual_seed(0)
    trunk = AutoModel.from_config(backbone_config("dinov2-s"))
    k, n, s = _layers(task, trunk.config.num_hidden_layers, trunk.config.hidden_size)
    extra = {"rcnn": {"box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32}}
    spec = DenseSpec(
        task=task,
        split=ViTSplitConfig(k=k, n=n, s=s),
        num_classes=None if task == "depth" else 4,
        extra=extra if task == "det" else {},
    )
    model = DenseModel(trunk, spec)
    frozen_before = [p.detach().clone() for p in model.trunk_module().parameters()]
    trainable_before = {
        name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
    }
    ds = {
        "seg": lambda: ADE20K(sets.ade, "train", transforms=[T.Resize((56, 56))]),
        "depth": lambda: NYUDepthV2(sets.nyu, "train", transforms=[T.Resize((70, 56))]),
        "det": lambda: COCODetection(sets.coco, "train"),
    }[task]()
    result = _train(model, ds, 1, 1e-3, batch_size=2)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    layers = model.split.layers
    assert layers.task_blocks == tuple(range(12 - k, 12))
    assert len(layers.prior_blocks) == n and layers.prior_blocks[0] == s
    frozen_after = list(model.trunk_module().parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True))
    moved = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not torch.equal(p, trainable_before[name])
    ]
    assert any(name.startswith("split.heads.task_head") for name in moved), moved[:5]
