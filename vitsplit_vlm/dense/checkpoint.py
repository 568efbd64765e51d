"""Dense checkpoints: the trainable parts only, plus a reference to the frozen trunk.

A checkpoint is one ``torch.save`` file of plain data (loads with ``weights_only=True``)::

    {"format": "vitsplit-dense", "version": 2,
     "spec": DenseSpec.to_dict(),   # ViT-Split settings nested: "split": ViTSplitConfig dict
     "trunk": {"path", "fingerprint", "model_type", "num_blocks", "hidden_size"},
     "normalization": {"mean", "std"},
     "state_dict": {name: tensor}   # trainable groups + their buffers; the whole backbone
                                    # only for method "full"
     "info": {...}}                 # training arguments, steps, metrics (free-form)

The fingerprint is a SHA-256 over the trunk's state dict (names, dtypes, shapes, bytes). Loading
re-computes it on the trunk found at ``trunk.path`` (or the path given) and refuses a mismatch,
since heads trained on one trunk's features are meaningless on another's.

Version 1 kept the ViT-Split settings as flat spec fields (k, n, s, selection, components,
deform_offset_init); `read_checkpoint` converts such a spec to the nested form (`upgrade_spec_v1`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vitsplit_vlm.core.config import ViTSplitConfig

from .model import DenseModel, DenseSpec

FORMAT = "vitsplit-dense"
VERSION = 2
READABLE_VERSIONS = (1, 2)
V1_SPLIT_FIELDS = ("k", "n", "s", "selection", "components", "deform_offset_init")
FROZEN_PREFIXES = ("split.trunk.", "split.heads.final_norm.")


def fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of a module's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TrunkRef:
    path: str
    fingerprint: str
    model_type: str
    num_blocks: int
    hidden_size: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TrunkMismatchError(ValueError):
    """A checkpoint's heads were trained on a different frozen trunk."""


def trainable_state_dict(model: DenseModel) -> dict[str, torch.Tensor]:
    """Everything but the frozen trunk (and the heads' frozen copy of its final norm)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(FROZEN_PREFIXES)
    }


def save_checkpoint(
    path: str | Path,
    model: DenseModel,
    *,
    trunk: TrunkRef,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    info: dict | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "trunk": trunk.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "state_dict": trainable_state_dict(model),
        "info": json.loads(json.dumps(info or {}, default=str)),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated for format and version."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: checkpoint version {version}, expected one of {READABLE_VERSIONS}"
        )
    if version == 1:
        payload["spec"] = upgrade_spec_v1(payload["spec"])
    return payload


def upgrade_spec_v1(spec: dict) -> dict:
    """A version-1 spec dict (flat ViT-Split fields) in the current nested form."""
    spec = dict(spec)
    flat = {name: spec.pop(name) for name in V1_SPLIT_FIELDS if name in spec}
    split = ViTSplitConfig(**flat) if spec.get("method") != "full" else None
    spec["split"] = split.to_dict() if split is not None else None
    return spec


def check_trunk(
    payload: dict, trunk: nn.Module, *, source: str, trunk_path: str, found: str | None = None
) -> None:
    """Raise `TrunkMismatchError` if `trunk` is not the trunk the checkpoint was trained on
    (`found`: the trunk's fingerprint when already computed)."""
    expected = payload["trunk"]["fingerprint"]
    found = found or fingerprint(trunk)
    if found != expected:
        raise TrunkMismatchError(
            f"{source} was trained on trunk {payload['trunk']['path']} (fingerprint {expected}), "
            f"but {trunk_path} has fingerprint {found}: its heads only work on the frozen "
            "features they were trained on"
        )


def load_trunk(path: str | Path) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path)).eval()


def load_dense_model(
    path: str | Path,
    *,
    trunk: nn.Module | None = None,
    trunk_path: str | Path | None = None,
    trunk_fingerprint: str | None = None,
) -> tuple[DenseModel, dict]:
    """Rebuild a `DenseModel` from a checkpoint; returns ``(model in eval mode, payload)``.

    The trunk is `trunk` (an already loaded model, e.g. shared by several adapters) or loaded
    from `trunk_path` / the path recorded in the checkpoint. Frozen-trunk methods refuse a
    trunk whose fingerprint differs (`TrunkMismatchError`); ``full`` checkpoints carry their
    whole backbone and only need a model of the same architecture. `trunk_fingerprint` skips
    recomputing the fingerprint of a trunk already checked.
    """
    payload = read_checkpoint(path)
    spec = DenseSpec.from_dict(payload["spec"])
    source = str(trunk_path or payload["trunk"]["path"])
    if trunk is None:
        trunk = load_trunk(source)
    elif spec.method == "full":  # its weights are about to be overwritten: never share them
        trunk = copy.deepcopy(trunk)
    if spec.method != "full":
        check_trunk(payload, trunk, source=str(path), trunk_path=source, found=trunk_fingerprint)
    model = DenseModel(trunk, spec)
    load_trainable_state(model, payload["state_dict"], source=str(path))
    return model.eval(), payload


def load_trainable_state(model: DenseModel, state_dict: dict, *, source: str) -> None:
    """Load `trainable_state_dict`'s output into `model` (in place); any other mismatch than the
    frozen trunk's keys is a ``ValueError`` naming `source`."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
    if missing or unexpected:
        raise ValueError(
            f"{source}: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
