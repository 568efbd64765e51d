"""VQAv2 soft accuracy, protocols, subsets and the EvalAI upload, with hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from vitsplit_vlm.eval.io import EvalInputError, read_answers
from vitsplit_vlm.eval.vqav2 import (
    VQAv2Annotation,
    VQAv2Task,
    load_annotations,
    load_question_ids,
    soft_accuracy,
    write_submission,
)


def _annotation(qid, answers, answer_type="other", question_type="what"):
    return {
        "question_id": qid,
        "image_id": 1,
        "answer_type": answer_type,
        "question_type": question_type,
        "multiple_choice_answer": answers[0],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(answers)
        ],
    }


def _answers_file(path, texts):
    """LLaVA model_vqa_loader lines for ``{question_id: text}``."""
    with open(path, "w") as f:
        for qid, text in texts.items():
            line = {
                "question_id": qid,
                "prompt": "q",
                "text": text,
                "answer_id": "x",
                "model_id": "m",
                "metadata": {},
            }
            f.write(json.dumps(line) + "\n")
    return path


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        (0, 0.0),
        # 1 match: left out -> 0 others match (0); any of the other 9 left out -> 1/3.
        # (0 + 9 * 1/3) / 10 = 0.3
        (1, 0.3),
        # 2 matches: each matching one left out -> 1/3; the 8 others -> 2/3.
        # (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6
        (2, 0.6),
        # 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9
        (3, 0.9),
        # 4 matches: at least 3 remain whoever is left out -> 1
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_soft_accuracy_leave_one_out(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert soft_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_prediction_and_human_answers_are_both_normalised():
    # "Two" and "two" both become "2"; 2 of 10 annotators said it -> 0.6
    ann = VQAv2Annotation(1, ("two", "2") + ("3",) * 8, "number", "how many")
    assert VQAv2Task().score_answer("Two.", ann) == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize(
    ("prediction", "humans", "llava", "lmms_eval", "vqaeval"),
    [
        # All 10 identical: vqaEval.py compares raw strings; the uploaded "t shirt" != "T-shirt".
        ("t-shirt", ["T-shirt"] * 10, 1.0, 1.0, 0.0),
        # EvalAI splits "'s" ("man 's"); vqaEval.py's own normalisation keeps "man's".
        ("man's", ["man's"] * 5 + ["woman's"] * 5, 1.0, 1.0, 0.0),
        # EvalAI deletes commas first ("redwhite"); lmms-eval turns the comma into a space.
        ("red,white", ["red white"] * 10, 0.0, 1.0, 0.0),
        ("Yes", ["yes"] * 10, 1.0, 1.0, 1.0),
    ],
)
def test_protocols_differ_where_the_references_do(prediction, humans, llava, lmms_eval, vqaeval):
    ann = VQAv2Annotation(1, tuple(humans), "other", "what")
    got = {
        p: VQAv2Task(protocol=p).score_answer(prediction, ann)
        for p in ("llava", "lmms-eval", "vqaeval")
    }
    assert got == {"llava": llava, "lmms-eval": lmms_eval, "vqaeval": vqaeval}


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocol"):
        VQAv2Task(protocol="gpt")


@pytest.fixture
def val(tmp_path):
    annotations = [
        _annotation(1, ["yes"] * 10, "yes/no", "is the"),  # "Yes." -> 1.0
        _annotation(2, ["2", "2", "two"] + ["3"] * 7, "number", "how many"),  # "Two" -> 3 -> 0.9
        _annotation(3, ["red", "red"] + ["maroon"] * 8, "other", "what color is the"),  # 0.6
        _annotation(4, ["green"] * 10, "other", "what color is the"),  # "blue" -> 0.0
    ]
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps({"info": {}, "annotations": annotations}))
    texts = {3: "Red", 1: "Yes.", 4: "blue", 2: "Two"}  # file order need not match
    return ann_path, _answers_file(tmp_path / "answers.jsonl", texts)


def test_report_overall_and_per_type(val):
    ann_path, answers_path = val
    report = VQAv2Task().score(read_answers(answers_path), load_annotations(ann_path))
    # (1.0 + 0.9 + 0.6 + 0.0) / 4 = 0.625
    assert report.accuracy == pytest.approx(62.5, abs=1e-9)
    assert report.per_answer_type == pytest.approx(
        {"number": 90.0, "other": 30.0, "yes/no": 100.0}, abs=1e-9
    )
    assert report.per_question_type == pytest.approx(
        {"how many": 90.0, "is the": 100.0, "what color is the": 30.0}, abs=1e-9
    )
    assert report.num_questions == 4
    assert report.protocol == "llava"


def test_questions_file_selects_the_subset(val, tmp_path):
    ann_path, _ = val
    questions = tmp_path / "questions.json"  # official format
    questions.write_text(
        json.dumps(
            {
                "questions": [
                    {"question_id": 2, "image_id": 1, "question": "How many?"},
                    {"question_id": 3, "image_id": 1, "question": "What color?"},
                ]
            }
        )
    )
    answers = read_answers(_answers_file(tmp_path / "sub.jsonl", {2: "Two", 3: "Red"}))
    report = VQAv2Task().score(
        answers, load_annotations(ann_path), question_ids=load_question_ids(questions)
    )
    assert report.accuracy == pytest.approx(75.0, abs=1e-9)  # (0.9 + 0.6) / 2
    assert report.num_questions == 2


def test_a_question_without_answer_is_an_error(val, tmp_path):
    ann_path, _ = val
    answers = read_answers(_answers_file(tmp_path / "a.jsonl", {1: "yes", 2: "2", 3: "red"}))
    with pytest.raises(EvalInputError, match=r"a.jsonl: 1 question\(s\) .* no answer, e.g. 4"):
        VQAv2Task().score(answers, load_annotations(ann_path), answers_path=tmp_path / "a.jsonl")


def test_an_answer_to_an_unknown_question_is_an_error(val, tmp_path):
    ann_path, _ = val
    path = _answers_file(tmp_path / "a.jsonl", {1: "y", 2: "2", 3: "r", 4: "g", "5": "x"})
    with pytest.raises(EvalInputError, match=r"line 5: question_id '5' is not in"):
        VQAv2Task().score(read_answers(path), load_annotations(ann_path), answers_path=path)


def test_a_question_without_annotation_is_an_error(val, tmp_path):
    ann_path, answers_path = val
    with pytest.raises(EvalInputError, match=r"have no annotation, e\.g\. question_id 7"):
        VQAv2Task().score(
            read_answers(answers_path), load_annotations(ann_path), question_ids=[1, 7]
        )


def test_annotation_answers_must_be_answer_objects(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps(
            {
                "annotations": [
                    {"question_id": 1, "answers": ["yes"], "answer_type": "x", "question_type": "y"}
                ]
            }
        )
    )
    with pytest.raises(EvalInputError, match=r"ann.json annotations\[0\]: 'answers' must be"):
        load_annotations(path)


def test_convert_writes_every_question_in_order(tmp_path):
    questions = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": q, "image": "x.jpg", "text": "?", "category": "default"})
            + "\n"
            for q in (10, 11, 12)
        )
    )
    answers = read_answers(_answers_file(tmp_path / "a.jsonl", {12: "Two dogs.", 10: "Yes"}))
    submission = VQAv2Task().convert(answers, load_question_ids(questions))
    out = tmp_path / "upload" / "model.json"
    write_submission(submission, out)
    assert json.loads(out.read_text()) == [
        {"question_id": 10, "answer": "yes"},
        {"question_id": 11, "answer": ""},  # missing: "" as LLaVA's converter writes
        {"question_id": 12, "answer": "2 dogs"},
    ]
    assert submission.num_missing == 1


def test_convert_refuses_answers_outside_the_split(tmp_path):
    answers = read_answers(_answers_file(tmp_path / "a.jsonl", {10: "yes", 99: "no"}))
    with pytest.raises(EvalInputError, match=r"line 2: question_id 99 is not in q.jsonl"):
        VQAv2Task().convert(answers, [10, 11], answers_path="a.jsonl", questions_path="q.jsonl")


def test_duplicate_question_in_questions_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1}\n{"question_id": 2}\n{"question_id": 1}\n')
    with pytest.raises(
        EvalInputError,
        match=r"q.jsonl line 3: duplicate question_id 1 "
        r"\(first at line 1\)",
    ):
        load_question_ids(path)
