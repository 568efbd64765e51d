"""Conversation templates: LLaVA-1.5's, LLaVA-NeXT's chat formats and the LLM's own.

One renderer serves training and inference, so the prompt a model is asked at eval time is the
text it was trained on, character for character:

- `render_conversation(template, messages)` renders a whole training conversation and returns
  the text plus the character spans the loss is computed on (`RenderedConversation`);
- `render_prompt(template, messages)` renders the same text up to the assistant's cue
  (``"... ASSISTANT:"``), for generation.

Messages are ``(role, text)`` pairs with ``role`` one of ``template.roles`` (user first, then
alternating). What the templates produce (``{system}`` is the template's system prompt; the
tokenizer's BOS, where it adds one, comes in front at tokenization):

====================  ===============================================================
``vicuna_v1``         ``{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2}
                      ASSISTANT: {a2}</s>``; supervised: each ``" {a}</s>"`` (the space after
                      ``ASSISTANT:`` included, as LLaVA's masking keeps the token ``"▁{a}"``);
                      prompt ends ``"ASSISTANT:"``.
``plain``             ``<image>{caption}\\n``: the user's words are dropped (LLaVA's
                      preprocess_plain replaces them with the image); supervised:
                      ``"{caption}\\n"``; prompt: ``<image>``.
``llava_llama_3``     ``<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}
                      <|eot_id|>`` then ``<|start_header_id|>user<|end_header_id|>\\n\\n{q}<|eot_id|>
                      <|start_header_id|>assistant<|end_header_id|>\\n\\n{a}<|eot_id|>`` per round,
                      messages trimmed (Llama-3's template trims them).
``qwen_1_5``          ChatML: ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n``,
                      then ``<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}
                      <|im_end|>\\n`` per round.
``mistral_instruct``  ``[INST] {q} [/INST] {a} </s>`` per round (LLaVA-NeXT's LLAMA_2 style with
                      an empty system prompt: a space before ``</s>``).
``gemma_instruct``    ``<start_of_turn>user\\n{q}<end_of_turn>\\n<start_of_turn>model\\n{a}
                      <end_of_turn>\\n`` per round, no system prompt.
``chat_template``     the LLM tokenizer's own Jinja chat template (`tokenizer_chat`).
====================  ===============================================================

The four named chat formats are LLaVA-NeXT's (``llava/conversation.py``: ``conv_llava_llama_3``,
``conv_qwen``, ``conv_mistral_instruct``, ``conv_gemma_instruct``; inference prompts through
``get_prompt``). For them and for ``chat_template``, the supervised span of a reply is the reply
and its end-of-turn marker (``{a}<|eot_id|>``, ``{a}<|im_end|>``, ``" {a} </s>"``,
``{a}<end_of_turn>``); the cue before it and the newline after it are not supervised, nor any
role header (LLaVA-NeXT's llama3 / qwen preprocessing also unmasks every header and newline
token). The prompt ends with the assistant's cue (``...<|im_start|>assistant\\n``).

The image placeholder is normalised as LLaVA does: every ``<image>`` is taken out of the user
messages and the first user message becomes ``"<image>\\n" + text`` (stripped), so
``"<image>\\n"`` alone renders as ``"<image>"``. The system prompt is the template's: a
``"system"`` message is refused (``bad_roles``). In the chat formats, a message that contains
the template's markup (``<|im_end|>``, ...) is refused (``marker_in_text``): the tokenizer would
read it as the end of a turn.

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
# LLaVA-NeXT's system prompt for its Llama-3 models (conv_llava_llama_3, preprocess_llama3)
LLAVA_LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)
STYLES = ("two", "plain", "turns", "chat_template")
CHAT_TEMPLATE = "chat_template"

Message = tuple[str, str | None]


class InvalidConversation(ValueError):
    """A conversation the template cannot render; `reason` is a short machine-readable code.

    Reasons: ``bad_roles`` (unknown role, a system message, roles out of order, wrong number of
    rounds for the template), ``no_assistant_turn``, ``empty_turn``, ``image_in_reply``,
    ``image_count``; ``bad_format`` (a content part other than text and image, from
    `vitsplit_vlm.vlm.processing.chat_to_messages`); ``marker_in_text`` (a message holds the
    markup of a chat format); ``template_mismatch`` (the tokenizer's chat template renders this
    conversation so that a reply cannot be located, `tokenizer_chat`).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Turns:
    """The markup a chat format puts around every message (style ``"turns"``).

    A round renders as ``user_start + q + user_end + reply_cue`` then ``reply_start + a +
    reply_end`` (the supervised span) then ``turn_end``; a prompt ends with ``reply_cue``.
    `strip`: messages are stripped of surrounding whitespace first.
    """

    user_start: str
    user_end: str
    reply_cue: str
    reply_end: str
    reply_start: str = ""
    turn_end: str = ""
    strip: bool = False


@dataclass(frozen=True)
class TokenizerChat:
    """An LLM tokenizer's own Jinja chat template, bound to a `Template` by
    `vitsplit_vlm.vlm.tokenizer_chat.bind_chat_template` (style ``"chat_template"``).

    `context`: the template variables transformers passes with it (``bos_token``, ...);
    `end_of_turn`: the special token the template closes a reply with (supervised with the
    reply, and where generation stops); `reply_prefix`: what the template writes between the
    assistant's cue and the last reply (Qwen3's empty ``<think>`` block), cut from answers.
    """

    source: str
    context: tuple[tuple[str, str], ...]
    end_of_turn: str
    reply_prefix: str = ""


@dataclass(frozen=True)
class Template:
    """A conversation template.

    `style` ``"two"`` is LLaVA's ``SeparatorStyle.TWO``: ``system + sep``, then
    ``role + ": " + text`` followed by `sep` after user messages and `sep2` after replies.
    `style` ``"plain"`` is ``SeparatorStyle.PLAIN`` as LLaVA trains it: image, reply, `sep`;
    system and roles are not rendered (roles only name the two sides of `messages`).
    `style` ``"turns"``: `system`, then every message wrapped in the markup of `turns`
    (LLaVA-NeXT's chat formats). `style` ``"chat_template"``: the LLM tokenizer's own template
    (`chat`, None until bound to a tokenizer).
    `markers`: text the template writes that must be one token of the LLM's tokenizer (checked
    by `vitsplit_vlm.vlm.tokenizer_chat.check_tokenizer`).
    """

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"
    style: str = "two"
    turns: Turns | None = None
    markers: tuple[str, ...] = ()
    chat: TokenizerChat | None = None

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"Template.style: must be one of {STYLES}, got {self.style!r}")
        if len(self.roles) != 2 or self.roles[0] == self.roles[1]:
            raise ValueError(f"Template.roles: need two distinct roles, got {self.roles!r}")
        if (self.turns is not None) != (self.style == "turns"):
            raise ValueError(f"Template.turns: given exactly for style 'turns' ({self.name})")
        if self.chat is not None and self.style != CHAT_TEMPLATE:
            raise ValueError(f"Template.chat: only for style {CHAT_TEMPLATE!r} ({self.name})")

    @property
    def user(self) -> str:
        return self.roles[0]

    @property
    def assistant(self) -> str:
        return self.roles[1]

    @property
    def stop_str(self) -> str:
        """Text that ends a reply: generation stops there (LLaVA: `sep2` for TWO, else `sep`;
        the chat formats: their end-of-turn marker)."""
        if self.style == "turns":
            return self.turns.reply_end.strip()
        if self.style == CHAT_TEMPLATE:
            return self.bound_chat().end_of_turn
        return self.sep2 if self.style == "two" else self.sep

    @property
    def reserved(self) -> tuple[str, ...]:
        """Markup no message may contain (``marker_in_text``): the chat formats' markers."""
        if self.style == "turns":
            return self.markers
        if self.style == CHAT_TEMPLATE:
            return (self.bound_chat().end_of_turn,)
        return ()

    def bound_chat(self) -> TokenizerChat:
        """The tokenizer's chat template (style ``chat_template``), or one `ValueError`."""
        if self.chat is None:
            raise ValueError(
                f"--version {self.name}: the template is the LLM tokenizer's own chat template; "
                "bind it to the tokenizer first (vitsplit_vlm.vlm.tokenizer_chat.bind_template)"
            )
        return self.chat


def _chat_format(name: str, system: str, turns: Turns, markers: tuple[str, ...]) -> Template:
    return Template(
        name=name,
        system=system,
        roles=("user", "assistant"),
        sep="",
        sep2="",
        style="turns",
        turns=turns,
        markers=markers,
    )


LLAMA_3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"

TEMPLATES: dict[str, Template] = {
    "plain": Template(name="plain", system="", sep="\n", sep2="", style="plain"),
    "vicuna_v1": Template(
        name="vicuna_v1", system=VICUNA_SYSTEM, sep=" ", sep2="</s>", markers=("</s>",)
    ),
    # LLaVA-NeXT: conv_llava_llama_3 (rendered by Llama-3-Instruct's chat template)
    "llava_llama_3": _chat_format(
        "llava_llama_3",
        "<|begin_of_text|>" + LLAMA_3_HEADER.format("system") + LLAVA_LLAMA_3_SYSTEM + "<|eot_id|>",
        Turns(
            user_start=LLAMA_3_HEADER.format("user"),
            user_end="<|eot_id|>",
            reply_cue=LLAMA_3_HEADER.format("assistant"),
            reply_end="<|eot_id|>",
            strip=True,
        ),
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # LLaVA-NeXT: conv_qwen (SeparatorStyle.CHATML)
    "qwen_1_5": _chat_format(
        "qwen_1_5",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        Turns(
            user_start="<|im_start|>user\n",
            user_end="<|im_end|>\n",
            reply_cue="<|im_start|>assistant\n",
            reply_end="<|im_end|>",
            turn_end="\n",
        ),
        ("<|im_start|>", "<|im_end|>"),
    ),
    # LLaVA-NeXT: conv_mistral_instruct (SeparatorStyle.LLAMA_2, empty system, sep2 "</s>")
    "mistral_instruct": _chat_format(
        "mistral_instruct",
        "",
        Turns(
            user_start="[INST] ",
            user_end=" [/INST]",
            reply_cue="",
            reply_start=" ",
            reply_end=" </s>",
        ),
        ("</s>",),
    ),
    # LLaVA-NeXT: conv_gemma_instruct (SeparatorStyle.GEMMA)
    "gemma_instruct": _chat_format(
        "gemma_instruct",
        "",
        Turns(
            user_start="<start_of_turn>user\n",
            user_end="<end_of_turn>\n",
            reply_cue="<start_of_turn>model\n",
            reply_end="<end_of_turn>",
            turn_end="\n",
        ),
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    CHAT_TEMPLATE: Template(
        name=CHAT_TEMPLATE,
        system="",
        roles=("user", "assistant"),
        sep="",
        sep2="",
        style=CHAT_TEMPLATE,
    ),
}


def get_template(name: str) -> Template:
    """The registered template `name` (the ``--version`` argument); ``chat_template`` is
    returned unbound (`vitsplit_vlm.vlm.tokenizer_chat.bind_template` binds it)."""
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
    _check_reserved(messages, template)
    if template.style == "plain":
        return _render_plain(template, messages)
    if template.style == "turns":
        return _render_turns(template, messages)
    if template.style == CHAT_TEMPLATE:
        from .tokenizer_chat import render_chat_conversation

        return render_chat_conversation(template, messages)
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


def _check_reserved(messages: Sequence[Message], template: Template) -> None:
    """Refuse a message holding the chat format's markup (``marker_in_text``)."""
    for j, (role, text) in enumerate(messages):
        for marker in template.reserved:
            if marker in (text or ""):
                raise InvalidConversation(
                    "marker_in_text",
                    f"message {j} ({role}) holds {marker!r}, markup of the {template.name} "
                    "template (the tokenizer would read it as the end of a turn)",
                )


def _render_turns(template: Template, messages: Sequence[Message]) -> RenderedConversation:
    """Style ``turns``: `system`, then each message in its markup; replies supervised."""
    turns = template.turns
    text = template.system
    spans: list[tuple[int, int]] = []
    for j, (_, message) in enumerate(messages):
        message = message.strip() if turns.strip else message
        if j % 2 == 0:
            text += turns.user_start + message + turns.user_end + turns.reply_cue
        else:
            start = len(text)
            text += turns.reply_start + message + turns.reply_end
            spans.append((start, len(text)))
            text += turns.turn_end
    return RenderedConversation(text=text, supervised=tuple(spans))


def render_prompt(template: Template, messages: Sequence[Message]) -> str:
    """Render a generation prompt: history rounds, then the last user message, then the cue.

    `messages` alternate user/assistant, start with the user and end with a user message
    (optionally followed by ``(assistant, None)``). ``vicuna_v1`` ends with ``"ASSISTANT:"``, the
    chat formats with their assistant cue; ``plain`` renders only ``"<image>"`` (one round, one image), as stage-1 training saw it.
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
    _check_reserved(messages, template)
    if template.style == "turns":
        return _render_turns(template, messages).text  # ends with the reply cue
    if template.style == CHAT_TEMPLATE:
        from .tokenizer_chat import render_chat_prompt

        return render_chat_prompt(template, messages)
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
