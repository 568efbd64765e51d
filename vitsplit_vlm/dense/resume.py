"""Resumable training checkpoints (``dense train --save-every N --resume auto|PATH``).

One folder per saved step::

    OUT/checkpoints/step-00001000/
        checkpoint.pt     the trainable weights in the format of OUT/checkpoint.pt (dense eval
                          and predict read it)
        train_state.pt    optimizer, lr schedule, gradient scaler, progress (data position, log
                          window, history, skipped samples, best evaluation), the RNG states of
                          every rank (python, numpy, torch, its CUDA device) and the run's
                          identity
        COMPLETE          written last

A folder is written as ``.tmp-step-...`` and renamed when complete, so a killed run leaves at most
a partial ``.tmp-*`` folder, which `scan` reports and `pick` never returns. Both files are plain
data (``torch.load(weights_only=True)``). `rotate` keeps the newest N complete folders and never
the only one. Resuming checks the run's identity (`identity`): the trunk's fingerprint, the task,
the architecture (`DenseSpec`, ViT-Split settings included), the recipe and the data set size.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .checkpoint import TrunkRef, read_checkpoint
from .engine import TrainConfig
from .model import DenseSpec

FORMAT = "vitsplit-dense-train-state"
VERSION = 1
CHECKPOINTS = "checkpoints"
WEIGHTS, STATE, MARKER = "checkpoint.pt", "train_state.pt", "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# TrainConfig fields a resumed run may change (they do not alter the numbers)
FREE_FIELDS = ("checkpoint_head", "num_workers", "log_every", "accumulation")
RECIPE_FLAGS = {"batch_size": "--global-batch", "task_head_lr_mult": "--task-head-lr-mult"}
SPEC_FLAGS = {"num_classes": "--num-classes", "max_depth": "--max-depth", "extra": "--roi-batch"}


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed: partial, unreadable, or from another run setup."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def scan(root: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(complete checkpoints as (step, folder) by step, partial folders) under `root`."""
    complete, partial = [], []
    if not root.is_dir():
        return complete, partial
    for entry in sorted(root.iterdir()):
        match = _STEP_DIR.match(entry.name)
        if match and (entry / MARKER).is_file():
            complete.append((int(match.group(1)), entry))
        elif entry.is_dir():
            partial.append(entry)
    return sorted(complete), partial


def pick(choice: str, out: Path) -> tuple[Path | None, list[str]]:
    """``--resume auto|PATH`` -> (checkpoint folder or None to start fresh, notes to print).

    ``auto`` takes the newest complete folder under ``OUT/checkpoints``, naming the partial ones
    it skipped; a PATH must be a complete folder (or a run folder, treated as ``auto`` there).
    """
    path = Path(choice)
    if choice != "auto" and (path / MARKER).is_file():
        return path, []
    if choice != "auto" and not (path / CHECKPOINTS).is_dir():
        why = "a partial checkpoint (no COMPLETE marker)" if path.is_dir() else "not found"
        raise ResumeError(f"--resume {choice}: {why}; give a complete step-N folder or 'auto'")
    root = (out if choice == "auto" else path) / CHECKPOINTS
    complete, partial = scan(root)
    notes = [f"--resume {choice}: skipped partial checkpoint {p}" for p in partial]
    if not complete:
        if choice != "auto":
            raise ResumeError(f"--resume {choice}: no complete checkpoint in {root}")
        return None, [*notes, f"--resume auto: no complete checkpoint in {root}; starting at 0"]
    return complete[-1][1], notes


# --------------------------------------------------------------------------- writing


def write_atomically(root: Path, step: int, write_files: Callable[[Path], None]) -> Path:
    """Call ``write_files(tmp)`` on a fresh temporary folder, add the marker, rename it to
    ``step-N`` (replacing an older folder of that step). Returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_files(tmp)
    (tmp / MARKER).write_text(f"step {step}\n")
    _fsync_folder(tmp)
    if final.exists():  # a folder of the same step from an earlier attempt
        old = root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _fsync_folder(folder: Path) -> None:
    """Flush the files of `folder` to disk before the rename makes it complete."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def rotate(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` (>= 1) complete checkpoints and any partial
    folder; the newest complete one always stays. Returns what was deleted."""
    complete, partial = scan(root)
    doomed = [path for _, path in complete[: max(0, len(complete) - max(1, keep_last))]]
    doomed += partial
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def rng_states() -> dict:
    """This process's RNG states (python, numpy, torch, its current CUDA device) as plain data.
    Only the current device: reading the others would open a CUDA context on each of them."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else []
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_states(state: dict) -> None:
    """Restore `rng_states`' output (the CUDA state onto the current device)."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


def train_state_payload(step: int, identity: dict, snapshot: dict, rng: list[dict]) -> dict:
    """The content of ``train_state.pt``: `snapshot` (`engine.snapshot`) + RNG states per rank."""
    return {"format": FORMAT, "version": VERSION, "step": step, "identity": identity,
            "rng": rng, **snapshot}  # fmt: skip


# --------------------------------------------------------------------------- reading


def read_train_state(folder: Path) -> tuple[dict, dict]:
    """(``checkpoint.pt`` payload, ``train_state.pt`` payload) of a complete folder."""
    if not (folder / MARKER).is_file():
        raise ResumeError(f"{folder}: partial checkpoint (no {MARKER} marker); not loaded")
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ResumeError(f"cannot read {folder / STATE}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{folder / STATE} is not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise ResumeError(f"{folder / STATE}: version {state.get('version')}, expected {VERSION}")
    return read_checkpoint(folder / WEIGHTS), state


def identity(*, spec: DenseSpec, trunk: TrunkRef, cfg: TrainConfig, dataset_size: int) -> dict:
    """What a resumed run must share with the checkpoint (plain data)."""
    recipe = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in FREE_FIELDS}
    return {"trunk": {"path": trunk.path, "fingerprint": trunk.fingerprint},
            "spec": spec.to_dict(), "recipe": recipe, "dataset_size": dataset_size}  # fmt: skip


def check_identity(saved: dict, current: dict, *, source: Path) -> None:
    """Raise `ResumeError` naming every difference between the checkpoint's run and this one."""
    problems = []
    if saved["trunk"]["fingerprint"] != current["trunk"]["fingerprint"]:
        problems.append(
            f"trunk (--backbone): checkpoint {saved['trunk']['path']} (fingerprint "
            f"{saved['trunk']['fingerprint']}), this run {current['trunk']['path']} "
            f"(fingerprint {current['trunk']['fingerprint']})"
        )
    problems += _spec_differences(saved["spec"], current["spec"])
    for name, value in current["recipe"].items():
        if saved["recipe"].get(name) != value:
            flag = RECIPE_FLAGS.get(name, "--" + name.replace("_", "-"))
            problems.append(f"{name} ({flag}): checkpoint {saved['recipe'].get(name)!r}, "
                            f"this run {value!r}")  # fmt: skip
    if saved["dataset_size"] != current["dataset_size"]:
        problems.append(f"training set (--data): checkpoint {saved['dataset_size']} images, "
                        f"this run {current['dataset_size']}")  # fmt: skip
    if problems:
        raise ResumeError(
            f"--resume {source}: the checkpoint comes from another run setup: "
            + "; ".join(problems)
            + ". Resume with the same flags, or train into a new --out"
        )


def _spec_differences(saved: dict, current: dict) -> list[str]:
    if saved["task"] != current["task"]:
        return [f"task (--task): checkpoint {saved['task']}, this run {current['task']}"]
    if saved["method"] != current["method"]:
        return [f"method (--method): checkpoint {saved['method']}, this run {current['method']}"]
    out = []
    old_split, new_split = saved.get("split") or {}, current.get("split") or {}
    for name in sorted(set(old_split) | set(new_split)):
        if old_split.get(name) != new_split.get(name):
            out.append(f"ViT-Split {name} (--{name.replace('_', '-')}): checkpoint "
                       f"{old_split.get(name)!r}, this run {new_split.get(name)!r}")  # fmt: skip
    for name in sorted(set(saved) | set(current)):
        if name not in ("task", "method", "split") and saved.get(name) != current.get(name):
            flag = SPEC_FLAGS.get(name, "--" + name.replace("_", "-"))
            out.append(f"{name} ({flag}): checkpoint {saved.get(name)!r}, "
                       f"this run {current.get(name)!r}")  # fmt: skip
    return out
