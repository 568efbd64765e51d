"""Prompts that fit the model's context (chat, demo, evaluation).

A prompt that fills the LLM's context leaves no room for an answer: generation then gives a
degenerate or empty answer with no warning. The callers of `VLMEngine` use these helpers so that
the user hears about it:

- `check` refuses (`PromptTooLong`) a prompt that leaves no room at all;
- `limit` cuts ``max_new_tokens`` to the room the prompt leaves (a logged warning): the
  engine's ``generate`` and ``stream`` apply it to every batch;
- `fit` (chat and demo) drops the earliest rounds of a conversation that outgrew the context
  (never the last question), then cuts the answer length, and says what it did in `notes`.

The context is the LLM's ``max_position_embeddings`` (`context_length`); the prompt's tokens
include the image's (``image_seq_length``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image

from .conversation import Message

if TYPE_CHECKING:
    from .engine import GenerationSettings, VLMEngine

logger = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """A prompt that leaves no room for an answer in the model's context."""


@dataclass(frozen=True)
class FittedPrompt:
    """`fit`'s result: the messages and settings to generate with, and one line for the user
    per thing cut to fit the context."""

    messages: list[Message]
    settings: GenerationSettings
    notes: list[str]


def context_length(engine: VLMEngine) -> int:
    """Tokens the LLM takes, prompt and answer together (its ``max_position_embeddings``)."""
    return int(engine.config.text_config.max_position_embeddings)


def prompt_length(engine: VLMEngine, image: Image.Image | None, messages: Sequence[Message]) -> int:
    """Tokens of the prompt, image tokens included."""
    from .engine import Request

    return len(engine.prompt_ids(Request(image, list(messages))))


def check(engine: VLMEngine, length: int) -> None:
    """Raise `PromptTooLong` when a prompt of `length` tokens leaves no room to answer."""
    limit = context_length(engine)
    if length >= limit:
        raise PromptTooLong(
            f"the prompt is {length} tokens (the image counts {engine.config.image_seq_length}); "
            f"the model's context is {limit} tokens, which leaves no room to answer"
        )


def limit(engine: VLMEngine, length: int, settings: GenerationSettings) -> GenerationSettings:
    """`settings` with ``max_new_tokens`` cut to the room a prompt of `length` tokens leaves
    (a logged warning); `PromptTooLong` when it leaves none."""
    check(engine, length)
    room = context_length(engine) - length
    if settings.max_new_tokens <= room:
        return settings
    logger.warning(
        "answer limited to %d new tokens (asked %d): the prompt is %d tokens of the model's %d",
        room, settings.max_new_tokens, length, context_length(engine),
    )  # fmt: skip
    return cut(settings, room)


def cut(settings: GenerationSettings, room: int) -> GenerationSettings:
    """`settings` with ``max_new_tokens`` (and a ``min_new_tokens`` floor) at most `room`."""
    extra = dict(settings.extra)
    if extra.get("min_new_tokens", 0) > room:
        extra["min_new_tokens"] = room
    return replace(settings, max_new_tokens=min(settings.max_new_tokens, room), extra=extra)


def fit(
    engine: VLMEngine,
    image: Image.Image | None,
    messages: Sequence[Message],
    settings: GenerationSettings,
) -> FittedPrompt:
    """A conversation cut to the context: the earliest rounds are dropped while the prompt
    leaves less than ``max_new_tokens`` (never the last question), then the answer length is cut
    to the room left. `PromptTooLong` when the last question alone leaves none."""
    total = context_length(engine)
    messages, notes, dropped = list(messages), [], 0
    length = prompt_length(engine, image, messages)
    while length + settings.max_new_tokens > total and len(messages) > 2:
        messages, dropped = messages[2:], dropped + 1
        length = prompt_length(engine, image, messages)
    if dropped:
        notes.append(
            f"dropped the {dropped} earliest round(s) of the chat to fit the model's context of "
            f"{total} tokens"
        )
    try:
        check(engine, length)
    except PromptTooLong as err:
        raise PromptTooLong(f"{err}: ask a shorter question") from None
    room = total - length
    if settings.max_new_tokens > room:
        notes.append(
            f"answer limited to {room} new tokens (asked {settings.max_new_tokens}): the prompt "
            f"is {length} of the model's {total} tokens"
        )
        settings = cut(settings, room)
    return FittedPrompt(messages, settings, notes)
