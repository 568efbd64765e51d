"""Device and precision: the bf16 autocast path trains and evaluates on CPU with the frozen trunk
in bf16 and everything trainable in float32; precisions a device cannot run and batch splits that
do not divide are refused naming the flag; on a GPU (marked ``gpu``) bf16 and fp16 train too."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from vitsplit_vlm.cli import main
from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.engine import EvalConfig, TrainConfig, evaluate, train
from vitsplit_vlm.dense.model import DenseModel
from vitsplit_vlm.dense.recipes import build_dataset, dense_spec
from vitsplit_vlm.dense.runtime import Runtime, check_precision
from vitsplit_vlm.dense.tasks import get_task
from vitsplit_vlm.playground.dense_sets import write_dense_sets

SHAPES = {"seg": {"crop_size": (56, 56), "scale": (224, 56)}, "depth": {"crop_size": (56, 56)},
          "det": {"scale": (56, 56), "roi_batch": 16}}  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=1)


def test_precisions_a_device_cannot_run_are_refused_with_the_reason():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    with pytest.raises(ValueError, match="--precision fp16: float16 training needs a CUDA"):
        check_precision("fp16", cpu, bf16_supported=True)
    with pytest.raises(ValueError, match="--precision bf16: .* has no bfloat16 support"):
        check_precision("bf16", gpu, bf16_supported=False)
    with pytest.raises(ValueError, match="--precision: must be one of"):
        check_precision("fp8", cpu, bf16_supported=True)
    check_precision("bf16", cpu, bf16_supported=False)  # CPU autocast runs bf16
    check_precision("fp16", gpu, bf16_supported=False)


def _model_and_data(task_name: str, tiny, sets):
    task = get_task(task_name)
    preset = task.presets["playground"].override(SHAPES[task_name])
    root = getattr(sets, task.playground_set)
    common = dict(mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD)
    train_set = build_dataset(task, root, "train", preset, train=True, **common)
    val_set = build_dataset(task, root, "val", preset, train=False, **common)
    trunk = AutoModel.from_pretrained(tiny.dinov2)
    spec, _ = dense_spec(task, "vitsplit", trunk.config, preset,
                         num_classes=getattr(train_set, "num_classes", None))  # fmt: skip
    torch.manual_seed(0)
    return DenseModel(trunk, spec), train_set, val_set, task.eval_settings(preset, None)


@pytest.mark.parametrize("task", ["seg", "depth", "det"])
def test_bf16_autocast_trains_on_cpu(tiny, sets, task):
    model, train_set, val_set, settings = _model_and_data(task, tiny, sets)
    frozen = {n: p.detach().to(torch.bfloat16) for n, p in model.trunk_module().named_parameters()}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    runtime = Runtime(precision="bf16")
    cfg = TrainConfig(iters=2, batch_size=2, lr=1e-3, schedule="constant", log_every=1)
    result = train(model, train_set, cfg, runtime=runtime, log=None)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    for name, p in model.trunk_module().named_parameters():  # cast once, never updated
        assert p.dtype == torch.bfloat16 and torch.equal(p, frozen[name])
    moved = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name
            moved += not torch.equal(p, trainable[name])
    assert moved > 0
    metrics = evaluate(model, val_set, EvalConfig(settings), runtime=runtime)
    assert metrics["skipped"]["total"] == 0


def test_command_line_runtime_flags(tiny, sets, tmp_path):
    base = ["dense", "train", "--task", "seg", "--backbone", str(tiny.dinov2), "--data",
            str(sets.ade), "--iters", "2", "--crop-size", "56", "--scale", "224,56",
            "--out", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(SystemExit, match="--precision fp16: float16 training needs a CUDA"):
        main([*base, "--precision", "fp16"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: no CUDA device is visible"):
            main([*base, "--device", "cuda"])
    with pytest.raises(SystemExit, match=r"--global-batch 3 is not divisible by world size 1 x"):
        main([*base, "--global-batch", "3", "--accumulation", "2"])
    assert main([*base, "--precision", "bf16", "--global-batch", "4", "--accumulation", "2"]) == 0
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["runtime"] == {"device": "cpu", "precision": "bf16", "world_size": 1,
                               "channels_last": False}  # fmt: skip
    assert info["train"]["accumulation"] == 2 and info["train"]["batch_size"] == 4
    assert "mIoU" in info["eval"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_mixed_precision_trains(tiny, sets, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model, train_set, val_set, settings = _model_and_data("seg", tiny, sets)
    runtime = Runtime(torch.device("cuda", 0), precision, channels_last=True)
    cfg = TrainConfig(iters=3, batch_size=2, lr=1e-3, schedule="constant", log_every=1)
    result = train(model, train_set, cfg, runtime=runtime, log=None)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert evaluate(model, val_set, EvalConfig(settings), runtime=runtime)["mIoU"] >= 0
