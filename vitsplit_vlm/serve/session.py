"""What the terminal chat and the Gradio demo share: the model to serve and the chat history.

- `load_served_model(model_path)` loads a saved model folder (a one-line error when the folder
  holds no model: missing, no config, another model type, a stage-1 output without weights);
- `build_messages(template, rounds, question)` turns answered rounds and a new question into the
  engine's ``[(role, text), ...]``, dropping rounds that produced no answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..vlm.conversation import Message, Template
    from ..vlm.engine import VLMEngine

Round = tuple[str, str]  # (question, answer); answer "" when the round produced none


@dataclass
class ServedModel:
    """A loaded engine and a one-line description of it."""

    engine: VLMEngine
    description: str


class ModelFolderError(ValueError):
    """`--model-path` does not hold a saved model."""


MODEL_TYPE = "vitsplit_llava"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")  # fmt: skip
PROCESSOR = ("processor_config.json", "preprocessor_config.json")  # the image processor's
TOKENIZER = "tokenizer_config.json"
HINT = (
    "give a model folder written by training (`make quickstart` writes checkpoints/vitsplit-tiny), "
    "`vitsplit-vlm merge-lora` or `vitsplit-vlm convert`"
)


def check_model_folder(folder: Path) -> None:
    """Raise `ModelFolderError` (one line) unless `folder` looks like a saved ViT-Split LLaVA
    model: a readable ``config.json`` of that model type, weight files and the processor's files.
    Reads no weights."""
    config = folder / "config.json"
    if not config.is_file():
        what = "does not exist" if not folder.exists() else "holds no config.json"
        raise ModelFolderError(f"--model-path {folder} {what}: {HINT}")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelFolderError(f"--model-path {folder}: cannot read {config} ({err})") from None
    if model_type != MODEL_TYPE:
        raise ModelFolderError(
            f"--model-path {folder} holds a {model_type!r} model, not a ViT-Split LLaVA one "
            f"({MODEL_TYPE}): {HINT}"
        )
    if not any((folder / name).is_file() for name in WEIGHTS):
        stage1 = (folder / "mm_projector.safetensors").is_file()
        what = "a stage-1 connector (mm_projector.safetensors) and no model" if stage1 else (
            "no model weights")  # fmt: skip
        raise ModelFolderError(f"--model-path {folder} holds {what}: {HINT}")
    if (
        not any((folder / name).is_file() for name in PROCESSOR)
        or not (folder / TOKENIZER).is_file()
    ):
        raise ModelFolderError(
            f"--model-path {folder} holds no processor ({' or '.join(PROCESSOR)} and {TOKENIZER}, "
            f"written by `processor.save_pretrained`): {HINT}"
        )


def load_served_model(model_path: str | Path, *, device: str | None = None) -> ServedModel:
    """The model saved in `model_path` (`save_pretrained` + its processor) behind a `VLMEngine`;
    a folder that is not such a model raises `ModelFolderError` with one line."""
    from safetensors import SafetensorError

    from ..vlm.engine import VLMEngine

    folder = Path(model_path)
    check_model_folder(folder)
    try:
        engine = VLMEngine.from_pretrained(folder, device=device)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # corrupt or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"--model-path {folder}: cannot load the model ({first})") from err
    return ServedModel(engine, f"{folder} (template {engine.template.name})")


def build_messages(template: Template, rounds: Sequence[Round], question: str) -> list[Message]:
    """Engine messages for `question` after `rounds`; rounds without an answer are left out.

    The ``plain`` template (a stage-1 model) prompts with one round only, so it gets the question
    alone. The engine adds the ``<image>`` placeholder to the first user message.
    """
    if template.style == "plain":
        return [(template.user, question)]
    messages: list[Message] = []
    for asked, answered in rounds:
        if asked.strip() and answered.strip():
            messages += [(template.user, asked), (template.assistant, answered)]
    return messages + [(template.user, question)]
