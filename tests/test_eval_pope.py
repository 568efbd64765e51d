"""POPE: LLaVA's answer parsing, metrics by hand, id matching and the question-file layouts."""

from __future__ import annotations

import json
import random

import pytest

from vitsplit_vlm.eval.io import EvalInputError, read_answers
from vitsplit_vlm.eval.pope import PopeTask, load_questions, parse_yes_no, pope_metrics

SUFFIX = "\nAnswer the question using a single word or phrase."


def _jsonl(path, rows, newline="\n"):
    path.write_text("".join(json.dumps(r) + newline for r in rows), newline="")
    return path


def _answers(path, texts):
    return _jsonl(path, [{"question_id": q, "prompt": "p", "text": t} for q, t in texts.items()])


def _coco(path, labels, first_image=0):
    """A POPE ``coco_pope_*.json`` (JSON lines, ids from 1)."""
    rows = [
        {
            "question_id": i + 1,
            "image": f"im{first_image + i}.jpg",
            "text": f"Is there a thing{first_image + i} in the image?",
            "label": label,
        }
        for i, label in enumerate(labels)
    ]
    return _jsonl(path, rows)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No.", "no"),  # first sentence "No"
        ("No, there is not.", "no"),  # comma deleted: words "No", "there", ...
        ("Yes, there is a dog.", "yes"),
        ("There is no dog in the image.", "no"),
        ("I do not see one", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("", "yes"),  # anything without a no-word is yes
        ("NO", "yes"),  # exact words only: LLaVA's quirk, kept
        ("Not", "yes"),  # "Not" is not in (No, not, no)
        ("no!", "yes"),  # "!" stays attached
        ("No\nThere is", "yes"),  # split on " " only: the word is "No\nThere"
    ],
)
def test_parse_like_llava(text, parsed):
    assert parse_yes_no(text) == parsed


def test_metrics_by_hand():
    pairs = [("yes", "yes")] * 3 + [("yes", "no")] + [("no", "no")] * 4 + [("no", "yes")] * 2
    m = pope_metrics(pairs)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 4, 2)
    assert m.accuracy == pytest.approx(70.0)  # (3 + 4) / 10
    assert m.precision == pytest.approx(75.0)  # 3 / (3 + 1)
    assert m.recall == pytest.approx(60.0)  # 3 / (3 + 2)
    assert m.f1 == pytest.approx(200 / 3)  # 2 * .75 * .6 / 1.35 = 2/3
    assert m.yes_ratio == pytest.approx(40.0)  # 4 predicted yes of 10


def test_no_positive_prediction_gives_zero_not_a_crash():
    m = pope_metrics([("no", "yes"), ("no", "no")])
    assert (m.precision, m.recall, m.f1, m.accuracy) == (0.0, 0.0, 0.0, 50.0)


def test_answers_match_by_id_not_line_order(tmp_path):
    questions = load_questions([_coco(tmp_path / "coco_pope_random.json", ["yes", "no"] * 4)])
    texts = {q: ("Yes" if q % 2 else "No") for q in range(1, 9)}  # all right
    shuffled = dict(random.Random(0).sample(sorted(texts.items()), k=8))
    assert list(shuffled) != sorted(shuffled)  # line order differs from question order
    answers = read_answers(_answers(tmp_path / "a.jsonl", shuffled))
    report = PopeTask().score(questions, [answers], answers_paths=["a.jsonl"])
    assert list(report.categories) == ["random"]
    assert report.categories["random"].accuracy == 100.0
    assert report.mean["f1"] == 100.0


@pytest.fixture
def llava_layout(tmp_path):
    """LLaVA's layout: llava_pope_test.jsonl (unique ids, categories, no labels) + coco/ labels."""
    coco = tmp_path / "coco"
    coco.mkdir()
    _coco(coco / "coco_pope_adversarial.json", ["yes", "no"], first_image=0)
    _coco(coco / "coco_pope_random.json", ["no", "yes"], first_image=10)
    rows = [  # categories interleaved: pairing is by position within a category
        (101, "adversarial", 0),
        (201, "random", 10),
        (102, "adversarial", 1),
        (202, "random", 11),
    ]
    llava = _jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {
                "question_id": q,
                "image": f"im{i}.jpg",
                "category": c,
                "text": f"Is there a thing{i} in the image?{SUFFIX}",
            }
            for q, c, i in rows
        ],
    )
    return llava, coco


def test_llava_question_file_with_label_folder(llava_layout, tmp_path):
    llava, coco = llava_layout
    questions = load_questions([llava], label_dir=coco)
    answers = _answers(
        tmp_path / "a.jsonl",
        {101: "Yes", 102: "Yes", 201: "No", 202: "No, there is not."},
    )
    report = PopeTask().score(questions, [read_answers(answers)], answers_paths=[answers])
    adv, rnd = report.categories["adversarial"], report.categories["random"]
    # adversarial: 101 yes/yes -> TP, 102 yes/no -> FP
    assert (adv.tp, adv.fp, adv.tn, adv.fn) == (1, 1, 0, 0)
    assert (adv.accuracy, adv.precision, adv.recall, adv.yes_ratio) == (50.0, 50.0, 100.0, 100.0)
    assert adv.f1 == pytest.approx(200 / 3)  # 2 * .5 * 1 / 1.5
    # random: 201 no/no -> TN, 202 no/yes -> FN; precision 0/0 -> 0
    assert (rnd.tp, rnd.fp, rnd.tn, rnd.fn) == (0, 0, 1, 1)
    assert (rnd.accuracy, rnd.precision, rnd.recall, rnd.f1) == (50.0, 0.0, 0.0, 0.0)
    assert report.mean == pytest.approx(
        {"accuracy": 50.0, "precision": 25.0, "recall": 50.0, "f1": 100 / 3, "yes_ratio": 50.0}
    )
    assert report.num_questions == 4


def test_label_pairing_is_checked(llava_layout):
    llava, coco = llava_layout
    rows = [json.loads(line) for line in llava.read_text().splitlines()]
    rows[0]["text"] = "Is there a zebra in the image?"
    _jsonl(llava, rows)
    with pytest.raises(
        EvalInputError,
        match=r"llava_pope_test.jsonl line 1 does not match .*"
        r"coco_pope_adversarial.json line 1 \(text",
    ):
        load_questions([llava], label_dir=coco)


def test_unlabeled_questions_need_the_label_folder(llava_layout):
    llava, _ = llava_layout
    with pytest.raises(EvalInputError, match=r"line 1: missing field 'label'; .*--question-dir"):
        load_questions([llava])


def test_one_answers_file_per_category_file(tmp_path):
    adv = _coco(tmp_path / "coco_pope_adversarial.json", ["yes", "no"])
    rnd = _coco(tmp_path / "coco_pope_random.json", ["yes", "yes"])
    questions = load_questions([adv, rnd], num_answer_files=2)
    a1 = _answers(tmp_path / "a1.jsonl", {1: "Yes", 2: "Yes"})  # TP, FP
    a2 = _answers(tmp_path / "a2.jsonl", {2: "No", 1: "Yes"})  # FN, TP
    report = PopeTask().score(
        questions, [read_answers(a1), read_answers(a2)], answers_paths=[a1, a2]
    )
    assert report.categories["adversarial"].accuracy == 50.0
    assert report.categories["random"].recall == 50.0
    assert report.categories["random"].precision == 100.0


def test_colliding_ids_need_separate_answers_files(tmp_path):
    adv = _coco(tmp_path / "coco_pope_adversarial.json", ["yes"])
    rnd = _coco(tmp_path / "coco_pope_random.json", ["no"])
    with pytest.raises(
        EvalInputError,
        match=r"coco_pope_random.json line 1: duplicate "
        r"question_id 1 \(also \S*coco_pope_adversarial.json line 1\)",
    ):
        load_questions([adv, rnd])
    with pytest.raises(EvalInputError, match="3 answers files for 2 question files"):
        load_questions([adv, rnd], num_answer_files=3)


def test_question_dir_alone_reads_sorted_files_with_crlf(tmp_path):
    rows = [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}]
    _jsonl(tmp_path / "coco_pope_random.json", rows, newline="\r\n")  # POPE's files are CRLF
    _jsonl(tmp_path / "coco_pope_popular.json", [dict(rows[0], label="yes")], newline="\r\n")
    questions = load_questions([], label_dir=tmp_path, num_answer_files=2)
    assert [(q.category, q.label, q.pool) for q in questions] == [
        ("popular", "yes", 0),
        ("random", "no", 1),
    ]


def test_missing_and_unknown_answers(tmp_path):
    questions = load_questions([_coco(tmp_path / "coco_pope_random.json", ["yes", "no"])])
    missing = _answers(tmp_path / "m.jsonl", {1: "Yes"})
    with pytest.raises(EvalInputError, match=r"m.jsonl: 1 question\(s\) .* e\.g\. 2"):
        PopeTask().score(questions, [read_answers(missing)], answers_paths=[missing])
    unknown = _answers(tmp_path / "u.jsonl", {1: "Yes", 2: "No", 3: "No"})
    with pytest.raises(EvalInputError, match=r"u.jsonl line 3: question_id 3 is not in"):
        PopeTask().score(questions, [read_answers(unknown)], answers_paths=[unknown])


def test_bad_label_is_an_error(tmp_path):
    path = _coco(tmp_path / "coco_pope_random.json", ["yes", "maybe"])
    with pytest.raises(EvalInputError, match=r"line 2: label must be 'yes' or 'no', got 'maybe'"):
        load_questions([path])
