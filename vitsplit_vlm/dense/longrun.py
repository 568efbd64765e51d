"""What a long ``dense train`` run adds to the engine's loop, as step hooks (`engine.StepHook`).

- `CheckpointHook`: every N steps a resumable checkpoint (`vitsplit_vlm.dense.resume`), keeping
  the newest ``--keep-last``;
- `EvalHook`: every N steps the sharded evaluation, one line per evaluation in
  ``eval_log.jsonl``, and the best so far (the task's `best_metric`) in ``best.pt`` /
  ``best.json``;
- `ProgressHook`: one tqdm bar with ETA on rank 0;
- `TrackerHook`: the logged losses to TensorBoard or Weights & Biases (`make_tracker`).

Hooks run on every rank (checkpoints gather RNG states, evaluation is sharded); only rank 0
writes files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .checkpoint import TrunkRef, save_checkpoint
from .datasets import DenseDataset
from .distributed import gather_objects
from .engine import EvalConfig, Progress, TrainState, evaluate, snapshot
from .resume import (
    CHECKPOINTS,
    STATE,
    rng_states,
    rotate,
    train_state_payload,
    write_atomically,
)

REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass(frozen=True)
class RunRecord:
    """What every checkpoint of a run carries besides weights: the trunk reference, the
    normalisation, the run's `resume.identity` and free-form info (flags, data)."""

    trunk: TrunkRef
    mean: tuple[float, ...]
    std: tuple[float, ...]
    identity: dict
    info: dict = field(default_factory=dict)

    def save(self, path: Path, state: TrainState, info: dict | None = None) -> Path:
        """`save_checkpoint` of the state's model with this record."""
        return save_checkpoint(path, state.model, trunk=self.trunk, mean=self.mean, std=self.std,
                               info={**self.info, **(info or {})})  # fmt: skip


@dataclass
class CheckpointHook:
    """Every `every` steps: ``OUT/checkpoints/step-N`` (atomic), then `rotate` to `keep_last`
    (0: keep all)."""

    out: Path
    every: int
    record: RunRecord
    keep_last: int = 0
    say: Any = print

    def __call__(self, state: TrainState, progress: Progress) -> None:
        if progress.step % self.every:
            return
        rng = gather_objects(rng_states())  # every rank's, in rank order, on rank 0
        if not state.runtime.is_main:
            return
        import torch

        payload = train_state_payload(progress.step, self.record.identity,
                                      snapshot(state, progress), rng)  # fmt: skip

        def files(tmp: Path) -> None:
            self.record.save(tmp / "checkpoint.pt", state, {"step": progress.step})
            torch.save(payload, tmp / STATE)

        folder = write_atomically(self.out / CHECKPOINTS, progress.step, files)
        removed = rotate(self.out / CHECKPOINTS, self.keep_last) if self.keep_last else []
        gone = f" (removed {', '.join(p.name for p in removed)})" if removed else ""
        self.say(f"saved {folder}{gone}")


def better(value: float, best: dict | None, mode: str) -> bool:
    """Whether `value` beats the best so far (`mode` "max" or "min"; NaN never does)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


@dataclass
class EvalHook:
    """Every `every` steps: evaluate (all ranks), log a line to ``eval_log.jsonl``, keep the best
    by `metric` (key, "max" | "min") in ``best.pt`` + ``best.json`` (rank 0)."""

    out: Path
    every: int
    dataset: DenseDataset
    config: EvalConfig
    record: RunRecord
    metric: tuple[str, str] | None
    tracker: Tracker | None = None
    say: Any = print

    def __call__(self, state: TrainState, progress: Progress) -> None:
        if progress.step % self.every:
            return
        metrics = evaluate(state.model, self.dataset, self.config, runtime=state.runtime)
        state.model.train()
        summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        new_best = None
        if self.metric is not None:
            key, mode = self.metric
            if better(metrics.get(key), progress.best, mode):
                new_best = {"step": progress.step, "metric": key, "value": metrics[key],
                            "mode": mode}  # fmt: skip
                progress.best = new_best
        if not state.runtime.is_main:
            return
        line = json.dumps({"step": progress.step, **summary})
        with open(self.out / "eval_log.jsonl", "a") as f:
            f.write(line + "\n")
        self.say(f"eval {line}")
        if self.tracker is not None:
            self.tracker.log({f"eval/{k}": v for k, v in summary.items()}, progress.step)
        if new_best is not None:
            self.record.save(self.out / "best.pt", state, {"best": new_best, "eval": summary})
            _write_json(self.out / "best.json", new_best)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


class ProgressHook:
    """One tqdm bar for training, with ETA, on rank 0 (`write` prints above it)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                        disable=not enabled, dynamic_ncols=True)  # fmt: skip

    def __call__(self, state: TrainState, progress: Progress) -> None:
        self.bar.update(1)
        if progress.last_entry is not None:
            self.bar.set_postfix(loss=f"{progress.last_entry['loss']:.4f}", refresh=False)

    def write(self, line: str) -> None:
        if self.bar.disable:
            print(line)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- trackers


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """``torch.utils.tensorboard`` event files in ``OUT/tensorboard``."""

    def __init__(self, out: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run in ``OUT/wandb``: offline unless ``WANDB_MODE`` says otherwise."""

    def __init__(self, out: Path, config: dict) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vitsplit-dense"),
                              name=out.name, dir=str(out), config=config, mode=mode)  # fmt: skip

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": (TensorBoardTracker, "tensorboard"), "wandb": (WandbTracker, "wandb")}


def make_tracker(kind: str, out: Path, config: dict) -> Tracker | None:
    """The tracker of ``--report-to`` (None for "none"); a missing package is a ``ValueError``
    naming it."""
    if kind not in REPORT_TO:
        raise ValueError(f"--report-to: must be one of {REPORT_TO}, got {kind!r}")
    if kind == "none":
        return None
    cls, package = TRACKERS[kind]
    try:
        return cls(out, config)
    except ImportError as err:
        raise ValueError(
            f"--report-to {kind}: the {package!r} package is not installed ({err}); "
            f"pip install {package}, or --report-to none"
        ) from None


class TrackerHook:
    """Each logged training entry (loss parts averaged over ranks, lr) to the tracker."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def __call__(self, state: TrainState, progress: Progress) -> None:
        entry = progress.last_entry
        if entry is not None and state.runtime.is_main:
            values = {"train/loss": entry["loss"], "train/lr": entry["lr"],
                      "train/s_per_step": entry["s_per_step"]}  # fmt: skip
            self.tracker.log(values, progress.step)
