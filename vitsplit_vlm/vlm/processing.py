"""The processor saved beside a model: transformers' `LlavaProcessor` with a Vicuna v1 chat
template, `<image>` expanded to exactly the connector's number of image tokens."""

from __future__ import annotations

DEFAULT_IMAGE_TOKEN = "<image>"

# LLaVA-1.5's `vicuna_v1` conversation as a Jinja chat template:
# "{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = m['content'] if m['content'] is string else m['content'][0]['text'] -%}"
    "{%- endfor -%}"
    "{{- ns.system -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
    "{%- else -%}"
    "{%- set parts = namespace(images='', text='') -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{%- set parts.images = parts.images + '<image>\\n' -%}"
    "{%- elif c['type'] == 'text' -%}{%- set parts.text = parts.text + c['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set text = parts.images + parts.text -%}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{- ' USER: ' + text -}}"
    "{%- else -%}{{- ' ASSISTANT: ' + text + '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
)


def build_processor(image_processor, tokenizer, *, patch_size: int):
    """`LlavaProcessor` expanding each `<image>` into (H/p)*(W/p) image tokens (no CLS)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=VICUNA_V1_CHAT_TEMPLATE,
        image_token=DEFAULT_IMAGE_TOKEN,
    )
