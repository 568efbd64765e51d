"""POPE (object hallucination): yes/no answers scored per category (adversarial, popular, random).

Answer parsing and metrics follow LLaVA's ``llava/eval/eval_pope.py``: keep the text before the
first ``.``, delete commas, split on single spaces; the answer is "no" if a word is exactly
``No``, ``not`` or ``no``, otherwise "yes" ("yes" is the positive class). So ``"No."`` and
``"There is no dog"`` are no; ``"NO"``, ``"Not"`` and ``"no!"`` are yes, as in LLaVA.

Differences from LLaVA, on purpose: answers are matched to questions by ``question_id`` (LLaVA
zips answers with labels in line order), every question must be answered exactly once, and a
precision, recall or F1 whose denominator is 0 is reported as 0 (LLaVA divides by zero). Rates
are percentages (0-100); LLaVA prints fractions. lmms-eval's POPE differs more: it counts only
exact "yes"/"no" answers and its ``yes_ratio`` is that of the labels, not of the predictions.

Question files: POPE's ``coco_pope_<category>.json`` (JSON lines with ``question_id``, ``image``,
``text``, ``label``; each file numbers its questions from 1), or LLaVA's ``llava_pope_test.jsonl``
(unique ids across categories, a ``category`` field and no labels; the labels then come from the
``coco_pope_<category>.json`` files of a label folder, the k-th question of a category pairing
with line k of its file as in LLaVA, checked by image and question text).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vitsplit_vlm.eval import SHORT_ANSWER_PROMPT, with_instruction
from vitsplit_vlm.eval.io import (
    Answer,
    EvalInputError,
    QuestionId,
    Record,
    field,
    question_id,
    read_records,
    reject_unknown,
    require_all,
)

_NO_WORDS = ("No", "not", "no")
RATES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question: its id, category, label and which answers file answers it (``pool``)."""

    question_id: QuestionId
    category: str
    label: str  # "yes" | "no"
    pool: int
    where: str  # "pope/coco_pope_random.json line 3"


@dataclass(frozen=True)
class PopeMetrics:
    """LLaVA's POPE numbers for one category; rates in percent."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class PopeReport:
    categories: dict[str, PopeMetrics]  # in order of first appearance
    mean: dict[str, float]  # each rate averaged over the categories
    num_questions: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_yes_no(text: str) -> str:
    """LLaVA's ``eval_pope`` rule: "no" if the first sentence has the word No/not/no, else "yes"."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if any(word in words for word in _NO_WORDS) else "yes"


def pope_metrics(pairs: Sequence[tuple[str, str]]) -> PopeMetrics:
    """Metrics of ``(prediction, label)`` pairs, each "yes" or "no"; "yes" is positive."""
    if not pairs:
        raise ValueError("no questions to score")
    tp = sum(pred == "yes" and label == "yes" for pred, label in pairs)
    fp = sum(pred == "yes" and label == "no" for pred, label in pairs)
    tn = sum(pred == "no" and label == "no" for pred, label in pairs)
    fn = len(pairs) - tp - fp - tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(
        accuracy=100.0 * (tp + tn) / len(pairs),
        precision=100.0 * precision,
        recall=100.0 * recall,
        f1=100.0 * f1,
        yes_ratio=100.0 * (tp + fp) / len(pairs),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def category_from_filename(path: str | Path) -> str:
    """``coco_pope_random.json`` -> ``random`` (any ``*_pope_<category>``); else the file stem."""
    stem = Path(path).stem
    return stem.split("_pope_")[-1] if "_pope_" in stem else stem


def find_label_files(directory: str | Path) -> list[Path]:
    """The ``*_pope_<category>.json(l)`` files of a folder, sorted by name."""
    folder = Path(directory)
    if not folder.is_dir():
        raise EvalInputError(f"{directory}: not a folder")
    files = sorted(
        p for p in folder.iterdir() if "_pope_" in p.stem and p.suffix in (".json", ".jsonl")
    )
    if not files:
        raise EvalInputError(f"{directory}: no *_pope_<category>.json files")
    return files


def _label(path: Path, record: Record) -> str:
    label = field(path, record, "label", str).strip().lower()
    if label not in ("yes", "no"):
        raise EvalInputError(f"{path} {record.where}: label must be 'yes' or 'no', got {label!r}")
    return label


def _check_pairing(path: Path, record: Record, label_path: Path, label_record: Record) -> None:
    for key, agree in (("image", str.__eq__), ("text", str.startswith)):
        mine, theirs = record.data.get(key), label_record.data.get(key)
        if isinstance(mine, str) and isinstance(theirs, str) and not agree(mine, theirs):
            raise EvalInputError(
                f"{path} {record.where} does not match {label_path} {label_record.where} "
                f"({key} {mine!r} vs {theirs!r}); the k-th question of a category pairs with "
                "line k of that category's label file"
            )


def _labels_from_files(
    path: Path, unlabeled: dict[str, list[Record]], label_dir: Path | None
) -> dict[str, str]:
    """Labels (by ``where``) for question records without one, from the label folder."""
    if not unlabeled:
        return {}
    if label_dir is None:
        first = next(iter(unlabeled.values()))[0]
        raise EvalInputError(
            f"{path} {first.where}: missing field 'label'; give the folder of "
            "coco_pope_<category>.json label files with --question-dir"
        )
    label_files = {category_from_filename(p): p for p in find_label_files(label_dir)}
    labels = {}
    for category, records in unlabeled.items():
        if category not in label_files:
            raise EvalInputError(
                f"{path} {records[0].where}: no label file for category {category!r} in "
                f"{label_dir} (has: {', '.join(label_files)})"
            )
        label_path = label_files[category]
        label_records = read_records(label_path)
        if len(label_records) != len(records):
            raise EvalInputError(
                f"{path}: {len(records)} {category!r} questions, but {label_path} has "
                f"{len(label_records)} labels"
            )
        for record, label_record in zip(records, label_records, strict=True):
            _check_pairing(path, record, label_path, label_record)
            labels[record.where] = _label(label_path, label_record)
    return labels


def _file_questions(path: Path, pool: int, label_dir: Path | None) -> list[PopeQuestion]:
    """One question file's questions; a row's category is its ``category`` field, else the file
    name's; a row without ``label`` takes it from the label folder."""
    records = read_records(path)
    categories = [
        field(path, r, "category", str) if "category" in r.data else category_from_filename(path)
        for r in records
    ]
    unlabeled: dict[str, list[Record]] = defaultdict(list)
    for record, category in zip(records, categories, strict=True):
        if "label" not in record.data:
            unlabeled[category].append(record)
    labels = _labels_from_files(path, unlabeled, label_dir)
    return [
        PopeQuestion(
            question_id=question_id(path, record),
            category=category,
            label=labels.get(record.where) or _label(path, record),
            pool=pool,
            where=f"{path} {record.where}",
        )
        for record, category in zip(records, categories, strict=True)
    ]


def load_questions(
    question_files: Sequence[str | Path],
    *,
    label_dir: str | Path | None = None,
    num_answer_files: int = 1,
) -> list[PopeQuestion]:
    """Read POPE questions with their categories and labels.

    With no ``question_files`` the label folder's ``*_pope_<category>.json`` files are the
    questions. With one answers file, question ids must be unique over all question files; with
    one answers file per question file (same order), only within each file.
    """
    label_dir = Path(label_dir) if label_dir is not None else None
    paths = [Path(p) for p in question_files]
    if not paths:
        if label_dir is None:
            raise EvalInputError("no POPE questions: give --questions and/or --question-dir")
        paths, label_dir = find_label_files(label_dir), None
    if num_answer_files not in (1, len(paths)):
        raise EvalInputError(
            f"{num_answer_files} answers files for {len(paths)} question files "
            f"({', '.join(p.name for p in paths)}): give one answers file, or one per question "
            "file in that order"
        )
    questions: list[PopeQuestion] = []
    seen: dict[tuple[int, QuestionId], str] = {}
    for file_index, path in enumerate(paths):
        for q in _file_questions(path, file_index if num_answer_files > 1 else 0, label_dir):
            if (q.pool, q.question_id) in seen:
                raise EvalInputError(
                    f"{q.where}: duplicate question_id {q.question_id!r} (also "
                    f"{seen[q.pool, q.question_id]}); POPE files each number from 1: give one "
                    "answers file per question file"
                )
            seen[q.pool, q.question_id] = q.where
            questions.append(q)
    return questions


class PopeTask:
    """POPE as LLaVA-1.5 evaluates it (see the module docstring)."""

    name = "pope"

    def build_prompt(self, question: str) -> str:
        """LLaVA-1.5's POPE prompt (its ``llava_pope_test.jsonl`` carries the same suffix)."""
        return with_instruction(question, SHORT_ANSWER_PROMPT)

    def parse(self, text: str) -> str:
        return parse_yes_no(text)

    def score(
        self,
        questions: Sequence[PopeQuestion],
        answers: Sequence[Mapping[QuestionId, Answer]],
        *,
        answers_paths: Sequence[str | Path],
    ) -> PopeReport:
        """Per-category metrics and their mean; ``answers[i]`` answers the questions of pool i."""
        pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for pool, (pool_answers, path) in enumerate(zip(answers, answers_paths, strict=True)):
            mine = [q for q in questions if q.pool == pool]
            against = "the questions" if len(answers) == 1 else f"question file {pool + 1}"
            ids = [q.question_id for q in mine]
            reject_unknown(pool_answers, set(ids), answers_path=path, against=against)
            require_all(pool_answers, ids, answers_path=path, against=against)
            for q in mine:
                pairs[q.category].append((self.parse(pool_answers[q.question_id].text), q.label))
        categories = {category: pope_metrics(p) for category, p in pairs.items()}
        mean = {
            rate: sum(getattr(m, rate) for m in categories.values()) / len(categories)
            for rate in RATES
        }
        return PopeReport(categories, mean, num_questions=len(questions))
