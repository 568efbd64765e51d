"""MMBench: multiple choice with circular evaluation, scored without a GPT judge.

Answer matching follows the official MMBench evaluation of LLaVA-1.5's time (OpenCompass
``tools/eval_mmbench.py``; lmms-eval's ``mmbench_evals.py`` has the same rules):

1. letters A-E as whitespace-separated tokens of the answer: exactly one bare letter wins, unless
   ``A`` is a token of an answer longer than 3 tokens ("A cat sits ..." may be an article);
2. otherwise, in this order, the first form that exactly one letter takes: ``A.``, ``A,``,
   ``A:``, ``A)``, ``A).``, ``(A)``, ``(A).``, ``:A``, ``:A,``, ``:A.``, ``:A)``, ``:A).``;
3. otherwise the option texts: exactly one option whose text (lower-cased) is a substring of the
   answer (lower-cased).

Where OpenCompass would then ask GPT, the answer here is unmatched: wrong, and counted. A matched
letter that is no option (``E``, or ``D`` of three options) is wrong but not unmatched.

Circular evaluation: an MMBench TSV holds each question (``index < 1_000_000``) and copies with
the options rotated (``index + k * 1_000_000``, each with its own rotated ``answer``). A question
counts only if every copy is answered right. LLaVA's ``model_vqa_mmbench.py --all-rounds`` rotates
on its own instead: it keeps ``question_id = index`` and writes ``round_id = r``, showing option
``(i + r) mod n`` under letter ``i`` (its ``options`` / ``option_char`` fields hold the rotated
lists), so the right letter of round ``r`` is ``(answer - r) mod n``. Both kinds of rotation (and
both together) group by ``index mod 1_000_000``. Vanilla accuracy uses only the original
questions at round 0.

Cells are read as ``pandas.read_table`` would (pandas' default NA strings such as ``""``, ``NA``,
``None`` mean "no value"); an option list stops at the first empty option, as LLaVA's does.
"""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vitsplit_vlm.eval.io import (
    Answer,
    EvalInputError,
    QuestionId,
    TsvRow,
    atomic_output,
    read_tsv,
    reject_unknown,
    require_all,
)

LETTERS = "ABCD"  # option columns of an MMBench TSV
MATCH_LETTERS = "ABCDE"  # letters the matcher looks for (OpenCompass includes E)
CIRCULAR_OFFSET = 1_000_000
INSTRUCTIONS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
# pandas' default NA strings (pandas._libs.parsers.STR_NA_VALUES): such a cell is NaN there.
# fmt: off
PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
_LETTER_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
                 (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))
# fmt: on
_API_FAILURE = "Failed to obtain answer via API"  # OpenCompass never matches a failed GPT call
# LLaVA's converter drops these columns and inserts "prediction" at this position.
SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
SUBMISSION_PREDICTION_AT = 6


def is_missing(cell: str) -> bool:
    """A cell pandas reads as NaN, or LLaVA's ``is_none`` ("nan"/"none" in any case)."""
    return cell in PANDAS_NA or cell.lower() in ("nan", "none")


@dataclass(frozen=True)
class MMBenchQuestion:
    """One TSV row: a question, its options A.. (up to the first empty one) and the answer."""

    index: int
    question: str
    hint: str | None
    options: tuple[str, ...]
    answer: str | None  # right letter at round 0; None in a test TSV without answers
    category: str | None
    l2_category: str | None
    line: int

    def choices(self, round_id: int = 0) -> dict[str, str]:
        """Letter -> option text as shown at ``round_id`` (LLaVA's rotation)."""
        shown = self.options[round_id:] + self.options[:round_id]
        return dict(zip(LETTERS, shown, strict=False))

    def answer_at(self, round_id: int = 0) -> str:
        """The right letter at ``round_id``."""
        if self.answer is None:
            raise ValueError(f"question {self.index} has no answer")
        return LETTERS[(LETTERS.index(self.answer) - round_id) % len(self.options)]


@dataclass(frozen=True)
class MMBenchReport:
    """Accuracies in percent (0-100)."""

    circular_accuracy: float
    vanilla_accuracy: float
    per_category: dict[str, float]  # circular accuracy per leaf category
    per_l2_category: dict[str, float]  # empty when the TSV has no l2-category column
    unmatched: int  # answers no rule maps to a letter (OpenCompass would ask GPT)
    num_questions: int  # circular groups
    num_answers: int
    all_rounds: bool  # answers carry LLaVA --all-rounds rotations

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MMBenchSubmission:
    """LLaVA's upload table: the TSV's columns minus :data:`SUBMISSION_DROPPED`, plus
    ``prediction`` (raw model text)."""

    header: list[str]
    rows: list[list[str | int | None]]  # None: an empty cell (pandas NaN)
    num_missing: int  # rows without an answer (empty prediction, as LLaVA leaves them)
    ignored_rounds: int  # --all-rounds answers with round_id > 0 (no column for them)


def match_letter(text: str) -> str | None:
    """Rules 1-2 of the module docstring (OpenCompass ``can_infer_option``)."""
    if _API_FAILURE in text:
        return None
    tokens = text.split()

    def found(prefix: str, suffix: str) -> list[str]:
        return [c for c in MATCH_LETTERS if f"{prefix}{c}{suffix}" in tokens]

    bare = found("", "")
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in _LETTER_FORMS:
        hits = found(prefix, suffix)
        if len(hits) == 1:
            return hits[0]
    return None


def match_option_text(text: str, choices: Mapping[str, str]) -> str | None:
    """Rule 3 (OpenCompass ``can_infer_text``): the one option whose text is in the answer."""
    lowered = text.lower()
    hits = [letter for letter, option in choices.items() if option.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def match_answer(text: str, choices: Mapping[str, str]) -> str | None:
    """The letter an answer picks, or None when no rule applies."""
    return match_letter(text) or match_option_text(text, choices)


def _cell(row: TsvRow, column: str) -> str | None:
    value = row.cells.get(column)
    return None if value is None or is_missing(value) else value


def _indices(path: str | Path, rows: Sequence[TsvRow]) -> list[int]:
    """The rows' ``index`` column as integers, each once."""
    lines: dict[int, int] = {}
    for row in rows:
        try:
            index = int(row.cells["index"])
        except ValueError:
            raise EvalInputError(
                f"{path} line {row.line}: column 'index' must be an integer, "
                f"got {row.cells['index']!r}"
            ) from None
        if index in lines:
            raise EvalInputError(
                f"{path} line {row.line}: duplicate index {index} (first at line {lines[index]})"
            )
        lines[index] = row.line
    return list(lines)


def _question(path: str | Path, row: TsvRow, index: int, *, need_answer: bool) -> MMBenchQuestion:
    where = f"{path} line {row.line}"
    options = []
    for letter in LETTERS:
        option = _cell(row, letter)
        if option is None:
            break
        options.append(option)
    if len(options) < 2:
        raise EvalInputError(f"{where}: index {index} has {len(options)} option(s), needs >= 2")
    answer = _cell(row, "answer")
    if need_answer and answer not in LETTERS[: len(options)]:
        raise EvalInputError(
            f"{where}: index {index} has answer {answer!r}, not one of its options "
            f"{', '.join(LETTERS[: len(options)])}"
        )
    return MMBenchQuestion(
        index=index,
        question=row.cells.get("question", ""),
        hint=_cell(row, "hint"),
        options=tuple(options),
        answer=answer if need_answer else None,
        category=_cell(row, "category"),
        l2_category=_cell(row, "l2-category"),
        line=row.line,
    )


def load_questions(path: str | Path, *, need_answer: bool = True) -> list[MMBenchQuestion]:
    """Read an MMBench TSV (``index, question, hint, A-D, answer, category, l2-category, ...``).

    For scoring (``need_answer``) the ``answer`` and ``category`` columns are required and every
    rotated copy (``index >= 1_000_000``) needs its original in the file.
    """
    required = ["index", "question", "A", "B"] + (["answer", "category"] if need_answer else [])
    keep = {"index", "question", "hint", *LETTERS, "answer", "category", "l2-category"}
    _, rows = read_tsv(path, required=required, keep=keep)
    if not rows:
        raise EvalInputError(f"{path}: no questions")
    questions = [
        _question(path, row, index, need_answer=need_answer)
        for row, index in zip(rows, _indices(path, rows), strict=True)
    ]
    if need_answer:
        indices = {q.index for q in questions}
        for question in questions:
            if question.index % CIRCULAR_OFFSET not in indices:
                raise EvalInputError(
                    f"{path} line {question.line}: index {question.index} is a rotated copy of "
                    f"{question.index % CIRCULAR_OFFSET}, which is not in the file"
                )
    return questions


def _percent(hits: Sequence[bool]) -> float:
    return 100.0 * sum(hits) / len(hits)


def _table_cell(row: TsvRow, name: str, index: int) -> str | int | None:
    """A TSV cell as pandas would write it back: the index a number, NA strings empty."""
    if name == "index":
        return index
    return None if row.cells[name] in PANDAS_NA else row.cells[name]


def _by(groups: Mapping[int, bool], main: Mapping[int, MMBenchQuestion], attr: str) -> dict:
    hits: dict[str, list[bool]] = defaultdict(list)
    for index, correct in groups.items():
        label = getattr(main[index], attr)
        if label is not None:
            hits[label].append(correct)
    return {label: _percent(h) for label, h in sorted(hits.items())}


class MMBenchTask:
    """MMBench as LLaVA-1.5 prompts it and OpenCompass (without GPT) scores it."""

    name = "mmbench"

    def __init__(self, *, lang: str = "en") -> None:
        if lang not in INSTRUCTIONS:
            raise ValueError(f"lang must be one of {sorted(INSTRUCTIONS)}, got {lang!r}")
        self.lang = lang

    def build_prompt(self, question: MMBenchQuestion, round_id: int = 0) -> str:
        """LLaVA's ``model_vqa_mmbench`` prompt (``--single-pred-prompt``): hint, question, the
        options as shown at ``round_id``, the instruction; one per line."""
        lines = [question.hint] if question.hint is not None else []
        lines.append(question.question)
        lines += [f"{letter}. {option}" for letter, option in question.choices(round_id).items()]
        lines.append(INSTRUCTIONS[self.lang])
        return "\n".join(lines)

    def parse(self, text: str, question: MMBenchQuestion, round_id: int = 0) -> str | None:
        """The letter an answer picks among the options shown at ``round_id``; None if none."""
        return match_answer(text, question.choices(round_id))

    def score(
        self,
        questions: Sequence[MMBenchQuestion],
        answers: Mapping[tuple[QuestionId, int], Answer],
        *,
        answers_path: str | Path = "answers",
        tsv_path: str | Path = "the TSV",
    ) -> MMBenchReport:
        """Circular and vanilla accuracy; ``answers`` keyed by ``(question_id, round_id)``.

        Every TSV row must be answered (at every round 0..n-1 when any answer has a round > 0).
        """
        all_rounds = any(round_id > 0 for _, round_id in answers)
        expected = [
            (q, r) for q in questions for r in (range(len(q.options)) if all_rounds else (0,))
        ]
        keys = [(q.index, r) for q, r in expected]
        reject_unknown(answers, set(keys), answers_path=answers_path, against=str(tsv_path))
        require_all(answers, keys, answers_path=answers_path, against=str(tsv_path))
        groups: dict[int, bool] = {}
        vanilla: list[bool] = []
        unmatched = 0
        for (question, round_id), key in zip(expected, keys, strict=True):
            letter = self.parse(answers[key].text, question, round_id)
            unmatched += letter is None
            correct = letter is not None and letter == question.answer_at(round_id)
            group = question.index % CIRCULAR_OFFSET
            groups[group] = groups.get(group, True) and correct
            if question.index < CIRCULAR_OFFSET and round_id == 0:
                vanilla.append(correct)
        main = {q.index: q for q in questions if q.index < CIRCULAR_OFFSET}
        return MMBenchReport(
            circular_accuracy=_percent(list(groups.values())),
            vanilla_accuracy=_percent(vanilla),
            per_category=_by(groups, main, "category"),
            per_l2_category=_by(groups, main, "l2_category"),
            unmatched=unmatched,
            num_questions=len(groups),
            num_answers=len(keys),
            all_rounds=all_rounds,
        )

    def convert(
        self,
        tsv_path: str | Path,
        answers: Mapping[tuple[QuestionId, int], Answer],
        *,
        answers_path: str | Path = "answers",
    ) -> MMBenchSubmission:
        """LLaVA's ``convert_mmbench_for_submission.py`` table: TSV rows in order, the dropped
        columns gone, ``prediction`` (the raw answer text) inserted at column 6.

        Only round-0 answers fill the table: a rotated round's letters refer to rotated options
        (LLaVA would let the last round overwrite the first). Unknown ids are an error.
        """
        full_header, rows = read_tsv(tsv_path, required=["index"], drop=SUBMISSION_DROPPED)
        header = [name for name in full_header if name not in SUBMISSION_DROPPED]
        indices = _indices(tsv_path, rows)
        first_round = {qid: a for (qid, round_id), a in answers.items() if round_id == 0}
        reject_unknown(first_round, set(indices), answers_path=answers_path, against=str(tsv_path))
        at = min(SUBMISSION_PREDICTION_AT, len(header))
        table = []
        for index, row in zip(indices, rows, strict=True):
            cells: list[str | int | None] = [_table_cell(row, name, index) for name in header]
            cells.insert(at, first_round[index].text if index in first_round else None)
            table.append(cells)
        return MMBenchSubmission(
            header=header[:at] + ["prediction"] + header[at:],
            rows=table,
            num_missing=sum(index not in first_round for index in indices),
            ignored_rounds=len(answers) - len(first_round),
        )


SUBMISSION_FORMATS = (".xlsx", ".tsv", ".csv")


def check_submission_path(path: str | Path) -> str:
    """The format (suffix) of ``path``, checked before any work: xlsx needs openpyxl."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUBMISSION_FORMATS:
        raise EvalInputError(f"{path}: the output must end in {', '.join(SUBMISSION_FORMATS)}")
    if suffix == ".xlsx" and importlib.util.find_spec("openpyxl") is None:
        raise EvalInputError(
            f"{path}: writing .xlsx needs openpyxl (pip install openpyxl); or write .tsv / .csv "
            "(same columns) and convert it"
        )
    return suffix


def write_submission(submission: MMBenchSubmission, path: str | Path) -> None:
    """Write the table as .xlsx (what the MMBench server takes; needs openpyxl), .tsv or .csv."""
    suffix = check_submission_path(path)
    if suffix == ".xlsx":
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        book = Workbook()
        sheet = book.active
        sheet.append(submission.header)
        for row in submission.rows:
            sheet.append(
                [ILLEGAL_CHARACTERS_RE.sub("", c) if isinstance(c, str) else c for c in row]
            )
        with atomic_output(path, binary=True) as handle:
            book.save(handle)
        return
    with atomic_output(path, newline="") as handle:
        writer = csv.writer(
            handle, delimiter="\t" if suffix == ".tsv" else ",", lineterminator="\n"
        )
        writer.writerow(submission.header)
        writer.writerows(submission.rows)
