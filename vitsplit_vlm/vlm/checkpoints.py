"""Reading other projects' checkpoints: weight files, key renaming with a report, and the
connector key layouts of LLaVA and of the official ViT-Split LLaVA code.

- `read_weights(folder)`: every tensor of a Hugging Face-style folder (``model.safetensors``,
  ``pytorch_model.bin``, or a sharded ``*.index.json`` of either); `read_weight_file(path)` for
  one file. ``.bin`` files are read with ``torch.load(..., weights_only=True)`` only.
- `KeyReport`: what happened to each source key (used as is, renamed, ignored and why), written
  beside a converted model as ``conversion_report.json``.
- `connector_keys(names, projector_type)`: LLaVA's ``mm_projector`` parameter names (the part
  after ``model.mm_projector.``) -> this project's connector names, for the official code's
  ``vitsplit`` projector (``llava/model/multimodal_projector/vitsplit.py``: ``tuned_head.*``,
  ``frozen_conv.*``, ``fusion_conv.*``) and LLaVA's ``mlp2x_gelu`` / ``linear``
  (``llava/model/multimodal_projector/builder.py``: ``0.*``, ``2.*`` / ``weight``, ``bias``).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

# single-file weights, then sharded indexes, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
LLAVA_PROJECTOR = "model.mm_projector."

# (source prefix, connector prefix) of LLaVA-format projector names, per mm_projector_type
_CONNECTOR_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "vitsplit": (
        ("tuned_head.", "heads.task_head.blocks."),
        ("frozen_conv.", "heads.prior_head.convs."),
        ("fusion_conv.", "heads.fusion."),
    ),
    "mlp2x_gelu": (("0.", "proj.0."), ("2.", "proj.2.")),
    # Dense Connector's stage-1 files: its mm_projector is LLaVA's mlp2x_gelu (wider input)
    "dc_sti": (("0.", "proj.0."), ("2.", "proj.2.")),
    "dc_sci": (("0.", "proj.0."), ("2.", "proj.2.")),
    "dc_dci": (("0.", "proj.0."), ("2.", "proj.2.")),
    "linear": (("weight", "proj.0.weight"), ("bias", "proj.0.bias")),
}


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one ``.safetensors`` or ``.bin`` file (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a global that weights_only refuses
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}); only plain "
            "tensor state dicts are accepted (re-save it with torch.save(model.state_dict()))"
        ) from err
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(weights).__name__})")
    return weights


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of `folder`: one file, or every shard named by an index."""
    folder = Path(folder)
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{index} names shards that are not there: {missing[:3]}")
            return [folder / s for s in shards]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(
        f"{folder}: no weights ({', '.join(WEIGHT_FILES + INDEX_FILES)}); pass the checkpoint "
        "folder itself"
    )


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, shards merged."""
    weights: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        weights.update(read_weight_file(path))
    return weights


@dataclass
class KeyReport:
    """What a conversion did with every source key.

    `used`: loaded under the same name; `renamed`: source -> target name; `ignored`: source
    keys deliberately dropped, with the reason; `added`: target keys that came from elsewhere
    (e.g. the vision tower of ``--vision-tower``), with where from.
    """

    used: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)

    def take(self, source: str, target: str) -> None:
        if source == target:
            self.used.append(source)
        else:
            self.renamed[source] = target

    def summary(self) -> str:
        return (
            f"{len(self.used)} keys used as they are, {len(self.renamed)} renamed, "
            f"{len(self.ignored)} ignored, {len(self.added)} taken from elsewhere"
        )

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "used": sorted(self.used),
            "renamed": dict(sorted(self.renamed.items())),
            "ignored": dict(sorted(self.ignored.items())),
            "added": dict(sorted(self.added.items())),
        }


def connector_keys(names: list[str], projector_type: str, *, source: str) -> dict[str, str]:
    """LLaVA-format projector names (after ``model.mm_projector.``) -> connector names.

    Raises one `ValueError` naming `source` when a name fits no rule of `projector_type`, or
    when the type has no LLaVA layout (``vitsplit_dense`` exists only in this project).
    """
    if projector_type not in _CONNECTOR_LAYOUTS:
        raise ValueError(
            f"{source}: LLaVA-format projector weights ({LLAVA_PROJECTOR}*) exist for "
            f"{', '.join(_CONNECTOR_LAYOUTS)}, not for --mm_projector_type {projector_type}"
        )
    rules = _CONNECTOR_LAYOUTS[projector_type]
    out, unknown = {}, []
    for name in names:
        rule = next((r for r in rules if name.startswith(r[0])), None)
        if rule is None:
            unknown.append(name)
        else:
            out[name] = rule[1] + name[len(rule[0]) :]
    if unknown:
        raise ValueError(
            f"{source}: projector weights {unknown[:4]} are not part of a {projector_type} "
            f"projector (expected {', '.join(r[0] + '*' for r in rules)}); is --mm_projector_type "
            "the one the checkpoint was trained with?"
        )
    return out
