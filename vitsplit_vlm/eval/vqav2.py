"""VQAv2: soft accuracy against the 10 human answers, and the EvalAI upload file.

Score of one prediction (official ``vqaEval.py``): leave each of the 10 annotators out in turn,
take ``min(1, matches among the other 9 / 3)``, average the 10 values. With ``m`` matching
annotators that is ``(m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10``: 0, 0.3, 0.6, 0.9, then 1.

Which strings are compared is the ``protocol`` (all three leave one annotator out by position):

- ``"llava"`` (default): EvalAI's processor (:func:`~.normalize.evalai_answer`) on the prediction
  and on every human answer, as LLaVA's ``m4c_evaluator.TextVQAAccuracyEvaluator`` does; the
  prediction is exactly what ``convert`` uploads.
- ``"lmms-eval"``: lmms-eval's ``vqav2_process_results``: only the punctuation and
  digit/article steps, on prediction and human answers (not the processor's first step, which
  deletes ``,`` and ``?`` and splits off ``'s``).
- ``"vqaeval"``: GT-Vision-Lab's ``vqaEval.py`` (the evaluation the VQA challenge server runs)
  on LLaVA's upload: the prediction goes through EvalAI's processor (the converter), then
  prediction and human answers are normalised only when the 10 human answers are not all the
  same string; otherwise raw text is compared (so an upload "t shirt" scores 0 against ten
  "T-shirt", and the processor's "man 's" never equals "man's").
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from vitsplit_vlm.eval import SHORT_ANSWER_PROMPT, with_instruction
from vitsplit_vlm.eval.io import (
    Answer,
    EvalInputError,
    QuestionId,
    atomic_output,
    field,
    question_id,
    read_records,
    reject_unknown,
    require_all,
)
from vitsplit_vlm.eval.normalize import (
    collapse_whitespace_ends,
    evalai_answer,
    official_answer,
    process_digit_article,
    process_punctuation,
)

Normalised = tuple[str, list[str]]  # (prediction, human answers), ready to compare


@dataclass(frozen=True)
class VQAv2Annotation:
    """One question's ground truth from ``v2_mscoco_*_annotations.json``."""

    question_id: QuestionId
    answers: tuple[str, ...]  # the 10 human answers, raw
    answer_type: str  # "yes/no", "number", "other"
    question_type: str  # "what color is the", ...


@dataclass(frozen=True)
class VQAv2Report:
    """Accuracies in percent (0-100), unrounded (the official script rounds to 2 decimals)."""

    accuracy: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    num_questions: int
    protocol: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VQAv2Submission:
    """The EvalAI upload (``[{"question_id", "answer"}]`` in question-file order)."""

    entries: list[dict]
    num_missing: int  # questions without an answer, uploaded as "" (as LLaVA's converter does)


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over leave-one-out subsets of ``min(1, matches / 3)``; inputs already normalised."""
    if not answers:
        raise ValueError("a question needs at least one human answer")
    matches = sum(answer == prediction for answer in answers)
    return sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers) / len(answers)


def _lmms_eval_answer(text: str) -> str:
    return process_digit_article(process_punctuation(collapse_whitespace_ends(text)))


def _normalise_both(
    prediction: str, answers: Sequence[str], norm: Callable[[str], str]
) -> Normalised:
    return norm(prediction), [norm(a) for a in answers]


def _vqaeval(prediction: str, answers: Sequence[str], norm: Callable[[str], str]) -> Normalised:
    uploaded = collapse_whitespace_ends(evalai_answer(prediction))
    answers = [collapse_whitespace_ends(a) for a in answers]
    if len(set(answers)) > 1:
        return norm(uploaded), [norm(a) for a in answers]
    return uploaded, answers


# protocol -> (how a prediction and its human answers are compared, the string normaliser it uses)
PROTOCOLS: dict[str, tuple[Callable[..., Normalised], Callable[[str], str]]] = {
    "llava": (_normalise_both, evalai_answer),
    "lmms-eval": (_normalise_both, _lmms_eval_answer),
    "vqaeval": (_vqaeval, official_answer),
}


def load_annotations(path: str | Path) -> dict[QuestionId, VQAv2Annotation]:
    """Read ``v2_mscoco_*_annotations.json`` (or a JSON-lines file of the same objects)."""
    annotations: dict[QuestionId, VQAv2Annotation] = {}
    for record in read_records(path, list_key="annotations"):
        qid = question_id(path, record)
        answers = field(path, record, "answers", list)
        if not answers or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers
        ):
            raise EvalInputError(
                f"{path} {record.where}: 'answers' must be a non-empty list of "
                '{"answer": str, ...} objects'
            )
        if qid in annotations:
            raise EvalInputError(f"{path} {record.where}: duplicate question_id {qid!r}")
        annotations[qid] = VQAv2Annotation(
            question_id=qid,
            answers=tuple(a["answer"] for a in answers),
            answer_type=field(path, record, "answer_type", str),
            question_type=field(path, record, "question_type", str),
        )
    return annotations


def load_question_ids(path: str | Path) -> list[QuestionId]:
    """Question ids, in file order, from official ``{"questions": [...]}`` JSON or LLaVA's
    ``llava_vqav2_mscoco_*.jsonl``."""
    ids: dict[QuestionId, str] = {}
    for record in read_records(path, list_key="questions"):
        qid = question_id(path, record)
        if qid in ids:
            raise EvalInputError(
                f"{path} {record.where}: duplicate question_id {qid!r} (first at {ids[qid]})"
            )
        ids[qid] = record.where
    return list(ids)


def _mean_percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values)


class VQAv2Task:
    """VQAv2 with a choice of comparison ``protocol`` (see the module docstring)."""

    name = "vqav2"

    def __init__(self, *, protocol: str = "llava") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self._compare, normalise = PROTOCOLS[protocol]
        # Human answers repeat a lot ("yes", "2", "white"): normalise each distinct string once.
        self._normalise = lru_cache(maxsize=2**18)(normalise)

    def build_prompt(self, question: str) -> str:
        """LLaVA-1.5's VQAv2 prompt (the image token is the model wrapper's business)."""
        return with_instruction(question, SHORT_ANSWER_PROMPT)

    def parse(self, text: str) -> str:
        """The answer as uploaded to EvalAI (EvalAI's processor, whatever the protocol)."""
        return evalai_answer(text)

    def score_answer(self, text: str, annotation: VQAv2Annotation) -> float:
        """Soft accuracy (0-1) of one raw model answer."""
        prediction, answers = self._compare(text, annotation.answers, self._normalise)
        return soft_accuracy(prediction, answers)

    def score(
        self,
        answers: Mapping[QuestionId, Answer],
        annotations: Mapping[QuestionId, VQAv2Annotation],
        *,
        question_ids: Sequence[QuestionId] | None = None,
        answers_path: str | Path = "answers",
        questions_path: str | Path = "the annotations",
    ) -> VQAv2Report:
        """Score answers on ``question_ids`` (default: every annotated question).

        Each of those must have an annotation and an answer, and every answer must be for one of
        them, as the official evaluation insists (``vqa.loadRes``).
        """
        ids = list(annotations) if question_ids is None else list(question_ids)
        if not ids:
            raise EvalInputError(f"{questions_path}: no questions to score")
        unannotated = [qid for qid in ids if qid not in annotations]
        if unannotated:
            raise EvalInputError(
                f"{questions_path}: {len(unannotated)} question(s) have no annotation, e.g. "
                f"question_id {unannotated[0]!r}"
            )
        reject_unknown(answers, set(ids), answers_path=answers_path, against=str(questions_path))
        require_all(answers, ids, answers_path=answers_path, against=str(questions_path))
        overall: list[float] = []
        by_answer_type: dict[str, list[float]] = defaultdict(list)
        by_question_type: dict[str, list[float]] = defaultdict(list)
        for qid in ids:
            annotation = annotations[qid]
            accuracy = self.score_answer(answers[qid].text, annotation)
            overall.append(accuracy)
            by_answer_type[annotation.answer_type].append(accuracy)
            by_question_type[annotation.question_type].append(accuracy)
        return VQAv2Report(
            accuracy=_mean_percent(overall),
            per_answer_type={k: _mean_percent(v) for k, v in sorted(by_answer_type.items())},
            per_question_type={k: _mean_percent(v) for k, v in sorted(by_question_type.items())},
            num_questions=len(ids),
            protocol=self.protocol,
        )

    def convert(
        self,
        answers: Mapping[QuestionId, Answer],
        question_ids: Sequence[QuestionId],
        *,
        answers_path: str | Path = "answers",
        questions_path: str | Path = "questions",
    ) -> VQAv2Submission:
        """EvalAI upload as LLaVA's ``convert_vqav2_for_submission.py`` writes it: every question
        of the split in order, its answer through EvalAI's processor, ``""`` where none.

        Unlike LLaVA, an answer for a question outside the split is an error, not ignored.
        """
        reject_unknown(
            answers, set(question_ids), answers_path=answers_path, against=str(questions_path)
        )
        entries = [
            {"question_id": qid, "answer": self.parse(answers[qid].text) if qid in answers else ""}
            for qid in question_ids
        ]
        return VQAv2Submission(entries, num_missing=len(question_ids) - len(answers))


def write_submission(submission: VQAv2Submission, path: str | Path) -> None:
    """Write the EvalAI upload JSON (a list of ``{"question_id", "answer"}``)."""
    with atomic_output(path) as handle:
        json.dump(submission.entries, handle)
