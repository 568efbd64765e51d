"""VLM training checkpoints count only when complete, and resume without pickle.

Real runs (`python -m vitsplit_vlm.vlm.train`, ZeRO-2, stage 1) in subprocesses: a partial
``checkpoint-N`` (simulated, and left by a real SIGKILL during a save) is skipped and named by
``--resume_from_checkpoint True``, which resumes from the newest complete one and ends where the
uninterrupted run did; a doctored DeepSpeed state file is refused before anything is unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_helper import kill_when
from safetensors.torch import load_file
from test_vlm_train import DIST_VARS, REPO, STAGE1_FLAGS, STAGE1_STEPS, common, max_diff, run_train

from vitsplit_vlm.playground.shapes import write_llava_dataset

PWNED = "pwned.txt"
MARKER = "COMPLETE"  # vitsplit_vlm.vlm.resume.MARKER (its tests import the module lazily)


def scan(out: Path):
    from vitsplit_vlm.vlm.resume import scan

    return scan(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_resume_data")
    return write_llava_dataset(root, num_train=16, num_heldout=2, image_size=112, seed=0)


def stage1_args(tiny, data, out: Path) -> list:
    return [*common(tiny, data, out, data.pretrain, steps=STAGE1_STEPS), *STAGE1_FLAGS]


@pytest.fixture(scope="module")
def straight(tiny, data, tmp_path_factory) -> Path:
    """The uninterrupted run: 4 steps, complete checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("straight")
    proc = run_train(*stage1_args(tiny, data, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def resume(tiny, data, out: Path, *extra) -> subprocess.CompletedProcess:
    return run_train(*stage1_args(tiny, data, out), "--resume_from_checkpoint", "True", *extra)


def assert_same_result(out: Path, straight: Path) -> None:
    ours = load_file(str(out / "mm_projector.safetensors"))
    theirs = load_file(str(straight / "mm_projector.safetensors"))
    assert max_diff(ours, theirs) == 0.0


def test_checkpoints_are_marked_complete(straight):
    found = scan(straight)
    assert [step for step, _ in found.complete] == [2, 4] and not found.partial


def test_resume_true_skips_partial_checkpoints(straight, tiny, data, tmp_path):
    """A run killed while writing checkpoint-4 (only config.json there, as HF writes it first):
    HF's own `True` picked it and crashed with FileNotFoundError."""
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoint-2", out / "checkpoint-2")
    partial = out / "checkpoint-4"
    partial.mkdir()
    shutil.copy(straight / "checkpoint-4" / "config.json", partial)
    proc = resume(tiny, data, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped partial checkpoint {partial}" in proc.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoint-2")
    assert summary["resumed_at_step"] == 2 and summary["steps"] == STAGE1_STEPS
    assert_same_result(out, straight)
    assert (partial / MARKER).is_file()  # saved again, completely


def kill_during_save(args: list, out: Path, step: int) -> list[str]:
    """Start training and SIGKILL it as soon as ``checkpoint-<step>`` appears, before its
    marker; returns the files it left in that folder."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "vitsplit_vlm.vlm.train", *map(str, args)]
    folder = out / f"checkpoint-{step}"
    kill_when(cmd, folder.is_dir, f"checkpoint-{step}", cwd=REPO, env=env)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_sigkill_during_a_save_then_resume_true(straight, tiny, data, tmp_path):
    out = tmp_path / "killed"
    left = kill_during_save(stage1_args(tiny, data, out), out, step=4)
    print(f"killed while writing checkpoint-4; it held {left}")
    assert MARKER not in left
    found = scan(out)
    assert [s for s, _ in found.complete] == [2] and found.partial == [out / "checkpoint-4"]
    proc = resume(tiny, data, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped partial checkpoint {out / 'checkpoint-4'}" in proc.stderr
    assert_same_result(out, straight)
    assert [s for s, _ in scan(out).complete] == [2, 4]


class Payload:
    """Unpickling this writes a file: what a doctored checkpoint could do instead."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code ran while unpickling\n"))


def doctor(folder: Path, target: Path) -> Path:
    """Add a `Payload` to the DeepSpeed model states of checkpoint `folder`."""
    path = next(folder.glob("global_step*/mp_rank_00_model_states.pt"))
    state = torch.load(path, weights_only=False)
    state["extra"] = Payload(target)
    torch.save(state, path)
    return path


def test_a_doctored_deepspeed_checkpoint_is_refused(straight, tiny, data, tmp_path):
    """DeepSpeed loads global_stepN/*.pt with weights_only=False: the payload ran on resume."""
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoint-2", out / "checkpoint-2")
    doctored = doctor(out / "checkpoint-2", tmp_path / PWNED)
    proc = resume(tiny, data, out)
    assert not (tmp_path / PWNED).exists(), "the checkpoint's code ran"
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert str(doctored) in last and "refused" in last and "--allow_pickle_checkpoints" in last
    assert not (out / "train_summary.json").exists()


def test_the_load_itself_is_weights_only(straight, tmp_path):
    """Beyond the scan before training: every torch.load inside the load is weights-only, even
    one that asks for pickle (as DeepSpeed's does), with DeepSpeed's own classes allowed."""
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(straight / "checkpoint-2", folder)
    optim = next(folder.glob("global_step*/*optim_states.pt"))
    from vitsplit_vlm.vlm.resume import ResumeError, weights_only_loading

    with weights_only_loading():
        state = torch.load(optim, weights_only=False)  # LossScaler, ZeroStageEnum, ...
        assert "optimizer_state_dict" in state
    doctored = doctor(folder, tmp_path / PWNED)
    with pytest.raises(ResumeError, match="allow_pickle_checkpoints"):
        with weights_only_loading():
            torch.load(doctored, weights_only=False)
    assert not (tmp_path / PWNED).exists()
    with weights_only_loading(allow_pickle=True):  # the explicit opt-in
        torch.load(doctored, weights_only=False)
    assert (tmp_path / PWNED).exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored


# --------------------------------------------------------------------------- folders only


def fake_checkpoint(out: Path, step: int, *, complete: bool, legacy: bool = False) -> Path:
    """A checkpoint folder: marked complete, partial (HF's first file only), or `legacy`: saved
    completely before checkpoints were marked (trainer_state.json, written last, no marker)."""
    from vitsplit_vlm.vlm.resume import mark_complete

    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if complete or legacy:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        mark_complete(folder)
    return folder


def test_pick_and_its_notes(tmp_path):
    from vitsplit_vlm.vlm.resume import ResumeError, pick

    for step, complete in ((2, True), (4, True), (6, False), (8, False)):
        fake_checkpoint(tmp_path, step, complete=complete)
    folder, notes = pick(tmp_path, True)
    assert folder == tmp_path / "checkpoint-4"
    assert [n.rsplit("/", 1)[1] for n in notes[:2]] == ["checkpoint-6", "checkpoint-8"]
    assert pick(tmp_path, str(tmp_path / "checkpoint-2"))[0] == tmp_path / "checkpoint-2"
    with pytest.raises(ResumeError, match="partial checkpoint"):
        pick(tmp_path, str(tmp_path / "checkpoint-6"))
    with pytest.raises(ResumeError, match="no such checkpoint"):
        pick(tmp_path, str(tmp_path / "checkpoint-10"))
    assert pick(tmp_path, None) == (None, [])
    empty = tmp_path / "empty"
    fake_checkpoint(empty, 2, complete=False)
    folder, notes = pick(empty, True)
    assert folder is None and "starting at step 0" in notes[-1]


def test_a_run_saved_before_checkpoints_were_marked_resumes(tmp_path):
    from vitsplit_vlm.vlm.resume import ResumeError, pick

    for step in (2, 4):
        fake_checkpoint(tmp_path, step, complete=False, legacy=True)
    cut = fake_checkpoint(tmp_path, 6, complete=False)  # no trainer_state.json: cut short
    (cut.parent / "checkpoint-8").mkdir()
    (cut.parent / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # half written
    folder, notes = pick(tmp_path, True)
    assert folder == tmp_path / "checkpoint-4" and "without a COMPLETE marker" in notes[0]
    assert pick(tmp_path, str(tmp_path / "checkpoint-2"))[0] == tmp_path / "checkpoint-2"
    with pytest.raises(ResumeError, match="partial checkpoint"):
        pick(tmp_path, str(cut))
    fake_checkpoint(tmp_path, 10, complete=True)  # a marked run: unmarked folders are partial
    assert pick(tmp_path, True)[0] == tmp_path / "checkpoint-10"
    with pytest.raises(ResumeError, match="partial checkpoint"):
        pick(tmp_path, str(tmp_path / "checkpoint-4"))


def test_resume_flag_values():
    from types import SimpleNamespace

    from vitsplit_vlm.vlm.train import resume_arg

    for value, expected in (("True", True), ("auto", True), ("false", False), (None, None),
                            ("", None), ("out/checkpoint-4", "out/checkpoint-4")):  # fmt: skip
        assert resume_arg(SimpleNamespace(resume_from_checkpoint=value)) == expected, value


def test_rotation_never_deletes_the_only_complete_checkpoint(tmp_path):
    """HF's rotation counts partial folders (the newest, by step or time, is "protected"): with
    --save_total_limit 1 and a partial checkpoint-6 it deleted the only complete one."""
    from vitsplit_vlm.vlm.resume import rotate

    fake_checkpoint(tmp_path, 4, complete=True)
    fake_checkpoint(tmp_path, 6, complete=False)
    assert rotate(tmp_path, 1) == [tmp_path / "checkpoint-6"]
    assert [s for s, _ in scan(tmp_path).complete] == [4]
    for step in (8, 10):
        fake_checkpoint(tmp_path, step, complete=True)
    rotate(tmp_path, 2, protect=tmp_path / "checkpoint-4")  # HF's best model stays
    assert [s for s, _ in scan(tmp_path).complete] == [4, 8, 10]
    rotate(tmp_path, 1)
    assert [s for s, _ in scan(tmp_path).complete] == [10]
    assert rotate(tmp_path, None) == [] and rotate(tmp_path, 0) == []


def test_a_pickle_payload_runs_without_the_guard(tmp_path):
    """The payload of these tests does run under plain pickle (the guard is what stops it)."""
    pickle.loads(pickle.dumps(Payload(tmp_path / PWNED)))
    assert (tmp_path / PWNED).exists()
