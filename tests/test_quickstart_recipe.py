"""The quickstart reuses a finished stage only if the current recipe trained it."""

from __future__ import annotations

import json

import pytest

from vitsplit_vlm.playground import quickstart
from vitsplit_vlm.playground.recipes import fingerprint


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
    record(outputs, "pretrain", fingerprint("pretrain"))
    assert quickstart.stale_reason("pretrain") is None
    quickstart._train_stage("pretrain", retrain=False, report=quickstart.Report())
    assert "already trained" in capsys.readouterr().out

    older = fingerprint("pretrain")
    older["shapes"] = {**older["shapes"], "max_objects": 4}  # an older playground
    record(outputs, "pretrain", older)
    assert quickstart.stale_reason("pretrain") == "it was trained with another recipe"


def test_stage2_is_stale_when_stage1_changed(outputs):
    """Stage 2 starts from stage 1's connector: its record holds stage 1's."""
    current = fingerprint("finetune")
    assert current["pretrain"] == fingerprint("pretrain")
    record(outputs, "finetune", current)
    assert quickstart.stale_reason("finetune") is None
    current["pretrain"]["flags"]["--seed"] = "7"
    record(outputs, "finetune", current)
    assert quickstart.stale_reason("finetune") is not None


@pytest.mark.parametrize("module", ["lm_pretrain", "clip_pretrain"])
def test_stage1_is_stale_when_the_llm_or_tower_pretraining_changed(outputs, monkeypatch, module):
    """Stage 1 reads the pretrained tiny Llama and tower: new pretraining settings retrain it."""
    import importlib

    record(outputs, "pretrain", fingerprint("pretrain"))
    defaults = importlib.import_module(f"vitsplit_vlm.playground.{module}").DEFAULTS
    monkeypatch.setitem(defaults, "steps", defaults["steps"] + 1)
    assert quickstart.stale_reason("pretrain") == "it was trained with another recipe"


def test_logging_saving_and_loading_flags_are_not_part_of_the_recipe(outputs, monkeypatch):
    """Flags that cannot change the weights (data loader workers, logging, saving) do not make a
    finished stage stale; a learning rate does."""
    from vitsplit_vlm.playground import recipes

    record(outputs, "pretrain", fingerprint("pretrain"))
    stage = recipes._STAGES["pretrain"]
    monkeypatch.setitem(stage, "--dataloader_num_workers", "3")
    monkeypatch.setitem(stage, "--logging_steps", "1")
    assert quickstart.stale_reason("pretrain") is None
    monkeypatch.setitem(stage, "--learning_rate", "2e-3")
    assert quickstart.stale_reason("pretrain") == "it was trained with another recipe"


def test_stage1_is_stale_when_the_tiny_models_changed(outputs, monkeypatch):
    """A new tiny model or tokenizer spec (what `make_tiny` rebuilds on) retrains stage 1, even
    with the tiny models' version unchanged."""
    from vitsplit_vlm.playground import tiny

    record(outputs, "pretrain", fingerprint("pretrain"))
    monkeypatch.setitem(tiny.TOKENIZER_SPEC, "vocab_size", tiny.TOKENIZER_SPEC["vocab_size"] + 1)
    assert quickstart.stale_reason("pretrain") == "it was trained with another recipe"


def test_stage_argv_replaces_values_and_none_leaves_a_flag_out():
    from vitsplit_vlm.playground.recipes import stage_argv, stage_flags

    assert stage_flags("finetune")["--cache_features"] == "playground/feature-cache"
    argv = stage_argv("finetune", max_steps=7, cache_features=None)
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    assert flags["--max_steps"] == "7" and "--cache_features" not in flags
    assert {k: v for k, v in stage_flags("finetune").items() if k not in flags} == {
        "--cache_features": "playground/feature-cache"
    }
