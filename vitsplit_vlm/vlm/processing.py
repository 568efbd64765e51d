"""The processor saved beside a model: transformers' `LlavaProcessor` with `<image>` expanded to
exactly the connector's number of image tokens, and a chat template generated from the model's
conversation template (`conversation.TEMPLATES`; `chat_jinja` writes it), so that

    AutoProcessor.from_pretrained(model_dir).apply_chat_template(messages, ...)

renders the text training and the inference engine render (`render_conversation`,
`render_prompt`), character for character. `chat_template(template)` writes that Jinja;
`chat_to_messages` is the same mapping in Python. The rules, for a transformers messages list:

- Roles: ``"user"`` and ``"assistant"`` (the template's two roles), alternating, user first. A
  ``"system"`` message is refused in both renderers (``bad_roles``): the system prompt belongs to
  the template the model was trained with (LLaVA-1.5 trains and evaluates with one fixed prompt);
  another one needs another registered `Template`.
- Content: a string, or a list of parts; ``{"type": "image"}`` stands for ``<image>`` and
  ``{"type": "text", "text": t}`` for ``t``, concatenated in order with nothing added; any other
  part type is refused (``bad_format``).
- Images are placed as the training renderer places them (LLaVA's normalisation): wherever they
  are, in any user message of any turn, all move to the front of the first user message as
  ``"<image>" * n + "\\n" + text`` (stripped), and a message that held one is stripped. An image
  in a reply is refused (``image_in_reply``).
- ``add_generation_prompt=True``: the messages end with a user message and render as
  `render_prompt` (``vicuna_v1`` ends with ``"ASSISTANT:"``). ``False``: they end with a reply and
  render as `render_conversation` (every reply closed by its end of turn); each supervised reply
  span is wrapped in ``{% generation %}``, so ``return_assistant_tokens_mask`` marks what training
  supervises. Any other ending is refused (``bad_roles``) rather than rendered off-distribution.
- The chat formats (``llava_llama_3``, ``qwen_1_5``, ``mistral_instruct``, ``gemma_instruct``)
  refuse a message holding their markup (``marker_in_text``); ``chat_template`` embeds the LLM
  tokenizer's own Jinja and renders what ``tokenizer.apply_chat_template`` renders.
- ``plain`` (stage 1, LLaVA's ``preprocess_plain``): one round with one image; the user's words
  are dropped. The prompt is ``<image>``, the conversation ``<image>{reply}\\n``.

Refusals raise jinja's ``TemplateError("reason: detail")`` with the `InvalidConversation` reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .chat_jinja import chat_template
from .conversation import (
    IMAGE_PLACEHOLDER,
    InvalidConversation,
    Message,
    Template,
    get_template,
)

DEFAULT_IMAGE_TOKEN = IMAGE_PLACEHOLDER
CHAT_ROLES = ("user", "assistant")


def build_processor(
    image_processor,
    tokenizer,
    *,
    patch_size: int,
    conv_template: str,
    template: Template | None = None,
    extra_image_tokens: int = 0,
):
    """`LlavaProcessor` expanding each `<image>` into (H/p)*(W/p) image tokens (no CLS) plus the
    connector's `extra_image_tokens`, with the chat template of `conv_template` (the model
    config's ``conv_template``; `template` is it bound to the tokenizer, required for
    ``chat_template``)."""
    from transformers import LlavaProcessor

    keep_legacy_flag(tokenizer)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=extra_image_tokens,
        chat_template=chat_template(template or get_template(conv_template)),
        image_token=DEFAULT_IMAGE_TOKEN,
    )


def keep_legacy_flag(tokenizer) -> None:
    """Make `save_pretrained` write the tokenizer's ``legacy`` flag, so that the tokenizer saved
    beside a model splits text exactly as the one training used.

    transformers 5's `LlamaTokenizer` rebuilds its Metaspace pre-tokenizer from ``legacy`` when it
    loads (``True``: ``"▁"`` is prepended after every special token, so ``"</s>USER"`` gives
    ``"▁USER"``; ``False``: only at the start of the text) but does not save the flag: a
    ``legacy: true`` tokenizer would reload as ``legacy: false``. No-op for tokenizers without it.
    """
    legacy = getattr(tokenizer, "legacy", None)
    if isinstance(legacy, bool):
        tokenizer.init_kwargs["legacy"] = legacy


# --------------------------------------------------------------------------- Python mapping


def _content_text(content: Any, index: int) -> str:
    """The text of one message's content, each image part written as ``<image>``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    text = ""
    for part in content:
        kind = part.get("type")
        if kind == "image":
            text += IMAGE_PLACEHOLDER
        elif kind == "text":
            text += part.get("text") or ""
        else:
            raise InvalidConversation(
                "bad_format", f"message {index} has a {kind!r} part; only 'image' and 'text'"
            )
    return text


def chat_to_messages(chat: Sequence[Mapping[str, Any]], template: Template) -> list[Message]:
    """transformers messages ``[{"role", "content"}, ...]`` -> the renderer's ``(role, text)``.

    Pass the result to `render_prompt` (``add_generation_prompt=True``) or to
    `render_conversation` for the text `chat_template(template)` renders. A system message is
    kept as ``("system", text)``, which both render functions refuse. Raises
    `InvalidConversation` for any other role and for unknown content parts.
    """
    roles = {**dict(zip(CHAT_ROLES, template.roles, strict=True)), "system": "system"}
    messages: list[Message] = []
    for index, message in enumerate(chat):
        role = message.get("role")
        if role not in roles:
            raise InvalidConversation(
                "bad_roles", f"unknown role {role!r}; expected one of {CHAT_ROLES}"
            )
        messages.append((roles[role], _content_text(message.get("content"), index)))
    return messages
