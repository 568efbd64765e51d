"""Resumable checkpoints: a run killed with SIGKILL after a checkpoint and resumed with
``--resume auto`` reproduces the uninterrupted run; partial checkpoints are never loaded; a
checkpoint of another trunk, task or ViT-Split setting is refused naming the difference; rotation
keeps the newest complete checkpoints; every file loads with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import vitsplit_vlm
from vitsplit_vlm.cli import main
from vitsplit_vlm.dense.checkpoint import load_dense_model
from vitsplit_vlm.dense.resume import (
    MARKER,
    ResumeError,
    pick,
    read_train_state,
    rotate,
    scan,
    write_atomically,
)
from vitsplit_vlm.playground.dense_sets import write_dense_sets

REPO = Path(vitsplit_vlm.__file__).parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=2)


def det_args(tiny, sets, out: Path) -> list[str]:
    return ["dense", "train", "--task", "det", "--backbone", str(tiny.dinov2), "--data",
            str(sets.coco), "--iters", "8", "--global-batch", "2", "--scale", "56,56",
            "--roi-batch", "16", "--log-every", "1", "--no-eval", "--out", str(out)]  # fmt: skip


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def kill_after_first_checkpoint(args: list[str], out: Path) -> int:
    """Start ``python -m vitsplit_vlm *args`` and SIGKILL it once a checkpoint is complete."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "vitsplit_vlm", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while not scan(out / "checkpoints")[0]:
        if proc.poll() is not None:
            raise AssertionError(f"exited before a checkpoint: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return proc.returncode


def test_sigkill_then_resume_auto_reproduces_the_uninterrupted_run(tiny, sets, tmp_path):
    """Detection draws anchors / RoIs from the global RNG: the RNG states travel too."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(det_args(tiny, sets, full)) == 0
    resumable = [*det_args(tiny, sets, killed), "--save-every", "3", "--keep-last", "2"]
    assert kill_after_first_checkpoint(resumable, killed) == -signal.SIGKILL
    done_before = {s for s, _ in scan(killed / "checkpoints")[0]}
    assert done_before and max(done_before) < 8
    assert main([*resumable, "--resume", "auto"]) == 0

    a, b = log_lines(full), log_lines(killed)
    assert [e["step"] for e in b] == list(range(1, 9))  # lines past the checkpoint replaced
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b, strict=True))
    print(f"det, 8 steps, killed after step {max(done_before)}: max |loss| diff = {diff:.1e}")
    assert diff <= 1e-6
    ours = torch.load(killed / "checkpoint.pt", weights_only=True)["state_dict"]
    theirs = torch.load(full / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(ours[k], theirs[k], rtol=0, atol=1e-6) for k in theirs)
    complete, partial = scan(killed / "checkpoints")
    assert [s for s, _ in complete] == [3, 6] and not partial  # --keep-last 2
    weights, state = read_train_state(complete[-1][1])  # both files: weights_only=True
    assert state["step"] == 6 and state["progress"]["position"] == {"epoch": 2, "batch": 2}
    assert len(state["rng"]) == 1 and weights["info"]["step"] == 6
    model, _ = load_dense_model(complete[-1][1] / "checkpoint.pt")  # dense eval / predict read it
    assert model.spec.task == "det"


def seg_args(backbone, sets, out: Path, *extra: str) -> list[str]:
    return ["dense", "train", "--task", "seg", "--backbone", str(backbone), "--data",
            str(sets.ade), "--iters", "2", "--global-batch", "2", "--crop-size", "56",
            "--scale", "224,56", "--no-eval", "--out", str(out), *extra]  # fmt: skip


def test_partial_checkpoints_are_skipped_and_other_setups_refused(tiny, sets, tmp_path):
    out = tmp_path / "run"
    assert main(seg_args(tiny.dinov2, sets, out, "--save-every", "2")) == 0
    root = out / "checkpoints"
    done = root / "step-00000002"
    shutil.copytree(done, root / ".tmp-step-00000004-123")  # killed while writing
    shutil.copytree(done, root / "step-00000006")
    (root / "step-00000006" / MARKER).unlink()  # a folder without the marker
    folder, notes = pick("auto", out)
    assert folder == done
    assert [n.rsplit("/", 1)[-1] for n in notes] == [".tmp-step-00000004-123", "step-00000006"]
    assert all("skipped partial checkpoint" in n for n in notes)
    with pytest.raises(ResumeError, match="partial checkpoint"):
        pick(str(root / "step-00000006"), out)
    with pytest.raises(ResumeError, match="no COMPLETE marker"):
        read_train_state(root / "step-00000006")

    def refused(*args: str, backbone=tiny.dinov2) -> str:
        with pytest.raises(SystemExit) as err:
            main(seg_args(backbone, sets, out, "--resume", "auto", *args))
        return str(err.value)

    assert "ViT-Split k (--k): checkpoint 3, this run 2" in refused("--k", "2")
    assert "lr (--lr): checkpoint 0.001, this run 0.002" in refused("--lr", "2e-3")
    other = AutoModel.from_pretrained(tiny.dinov2)
    with torch.no_grad():
        other.embeddings.cls_token.add_(1.0)
    other.save_pretrained(tmp_path / "other")
    assert "trunk (--backbone): checkpoint" in refused(backbone=tmp_path / "other")
    depth = ["dense", "train", "--task", "depth", "--backbone", str(tiny.dinov2), "--data",
             str(sets.nyu), "--iters", "2", "--global-batch", "2", "--crop-size", "56",
             "--no-eval", "--out", str(out), "--resume", "auto"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"task \(--task\): checkpoint seg, this run depth"):
        main(depth)
    assert "iters (--iters): checkpoint 2, this run 3" in refused("--iters", "3")
    assert main(seg_args(tiny.dinov2, sets, out, "--resume", str(done))) == 0  # PATH: a folder
    assert [e["step"] for e in log_lines(out)] == [1, 2]  # done at step 2: nothing more


def test_rotation_never_deletes_the_only_complete_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    write_atomically(root, 5, lambda tmp: (tmp / "x").write_text("5"))
    (root / ".tmp-step-00000010-7").mkdir()  # partial leftover
    assert rotate(root, 1) == [root / ".tmp-step-00000010-7"]
    assert [s for s, _ in scan(root)[0]] == [5]
    write_atomically(root, 5, lambda tmp: (tmp / "x").write_text("again"))  # same step again
    assert (root / "step-00000005" / "x").read_text() == "again"
    for step in (10, 15):
        write_atomically(root, step, lambda tmp: None)
    assert [p.name for p in rotate(root, 2)] == ["step-00000005"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000015"]
