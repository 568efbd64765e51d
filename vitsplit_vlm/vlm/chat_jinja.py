"""The Jinja chat templates saved with a model's processor, generated from its `Template`.

`chat_template(template)` writes a template that renders transformers messages exactly as the
training renderer (`conversation.render_conversation` / `render_prompt`) renders them, refusing
what it refuses with the same reason (the rules are in `vitsplit_vlm.vlm.processing`):

- ``two`` / ``plain`` / ``turns``: the template's text is written into the Jinja as constants;
- ``chat_template``: the LLM tokenizer's own Jinja is embedded as a macro
  (``vitsplit_llm_chat``) and called as `tokenizer_chat` calls it: once for the conversation and
  once per reply for the prompt before it, whose end is where the supervised span starts; the
  span ends after the template's end-of-turn token. The tokenizer's own ``{% generation %}``
  tags, if any, become plain blocks.

Top-level names are written with an ``@`` placeholder: empty for the generated formats, and
``vitsplit_`` when a tokenizer's template is embedded (its macro sees every top-level name, so
ours must not shadow a variable it reads).
"""

from __future__ import annotations

import re
import string

from .conversation import CHAT_TEMPLATE, IMAGE_PLACEHOLDER, Template

# Characters written as they are inside a generated Jinja string literal; others are escaped.
_LITERAL_SAFE = frozenset(string.ascii_letters + string.digits + " .,:;!?'()<>/-_=+*&^$@~|[]")
PREFIX = "vitsplit_"

# Reads `messages` into `texts` (images as `<image>`), refusing what the renderer refuses, in
# the renderer's order: roles, ending, empty messages, images in replies.
_JINJA_PARSE = """
{%- set @ns = namespace(texts=[]) -%}
{%- for m in messages -%}
  {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
  {%- if m['role'] == 'system' -%}
    {{- raise_exception('bad_roles: message ' ~ loop.index0 ~ ' is a system message; the '
        ~ @template_name ~ ' template has a fixed system prompt (the one the model is trained'
        ~ ' with)') -}}
  {%- elif m['role'] not in ('user', 'assistant') -%}
    {{- raise_exception("bad_roles: unknown role '" ~ m['role']
        ~ "'; expected one of ('user', 'assistant')") -}}
  {%- elif m['role'] != expected -%}
    {{- raise_exception('bad_roles: message ' ~ loop.index0 ~ " is from '" ~ m['role']
        ~ "'; expected '" ~ expected ~ "'") -}}
  {%- endif -%}
  {%- if m['content'] is string -%}
    {%- set @ns.texts = @ns.texts + [m['content']] -%}
  {%- else -%}
    {%- set parts = namespace(text='') -%}
    {%- for part in m['content'] or [] -%}
      {%- if part['type'] == 'image' -%}
        {%- set parts.text = parts.text ~ @image -%}
      {%- elif part['type'] == 'text' -%}
        {%- set parts.text = parts.text ~ (part['text'] or '') -%}
      {%- else -%}
        {{- raise_exception('bad_format: message ' ~ loop.index0 ~ " has a '" ~ part['type']
            ~ "' part; only 'image' and 'text'") -}}
      {%- endif -%}
    {%- endfor -%}
    {%- set @ns.texts = @ns.texts + [parts.text] -%}
  {%- endif -%}
{%- endfor -%}
{%- set @n = @ns.texts | length -%}
{%- set @prompt = add_generation_prompt is defined and add_generation_prompt -%}
{%- if @prompt and @n % 2 == 0 -%}
  {{- raise_exception('bad_roles: a prompt must end with a user message') -}}
{%- elif not @prompt and @n < 2 -%}
  {{- raise_exception('no_assistant_turn: the conversation has no reply (pass'
      ~ ' add_generation_prompt=True for a prompt)') -}}
{%- elif not @prompt and @n % 2 -%}
  {{- raise_exception('bad_roles: the conversation ends with an unanswered message (pass'
      ~ ' add_generation_prompt=True for a prompt)') -}}
{%- endif -%}
{%- for text in @ns.texts -%}
  {%- if text.strip() == '' -%}
    {{- raise_exception('empty_turn: message ' ~ loop.index0 ~ ' is empty') -}}
  {%- endif -%}
{%- endfor -%}
{%- set @norm = namespace(texts=[], images=0) -%}
{%- for text in @ns.texts -%}
  {%- set kept = namespace(text=text) -%}
  {%- if @image in text -%}
    {%- if loop.index0 % 2 == 1 -%}
      {{- raise_exception("image_in_reply: '" ~ @image ~ "' in a reply") -}}
    {%- endif -%}
    {%- set @norm.images = @norm.images + text.count(@image) -%}
    {%- set kept.text = text.replace(@image, '').strip() -%}
  {%- endif -%}
  {%- set @norm.texts = @norm.texts + [kept.text] -%}
{%- endfor -%}
{%- set @texts = @norm.texts -%}
{%- if @norm.images > 0 -%}
  {%- set @first = (@image * @norm.images ~ '\\n' ~ @texts[0].strip()).strip() -%}
  {%- set @texts = [@first] + @texts[1:] -%}
{%- endif -%}
"""

# LLaVA's SeparatorStyle.TWO: "{system}{sep}USER: {q}{sep}ASSISTANT: {a}{sep2}USER: ..."
_JINJA_TWO = """
{{- @system ~ @sep -}}
{%- for text in @texts -%}
  {%- if loop.index0 % 2 == 0 -%}
    {{- @user_role ~ ': ' ~ text ~ @sep -}}
  {%- else -%}
    {{- @assistant_role ~ ':' -}}
    {%- generation -%}{{- ' ' ~ text ~ @sep2 -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}
{%- if @prompt -%}
  {{- @assistant_role ~ ':' -}}
{%- endif -%}
"""

# LLaVA's preprocess_plain: "<image>{reply}{sep}"; the user's words are dropped.
_JINJA_PLAIN = """
{%- if @prompt and (@n != 1 or @norm.images != 1) -%}
  {{- raise_exception('bad_roles: the plain template prompts with exactly one round and one'
      ~ ' image') -}}
{%- elif not @prompt and @n != 2 -%}
  {{- raise_exception('bad_roles: the plain template takes one round, got ' ~ @n // 2) -}}
{%- elif not @prompt and @norm.images != 1 -%}
  {{- raise_exception('image_count: the plain template needs one image, got '
      ~ @norm.images) -}}
{%- endif -%}
{{- @system ~ @image -}}
{%- if not @prompt -%}
  {%- generation -%}{{- @texts[1] ~ @sep -}}{%- endgeneration -%}
{%- endif -%}
"""


# A message holding the markup of a chat format is refused (``marker_in_text``).
_JINJA_RESERVED = """
{%- for text in @texts -%}
  {%- set j = loop.index0 -%}
  {%- for marker in @reserved -%}
    {%- if marker in text -%}
      {{- raise_exception('marker_in_text: message ' ~ j ~ " holds '" ~ marker
          ~ "', markup of the " ~ @template_name ~ ' template') -}}
    {%- endif -%}
  {%- endfor -%}
{%- endfor -%}
"""

# Style "turns" (LLaVA-NeXT's chat formats): every message wrapped in its markup.
_JINJA_TURNS = """
{{- @system -}}
{%- for text in @texts -%}
  {%- set message = text.strip() if @strip else text -%}
  {%- if loop.index0 % 2 == 0 -%}
    {{- @user_start ~ message ~ @user_end ~ @reply_cue -}}
  {%- else -%}
    {%- generation -%}{{- @reply_start ~ message ~ @reply_end -}}{%- endgeneration -%}
    {{- @turn_end -}}
  {%- endif -%}
{%- endfor -%}
"""

# Style "chat_template": the tokenizer's template (macro `vitsplit_llm_chat`) renders the
# conversation; each reply's span runs from the end of its prompt to its end-of-turn token.
_JINJA_CHAT = """
{%- set @chat = namespace(messages=[]) -%}
{%- for text in @texts -%}
  {%- set role = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
  {%- set @chat.messages = @chat.messages + [{'role': role, 'content': text}] -%}
{%- endfor -%}
{%- if @prompt -%}
  {{- vitsplit_llm_chat(@chat.messages, true) -}}
{%- else -%}
  {%- set @full = vitsplit_llm_chat(@chat.messages, false) -%}
  {%- set @cut = namespace(at=0) -%}
  {%- for j in range(1, @n, 2) -%}
    {%- set head = vitsplit_llm_chat(@chat.messages[:j], true) -%}
    {%- set start = head | length -%}
    {%- set end = @full.find(@end_of_turn, start) -%}
    {%- if @full[:start] != head -%}
      {{- raise_exception('template_mismatch: the prompt of reply ' ~ (j // 2 + 1)
          ~ ' is not the start of the rendered conversation') -}}
    {%- elif end < 0 or @texts[j].strip() not in @full[start:end] -%}
      {{- raise_exception('template_mismatch: reply ' ~ (j // 2 + 1) ~ " is not closed by '"
          ~ @end_of_turn ~ "' in the rendered conversation") -}}
    {%- endif -%}
    {{- @full[@cut.at:start] -}}
    {%- generation -%}{{- @full[start:end + @end_of_turn | length] -}}{%- endgeneration -%}
    {%- set @cut.at = end + @end_of_turn | length -%}
  {%- endfor -%}
  {{- @full[@cut.at:] -}}
{%- endif -%}
"""

_JINJA_STYLES = {
    "two": _JINJA_TWO,
    "plain": _JINJA_PLAIN,
    "turns": _JINJA_TURNS,
    CHAT_TEMPLATE: _JINJA_CHAT,
}
_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def _literal(value: str) -> str:
    """`value` as a Jinja string literal (anything but plain ASCII written as ``\\UXXXXXXXX``)."""
    return '"' + "".join(c if c in _LITERAL_SAFE else f"\\U{ord(c):08x}" for c in value) + '"'


def _constant(value: str | bool | tuple[str, ...]) -> str:
    """A Jinja literal for a string, a bool or a tuple of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return _literal(value)


def _constants(template: Template) -> dict[str, str | bool | tuple[str, ...]]:
    """The template's text, as the Jinja's top-level constants."""
    constants: dict[str, str | bool | tuple[str, ...]] = {
        "template_name": template.name,
        "system": template.system,
        "user_role": template.user,
        "assistant_role": template.assistant,
        "sep": template.sep,
        "sep2": template.sep2,
        "image": IMAGE_PLACEHOLDER,
    }
    if template.reserved:
        constants["reserved"] = template.reserved
    if template.style == "turns":
        turns = template.turns
        constants.update(
            user_start=turns.user_start,
            user_end=turns.user_end,
            reply_cue=turns.reply_cue,
            reply_start=turns.reply_start,
            reply_end=turns.reply_end,
            turn_end=turns.turn_end,
            strip=turns.strip,
        )
    if template.style == CHAT_TEMPLATE:
        constants["end_of_turn"] = template.bound_chat().end_of_turn
    return constants


def _llm_chat_macro(source: str) -> str:
    """The tokenizer's template as the macro ``vitsplit_llm_chat(messages,
    add_generation_prompt)``; with ``trim_blocks``, the newline after the opening tag keeps the
    source's first line at a line start, so it renders as it does alone."""
    source = _GENERATION_TAG.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ")
                                 + m[3] + "%}", source)  # fmt: skip
    return (
        "{% macro vitsplit_llm_chat(messages, add_generation_prompt) %}\n"
        + source
        + "{% endmacro %}\n"
    )


def chat_template(template: Template) -> str:
    """The Jinja chat template rendering `template` exactly as `render_prompt` and
    `render_conversation` do (the rules are in `vitsplit_vlm.vlm.processing`'s docstring); a
    ``chat_template`` template must be bound to its tokenizer."""
    if template.style not in _JINJA_STYLES:
        raise ValueError(f"Template.style: no chat template for style {template.style!r}")
    embeds = template.style == CHAT_TEMPLATE
    prefix = PREFIX if embeds else ""
    header = (
        "{#- Generated by vitsplit_vlm.vlm.processing.chat_template from the conversation "
        "template `template_name` (vitsplit_vlm.vlm.conversation.TEMPLATES): change the "
        "Template, not this text. -#}\n"
    )
    header += "".join(
        f"{{%- set {prefix}{k} = {_constant(v)} -%}}\n" for k, v in _constants(template).items()
    )
    if embeds:
        header += _llm_chat_macro(template.bound_chat().source)
    body = _JINJA_PARSE.strip() + "\n"
    if template.reserved:
        body += _JINJA_RESERVED.strip() + "\n"
    body += _JINJA_STYLES[template.style].strip() + "\n"
    return header + body.replace("@", prefix)
