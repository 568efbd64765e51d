"""Conversation templates of LLaVA-1.5 (`--version plain` and `--version vicuna_v1`).

One renderer serves training and inference, so the prompt a model is asked at eval time is the
text it was trained on, character for character:

- `render_conversation(template, messages)` renders a whole training conversation and returns
  the text plus the character spans the loss is computed on (`RenderedConversation`);
- `render_prompt(template, messages)` renders the same text up to the assistant's cue
  (``"... ASSISTANT:"``), for generation.

Messages are ``(role, text)`` pairs with ``role`` one of ``template.roles`` (user first, then
alternating). What the two templates produce (``{system}`` is Vicuna's system prompt):

=============  ======================================================================
``vicuna_v1``  ``{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>``;
               supervised: each ``" {a}</s>"`` (the space after ``ASSISTANT:`` included, as
               LLaVA's masking keeps the token ``"▁{a}"``); prompt ends ``"ASSISTANT:"``.
``plain``      ``<image>{caption}\\n``: the user's words are dropped (LLaVA's preprocess_plain
               replaces them with the image); supervised: ``"{caption}\\n"``; prompt: ``<image>``.
=============  ======================================================================

The image placeholder is normalised as LLaVA does: every ``<image>`` is taken out of the user
messages and the first user message becomes ``"<image>\\n" + text`` (stripped), so
``"<image>\\n"`` alone renders as ``"<image>"``. The system prompt is the template's: a
``"system"`` message is refused (``bad_roles``).

The processor saved with a model renders the same text from transformers messages: its chat
template is generated from these templates (`vitsplit_vlm.vlm.processing.chat_template`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
STYLES = ("two", "plain")

Message = tuple[str, str | None]


class InvalidConversation(ValueError):
    """A conversation the template cannot render; `reason` is a short machine-readable code.

    Reasons: ``bad_roles`` (unknown role, a system message, roles out of order, wrong number of
    rounds for the template), ``no_assistant_turn``, ``empty_turn``, ``image_in_reply``,
    ``image_count``; ``bad_format`` (a content part other than text and image, from
    `vitsplit_vlm.vlm.processing.chat_to_messages`).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Template:
    """A LLaVA conversation template.

    `style` ``"two"`` is LLaVA's ``SeparatorStyle.TWO``: ``system + sep``, then
    ``role + ": " + text`` followed by `sep` after user messages and `sep2` after replies.
    `style` ``"plain"`` is ``SeparatorStyle.PLAIN`` as LLaVA trains it: image, reply, `sep`;
    system and roles are not rendered (roles only name the two sides of `messages`).
    """

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"
    style: str = "two"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"Template.style: must be one of {STYLES}, got {self.style!r}")
        if len(self.roles) != 2 or self.roles[0] == self.roles[1]:
            raise ValueError(f"Template.roles: need two distinct roles, got {self.roles!r}")

    @property
    def user(self) -> str:
        return self.roles[0]

    @property
    def assistant(self) -> str:
        return self.roles[1]

    @property
    def stop_str(self) -> str:
        """Text that ends a reply: generation stops there (LLaVA: `sep2` for TWO, else `sep`)."""
        return self.sep2 if self.style == "two" else self.sep


TEMPLATES: dict[str, Template] = {
    "plain": Template(name="plain", system="", sep="\n", sep2="", style="plain"),
    "vicuna_v1": Template(name="vicuna_v1", system=VICUNA_SYSTEM, sep=" ", sep2="</s>"),
}


def get_template(name: str) -> Template:
    """The registered template `name` (the ``--version`` argument)."""
    if name not in TEMPLATES:
        raise ValueError(
            f"--version: unknown conversation template {name!r}; choices: {sorted(TEMPLATES)}"
        )
    return TEMPLATES[name]


@dataclass(frozen=True)
class RenderedConversation:
    """Rendered text and the half-open character spans ``[start, end)`` the loss covers."""

    text: str
    supervised: tuple[tuple[int, int], ...]


def normalize_image_placeholder(messages: Sequence[Message], template: Template) -> list[Message]:
    """Move every ``<image>`` of the user messages to the front of the first one (LLaVA).

    The message that held a placeholder is stripped after removing it; the first user message
    becomes ``("<image>\\n" + text).strip()``. Raises `InvalidConversation` (``image_in_reply``)
    if a reply holds a placeholder. Messages without placeholders are returned unchanged.
    """
    out: list[Message] = []
    count = 0
    for role, text in messages:
        if text is not None and IMAGE_PLACEHOLDER in text:
            if role != template.user:
                raise InvalidConversation("image_in_reply", f"{IMAGE_PLACEHOLDER!r} in a reply")
            count += text.count(IMAGE_PLACEHOLDER)
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append((role, text))
    if count == 0:
        return out
    first = next(j for j, (role, _) in enumerate(out) if role == template.user)
    text = out[first][1] or ""
    out[first] = (template.user, (IMAGE_PLACEHOLDER * count + "\n" + text.strip()).strip())
    return out


def _check_roles(messages: Sequence[Message], template: Template) -> None:
    for j, (role, _) in enumerate(messages):
        if role.lower() == "system":
            raise InvalidConversation(
                "bad_roles",
                f"message {j} is a system message; the {template.name} template has a fixed "
                "system prompt (the one the model is trained with)",
            )
        if role not in template.roles:
            raise InvalidConversation(
                "bad_roles", f"unknown role {role!r}; expected one of {template.roles}"
            )
        if role != template.roles[j % 2]:
            raise InvalidConversation(
                "bad_roles", f"message {j} is from {role!r}; expected {template.roles[j % 2]!r}"
            )


def render_conversation(template: Template, messages: Sequence[Message]) -> RenderedConversation:
    """Render complete rounds ``[(user, q1), (assistant, a1), ...]`` for training.

    Every reply must be non-empty; for ``plain``, exactly one round whose user message holds the
    image. Raises `InvalidConversation` otherwise.
    """
    _check_roles(messages, template)
    if len(messages) < 2:
        raise InvalidConversation("no_assistant_turn", "the conversation has no reply")
    if len(messages) % 2:
        raise InvalidConversation("bad_roles", "the conversation ends with an unanswered message")
    for j, (role, text) in enumerate(messages):
        if not text or not text.strip():
            raise InvalidConversation("empty_turn", f"message {j} ({role}) is empty")
    messages = normalize_image_placeholder(messages, template)
    if template.style == "plain":
        return _render_plain(template, messages)
    text = template.system + template.sep
    spans: list[tuple[int, int]] = []
    for j in range(0, len(messages), 2):
        text += f"{template.user}: {messages[j][1]}{template.sep}{template.assistant}:"
        start = len(text)
        text += f" {messages[j + 1][1]}{template.sep2}"
        spans.append((start, len(text)))
    return RenderedConversation(text=text, supervised=tuple(spans))


def _render_plain(template: Template, messages: Sequence[Message]) -> RenderedConversation:
    if len(messages) != 2:
        raise InvalidConversation(
            "bad_roles", f"the plain template takes one round, got {len(messages) // 2}"
        )
    images = (messages[0][1] or "").count(IMAGE_PLACEHOLDER)
    if images != 1:
        raise InvalidConversation(
            "image_count", f"the plain template needs one image, got {images}"
        )
    prefix = template.system + IMAGE_PLACEHOLDER
    text = prefix + messages[1][1] + template.sep
    return RenderedConversation(text=text, supervised=((len(prefix), len(text)),))


def render_prompt(template: Template, messages: Sequence[Message]) -> str:
    """Render a generation prompt: history rounds, then the last user message, then the cue.

    `messages` alternate user/assistant, start with the user and end with a user message
    (optionally followed by ``(assistant, None)``). ``vicuna_v1`` ends with ``"ASSISTANT:"``;
    ``plain`` renders only ``"<image>"`` (one round, one image), as stage-1 training saw it.
    """
    messages = list(messages)
    if messages and messages[-1][0] == template.assistant and messages[-1][1] is None:
        messages.pop()
    _check_roles(messages, template)
    if not messages or len(messages) % 2 == 0:
        raise InvalidConversation("bad_roles", "a prompt must end with a user message")
    for j, (role, text) in enumerate(messages):
        if not text or not text.strip():
            raise InvalidConversation("empty_turn", f"message {j} ({role}) is empty")
    messages = normalize_image_placeholder(messages, template)
    if template.style == "plain":
        if len(messages) != 1 or (messages[0][1] or "").count(IMAGE_PLACEHOLDER) != 1:
            raise InvalidConversation(
                "bad_roles", "the plain template prompts with exactly one round and one image"
            )
        return template.system + IMAGE_PLACEHOLDER
    text = template.system + template.sep
    for j, (role, message) in enumerate(messages):
        text += f"{role}: {message}" + (template.sep if j % 2 == 0 else template.sep2)
    return text + f"{template.assistant}:"
