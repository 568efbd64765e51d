"""Frozen-trunk feature cache (`vitsplit_vlm.core.feature_cache`, ``--cache_features``).

The tiny CLIP and Llama, the shapes set: cached training must give the losses of uncached
training (fp32, 1e-6), a changed key must rebuild, and bad images stay skipped with a reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vitsplit_vlm.core.feature_cache import FeatureCache, tensor_key, trunk_fingerprint
from vitsplit_vlm.core.trunk import frozen_hidden_states, trunk_blocks
from vitsplit_vlm.playground.shapes import write_llava_dataset
from vitsplit_vlm.vlm.builder import build_vlm
from vitsplit_vlm.vlm.conversation import get_template
from vitsplit_vlm.vlm.data import DataCollator, LazySupervisedDataset, summarize_skips
from vitsplit_vlm.vlm.feature_cache import CachedCollator, cache_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_data")
    return write_llava_dataset(root, num_train=8, num_heldout=0, image_size=112, seed=0)


def fresh(tiny, projector: str = "vitsplit"):
    torch.manual_seed(0)
    return build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip,
                     mm_projector_type=projector)  # fmt: skip


def dataset(built, data, data_path=None, image_folder=None):
    model = built.model
    return LazySupervisedDataset(
        data_path or data.pretrain, image_folder or data.image_folder, built.tokenizer,
        built.image_processor, get_template("plain"), model_max_length=256,
        num_image_tokens=model.config.image_seq_length,
        image_token_id=model.config.image_token_id,
    )  # fmt: skip


def train_losses(model, batches, steps: int = 3) -> list[float]:
    """AdamW steps on the connector (stage 1) over `batches`; the loss of each step."""
    model.requires_grad_(False)
    model.connector.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("projector", ["vitsplit", "mlp2x_gelu"])
def test_cached_training_gives_the_uncached_losses(tiny, data, tmp_path, projector, capsys):
    built = fresh(tiny, projector)
    plain = dataset(built, data)
    cached = cache_dataset(plain, built.model, tmp_path / "cache", batch_size=3)
    out = capsys.readouterr().out
    assert "computing 8 inputs" in out and "into" in out  # the size is printed before building
    pad = built.tokenizer.pad_token_id
    collate, collate_cached = DataCollator(pad, 256), CachedCollator(pad, 256)
    batches = [collate([plain[i], plain[i + 1]]) for i in (0, 2, 4)]
    cached_batches = [collate_cached([cached[i], cached[i + 1]]) for i in (0, 2, 4)]
    layers = built.model.connector.required_layers
    assert sorted(cached_batches[0]["pixel_values"]) == sorted(layers)
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) >= 1

    state = {k: v.clone() for k, v in built.model.state_dict().items()}
    uncached_losses = train_losses(built.model, batches)
    built.model.load_state_dict(state)
    cached_losses = train_losses(built.model, cached_batches)
    assert uncached_losses[0] != uncached_losses[-1]  # it trains
    assert cached_losses == pytest.approx(uncached_losses, abs=1e-6)


def test_second_run_reads_and_a_changed_key_rebuilds(tiny, data, tmp_path, capsys):
    built = fresh(tiny)
    folder = tmp_path / "cache"
    cache_dataset(dataset(built, data), built.model, folder)
    capsys.readouterr()
    again = cache_dataset(dataset(built, data), built.model, folder)
    assert "computing" not in capsys.readouterr().out  # nothing missing: nothing computed
    assert len(again.cache) == 8
    assert len(again.cache.files) == 8  # the digests memo: later runs stat, not read, the images

    tower = built.model.model.vision_tower
    with torch.no_grad():
        trunk_blocks(tower)[0].mlp.fc1.weight.add_(0.01)
    rebuilt = cache_dataset(dataset(built, data), built.model, folder)
    out = capsys.readouterr().out
    assert "rebuilding, the trunk's weights changed" in out and "computing 8 inputs" in out
    hidden = rebuilt[0]["pixel_values"]
    pixels = dataset(built, data)[0]["pixel_values"][None]
    layer = built.model.connector.required_layers[0]
    expected = frozen_hidden_states(tower, pixels, [layer])[layer][0]
    torch.testing.assert_close(hidden[layer], expected, rtol=0, atol=1e-6)

    # other layers (another connector), another preprocessing: new keys
    fp = trunk_fingerprint(tower, [1])
    assert FeatureCache(folder, fp, log=None).entries == {}
    assert tensor_key(pixels) != tensor_key(pixels, "flip")


def test_unreadable_images_are_skipped_with_their_reason(tiny, data, tmp_path):
    built = fresh(tiny)
    images = tmp_path / "images"
    shutil.copytree(data.image_folder, images)
    records = json.loads(Path(data.pretrain).read_text())
    (images / records[1]["image"]).write_bytes(b"not a png")
    (images / records[2]["image"]).unlink()
    plain = dataset(built, data, image_folder=images)
    plain.skip_log = tmp_path / "skipped.jsonl"
    cached = cache_dataset(plain, built.model, tmp_path / "cache", log=None)
    assert len(cached.cache) == 6
    assert cached[1]["id"] == cached.sample_id(3)  # 1 and 2 skipped: the next usable one
    assert summarize_skips(plain.skip_log)["by_reason"] == {"corrupt_image": 1, "missing_image": 1}


def run_stage1(tiny, data, out: Path, *extra: str) -> tuple[dict, str]:
    """`python -m vitsplit_vlm.vlm.train` stage 1 as scripts/pretrain.sh (ZeRO-2), 3 steps."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    args = ["--model_name_or_path", tiny.llama, "--vision_tower", tiny.clip, "--data_path",
            data.pretrain, "--image_folder", data.image_folder, "--output_dir", out,
            "--version", "plain", "--tune_mm_mlp_adapter", "True", "--deepspeed",
            repo / "scripts" / "zero2.json", "--per_device_train_batch_size", "2",
            "--max_steps", "3", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--model_max_length", "256",
            "--seed", "0", *extra]  # fmt: skip
    cmd = [sys.executable, "-m", "vitsplit_vlm.vlm.train", *map(str, args)]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text()), proc.stdout + proc.stderr


def test_train_cache_features_flag_gives_the_same_losses(tiny, data, tmp_path):
    """The shipped trainer (HF Trainer + DeepSpeed ZeRO-2) with and without the cache."""
    plain, _ = run_stage1(tiny, data, tmp_path / "plain")
    cached, output = run_stage1(tiny, data, tmp_path / "cached", "--cache_features",
                                tmp_path / "cache")  # fmt: skip
    assert "feature cache: computing 8 inputs" in output
    assert len(plain["first_losses"]) == 3
    assert cached["first_losses"] == pytest.approx(plain["first_losses"], abs=1e-6)


# --------------------------------------------------------------------------- dense


@pytest.fixture(scope="module")
def dense_sets(tmp_path_factory):
    from vitsplit_vlm.playground.dense_sets import write_dense_sets

    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=6, num_val=2)


@pytest.mark.parametrize("task", ["seg", "depth"])
def test_dense_cached_training_gives_the_uncached_losses(tiny, dense_sets, tmp_path, task):
    from transformers import AutoModel

    from vitsplit_vlm.dense import transforms as T
    from vitsplit_vlm.dense.datasets import ADE20K, NYUDepthV2
    from vitsplit_vlm.dense.engine import TrainConfig, train
    from vitsplit_vlm.dense.feature_cache import cache_dense_dataset
    from vitsplit_vlm.dense.model import DenseModel, DenseSpec

    trunk = AutoModel.from_pretrained(tiny.dinov2)
    if task == "seg":
        data, spec = (
            ADE20K(dense_sets.ade, "train", transforms=[T.Resize((56, 56))]),
            DenseSpec(task="seg", num_classes=5),
        )
    else:
        data = NYUDepthV2(
            dense_sets.nyu, "train", transforms=[T.Resize((70, 56)), T.PadTo((70, 70))]
        )
        spec = DenseSpec(task="depth")
    cfg = TrainConfig(iters=4, batch_size=2, lr=1e-3, schedule="constant", log_every=1)

    def losses(dataset) -> list[float]:
        torch.manual_seed(0)
        model = DenseModel(trunk, spec)
        return [h["loss"] for h in train(model, dataset, cfg, log=None).history]

    model = DenseModel(trunk, spec)
    cached = cache_dense_dataset(data, trunk, model.required_layers, tmp_path / "cache", log=None)
    assert len(cached.cache) == 6
    plain_losses = losses(data)
    assert plain_losses[0] != plain_losses[-1]
    assert losses(cached) == pytest.approx(plain_losses, abs=1e-6)


def test_dense_train_refuses_random_augmentation_and_caches_without(tiny, dense_sets, tmp_path):
    from vitsplit_vlm.cli import main

    common = ["dense", "train", "--task", "seg", "--data", str(dense_sets.ade), "--backbone",
              str(tiny.dinov2), "--iters", "2", "--batch-size", "2", "--crop-size", "56",
              "--scale", "112,56", "--no-eval", "--cache-features", str(tmp_path / "cache")]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        main([*common, "--out", str(tmp_path / "a")])
    assert "RandomResize, RandomCrop, RandomFlip, PhotoMetricDistortion" in str(err.value)
    assert "--no-augment" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main([*common, "--out", str(tmp_path / "b"), "--no-augment", "--method", "full"])
    assert "method 'full' trains the trunk" in str(err.value)
    assert main([*common, "--out", str(tmp_path / "c"), "--no-augment"]) == 0
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 1
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["steps"] == 2
