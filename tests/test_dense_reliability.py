"""Dense prediction skips unreadable images, skip totals count samples (not events), and a run
killed while writing a resumable checkpoint resumes from the newest complete one."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from kill_helper import kill_when
from PIL import Image

import vitsplit_vlm
from vitsplit_vlm.cli import main
from vitsplit_vlm.dense import transforms as T
from vitsplit_vlm.dense.datasets import ADE20K, SkipLog, Skipped
from vitsplit_vlm.dense.engine import TrainConfig, train
from vitsplit_vlm.playground.dense_sets import write_dense_sets

REPO = Path(vitsplit_vlm.__file__).parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=2)


def seg_args(tiny, sets, out: Path, *extra) -> list[str]:
    return ["dense", "train", "--task", "seg", "--backbone", str(tiny.dinov2), "--data",
            str(sets.ade), "--iters", "4", "--global-batch", "2", "--crop-size", "56",
            "--scale", "224,56", "--log-every", "1", "--no-eval", "--out", str(out),
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def seg_run(tiny, sets, tmp_path_factory) -> Path:
    """4 steps with a resumable checkpoint every 2 (the uninterrupted reference run)."""
    out = tmp_path_factory.mktemp("seg")
    assert main(seg_args(tiny, sets, out, "--save-every", "2")) == 0
    return out


def test_predict_skips_and_counts_unreadable_images(seg_run, sets, tmp_path, capsys):
    """Defect: a 0-byte image stopped `dense predict` with a traceback after the images before
    it; now every readable image gets its overlay and the bad ones are counted."""
    images = tmp_path / "images"
    shutil.copytree(sets.ade / "images" / "validation", images)
    good = sorted(images.iterdir())
    (images / "a_empty.png").write_bytes(b"")
    (images / "b_noise.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    out = tmp_path / "pred"
    code = main(["dense", "predict", "--checkpoint", str(seg_run / "checkpoint.pt"),
                 "--images", str(images), "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}_seg.png" for p in good)
    assert "skipped 2 sample(s): unreadable file: 2" in printed
    assert "a_empty.png" in printed and "b_noise.jpg" in printed
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(images / "a_empty.png", only_bad)
    assert main(["dense", "predict", "--checkpoint", str(seg_run / "checkpoint.pt"),
                 "--images", str(only_bad), "--out", str(tmp_path / "none")]) == 1  # fmt: skip


def test_skip_totals_count_distinct_samples():
    """Defect: 2 bad files gave a total of 3 when one was skipped in two epochs (and it was
    listed twice among the examples)."""
    log = SkipLog()
    log.extend([Skipped("unreadable file", "a.png", "empty"), Skipped("no valid depth", "b.png")])
    log.add(Skipped("unreadable file", "a.png", "empty"))  # the next epoch
    assert log.total == 2 and log.counts == {"unreadable file": 1, "no valid depth": 1}
    assert log.examples["unreadable file"] == ["a.png (empty)"] and log.events == 3
    other = SkipLog()  # another rank saw a.png too
    other.add(Skipped("unreadable file", "a.png", "empty"))
    other.add(Skipped("unreadable file", "c.png"))
    log.merge(other)
    assert log.total == 3 and log.counts["unreadable file"] == 2 and log.events == 5
    assert log.examples["unreadable file"] == ["a.png (empty)", "c.png"]
    again = SkipLog.from_dict(json.loads(json.dumps(log.as_dict())))  # resume round trip
    assert again.total == 3 and again.as_dict() == log.as_dict()
    assert "skipped 3 sample(s)" in log.summary()


def test_training_over_several_epochs_counts_each_bad_sample_once(sets, tiny, tmp_path):
    from transformers import AutoModel

    from vitsplit_vlm.dense.model import DenseModel, DenseSpec

    root = tmp_path / "ade"
    shutil.copytree(sets.ade, root)
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    for label in labels[:2]:
        Image.fromarray(np.full((112, 112), 200, np.uint8)).save(label)  # out of range
    ds = ADE20K(root, "train", transforms=T.seg_train_pipeline((224, 56), (56, 56)))
    model = DenseModel(AutoModel.from_pretrained(tiny.dinov2), DenseSpec(task="seg", num_classes=5))
    epochs = 3
    result = train(model, ds, TrainConfig(iters=epochs, batch_size=len(ds), lr=1e-3), log=None)
    assert result.skips.total == 2 and result.skips.counts == {"label out of range": 2}
    assert result.skips.events == 2 * epochs


def kill_during_save(args: list[str], out: Path, step: int) -> list[str]:
    """Start ``python -m vitsplit_vlm ARGS`` and SIGKILL it as soon as the checkpoint of `step`
    is being written (``.tmp-step-*``); returns the names under ``OUT/checkpoints`` left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    root, prefix = out / "checkpoints", f".tmp-step-{step:08d}"

    def saving() -> bool:
        return root.is_dir() and any(p.name.startswith(prefix) for p in root.iterdir())

    kill_when([sys.executable, "-m", "vitsplit_vlm", *args], saving, f"a save of step {step}",
              env=env)  # fmt: skip
    return sorted(p.name for p in root.iterdir())


def test_sigkill_during_a_save_then_resume_auto(seg_run, tiny, sets, tmp_path, capsys):
    from vitsplit_vlm.dense.resume import scan

    out = tmp_path / "killed"
    args = seg_args(tiny, sets, out, "--save-every", "2")
    left = kill_during_save(args, out, step=4)
    print(f"killed while saving step 4; checkpoints/ held {left}")
    complete, partial = scan(out / "checkpoints")
    assert [s for s, _ in complete] == [2] and len(partial) == 1
    assert partial[0].name.startswith(".tmp-step-00000004")
    assert main([*args, "--resume", "auto"]) == 0
    said = capsys.readouterr().out
    assert f"skipped partial checkpoint {partial[0]}" in said
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    reference = [
        json.loads(line) for line in (seg_run / "train_log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(steps, reference, strict=True)) <= 1e-6
    assert [s for s, _ in scan(out / "checkpoints")[0]] == [2, 4]
