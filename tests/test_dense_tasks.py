"""The dense task registry: presets, task flags, ViT-Split flags, playground defaults only in the
command line, metric reduction, meta-device models, and no task-name branching outside tasks/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import vitsplit_vlm.dense as dense_package
from vitsplit_vlm.cli import main
from vitsplit_vlm.core import ViTSplitConfig
from vitsplit_vlm.core.presets import backbone_config
from vitsplit_vlm.dense import cli as dense_cli
from vitsplit_vlm.dense.checkpoint import read_checkpoint
from vitsplit_vlm.dense.datasets import collate
from vitsplit_vlm.dense.engine import EvalConfig, evaluate
from vitsplit_vlm.dense.model import DenseModel, DenseSpec, count_parameters
from vitsplit_vlm.dense.recipes import build_dataset, dense_spec, first_size, split_config
from vitsplit_vlm.dense.tasks import PRESET_KINDS, TASKS, default_split_config, get_task
from vitsplit_vlm.dense.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitsplit_vlm.playground.dense_sets import write_dense_sets

# The recipes as `dense/recipes.py::PRESETS` held them before tasks owned them: unchanged.
RECIPES: dict[tuple[str, str], dict] = {
    ("seg", "real"): dict(
        iters=40000, batch_size=16, lr=3e-4, weight_decay=1e-2, schedule="poly",
        warmup_iters=1500, grad_clip=None, crop_size=(512, 512), scale=(2048, 512),
        eval_mode="slide", eval_stride=(341, 341),
    ),
    ("depth", "real"): dict(
        iters=38400, batch_size=16, lr=3e-4, weight_decay=1e-2, schedule="onecycle",
        warmup_iters=0, grad_clip=35.0, crop_size=(416, 544), scale=None,
    ),
    ("det", "real"): dict(
        iters=88000, batch_size=16, lr=1e-4, weight_decay=0.05, schedule="step",
        warmup_iters=500, grad_clip=None, scale=(1024, 1024), ratio_range=(0.8, 1.25),
        roi_batch=512,
    ),
    ("seg", "playground"): dict(
        iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="poly", warmup_iters=50,
        grad_clip=None, crop_size=(112, 112), scale=(448, 112), eval_mode="whole",
        eval_stride=(74, 74),
    ),
    ("depth", "playground"): dict(
        iters=600, batch_size=8, lr=1e-3, weight_decay=1e-2, schedule="onecycle",
        warmup_iters=0, grad_clip=35.0, crop_size=(112, 112), scale=None,
    ),
    ("det", "playground"): dict(
        iters=300, batch_size=2, lr=3e-4, weight_decay=0.05, schedule="poly", warmup_iters=30,
        grad_clip=None, scale=(112, 112), ratio_range=(0.8, 1.25), roi_batch=32,
        rcnn=dict(box_detections_per_img=20, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=100),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=3)


@pytest.fixture(scope="module")
def trunk(tiny):
    return AutoModel.from_pretrained(tiny.dinov2)


# --------------------------------------------------------------------------- registry, presets


def test_registry_and_unknown_task():
    assert list(TASKS) == ["seg", "depth", "det"]
    assert all(get_task(name).name == name for name in TASKS)
    with pytest.raises(ValueError, match="unknown dense task 'pose'; choose from seg, depth, det"):
        get_task("pose")
    with pytest.raises(ValueError, match="unknown dense task"):
        default_split_config("pose", 12, 384)


@pytest.mark.parametrize(("task", "kind"), list(RECIPES))
def test_typed_presets_keep_the_recipes(task, kind):
    presets = get_task(task).presets
    assert set(presets) == set(PRESET_KINDS)
    preset = presets[kind]
    assert type(preset) is type(presets["real"]) and type(preset).__name__.endswith("Preset")
    values = preset.to_dict()
    assert {key: values[key] for key in RECIPES[task, kind]} == RECIPES[task, kind]


def test_preset_override_and_run_record():
    seg = get_task("seg")
    base = seg.presets["playground"]
    changed = base.override({"lr": 0.5, "crop_size": (56, 56), "grad_clip": 0, "iters": None})
    assert (changed.lr, changed.crop_size, changed.grad_clip, changed.iters) == (
        0.5,
        (56, 56),
        None,
        600,
    )
    assert base.override({"roi_batch": 3}) == base  # another task's setting: not a seg field
    record = json.loads(json.dumps({**changed.to_dict(), "max_eval_images": None}))
    record["max_depth"] = 10.0  # version-1 run records held every task's settings
    assert seg.preset_from_dict(record) == changed
    with pytest.raises(ValueError, match="SegPreset: incomplete settings"):
        seg.preset_from_dict({"lr": 1.0})


# --------------------------------------------------------------------------- flags


def test_task_flags_come_from_the_registry_and_shared_ones_once(capsys):
    options = dense_cli.task_options()
    assert options["--crop-size"][1] == ["seg", "depth"]  # one TaskOption, two tasks
    assert options["--roi-batch"][1] == ["det"] and options["--max-depth"][1] == ["depth"]
    own = ("--eval-mode", "--eval-stride", "--depth-scale", "--eval-crop", "--ratio-range")
    assert set(own) <= set(options)
    with pytest.raises(SystemExit):
        main(["dense", "train", "--help"])
    text = capsys.readouterr().out
    assert text.count("\n  --crop-size CROP_SIZE") == 1  # one help entry
    for flag in ("--k INT", "--selection {uniform,sparse_gate}", "--deform-offset-init"):
        assert flag in text  # generated by core.flags from ViTSplitConfig
    assert "{vitsplit,linear,full}" in text and "{poly,onecycle,step,constant}" in text


def test_a_task_refuses_another_tasks_flag():
    argv = ["dense", "train", "--task", "seg", "--backbone", "b", "--data", "d"]
    with pytest.raises(SystemExit, match="--roi-batch is a det option; --task seg has none"):
        main([*argv, "--roi-batch", "4"])
    with pytest.raises(SystemExit, match="--crop-size is a seg/depth option; --task det has none"):
        main([*argv[:3], "det", *argv[4:], "--crop-size", "56"])


def test_real_and_auto_presets_need_backbone_and_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--backbone and --data required with --preset real"):
        main(["dense", "train", "--task", "seg", "--preset", "real"])
    with pytest.raises(
        SystemExit, match=r"--data required with --preset auto.*--preset playground"
    ):
        main(["dense", "train", "--task", "seg", "--backbone", "b"])
    assert not (tmp_path / "playground").exists()  # nothing built or generated


def test_playground_preset_fills_backbone_and_data(tiny, tmp_path, monkeypatch, capsys):
    from vitsplit_vlm.playground import paths

    monkeypatch.chdir(tmp_path)
    paths.TINY.parent.mkdir(parents=True)
    paths.TINY.symlink_to(tiny.root)  # already built: used as is
    write_dense_sets(paths.DENSE_DATA, num_train=2, num_val=1)  # present: not regenerated
    argv = ["dense", "train", "--task", "depth", "--preset", "playground", "--iters", "1",
            "--batch-size", "2", "--no-eval", "--out", "run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"--preset playground: --backbone {paths.TINY_DINOV2} (the tiny DINOv2)" in out
    assert f"--preset playground: --data {paths.DENSE_DATA / 'nyu'}" in out
    payload = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert payload["info"]["data"] == str((paths.DENSE_DATA / "nyu").resolve())
    assert payload["info"]["opts"]["iters"] == 1 and payload["info"]["opts"]["max_depth"] == 10.0


def test_vitsplit_flags_reach_the_checkpoint(tiny, sets, tmp_path):
    argv = ["dense", "train", "--task", "seg", "--backbone", str(tiny.dinov2), "--data",
            str(sets.ade), "--iters", "1", "--batch-size", "2", "--no-eval", "--out",
            str(tmp_path / "run"), "--k", "2", "--n", "3", "--s", "1", "--components",
            "prior,task", "--deform-offset-init", "default",
            "--gate-temperature", "0.7"]  # fmt: skip
    assert main(argv) == 0
    spec = DenseSpec.from_dict(read_checkpoint(tmp_path / "run" / "checkpoint.pt")["spec"])
    assert spec.split == ViTSplitConfig(
        k=2, n=3, s=1, components=("prior", "task"), deform_offset_init="default",
        gate_temperature=0.7,
    )  # fmt: skip
    with pytest.raises(SystemExit, match="ViTSplitConfig.k: must be >= 1"):
        main([*argv, "--k", "0"])  # passed through, refused by the config itself


def test_methods_linear_and_full_split_configs(trunk):
    seg = get_task("seg")
    overrides = {"k": 2, "components": ("prior",)}
    cfg, origin = split_config(seg, "vitsplit", 8, 192, overrides)
    assert (cfg.k, cfg.n, cfg.s, cfg.components) == (2, 4, 2, ("prior",))
    assert origin == "default for a 8-block, width-192 trunk"
    assert split_config(seg, "linear", 8, 192, overrides)[0].components == ()
    assert split_config(seg, "full", 8, 192, overrides)[0] is None
    preset = seg.presets["playground"]
    spec, _ = dense_spec(seg, "linear", trunk.config, preset, num_classes=5)
    assert DenseModel(trunk, spec).required_layers == (8,)
    with pytest.raises(ValueError, match="DenseSpec.split: method 'full'"):
        DenseSpec(task="seg", method="full", split=ViTSplitConfig(), num_classes=5)
    with pytest.raises(ValueError, match="DenseSpec.split: dense heads need variant 'dense'"):
        DenseSpec(task="depth", split=ViTSplitConfig.llava(64))


def test_det_spec_checks_its_rcnn_arguments():
    with pytest.raises(ValueError, match=r"DenseSpec.extra\['rcnn'\]: not MaskRCNN arguments"):
        DenseSpec(task="det", num_classes=3, extra={"rcnn": {"box_batch": 3}})
    with pytest.raises(ValueError, match="DenseSpec.extra: det takes only"):
        DenseSpec(task="det", num_classes=3, extra={"anchors": 3})
    with pytest.raises(ValueError, match="DenseSpec.extra: seg takes no extra settings"):
        DenseSpec(task="seg", num_classes=3, extra={"rcnn": {}})
    spec = DenseSpec(task="det", num_classes=3, extra={"rcnn": {"box_batch_size_per_image": 8}})
    assert DenseSpec.from_dict(spec.to_dict()) == spec


# --------------------------------------------------------------------------- metrics, meta


@pytest.mark.parametrize("name", list(TASKS))
def test_metric_reduce_equals_one_pass_and_evaluate(trunk, sets, name):
    task = get_task(name)
    preset = task.presets["playground"]
    root = getattr(sets, task.playground_set)
    ds = build_dataset(task, root, "val", preset, IMAGENET_MEAN, IMAGENET_STD, train=False)
    spec, _ = dense_spec(
        task, "vitsplit", trunk.config, preset, num_classes=getattr(ds, "num_classes", None)
    )
    torch.manual_seed(0)
    model = DenseModel(trunk, spec).eval()
    settings = task.eval_settings(preset, first_size(ds))
    whole = task.metric(model, ds, settings)
    shards = [task.metric(model, ds, settings) for _ in range(2)]
    with torch.no_grad():
        for index in range(len(ds)):
            batch = collate([ds[index]])
            meta = batch.metas[0]
            pixels = (
                batch.images if isinstance(batch.images, torch.Tensor) else batch.images[0][None]
            )
            prediction = task.predict(model, pixels, meta, settings)
            whole.update(prediction, meta)
            shards[index % 2].update(prediction, meta)
    shards[0].merge(shards[1])
    expected = whole.compute()
    _assert_close(shards[0].compute(), expected)  # depth sums per-image errors in another order
    metrics = evaluate(model, ds, EvalConfig(settings))
    assert json.dumps({k: v for k, v in metrics.items() if k != "skipped"}) == json.dumps(expected)


def _assert_close(a, b) -> None:
    """Same keys, same integers, floats equal to 1e-12 (nan equals nan)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, nan_ok=True)
    else:
        assert a == b


@pytest.mark.parametrize("name", list(TASKS))
def test_dense_model_builds_on_the_meta_device(name):
    """`params` counts through the training factory on the meta device: same counts as a real
    model; ViT-Split-S is the paper's 10.2M (seg, 150 classes) and 9.3M (depth)."""
    cfg, origin = default_split_config(name, 12, 384)
    assert origin == f"paper setting for {name} on DINOv2-S"
    spec = DenseSpec(task=name, split=cfg, num_classes=None if name == "depth" else 150)
    with torch.device("meta"):
        meta = DenseModel(AutoModel.from_config(backbone_config("dinov2-s")), spec)
    assert all(p.is_meta for p in meta.parameters())
    torch.manual_seed(0)
    real = DenseModel(AutoModel.from_config(backbone_config("dinov2-s")), spec)
    assert count_parameters(meta) == count_parameters(real)
    paper = {"seg": 10.2e6, "depth": 9.3e6}.get(name)
    if paper:
        assert abs(count_parameters(meta)["total"] - paper) < 0.05e6


# --------------------------------------------------------------------------- source rules


def _dense_sources() -> list[Path]:
    return sorted(Path(dense_package.__file__).parent.rglob("*.py"))


def test_library_modules_never_import_the_playground():
    root = Path(dense_package.__file__).parent
    library = [p for p in _dense_sources() if p != root / "cli.py"]
    for path in library:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(alias.name for alias in node.names)]
            assert not any("playground" in n.split(".") for n in names), (path, names)
    modules = [
        "vitsplit_vlm.dense." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in library
        if p.name != "__init__.py"
    ]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print([m for m in sys.modules if m.startswith('vitsplit_vlm.playground')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_task_name_branching_outside_the_task_modules():
    root = Path(dense_package.__file__).parent
    names = set(TASKS)
    for path in _dense_sources():
        if root / "tasks" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                operands += [e for o in operands if isinstance(o, ast.Tuple) for e in o.elts]
            elif isinstance(node, ast.Dict):
                operands = [k for k in node.keys if k is not None]
                operands += [e for k in operands if isinstance(k, ast.Tuple) for e in k.elts]
            else:
                continue
            found = {o.value for o in operands if isinstance(o, ast.Constant)} & names
            assert not found, f"{path.name}:{node.lineno} branches on task names {found}"
