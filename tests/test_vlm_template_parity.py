"""The processor's chat template renders what training renders, for every registered template.

Each conversation goes through `processor.apply_chat_template` (the saved processor, reloaded
with `AutoProcessor`) and through the training renderer (`render_conversation` /
`render_prompt`); the text must be identical, and so must the token ids of the processor
(`apply_chat_template(..., tokenize=True)`, images expanded) and of training's tokenisation
(`tokenize_conversation` / `tokenize_prompt`, BOS and image expansion included). What one side
refuses the other must refuse, with the same reason. Two tokenizers: the project's tiny one and a
real published 32000-token sentencepiece BPE (`lenml_llama2_tokenizer_dir`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from vitsplit_vlm.vlm.builder import prepare_tokenizer
from vitsplit_vlm.vlm.conversation import (
    IMAGE_PLACEHOLDER,
    STYLES,
    TEMPLATES,
    InvalidConversation,
    Template,
    render_conversation,
    render_prompt,
)
from vitsplit_vlm.vlm.data import IGNORE_INDEX, tokenize_conversation, tokenize_prompt
from vitsplit_vlm.vlm.processing import build_processor, chat_template, chat_to_messages

TOKENIZERS = ("tiny", "lenml-llama2")
IMAGE = Image.new("RGB", (112, 112), (200, 30, 30))


def image() -> dict:
    return {"type": "image", "image": IMAGE}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def user(*parts: dict | str) -> dict:
    content = parts[0] if len(parts) == 1 and isinstance(parts[0], str) else list(parts)
    return {"role": "user", "content": content}


def reply(value: str) -> dict:
    return {"role": "assistant", "content": value}


CODE_REPLY = (
    'Here it is:\n\n```python\ndef colour(shape):\n    return "red"  # {{ not jinja }}\n\n'
    "print(colour('circle'))\n```\nIt prints `red`.\n"
)
CONVERSATIONS: dict[str, list[dict]] = {
    "image_first_1_round": [
        user(image(), text("What colour is the circle?")),
        reply("Red"),
    ],
    "image_after_text_1_round": [
        user(text("What is in the picture?"), image()),
        reply("A red circle on a white background."),
    ],
    "image_first_2_rounds": [
        user(image(), text("What colour is the circle?")),
        reply("Red"),
        user("How many shapes are there?"),
        reply("3"),
    ],
    "unicode_code_3_rounds": [
        user(text("Décris l'image, s'il te plaît ✨ "), image()),
        reply("Un cercle rouge — 赤い円 🔴."),
        user("Write Python that prints its colour."),
        reply(CODE_REPLY),
        user("Ünïcödé again?\tTabs,  double  spaces and a newline\nhere "),
        reply("Ja: ñ, ß, ø, 日本語, Ελληνικά."),
    ],
    "image_in_a_later_turn": [
        user("Hello!"),
        reply("Hi, how can I help?"),
        user(text("What is this?"), image()),
        reply("A circle."),
    ],
    "placeholder_in_string_content": [
        user("What shape is it?\n<image>"),
        reply("A square."),
    ],
    "no_image_2_rounds": [
        user("What is 2 + 2?"),
        reply("4"),
        user("And 3 + 3?"),
        reply("6"),
    ],
    "two_images_between_text": [
        user(text("Compare"), image(), text(" these two "), image()),
        reply("Both are red."),
    ],
}


def renderings(messages: list[dict]) -> list[tuple[str, list[dict], bool]]:
    """(name, messages, add_generation_prompt): every round's prompt, then the whole conversation."""
    out = [
        (f"prompt_round_{j // 2 + 1}", messages[: j + 1], True) for j in range(0, len(messages), 2)
    ]
    return [*out, ("full_conversation", messages, False)]


# --------------------------------------------------------------------------- set-ups


@dataclass(frozen=True)
class Setup:
    """A reloaded saved processor, and the tokenizer as training prepares it (`build_vlm`)."""

    processor: Any
    train_tokenizer: Any
    num_image_tokens: int
    image_token_id: int


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer_kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def saved_processor(vlm_dir):
    """The processor `build_vlm` saved beside the tiny model, reloaded as a user loads it."""
    return AutoProcessor.from_pretrained(vlm_dir)


@pytest.fixture(scope="module")
def setups(tokenizer_kind, tiny, vlm_dir, saved_processor, tmp_path_factory, request):
    """``setups(template_name)`` -> `Setup`, built once per tokenizer and template.

    The tiny tokenizer with the saved model's own template uses the processor `build_vlm` saved
    in `vlm_dir`; the others are built with `build_processor` from the same parts, saved and
    reloaded with `AutoProcessor` (the path a user of a saved model takes). The training
    tokenizer is loaded and prepared as `build_vlm` does."""
    saved = saved_processor
    config = json.loads((Path(vlm_dir) / "config.json").read_text())
    if tokenizer_kind == "tiny":
        llm_dir = tiny.llama
    else:
        llm_dir = request.getfixturevalue("lenml_llama2_tokenizer_dir")
    cache: dict[str, Setup] = {}

    def get(name: str) -> Setup:
        if name in cache:
            return cache[name]
        train_tokenizer = AutoTokenizer.from_pretrained(
            llm_dir, model_max_length=2048, padding_side="right"
        )
        prepare_tokenizer(train_tokenizer)
        if tokenizer_kind == "tiny" and name == config["conv_template"]:
            processor = saved
        else:
            folder = tmp_path_factory.mktemp(f"processor-{tokenizer_kind}-{name}")
            build_processor(
                saved.image_processor,
                train_tokenizer,
                patch_size=saved.patch_size,
                conv_template=name,
            ).save_pretrained(folder)
            processor = AutoProcessor.from_pretrained(folder)
        cache[name] = Setup(
            processor=processor,
            train_tokenizer=train_tokenizer,
            num_image_tokens=config["image_seq_length"],
            image_token_id=train_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        )
        return cache[name]

    return get


# --------------------------------------------------------------------------- the two paths


def reference_text(template: Template, messages: list[dict], add_generation_prompt: bool) -> str:
    """The training renderer's text (raises `InvalidConversation`)."""
    pairs = chat_to_messages(messages, template)
    if add_generation_prompt:
        return render_prompt(template, pairs)
    return render_conversation(template, pairs).text


def reference_ids(
    setup: Setup, template: Template, messages: list[dict], add_generation_prompt: bool
) -> list[int]:
    """Token ids through training's tokenisation (`vlm/data.py`)."""
    pairs = chat_to_messages(messages, template)
    kwargs = dict(num_image_tokens=setup.num_image_tokens, image_token_id=setup.image_token_id)
    if add_generation_prompt:
        prompt = render_prompt(template, pairs)
        return tokenize_prompt(prompt, setup.train_tokenizer, **kwargs).tolist()
    names = {template.user: "human", template.assistant: "gpt"}
    llava = [{"from": names[role], "value": value} for role, value in pairs]
    count = sum(value.count(IMAGE_PLACEHOLDER) for _, value in pairs)
    sample = tokenize_conversation(
        llava, setup.train_tokenizer, template, max_length=100_000, num_images=count, **kwargs
    )
    return sample.input_ids.tolist()


def images_in_strings(messages: list[dict]) -> list[Image.Image]:
    """One image per ``<image>`` written inside string contents (image parts carry their own)."""
    count = sum(
        m["content"].count(IMAGE_PLACEHOLDER) for m in messages if isinstance(m["content"], str)
    )
    return [IMAGE] * count


def processor_ids(processor, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    extra = images_in_strings(messages)
    batch = processor.apply_chat_template(
        messages,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"images": extra} if extra else {},
    )
    return batch["input_ids"][0].tolist()


def _reason(err: Exception) -> str:
    return str(err).split(":", 1)[0]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_processor_renders_and_tokenizes_as_training(setups, name, case):
    template, setup = TEMPLATES[name], setups(name)
    for label, messages, generation in renderings(CONVERSATIONS[case]):
        where = f"{name}/{case}/{label}"
        try:
            want = reference_text(template, messages, generation)
        except InvalidConversation as err:
            with pytest.raises(TemplateError) as refused:
                setup.processor.apply_chat_template(messages, add_generation_prompt=generation)
            assert _reason(refused.value) == err.reason, where
            continue
        got = setup.processor.apply_chat_template(messages, add_generation_prompt=generation)
        assert got == want, where
        ids = processor_ids(setup.processor, messages, generation)
        train_ids = reference_ids(setup, template, messages, generation)
        assert ids == train_ids, (
            f"{where}: processor {setup.processor.tokenizer.decode(ids)!r} vs training "
            f"{setup.train_tokenizer.decode(train_ids)!r}"
        )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_assistant_mask_is_the_training_loss_mask(setups, name):
    """``return_assistant_tokens_mask`` marks exactly the tokens training supervises."""
    template, setup = TEMPLATES[name], setups(name)
    for case in ("image_first_1_round", "unicode_code_3_rounds", "placeholder_in_string_content"):
        messages = CONVERSATIONS[case]
        try:
            pairs = chat_to_messages(messages, template)
            render_conversation(template, pairs)
        except InvalidConversation:
            continue  # plain takes one round; the parity test checks the refusal
        extra = images_in_strings(messages)
        batch = setup.processor.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            processor_kwargs={"images": extra} if extra else {},
        )
        names = {template.user: "human", template.assistant: "gpt"}
        sample = tokenize_conversation(
            [{"from": names[r], "value": v} for r, v in pairs],
            setup.train_tokenizer,
            template,
            num_image_tokens=setup.num_image_tokens,
            image_token_id=setup.image_token_id,
            max_length=100_000,
        )
        supervised = (sample.labels != IGNORE_INDEX).long()
        assert torch.equal(batch["assistant_masks"][0].long(), supervised), f"{name}/{case}"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_accepts_a_first_round_with_an_image(name):
    """The parity test is not vacuous: each template renders a one-round image conversation."""
    template = TEMPLATES[name]
    messages = CONVERSATIONS["image_first_1_round"]
    assert reference_text(template, messages, False).startswith(template.system)
    assert IMAGE_PLACEHOLDER in reference_text(template, messages[:1], True)


REFUSED = {
    "system_message": ([{"role": "system", "content": "Be brief."}, user("Hi")], True),
    "system_message_later": (
        [user("Hi"), reply("Hello"), {"role": "system", "content": "x"}],
        True,
    ),
    "unknown_role": ([{"role": "tool", "content": "42"}, reply("ok")], False),
    "reply_first": ([reply("Hello"), user("Hi")], True),
    "two_users_in_a_row": ([user("Hi"), user(image(), text("Hello?")), reply("Yes")], False),
    "image_in_reply": (
        [user(image(), text("Hi")), {"role": "assistant", "content": [image()]}],
        False,
    ),
    "placeholder_in_reply": ([user(image(), text("Hi")), reply("see <image>")], False),
    "empty_user": ([user("   "), reply("Hello")], False),
    "empty_reply": ([user(image(), text("Hi")), reply("")], False),
    "prompt_after_a_reply": ([user(image(), text("Hi")), reply("Hello")], True),
    "conversation_without_reply": ([user(image(), text("Hi"))], False),
    "video_part": ([user({"type": "video"}, text("Hi")), reply("Hello")], False),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_both_renderers_refuse_the_same_conversations(saved_processor, name, case):
    template = TEMPLATES[name]
    messages, generation = REFUSED[case]
    with pytest.raises(InvalidConversation) as expected:
        reference_text(template, messages, generation)
    with pytest.raises(TemplateError) as refused:
        saved_processor.apply_chat_template(
            messages, add_generation_prompt=generation, chat_template=chat_template(template)
        )
    assert _reason(refused.value) == expected.value.reason


def test_system_message_refused_by_the_training_renderer():
    template = TEMPLATES["vicuna_v1"]
    for render in (render_prompt, lambda t, m: render_conversation(t, [*m, ("ASSISTANT", "a")])):
        with pytest.raises(InvalidConversation, match="fixed system prompt") as info:
            render(template, [("system", "Be brief."), ("USER", "Hi")])
        assert info.value.reason == "bad_roles"


@pytest.mark.parametrize("style", STYLES)
def test_generated_template_keeps_any_template_text_exact(saved_processor, style):
    """Quotes, braces, backslashes, newlines and non-ASCII in a template survive the generation."""
    odd = Template(
        name="odd",
        system='Say "hi" {{ x }} {% raw %} #} \\n\\ ü 🐱\n',
        roles=("Human", "Bot's"),
        sep="\n### ",
        sep2="<|end|>\n",
        style=style,
    )
    messages = CONVERSATIONS["image_first_1_round"]
    template = chat_template(odd)
    for generation, sent in ((True, messages[:1]), (False, messages)):
        got = saved_processor.apply_chat_template(
            sent, add_generation_prompt=generation, chat_template=template
        )
        assert got == reference_text(odd, sent, generation)


def test_saved_processor_holds_the_generated_template(saved_processor, vlm_dir):
    config = json.loads((Path(vlm_dir) / "config.json").read_text())
    assert saved_processor.chat_template == chat_template(TEMPLATES[config["conv_template"]])


def test_saved_tokenizer_splits_text_as_the_training_tokenizer(
    lenml_llama2_tokenizer_dir, saved_processor, tmp_path
):
    """A ``legacy: true`` tokenizer ("▁" after every special token) reloads as one: the flag
    transformers 5 does not save is kept by `build_processor` (`keep_legacy_flag`)."""
    tokenizer = AutoTokenizer.from_pretrained(lenml_llama2_tokenizer_dir)
    prepare_tokenizer(tokenizer)
    assert tokenizer.legacy is True
    build_processor(
        saved_processor.image_processor,
        tokenizer,
        patch_size=saved_processor.patch_size,
        conv_template="vicuna_v1",
    ).save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path).tokenizer
    text = "Hi ASSISTANT: Red</s>USER: <image>\nHow many?"
    assert reloaded.legacy is True
    assert reloaded(text).input_ids == tokenizer(text).input_ids


def test_chat_to_messages_maps_parts_in_order():
    template = TEMPLATES["vicuna_v1"]
    messages = [
        user(text("Compare"), image(), text(" these "), image()),
        reply("Same."),
        user("More?"),
        {"role": "assistant"},
    ]
    assert chat_to_messages(messages, template) == [
        ("USER", "Compare<image> these <image>"),
        ("ASSISTANT", "Same."),
        ("USER", "More?"),
        ("ASSISTANT", ""),
    ]


def test_chat_to_messages_keeps_system_for_the_renderer_to_refuse():
    template = TEMPLATES["vicuna_v1"]
    chat = [{"role": "system", "content": "Be brief."}, user("Hi")]
    assert chat_to_messages(chat, template) == [("system", "Be brief."), ("USER", "Hi")]
    with pytest.raises(InvalidConversation, match="bad_roles: unknown role 'tool'"):
        chat_to_messages([{"role": "tool", "content": "42"}], template)
