"""VQA answer normalisation: EvalAI's answer processor and the official VQA evaluation's steps.

Behaviour mirrors, rule for rule, ``EvalAIAnswerProcessor`` (LLaVA ``llava/eval/m4c_evaluator.py``,
identical in lmms-eval ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``; from MMF) and
``processPunctuation`` / ``processDigitArticle`` of the official evaluation (GT-Vision-Lab/VQA
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``), quirks included:

- the period rule is written ``(?!<=\\d)(\\.)(?!\\d)`` there: the first group is a look-ahead (a
  typo for a look-behind) that can never fail where a period stands, so the rule is "drop a period
  not followed by a digit";
- that substitution is called as ``sub("", text, re.UNICODE)``, which passes ``re.UNICODE`` (32)
  as the *count*: only the first 32 such periods go;
- whether a punctuation mark is deleted or turned into a space depends on the *input* text (a
  space next to that mark, or a digit-comma-digit anywhere), not on the text as edited so far;
- the number-word map ("manual map") runs before articles are dropped, contractions after; the
  contraction table's keys with capitals ("Im", "Ive") can never match lower-cased words, and its
  entry ``"somebody'd": "somebodyd"`` is backwards; both are kept as the references have them.

The two references differ in one regex: EvalAI's digit-comma rule is ``(?<=\\d)(\\,)+(?=\\d)``
(several commas allowed), the official one ``(\\d)(\\,)(\\d)``.
"""

from __future__ import annotations

import re

_PERIOD_COUNT = 32  # re.UNICODE, passed as sub()'s count by both references
_PERIOD = re.compile(r"\.(?!\d)")
EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
OFFICIAL_DIGIT_COMMA = re.compile(r"\d,\d")
# fmt: off
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
# fmt: on


def collapse_whitespace_ends(text: str) -> str:
    """Newlines and tabs to spaces, then strip: what both references do before normalising."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, *, digit_comma: re.Pattern[str] = EVALAI_DIGIT_COMMA) -> str:
    """Delete or space out punctuation, then drop periods not followed by a digit.

    A mark is deleted when the input has it next to a space or has a digit-comma-digit anywhere
    (``digit_comma``: EvalAI's rule by default, :data:`OFFICIAL_DIGIT_COMMA` for ``vqaEval.py``);
    otherwise it becomes a space: ``"t-shirt"`` -> ``"t shirt"``, while ``"red - blue"`` ->
    ``"red  blue"``.
    """
    glue_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        glue = glue_all or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if glue else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, split on whitespace, number words to digits, drop articles, fix contractions."""
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor (``EvalAIAnswerProcessor.__call__``): what LLaVA uploads.

    Lower-case, delete ``,`` and ``?``, split off ``'s`` (``"man's"`` -> ``"man 's"``), then
    :func:`process_punctuation` and :func:`process_digit_article`.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = process_punctuation(collapse_whitespace_ends(text))
    return process_digit_article(text)


def official_answer(text: str) -> str:
    """``vqaEval.py``'s normalisation (applied only to questions whose 10 answers differ)."""
    text = process_punctuation(text, digit_comma=OFFICIAL_DIGIT_COMMA)
    return process_digit_article(text)
