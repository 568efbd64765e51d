"""Long-run services of ``dense train``: periodic evaluation with the best checkpoint, trackers
(W&B offline; a missing package is named), the progress bar."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from vitsplit_vlm.cli import main
from vitsplit_vlm.dense.checkpoint import load_dense_model
from vitsplit_vlm.dense.longrun import better
from vitsplit_vlm.playground.dense_sets import write_dense_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=4, num_val=2)


def seg_args(tiny, sets, out, *extra: str) -> list[str]:
    return ["dense", "train", "--task", "seg", "--backbone", str(tiny.dinov2), "--data",
            str(sets.ade), "--iters", "4", "--global-batch", "2", "--crop-size", "56",
            "--scale", "224,56", "--log-every", "1", "--out", str(out), *extra]  # fmt: skip


def test_better_follows_the_mode_and_ignores_nan():
    assert better(1.0, None, "max") and not better(float("nan"), None, "max")
    assert better(2.0, {"value": 1.0}, "max") and not better(2.0, {"value": 1.0}, "min")
    assert better(0.5, {"value": 1.0}, "min") and not better(1.0, {"value": 1.0}, "max")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_eval_every_keeps_the_best_and_reports_to_wandb_offline(tiny, sets, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(seg_args(tiny, sets, out, "--eval-every", "2", "--report-to", "wandb",
                         "--progress")) == 0  # fmt: skip
    evals = [json.loads(line) for line in (out / "eval_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and all("mIoU" in e for e in evals)
    best = json.loads((out / "best.json").read_text())
    top = max(evals, key=lambda e: e["mIoU"])  # the first of equals stays
    assert best == {"step": top["step"], "metric": "mIoU", "value": top["mIoU"], "mode": "max"}
    payload = torch.load(out / "best.pt", weights_only=True)
    assert payload["info"]["best"] == best
    model, _ = load_dense_model(out / "best.pt")
    assert model.spec.task == "seg"
    info = json.loads((out / "metrics.json").read_text())
    assert info["best"] == best
    assert list((out / "wandb").glob("offline-run-*"))
    err = capsys.readouterr().err
    assert "train: 100%" in err and "4/4" in err  # the bar, with its ETA field


def test_tensorboard_reports_or_names_the_missing_package(tiny, sets, tmp_path):
    out = tmp_path / "run"
    args = seg_args(tiny, sets, out, "--iters", "2", "--no-eval", "--report-to", "tensorboard")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(SystemExit, match="--report-to tensorboard: the 'tensorboard' package"):
            main(args)
    else:
        assert main(args) == 0
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
