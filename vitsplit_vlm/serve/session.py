"""What the terminal chat and the Gradio demo share: the model to serve and the chat history.

- `load_served_model(model_path)` loads a saved model folder, or, with no path, the embedded
  default: `checkpoints/vitsplit-tiny` (written by `scripts/finetune.sh`) when it exists, else an
  untrained tiny LLaVA + ViT-Split built from `make-tiny`'s models, flagged by a `banner`.
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

DEFAULT_CHECKPOINT = Path("checkpoints/vitsplit-tiny")
DEFAULT_TINY_ROOT = Path("playground/tiny")
UNTRAINED_MIN_NEW_TOKENS = 8

Round = tuple[str, str]  # (question, answer); answer "" when the round produced none


@dataclass
class ServedModel:
    """A loaded engine and how to present it.

    `banner` (Markdown) is set when the weights are untrained, so the page can say so;
    `min_new_tokens` is the answer-length floor (the untrained default uses a few tokens, so a
    random model that emits end-of-sequence at once still visibly answers).
    """

    engine: VLMEngine
    description: str
    banner: str | None = None
    min_new_tokens: int = 0


def load_served_model(
    model_path: str | Path | None,
    *,
    device: str | None = None,
    checkpoint: Path = DEFAULT_CHECKPOINT,
    tiny_root: Path = DEFAULT_TINY_ROOT,
) -> ServedModel:
    """`model_path` if given; else `checkpoint` if it holds a model; else an untrained tiny VLM."""
    from ..vlm.engine import VLMEngine

    if model_path is not None:
        engine = VLMEngine.from_pretrained(model_path, device=device)
        return ServedModel(engine, f"{model_path} (template {engine.template.name})")
    if (checkpoint / "config.json").exists():
        engine = VLMEngine.from_pretrained(checkpoint, device=device)
        return ServedModel(engine, f"{checkpoint}, the trained tiny default")
    return _untrained_tiny(checkpoint, tiny_root, device)


def _untrained_tiny(checkpoint: Path, tiny_root: Path, device: str | None) -> ServedModel:
    import torch

    from ..playground.tiny import make_tiny
    from ..vlm.builder import build_vlm
    from ..vlm.engine import VLMEngine

    tiny = make_tiny(tiny_root)
    built = build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    engine = VLMEngine(built.model.to(device), built.processor)
    banner = (
        f"**Untrained tiny model.** No `--model-path` was given and `{checkpoint}` does not exist, "
        f"so this is a randomly initialised tiny LLaVA-1.5 + ViT-Split built from `{tiny_root}`: "
        "its answers are random tokens. Train the tiny default with `bash scripts/pretrain.sh && "
        "bash scripts/finetune.sh`, or pass `--model-path` to a trained model folder."
    )
    description = f"an UNTRAINED tiny model built from {tiny_root} ({checkpoint} does not exist)"
    return ServedModel(engine, description, banner, UNTRAINED_MIN_NEW_TOKENS)


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
