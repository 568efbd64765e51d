"""What the terminal chat and the Gradio demo share: the model to serve and the chat history.

- `load_served_model(model_path)` loads a saved model folder (a clear error when the folder holds
  no model);
- `build_messages(template, rounds, question)` turns answered rounds and a new question into the
  engine's ``[(role, text), ...]``, dropping rounds that produced no answer.
"""

from __future__ import annotations

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


def load_served_model(model_path: str | Path, *, device: str | None = None) -> ServedModel:
    """The model saved in `model_path` (`save_pretrained` + its processor) behind a `VLMEngine`."""
    from ..vlm.engine import VLMEngine

    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "holds no config.json"
        raise ModelFolderError(
            f"--model-path {folder} {what}: give a model folder written by training "
            "(`make quickstart` writes checkpoints/vitsplit-tiny) or `vitsplit-vlm merge-lora`"
        )
    engine = VLMEngine.from_pretrained(folder, device=device)
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
