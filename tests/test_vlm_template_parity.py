"""The processor's chat template renders what training renders, for every registered template.

Each conversation goes through `processor.apply_chat_template` (the saved processor, reloaded
with `AutoProcessor`) and through the training renderer (`render_conversation` /
`render_prompt`); the text must be identical, and so must the token ids of the processor
(`apply_chat_template(..., tokenize=True)`, images expanded) and of training's tokenisation
(`tokenize_conversation` / `tokenize_prompt`, BOS and image expansion included). What one side
refuses the other must refuse, with the same reason. Every template runs with the tokenizers it
is for (`PAIRS`): the project's tiny one and real published ones (Mistral's, Llama-3's,
Llama-3.1's, Qwen3's, Gemma3's; ``chat_template`` with each one that has a chat template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
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
    Turns,
    normalize_image_placeholder,
    render_conversation,
    render_prompt,
)
from vitsplit_vlm.vlm.data import IGNORE_INDEX, tokenize_conversation, tokenize_prompt
from vitsplit_vlm.vlm.processing import build_processor, chat_template, chat_to_messages
from vitsplit_vlm.vlm.tokenizer_chat import bind_template

# template -> the tokenizers it is checked with (kinds of the `tokenizer_dir` fixture)
TOKENIZERS_OF = {
    "plain": ("tiny", "mistral"),
    "vicuna_v1": ("tiny", "mistral"),
    "llava_llama_3": ("llama3", "llama3_1"),
    "qwen_1_5": ("qwen3",),
    "mistral_instruct": ("mistral",),
    "gemma_instruct": ("gemma3",),
    "chat_template": ("llama3", "llama3_1", "qwen3", "gemma3"),
}
PAIRS = [(name, kind) for name, kinds in TOKENIZERS_OF.items() for kind in kinds]
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
    """A reloaded saved processor, and the tokenizer and template as training prepares them
    (`build_vlm`: `prepare_tokenizer`, `bind_template`)."""

    template: Template
    processor: Any
    train_tokenizer: Any
    num_image_tokens: int
    image_token_id: int


@pytest.fixture(scope="module")
def saved_processor(vlm_dir):
    """The processor `build_vlm` saved beside the tiny model, reloaded as a user loads it."""
    return AutoProcessor.from_pretrained(vlm_dir)


@pytest.fixture(scope="module")
def setups(tokenizer_dir, vlm_dir, saved_processor, tmp_path_factory):
    """``setups(template_name, tokenizer_kind)`` -> `Setup`, built once per pair.

    The tiny tokenizer with the saved model's own template uses the processor `build_vlm` saved
    in `vlm_dir`; the others are built with `build_processor` from the same parts, saved and
    reloaded with `AutoProcessor` (the path a user of a saved model takes)."""
    config = json.loads((Path(vlm_dir) / "config.json").read_text())
    cache: dict[tuple[str, str], Setup] = {}

    def get(name: str, kind: str) -> Setup:
        if (name, kind) in cache:
            return cache[name, kind]
        train_tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_dir(kind), model_max_length=2048, padding_side="right"
        )
        prepare_tokenizer(train_tokenizer)
        template = bind_template(name, train_tokenizer)
        if kind == "tiny" and name == config["conv_template"]:
            processor = saved_processor
        else:
            folder = tmp_path_factory.mktemp(f"processor-{kind}-{name}")
            build_processor(
                saved_processor.image_processor,
                train_tokenizer,
                patch_size=saved_processor.patch_size,
                conv_template=name,
                template=template,
            ).save_pretrained(folder)
            processor = AutoProcessor.from_pretrained(folder)
        cache[name, kind] = Setup(
            template=template,
            processor=processor,
            train_tokenizer=train_tokenizer,
            num_image_tokens=config["image_seq_length"],
            image_token_id=train_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        )
        return cache[name, kind]

    return get


def test_every_template_is_checked_with_a_tokenizer():
    assert sorted(TOKENIZERS_OF) == sorted(TEMPLATES)


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
@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_processor_renders_and_tokenizes_as_training(setups, name, kind, case):
    setup = setups(name, kind)
    template = setup.template
    for label, messages, generation in renderings(CONVERSATIONS[case]):
        where = f"{name}/{kind}/{case}/{label}"
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


@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_assistant_mask_is_the_training_loss_mask(setups, name, kind):
    """``return_assistant_tokens_mask`` marks exactly the tokens training supervises."""
    setup = setups(name, kind)
    template = setup.template
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


# What closes a reply, written out per template and tokenizer (not read from the Template).
END_OF_TURN = {
    "plain": "\n",
    "vicuna_v1": "</s>",
    "llava_llama_3": "<|eot_id|>",
    "qwen_1_5": "<|im_end|>",
    "mistral_instruct": " </s>",  # LLaVA-NeXT's LLAMA_2 style: a space before </s>
    "gemma_instruct": "<end_of_turn>",
    ("chat_template", "llama3"): "<|eot_id|>",
    ("chat_template", "llama3_1"): "<|eot_id|>",
    ("chat_template", "qwen3"): "<|im_end|>",
    ("chat_template", "gemma3"): "<end_of_turn>",
}
QWEN3_EMPTY_THINK = "<think>\n\n</think>\n\n"  # Qwen3 writes it before the last reply


def supervised_runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive supervised label positions."""
    runs: list[tuple[int, int]] = []
    for i, on in enumerate((labels != IGNORE_INDEX).tolist()):
        if on and runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        elif on:
            runs.append((i, i + 1))
    return runs


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize(("name", "kind"), [p for p in PAIRS if p[1] != "tiny"])
def test_labels_are_the_replies_and_prompts_the_training_prefix(setups, name, kind, case):
    """With each real tokenizer: the supervised tokens decode to exactly each reply and its end
    of turn (no header, cue or newline of the template), and the inference prompt of each round
    is the training sequence up to that reply, token for token."""
    setup = setups(name, kind)
    template, tokenizer = setup.template, setup.train_tokenizer
    try:
        pairs = chat_to_messages(CONVERSATIONS[case], template)
        render_conversation(template, pairs)
    except InvalidConversation:
        assert name == "plain", f"{name}/{kind}/{case} refused"  # plain takes one image round
        return
    names = {template.user: "human", template.assistant: "gpt"}
    kwargs = dict(num_image_tokens=setup.num_image_tokens, image_token_id=setup.image_token_id)
    sample = tokenize_conversation(
        [{"from": names[r], "value": v} for r, v in pairs], tokenizer, template,
        max_length=100_000, **kwargs,
    )  # fmt: skip
    replies = [text for role, text in pairs if role == template.assistant]
    runs = supervised_runs(sample.labels)
    assert len(runs) == len(replies), f"{name}/{kind}/{case}: {len(runs)} supervised runs"
    eot = END_OF_TURN.get((name, kind), END_OF_TURN.get(name))
    for k, ((start, end), answer) in enumerate(zip(runs, replies, strict=True)):
        where = f"{name}/{kind}/{case}/reply {k + 1}"
        got = tokenizer.decode(sample.input_ids[start:end]).strip()
        want = {(answer + eot).strip(), (answer.strip() + eot).strip()}
        if (name, kind) == ("chat_template", "qwen3") and k == len(replies) - 1:
            want = {QWEN3_EMPTY_THINK + w for w in want}
        assert got in want, f"{where}: supervised {got!r}, want one of {want}"
        assert torch.equal(sample.labels[start:end], sample.input_ids[start:end]), where
        # the history as LLaVA holds it (images moved to the first message), up to this reply
        prompt = render_prompt(template, normalize_image_placeholder(pairs, template)[: 2 * k + 1])
        ids = tokenize_prompt(prompt, tokenizer, **kwargs)
        assert ids.tolist() == sample.input_ids[:start].tolist(), (
            f"{where}: prompt {tokenizer.decode(ids)!r} vs training prefix "
            f"{tokenizer.decode(sample.input_ids[:start])!r}"
        )


def test_chat_template_renders_as_the_tokenizers_own_apply_chat_template(setups):
    """``--version chat_template`` is the tokenizer's template: text-only conversations (no image
    to normalise) render as ``tokenizer.apply_chat_template`` renders them."""
    unicode_code = [user("Écris du code ✨"), reply(CODE_REPLY), user("日本語?"), reply("はい 🔴")]
    for kind in TOKENIZERS_OF["chat_template"]:
        setup = setups("chat_template", kind)
        own = setup.train_tokenizer.apply_chat_template
        for messages in (CONVERSATIONS["no_image_2_rounds"], unicode_code):
            where = f"{kind}/{messages[0]['content']}"
            assert reference_text(setup.template, messages, False) == own(
                messages, tokenize=False
            ), where
            assert reference_text(setup.template, messages[:3], True) == own(
                messages[:3], tokenize=False, add_generation_prompt=True
            ), where


@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_every_template_accepts_a_first_round_with_an_image(setups, name, kind):
    """The parity test is not vacuous: each template renders a one-round image conversation."""
    template = setups(name, kind).template
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
def test_both_renderers_refuse_the_same_conversations(setups, saved_processor, name, case):
    template = setups(name, TOKENIZERS_OF[name][0]).template
    messages, generation = REFUSED[case]
    with pytest.raises(InvalidConversation) as expected:
        reference_text(template, messages, generation)
    with pytest.raises(TemplateError) as refused:
        saved_processor.apply_chat_template(
            messages, add_generation_prompt=generation, chat_template=chat_template(template)
        )
    assert _reason(refused.value) == expected.value.reason


@pytest.mark.parametrize(("name", "kind"), [p for p in PAIRS if TEMPLATES[p[0]].markers])
def test_markup_in_a_message_is_refused_by_both(setups, name, kind):
    """A chat format's markup inside a message would end a turn early: ``marker_in_text``."""
    setup = setups(name, kind)
    marker = setup.template.reserved[-1] if setup.template.reserved else None
    if marker is None:  # vicuna_v1 keeps LLaVA-1.5's behaviour: "</s>" in text is rendered
        return
    for messages in ([user(image(), text(f"Hi {marker}")), reply("Hello")],
                     [user(image(), text("Hi")), reply(f"Hello {marker} again")]):  # fmt: skip
        with pytest.raises(InvalidConversation) as expected:
            reference_text(setup.template, messages, False)
        assert expected.value.reason == "marker_in_text"
        with pytest.raises(TemplateError, match="^marker_in_text"):
            setup.processor.apply_chat_template(messages)


def test_system_message_refused_by_the_training_renderer():
    template = TEMPLATES["vicuna_v1"]
    for render in (render_prompt, lambda t, m: render_conversation(t, [*m, ("ASSISTANT", "a")])):
        with pytest.raises(InvalidConversation, match="fixed system prompt") as info:
            render(template, [("system", "Be brief."), ("USER", "Hi")])
        assert info.value.reason == "bad_roles"


ODD_SYSTEM = 'Say "hi" {{ x }} {% raw %} #} \\n\\ ü 🐱\n'
ODD_TURNS = Turns(
    user_start='<|u|> "{{" ',
    user_end="{% x %}\n",
    reply_cue="\\ Bot's: ",
    reply_start=" ",
    reply_end="<|end|> ✓",
    turn_end="\n\n",
    strip=True,
)
# A tokenizer chat template with odd text, whitespace control, a comment, its own generation tags
# and a leading newline: embedded as a macro it must render as it does alone.
ODD_JINJA = (
    "\n{{ bos_token }}{#- c -#}\n{%- for m in messages %}\n"
    "  {%- if m['role'] == 'user' %}<<U>> \"{{ m['content'] }}\" ü\n"
    "  {%- else %}{% generation %}[[A]] {{ m['content'] | trim }}{% endgeneration %}</s>\n"
    "  {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}[[A]] {% endif %}"
)


@pytest.mark.parametrize("style", STYLES)
def test_generated_template_keeps_any_template_text_exact(saved_processor, tokenizer_dir, style):
    """Quotes, braces, backslashes, newlines and non-ASCII in a template survive the generation."""
    odd = Template(
        name="odd",
        system=ODD_SYSTEM,
        roles=("Human", "Bot's"),
        sep="\n### ",
        sep2="<|end|>\n",
        style=style,
        turns=ODD_TURNS if style == "turns" else None,
    )
    if style == "chat_template":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir("tiny"))
        tokenizer.chat_template = ODD_JINJA
        odd = replace(bind_template("chat_template", tokenizer), roles=odd.roles)
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
