"""Conversation templates render LLaVA-1.5's exact text; prompts are prefixes of training text."""

from __future__ import annotations

import pytest

from vitsplit_vlm.vlm.conversation import (
    TEMPLATES,
    VICUNA_SYSTEM,
    InvalidConversation,
    Template,
    get_template,
    normalize_image_placeholder,
    render_conversation,
    render_prompt,
)

VICUNA = get_template("vicuna_v1")
PLAIN = get_template("plain")
U, A = "USER", "ASSISTANT"
TWO_ROUNDS = [
    (U, "<image>\nWhat colour is the circle?"),
    (A, "Red"),
    (U, "How many shapes are there?"),
    (A, "3"),
]


def _supervised_text(rendered) -> list[str]:
    return [rendered.text[a:b] for a, b in rendered.supervised]


def test_vicuna_v1_renders_llava_text_and_supervises_replies():
    rendered = render_conversation(VICUNA, TWO_ROUNDS)
    assert rendered.text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat colour is the circle? ASSISTANT: Red</s>"
        "USER: How many shapes are there? ASSISTANT: 3</s>"
    )
    assert _supervised_text(rendered) == [" Red</s>", " 3</s>"]


def test_plain_renders_image_caption_newline_and_drops_the_question():
    messages = [(U, "<image>\nDescribe the image briefly."), (A, "a red circle.")]
    rendered = render_conversation(PLAIN, messages)
    assert rendered.text == "<image>a red circle.\n"
    assert _supervised_text(rendered) == ["a red circle.\n"]
    assert render_prompt(PLAIN, messages[:1]) == "<image>"
    assert render_prompt(PLAIN, [*messages[:1], (A, None)]) == "<image>"


@pytest.mark.parametrize(
    "messages, first",
    [
        ([(U, "What is it? <image>"), (A, "x")], "<image>\nWhat is it?"),
        ([(U, "<image>\n"), (A, "x")], "<image>"),
        ([(U, "  <image>  Hi  "), (A, "x")], "<image>\nHi"),
        ([(U, "Hi"), (A, "x"), (U, "<image> More")], "<image>\nHi"),
    ],
)
def test_image_placeholder_moves_to_the_first_user_message(messages, first):
    out = normalize_image_placeholder(messages, VICUNA)
    assert out[0] == (U, first)
    assert sum(text.count("<image>") for _, text in out) == 1
    if len(messages) == 3:
        assert out[2] == (U, "More")


def test_prompt_is_the_training_text_up_to_the_reply():
    prompt = render_prompt(VICUNA, TWO_ROUNDS[:3])
    assert prompt == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat colour is the circle? ASSISTANT: Red</s>"
        "USER: How many shapes are there? ASSISTANT:"
    )
    assert render_prompt(VICUNA, [*TWO_ROUNDS[:3], (A, None)]) == prompt
    rendered = render_conversation(VICUNA, TWO_ROUNDS)
    assert rendered.text.startswith(prompt)
    assert rendered.supervised[-1][0] == len(prompt)
    single = render_prompt(VICUNA, [(U, "What is this?\n<image>")])
    assert single == f"{VICUNA_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"


@pytest.mark.parametrize(
    "template, messages, reason",
    [
        (VICUNA, [(A, "x"), (U, "y")], "bad_roles"),
        (VICUNA, [(U, "x"), ("GPT", "y")], "bad_roles"),
        (VICUNA, [(U, "x"), (A, "y"), (U, "z")], "bad_roles"),
        (VICUNA, [(U, "x")], "no_assistant_turn"),
        (VICUNA, [], "no_assistant_turn"),
        (VICUNA, [(U, "x"), (A, "  ")], "empty_turn"),
        (VICUNA, [(U, "x"), (A, "see <image>")], "image_in_reply"),
        (PLAIN, [(U, "<image>"), (A, "a"), (U, "b"), (A, "c")], "bad_roles"),
        (PLAIN, [(U, "no image"), (A, "a")], "image_count"),
    ],
)
def test_invalid_conversations_raise_with_a_reason(template, messages, reason):
    with pytest.raises(InvalidConversation) as info:
        render_conversation(template, messages)
    assert info.value.reason == reason


def test_invalid_prompts_raise():
    with pytest.raises(InvalidConversation, match="end with a user message"):
        render_prompt(VICUNA, TWO_ROUNDS)
    with pytest.raises(InvalidConversation, match="plain"):
        render_prompt(PLAIN, [(U, "no image")])


def test_registry_and_get_template():
    assert sorted(TEMPLATES) == [
        "chat_template", "gemma_instruct", "llava_llama_3", "mistral_instruct", "plain",
        "qwen_1_5", "vicuna_v1",
    ]  # fmt: skip
    assert VICUNA.stop_str == "</s>" and PLAIN.stop_str == "\n"
    with pytest.raises(ValueError, match=r"--version.*'llava_v2'.*\['chat_template', "):
        get_template("llava_v2")
    with pytest.raises(ValueError, match="Template.style"):
        Template(name="x", system="", style="mpt")
