"""Templates meet the LLM's tokenizer: ``--version chat_template`` and the markup check.

- `bind_template(name, tokenizer)`: the `Template` of ``--version name`` ready for this
  tokenizer. ``chat_template`` is bound to the tokenizer's own Jinja chat template
  (`bind_chat_template`); every template's markup must be special tokens (`check_tokenizer`),
  so that a Llama-3 format meets no Vicuna tokenizer and generation can stop at the end of a
  turn. Each problem is one `ValueError` naming ``--version``; nothing loads weights.
- `render_chat_conversation` / `render_chat_prompt`: the renderers of style ``chat_template``
  (`conversation.render_conversation` / `render_prompt` call them). The text is exactly what
  ``tokenizer.apply_chat_template`` renders for the (image-normalised) messages. The supervised
  span of reply ``k`` starts where the template's prompt for that reply
  (``add_generation_prompt=True`` on the messages before it) ends and runs through the first
  end-of-turn token after it: Qwen3's empty ``<think>`` block before a last reply is supervised
  (the model writes it), the newline after ``<|im_end|>`` is not.

The end-of-turn token is found once per tokenizer, from a probe conversation: the special token
the template writes right after a reply (``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .conversation import (
    CHAT_TEMPLATE,
    TEMPLATES,
    InvalidConversation,
    Message,
    RenderedConversation,
    Template,
    TokenizerChat,
    get_template,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_ROLES = ("user", "assistant")
# A two-round conversation every chat template must render with locatable replies.
PROBE: tuple[Message, ...] = (
    ("user", "Hi there"),
    ("assistant", "Hello"),
    ("user", "And now?"),
    ("assistant", "Goodbye"),
)


def bind_template(
    name: str, tokenizer: PreTrainedTokenizerBase, *, source: str | None = None
) -> Template:
    """The template of ``--version name`` for `tokenizer` (``chat_template``: bound to `source`,
    default the tokenizer's own chat template), its markup checked against the tokenizer."""
    template = get_template(name)
    if template.style == CHAT_TEMPLATE:
        template = bind_chat_template(template, tokenizer, source=source)
    check_tokenizer(template, tokenizer)
    return template


def check_tokenizer(template: Template, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every marker of `template` (its markup and stop string) must be one special token of
    `tokenizer`: text the tokenizer splits, or reads as plain text, cannot end a turn."""
    specials = set(special_tokens(tokenizer))
    for marker in dict.fromkeys((*template.markers, *template.reserved)):
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or marker not in specials:
            what = f"{len(ids)} tokens" if len(ids) != 1 else "a plain (not special) token"
            others = [t for t, tpl in TEMPLATES.items() if t != template.name and tpl.markers]
            raise ValueError(
                f"--version {template.name}: its markup {marker!r} is {what} of this LLM's "
                f"tokenizer ({_describe(tokenizer)}), not one special token: the template is for "
                "another tokenizer family, and generation could not stop at the end of a turn. "
                f"Use --version {CHAT_TEMPLATE} (the tokenizer's own chat template) or the "
                f"template of this LLM's family ({', '.join(others)})"
            )


def _describe(tokenizer: PreTrainedTokenizerBase) -> str:
    where = getattr(tokenizer, "name_or_path", "") or "?"
    return f"{type(tokenizer).__name__} from {where}, {len(tokenizer)} tokens"


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's special tokens (its named ones and added tokens marked special), longest
    first."""
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted(found, key=len, reverse=True)


def bind_chat_template(
    template: Template, tokenizer: PreTrainedTokenizerBase, *, source: str | None = None
) -> Template:
    """`template` (style ``chat_template``) with the tokenizer's Jinja, template variables and
    end-of-turn token; raises one `ValueError` when the tokenizer has no chat template or the
    template does not close a reply with a special token."""
    flag = f"--version {template.name}"
    if source is None:
        source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one
        source = source.get("default")
    if not source:
        raise ValueError(
            f"{flag}: the LLM's tokenizer ({_describe(tokenizer)}) has no chat template "
            "(no 'chat_template' in tokenizer_config.json, no chat_template.jinja); pass one of "
            f"the named templates instead: {', '.join(t for t in TEMPLATES if t != CHAT_TEMPLATE)}"
        )
    context = tuple(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()))
    chat = TokenizerChat(source=source, context=context, end_of_turn="")
    try:
        end_of_turn, reply_prefix = _probe(chat, special_tokens(tokenizer))
        chat = replace(chat, end_of_turn=end_of_turn, reply_prefix=reply_prefix)
        bound = replace(template, chat=chat)
        render_chat_conversation(bound, PROBE)
    except InvalidConversation as err:
        raise ValueError(f"{flag}: the tokenizer's chat template {err.detail}") from None
    return bound


def _probe(chat: TokenizerChat, specials: Sequence[str]) -> tuple[str, str]:
    """(end-of-turn token, text before a last reply) of the template, from `PROBE`'s round 1."""
    messages = [_message(j, text) for j, (_, text) in enumerate(PROBE[:2])]
    head = _render(chat, messages[:1], generation=True)
    full = _render(chat, messages, generation=False)
    reply = PROBE[1][1]
    at = full.find(reply, len(head))
    if not full.startswith(head) or at < 0:
        raise InvalidConversation(
            "template_mismatch",
            f"renders the prompt {head!r} and the conversation {full!r}: the reply does not "
            "follow the prompt",
        )
    tail = full[at + len(reply) :]
    end_of_turn = next((token for token in specials if tail.startswith(token)), None)
    if end_of_turn is None:
        raise InvalidConversation(
            "template_mismatch",
            f"ends a reply with {tail[:40]!r}, not with a special token of the tokenizer: "
            "generation could not stop at the end of a turn",
        )
    return end_of_turn, full[len(head) : at]


def _message(index: int, text: str | None) -> dict[str, Any]:
    return {"role": CHAT_ROLES[index % 2], "content": text or ""}


def _render(chat: TokenizerChat, messages: list[dict[str, Any]], *, generation: bool) -> str:
    """The tokenizer's template on `messages`, as transformers' `apply_chat_template` renders
    it (same Jinja environment and variables)."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=chat.source,
            add_generation_prompt=generation,
            **dict(chat.context),
        )
    except TemplateError as err:
        raise InvalidConversation("template_mismatch", f"refused the conversation: {err}") from None
    return rendered[0]


def render_chat_prompt(template: Template, messages: Sequence[Message]) -> str:
    """The tokenizer template's generation prompt for checked, image-normalised `messages`."""
    chat = [_message(j, text) for j, (_, text) in enumerate(messages)]
    return _render(template.bound_chat(), chat, generation=True)


def render_chat_conversation(
    template: Template, messages: Sequence[Message]
) -> RenderedConversation:
    """The tokenizer template's text for checked, image-normalised rounds, each reply supervised
    from the end of its prompt through the end-of-turn token after it."""
    bound = template.bound_chat()
    eot = bound.end_of_turn
    chat = [_message(j, text) for j, (_, text) in enumerate(messages)]
    full = _render(bound, chat, generation=False)
    spans: list[tuple[int, int]] = []
    for j in range(1, len(chat), 2):
        head = _render(bound, chat[:j], generation=True)
        start, end = len(head), full.find(eot, len(head))
        if not full.startswith(head):
            raise InvalidConversation(
                "template_mismatch",
                f"the prompt of reply {j // 2 + 1} is not the start of the rendered conversation",
            )
        if end < 0 or chat[j]["content"].strip() not in full[start:end]:
            raise InvalidConversation(
                "template_mismatch",
                f"reply {j // 2 + 1} is not closed by {eot!r} in the rendered conversation",
            )
        spans.append((start, end + len(eot)))
    return RenderedConversation(text=full, supervised=tuple(spans))
