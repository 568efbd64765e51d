"""The quickstart reuses a finished stage only if the current recipe trained it."""

from __future__ import annotations

import json

import pytest

from vitsplit_vlm.playground import quickstart


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Both stages' output folders in tmp_path, each holding a finished run."""
    dirs = {stage: tmp_path / stage for stage in quickstart.STAGE_OUTPUTS}
    monkeypatch.setattr(quickstart, "STAGE_OUTPUTS", dirs)
    for stage, out in dirs.items():
        out.mkdir()
        summary = {"stage": 1 if stage == "pretrain" else 2, "steps": 3, "seconds_per_step": 0.1,
                   "first_losses": [2.0], "last_losses": [1.0], "skipped": {"total": 0},
                   "trainable": {"connector": 10}}  # fmt: skip
        (out / quickstart.SUMMARY).write_text(json.dumps(summary))
    return dirs


def record(outputs, stage: str, value: dict) -> None:
    (outputs[stage] / quickstart.RECIPE).write_text(json.dumps(value))


def test_a_run_without_a_record_is_stale(outputs):
    assert "quickstart_recipe.json" in quickstart.stale_reason("pretrain")


def test_the_current_recipe_is_reused_and_another_is_not(outputs, capsys):
    record(outputs, "pretrain", quickstart.recipe_record("pretrain"))
    assert quickstart.stale_reason("pretrain") is None
    quickstart._train_stage("pretrain", retrain=False, report=quickstart.Report())
    assert "already trained" in capsys.readouterr().out

    older = quickstart.recipe_record("pretrain")
    older["shapes"] = {**older["shapes"], "max_objects": 4}  # an older playground
    record(outputs, "pretrain", older)
    assert quickstart.stale_reason("pretrain") == "it was trained with another recipe"


def test_stage2_is_stale_when_stage1_changed(outputs):
    """Stage 2 starts from stage 1's connector: its record holds stage 1's."""
    current = quickstart.recipe_record("finetune")
    assert current["pretrain"] == quickstart.recipe_record("pretrain")
    record(outputs, "finetune", current)
    assert quickstart.stale_reason("finetune") is None
    current["pretrain"]["argv"] = [*current["pretrain"]["argv"], "--seed", "7"]
    record(outputs, "finetune", current)
    assert quickstart.stale_reason("finetune") is not None
