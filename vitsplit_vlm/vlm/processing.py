"""The processor saved beside a model: transformers' `LlavaProcessor` with `<image>` expanded to
exactly the connector's number of image tokens, and a chat template generated from the model's
conversation template (`conversation.TEMPLATES`), so that

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
  render as `render_conversation` (every reply closed by `sep2`); each supervised reply span is
  wrapped in ``{% generation %}``, so ``return_assistant_tokens_mask`` marks what training
  supervises. Any other ending is refused (``bad_roles``) rather than rendered off-distribution.
- ``plain`` (stage 1, LLaVA's ``preprocess_plain``): one round with one image; the user's words
  are dropped. The prompt is ``<image>``, the conversation ``<image>{reply}\\n``.

Refusals raise jinja's ``TemplateError("reason: detail")`` with the `InvalidConversation` reason.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from .conversation import (
    IMAGE_PLACEHOLDER,
    InvalidConversation,
    Message,
    Template,
    get_template,
)

DEFAULT_IMAGE_TOKEN = IMAGE_PLACEHOLDER
CHAT_ROLES = ("user", "assistant")

# Characters written as they are inside a generated Jinja string literal; others are escaped.
_LITERAL_SAFE = frozenset(string.ascii_letters + string.digits + " .,:;!?'()<>/-_=+*&^$@~|[]")


def build_processor(image_processor, tokenizer, *, patch_size: int, conv_template: str):
    """`LlavaProcessor` expanding each `<image>` into (H/p)*(W/p) image tokens (no CLS), with the
    chat template of `conv_template` (the model config's ``conv_template``)."""
    from transformers import LlavaProcessor

    keep_legacy_flag(tokenizer)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=chat_template(get_template(conv_template)),
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


# --------------------------------------------------------------------------- Jinja

# Reads `messages` into `texts` (images as `<image>`), refusing what the renderer refuses, in
# the renderer's order: roles, ending, empty messages, images in replies.
_JINJA_PARSE = """
{%- set ns = namespace(texts=[]) -%}
{%- for m in messages -%}
  {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
  {%- if m['role'] == 'system' -%}
    {{- raise_exception('bad_roles: message ' ~ loop.index0 ~ ' is a system message; the '
        ~ template_name ~ ' template has a fixed system prompt (the one the model is trained'
        ~ ' with)') -}}
  {%- elif m['role'] not in ('user', 'assistant') -%}
    {{- raise_exception("bad_roles: unknown role '" ~ m['role']
        ~ "'; expected one of ('user', 'assistant')") -}}
  {%- elif m['role'] != expected -%}
    {{- raise_exception('bad_roles: message ' ~ loop.index0 ~ " is from '" ~ m['role']
        ~ "'; expected '" ~ expected ~ "'") -}}
  {%- endif -%}
  {%- if m['content'] is string -%}
    {%- set ns.texts = ns.texts + [m['content']] -%}
  {%- else -%}
    {%- set parts = namespace(text='') -%}
    {%- for part in m['content'] or [] -%}
      {%- if part['type'] == 'image' -%}
        {%- set parts.text = parts.text ~ image -%}
      {%- elif part['type'] == 'text' -%}
        {%- set parts.text = parts.text ~ (part['text'] or '') -%}
      {%- else -%}
        {{- raise_exception('bad_format: message ' ~ loop.index0 ~ " has a '" ~ part['type']
            ~ "' part; only 'image' and 'text'") -}}
      {%- endif -%}
    {%- endfor -%}
    {%- set ns.texts = ns.texts + [parts.text] -%}
  {%- endif -%}
{%- endfor -%}
{%- set n = ns.texts | length -%}
{%- set prompt = add_generation_prompt is defined and add_generation_prompt -%}
{%- if prompt and n % 2 == 0 -%}
  {{- raise_exception('bad_roles: a prompt must end with a user message') -}}
{%- elif not prompt and n < 2 -%}
  {{- raise_exception('no_assistant_turn: the conversation has no reply (pass'
      ~ ' add_generation_prompt=True for a prompt)') -}}
{%- elif not prompt and n % 2 -%}
  {{- raise_exception('bad_roles: the conversation ends with an unanswered message (pass'
      ~ ' add_generation_prompt=True for a prompt)') -}}
{%- endif -%}
{%- for text in ns.texts -%}
  {%- if text.strip() == '' -%}
    {{- raise_exception('empty_turn: message ' ~ loop.index0 ~ ' is empty') -}}
  {%- endif -%}
{%- endfor -%}
{%- set norm = namespace(texts=[], images=0) -%}
{%- for text in ns.texts -%}
  {%- set kept = namespace(text=text) -%}
  {%- if image in text -%}
    {%- if loop.index0 % 2 == 1 -%}
      {{- raise_exception("image_in_reply: '" ~ image ~ "' in a reply") -}}
    {%- endif -%}
    {%- set norm.images = norm.images + text.count(image) -%}
    {%- set kept.text = text.replace(image, '').strip() -%}
  {%- endif -%}
  {%- set norm.texts = norm.texts + [kept.text] -%}
{%- endfor -%}
{%- set texts = norm.texts -%}
{%- if norm.images > 0 -%}
  {%- set first = (image * norm.images ~ '\\n' ~ texts[0].strip()).strip() -%}
  {%- set texts = [first] + texts[1:] -%}
{%- endif -%}
"""

# LLaVA's SeparatorStyle.TWO: "{system}{sep}USER: {q}{sep}ASSISTANT: {a}{sep2}USER: ..."
_JINJA_TWO = """
{{- system ~ sep -}}
{%- for text in texts -%}
  {%- if loop.index0 % 2 == 0 -%}
    {{- user_role ~ ': ' ~ text ~ sep -}}
  {%- else -%}
    {{- assistant_role ~ ':' -}}
    {%- generation -%}{{- ' ' ~ text ~ sep2 -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}
{%- if prompt -%}
  {{- assistant_role ~ ':' -}}
{%- endif -%}
"""

# LLaVA's preprocess_plain: "<image>{reply}{sep}"; the user's words are dropped.
_JINJA_PLAIN = """
{%- if prompt and (n != 1 or norm.images != 1) -%}
  {{- raise_exception('bad_roles: the plain template prompts with exactly one round and one'
      ~ ' image') -}}
{%- elif not prompt and n != 2 -%}
  {{- raise_exception('bad_roles: the plain template takes one round, got ' ~ n // 2) -}}
{%- elif not prompt and norm.images != 1 -%}
  {{- raise_exception('image_count: the plain template needs one image, got '
      ~ norm.images) -}}
{%- endif -%}
{{- system ~ image -}}
{%- if not prompt -%}
  {%- generation -%}{{- texts[1] ~ sep -}}{%- endgeneration -%}
{%- endif -%}
"""

_JINJA_STYLES = {"two": _JINJA_TWO, "plain": _JINJA_PLAIN}


def _literal(value: str) -> str:
    """`value` as a Jinja string literal (anything but plain ASCII written as ``\\UXXXXXXXX``)."""
    return '"' + "".join(c if c in _LITERAL_SAFE else f"\\U{ord(c):08x}" for c in value) + '"'


def chat_template(template: Template) -> str:
    """The Jinja chat template rendering `template` exactly as `render_prompt` and
    `render_conversation` do (the rules are in this module's docstring)."""
    if template.style not in _JINJA_STYLES:
        raise ValueError(f"Template.style: no chat template for style {template.style!r}")
    constants = {
        "template_name": template.name,
        "system": template.system,
        "user_role": template.user,
        "assistant_role": template.assistant,
        "sep": template.sep,
        "sep2": template.sep2,
        "image": IMAGE_PLACEHOLDER,
    }
    header = (
        "{#- Generated by vitsplit_vlm.vlm.processing.chat_template from the conversation "
        "template `template_name` (vitsplit_vlm.vlm.conversation.TEMPLATES): change the "
        "Template, not this text. -#}\n"
    )
    header += "".join(f"{{%- set {k} = {_literal(v)} -%}}\n" for k, v in constants.items())
    return header + _JINJA_PARSE.strip() + "\n" + _JINJA_STYLES[template.style].strip() + "\n"
