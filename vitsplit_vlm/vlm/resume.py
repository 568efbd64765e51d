"""Training checkpoints that count only when complete, and resuming them without pickle.

The HF Trainer writes ``OUT/checkpoint-N/`` in place, file by file (model, DeepSpeed's
``global_stepN/`` states, optimizer, RNG, ``trainer_state.json``); a run killed meanwhile leaves
a partial folder that HF's own ``--resume_from_checkpoint True`` would pick and crash on.
`VLMTrainer` therefore writes a ``COMPLETE`` marker into the folder last (after every rank's
files, flushed to disk), and:

- `pick` resolves ``--resume_from_checkpoint``: ``True`` takes the newest complete folder and
  names the partial ones it skipped (none complete: a fresh start); a PATH must be complete;
- `rotate` applies ``--save_total_limit`` to complete folders only, after the new one is
  marked, so the only complete checkpoint is never deleted; partial folders go with it;
- `check_pickles` + `weights_only_loading`: DeepSpeed loads its ``global_stepN/*.pt`` files with
  ``torch.load(weights_only=False)``, which runs whatever a doctored file asks. Before any
  weights load, every ``.pt``/``.pth`` file is scanned for pickle globals outside the few
  DeepSpeed classes its states hold (`DEEPSPEED_CHECKPOINT_GLOBALS`); during the load itself
  torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch (read by every ``torch.load`` call) makes
  those calls weights-only, with the same classes allowed (``torch.serialization.safe_globals``).
  ``--allow_pickle_checkpoints True`` turns both off, for checkpoints one made oneself.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"  # HF writes it last in a save
PICKLE_FLAG = "--allow_pickle_checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# The non-tensor classes DeepSpeed (0.15-0.19) pickles into its ZeRO checkpoint states
# (`get_unsafe_globals_in_checkpoint` on ZeRO-2 / ZeRO-3 checkpoints, fp32 and fp16).
DEEPSPEED_CHECKPOINT_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
# What HF itself allows when it loads ``rng_state.pth`` weights-only (its numpy RNG state)
HF_RNG_GLOBALS = (
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
)
PICKLED_SUFFIXES = (".pt", ".pth", ".bin")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed: partial, not found, or needing pickle."""


@dataclass
class Checkpoints:
    """``checkpoint-N`` folders of a run: complete ones as (step, folder) by step, the rest."""

    complete: list[tuple[int, Path]] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)

    @property
    def newest(self) -> Path | None:
        return self.complete[-1][1] if self.complete else None


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def scan(out: Path) -> Checkpoints:
    """The ``checkpoint-N`` folders of `out`."""
    found = Checkpoints()
    if not out.is_dir():
        return found
    for entry in out.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        if is_complete(entry):
            found.complete.append((int(match.group(1)), entry))
        else:
            found.partial.append(entry)
    found.complete.sort()
    found.partial.sort(key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))
    return found


def pick(out: Path, choice: str | bool | None) -> tuple[Path | None, list[str]]:
    """``--resume_from_checkpoint`` -> (complete folder or None for a fresh start, notes).

    ``True``: the newest complete ``checkpoint-N`` of `out`, naming every partial one skipped.
    A PATH must be a complete checkpoint folder. A run saved before checkpoints were marked
    (no folder of `out` has the marker) is resumed from its newest folder whose
    ``trainer_state.json``, which HF writes last, is readable (`legacy_complete`; a note says so).
    """
    if not choice:
        return None, []
    if choice is not True:
        path = Path(choice)
        if not path.is_dir():
            raise ResumeError(f"--resume_from_checkpoint {choice}: no such checkpoint folder")
        if is_complete(path):
            return path, []
        if not scan(path.parent).complete and legacy_complete(path):
            return path, [_legacy_note(path)]
        raise ResumeError(
            f"--resume_from_checkpoint {choice}: a partial checkpoint (no {MARKER} marker: "
            "the run stopped while writing it); pass True to take the newest complete one"
        )
    found = scan(out)
    if found.newest is None:
        legacy = [p for p in found.partial if legacy_complete(p)]
        if legacy:
            return legacy[-1], [_legacy_note(legacy[-1])]
    notes = [
        f"--resume_from_checkpoint True: skipped partial checkpoint {p}" for p in found.partial
    ]
    if found.newest is None:
        return None, [*notes, f"--resume_from_checkpoint True: no complete checkpoint in {out}; "
                      "starting at step 0"]  # fmt: skip
    return found.newest, [*notes, f"--resume_from_checkpoint True: resuming from {found.newest}"]


def legacy_complete(folder: Path) -> bool:
    """A checkpoint saved before checkpoints were marked, whose ``trainer_state.json`` (written
    last by HF's save) holds a step: complete, unless a multi-process save was cut short."""
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def _legacy_note(folder: Path) -> str:
    return (
        f"--resume_from_checkpoint: resuming from {folder}, saved without a {MARKER} marker "
        "(before checkpoints were marked); its trainer_state.json, written last, is complete"
    )


def resume_from(
    output_dir: str | Path, choice: str | bool | None, *, allow_pickle: bool
) -> Path | None:
    """Training's ``--resume_from_checkpoint``: the complete checkpoint to resume from (`pick`;
    its notes printed by rank 0), scanned for pickled code (`check_pickles`) before any weights
    load; None for a fresh start. A problem exits with one line."""
    try:
        folder, notes = pick(Path(output_dir), choice)
        if folder is not None:
            check_pickles(folder, allow_pickle=allow_pickle)
    except ResumeError as err:
        raise SystemExit(str(err)) from err
    if int(os.environ.get("RANK", "0")) == 0:
        for note in notes:
            print(f"[vitsplit-vlm train] {note}", file=sys.stderr, flush=True)
    return folder


def mark_complete(folder: Path) -> None:
    """Flush every file of `folder` to disk, then write the marker (and flush it too)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    marker = folder / MARKER
    with open(marker, "w") as f:
        f.write("written after every file of this checkpoint\n")
        f.flush()
        os.fsync(f.fileno())


def discard_partial(folder: Path) -> bool:
    """Delete `folder` if it is a partial checkpoint (a save of the same step overwrites it:
    files of the earlier attempt must not mix in). Returns whether it was deleted."""
    if folder.is_dir() and not is_complete(folder):
        shutil.rmtree(folder)
        return True
    return False


def rotate(out: Path, keep: int | None, protect: Path | None = None) -> list[Path]:
    """``--save_total_limit``: keep the newest `keep` complete checkpoints (at least the newest
    one, and `protect`, HF's best model) and delete older complete ones and every partial one.
    `keep` None or < 1: nothing is deleted. Returns what was deleted."""
    if keep is None or keep < 1:
        return []
    found = scan(out)
    kept = {path for _, path in found.complete[-keep:]}
    if protect is not None:
        kept.add(Path(protect))
    doomed = [path for _, path in found.complete if path not in kept] + found.partial
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------------- pickle-free loads


def _allowed_classes() -> list[type]:
    """`DEEPSPEED_CHECKPOINT_GLOBALS` imported (those this DeepSpeed has)."""
    classes = []
    for name in DEEPSPEED_CHECKPOINT_GLOBALS:
        module, _, attr = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            classes.append(getattr(importlib.import_module(module), attr))
    return classes


def unsafe_globals(folder: Path) -> dict[Path, list[str]]:
    """Pickled files of `folder` (recursively) -> the globals they need beyond plain tensors,
    `DEEPSPEED_CHECKPOINT_GLOBALS` and `HF_RNG_GLOBALS` (found without unpickling). Files torch cannot scan (not its
    zip format) are left to the weights-only load."""
    import torch

    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in PICKLED_SUFFIXES):
        if path.name == "training_args.bin":  # written for the record, never loaded by resume
            continue
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (RuntimeError, OSError, ValueError):
            continue
        extra = [n for n in names if n not in DEEPSPEED_CHECKPOINT_GLOBALS + HF_RNG_GLOBALS]
        if extra:
            found[path] = extra
    return found


def check_pickles(folder: Path, *, allow_pickle: bool) -> None:
    """Refuse `folder` when a file needs pickle globals (unless `allow_pickle`)."""
    if allow_pickle:
        return
    found = unsafe_globals(folder)
    if found:
        path, names = next(iter(found.items()))
        raise ResumeError(refusal(path, names))


def refusal(path: Path | str, names: list[str]) -> str:
    return (
        f"{path}: refused to load: it needs pickle globals {', '.join(names)}, which can run "
        "code when unpickled (a DeepSpeed checkpoint needs only tensors and "
        f"{', '.join(n.rsplit('.', 1)[1] for n in DEEPSPEED_CHECKPOINT_GLOBALS)}). If you wrote "
        f"this checkpoint yourself, pass {PICKLE_FLAG} True to load it anyway"
    )


@contextlib.contextmanager
def weights_only_loading(*, allow_pickle: bool = False) -> Iterator[None]:
    """Every ``torch.load`` inside is weights-only, whatever its caller asks, with
    `DEEPSPEED_CHECKPOINT_GLOBALS` allowed; a file needing more raises `ResumeError`.

    Uses torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch (read per call, restored on exit) and
    ``torch.serialization.safe_globals``; nothing of DeepSpeed or transformers is patched.
    `allow_pickle`: a no-op (``--allow_pickle_checkpoints True``)."""
    if allow_pickle:
        yield
        return
    import pickle

    import torch

    before = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            yield
    except pickle.UnpicklingError as err:
        raise ResumeError(
            f"a checkpoint file was refused by the weights-only load ({_first_line(err)}); "
            f"if you wrote this checkpoint yourself, pass {PICKLE_FLAG} True to load it anyway"
        ) from err
    finally:
        if before is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = before


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    unsupported = [line for line in lines if "Unsupported global" in line]
    return (unsupported or lines or [type(err).__name__])[0]
