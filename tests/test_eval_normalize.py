"""EvalAI / official VQA answer normalisation, on cases worked out by hand from the references
(LLaVA ``m4c_evaluator.EvalAIAnswerProcessor``, GT-Vision-Lab ``vqaEval.py``)."""

from __future__ import annotations

import pytest

from vitsplit_vlm.eval.normalize import (
    OFFICIAL_DIGIT_COMMA,
    evalai_answer,
    official_answer,
    process_digit_article,
    process_punctuation,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # lower-cased, then the number-word map
        ("none", "0"),  # "none" is a number word there
        ("eleven", "eleven"),  # the map stops at ten
        ("The dog", "dog"),  # articles dropped
        ("a man's hat", "man 's hat"),  # "'s" split off before anything else
        ("dont", "don't"),  # contraction table
        ("Im", "im"),  # the table's key is "Im": never matches a lower-cased word
        ("somebody'd", "somebodyd"),  # the table's backwards entry, kept
        ("Yes.", "yes"),  # period not followed by a digit: dropped
        ("3.5", "3.5"),  # period followed by a digit: kept
        ("5.", "5"),
        ("1,000", "1000"),  # commas deleted by the first (tokenise) step
        ("what?", "what"),  # so is "?"
        ("t-shirt", "t shirt"),  # no space next to "-": it becomes a space
        ("red - blue", "red blue"),  # " -" in the input: "-" deleted, spaces collapse
        ("(tennis)", "tennis"),  # "(" and ")" become spaces, split() drops them
        ("\n  Yes\t", "yes"),  # newline/tab to space, stripped
        ("A Red CAR", "red car"),
    ],
)
def test_evalai_answer(raw, expected):
    assert evalai_answer(raw) == expected


def test_period_strip_stops_after_32_periods():
    # Both references call PERIOD_STRIP.sub("", text, re.UNICODE): re.UNICODE == 32 is the count.
    assert evalai_answer("." * 40 + "a") == "." * 8 + "a"
    assert official_answer("." * 33) == "."


def test_punctuation_deleted_everywhere_once_a_digit_comma_appears():
    # "10,000" has digit-comma-digit, so "(" and ")" are deleted, not spaced out.
    assert process_punctuation("10,000 (approx)") == "10000 approx"
    assert process_punctuation("(approx)") == " approx "


def test_the_two_digit_comma_rules_differ():
    # EvalAI: (?<=\d),+(?=\d) matches "1,,2", so every mark is deleted -> "123".
    assert process_punctuation("1,,2-3") == "123"
    # Official: \d,\d does not match "1,,2"; "," and "-" have no space beside them -> spaces.
    assert process_punctuation("1,,2-3", digit_comma=OFFICIAL_DIGIT_COMMA) == "1  2 3"
    assert official_answer("1,,2-3") == "1 2 3"


def test_number_words_map_before_articles_and_contractions_after():
    assert process_digit_article("The THREE cats arent") == "3 cats aren't"
    # official_answer has no "'s" split and no comma/"?" deletion before punctuation rules
    assert official_answer("man's hat?") == "man's hat"
    assert evalai_answer("man's hat?") == "man 's hat"
