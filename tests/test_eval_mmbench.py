"""MMBench: OpenCompass answer matching, circular grouping (TSV copies and LLaVA --all-rounds),
prompts, the TSV reader against pandas, and the submission table."""

from __future__ import annotations

import csv
import json

import pytest

from vitsplit_vlm.eval import mmbench
from vitsplit_vlm.eval.io import EvalInputError, read_answers, read_tsv
from vitsplit_vlm.eval.mmbench import (
    MMBenchTask,
    load_questions,
    match_answer,
    match_letter,
    match_option_text,
    write_submission,
)

HEADER = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def _tsv(path, rows, header=HEADER):
    """Rows as dicts; absent cells are empty (NaN for pandas)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[str(r.get(h, "")) for h in header] for r in rows])
    return path


def _row(index, options, answer, category="attr", l2="perception", question="Which?", hint=""):
    cells = dict(zip("ABCD", options, strict=False))
    return {
        "index": index,
        "question": question,
        "hint": hint,
        **cells,
        "answer": answer,
        "category": category,
        "image": "aGVsbG8=",
        "source": "s",
        "l2-category": l2,
        "comment": "",
        "split": "dev",
    }


def _answers(path, rows):
    """``rows``: (question_id, round_id, text) as LLaVA's model_vqa_mmbench writes them."""
    lines = [
        {
            "question_id": q,
            "round_id": r,
            "prompt": "p",
            "text": t,
            "answer_id": "x",
            "model_id": "m",
            "metadata": {},
        }
        for q, r, t in rows
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B.", "B"),
        ("(C)", "C"),
        ("D)", "D"),
        ("(A).", "A"),
        (":C", "C"),
        ("The answer is B", "B"),  # one bare letter, no "A" token
        ("Answer: (B).", "B"),
        ("B) dog", "B"),
        ("E", "E"),  # E is looked for (OpenCompass), and is then simply wrong
        ("A cat is on the mat", None),  # "A" in a long answer may be an article
        ("A and B", None),  # two bare letters
        ("A. or B.", None),  # two letters in the same form
        ("a", None),  # lower case is no letter
        ("", None),
    ],
)
def test_match_letter(text, letter):
    assert match_letter(text) == letter


def test_match_option_text():
    choices = {"A": "cat", "B": "dog"}
    assert match_option_text("It is a Dog.", choices) == "B"  # lower-cased substring
    assert match_option_text("cat or dog", choices) is None  # two options found
    assert match_option_text("cats", {"A": "cat", "B": "cats"}) is None  # "cat" is in "cats"
    # letters first, option text only when no letter rule applies
    assert match_answer("A cat is on the mat", choices) == "A"  # by text: "cat"
    assert match_answer("B", {"A": "B is here", "B": "x"}) == "B"
    assert match_answer("I have no idea", choices) is None


@pytest.fixture
def circular_tsv(tmp_path):
    rows = [
        _row(0, ["cat", "dog", "bird"], "B"),
        _row(1_000_000, ["dog", "bird", "cat"], "A"),  # rotated copies carry their own answer
        _row(2_000_000, ["bird", "cat", "dog"], "C"),
        _row(1, ["red", "blue"], "A", category="color"),
        _row(1_000_001, ["blue", "red"], "B", category="color"),
        _row(2, ["yes", "no", "maybe", "unsure"], "D", l2="reasoning"),
    ]
    return _tsv(tmp_path / "mmbench_dev.tsv", rows)


def test_circular_needs_every_copy_right(circular_tsv, tmp_path):
    answers = _answers(
        tmp_path / "a.jsonl",
        [
            (0, 0, "B"),
            (1_000_000, 0, "A."),
            (2_000_000, 0, "(C)"),  # group 0: all right
            (1, 0, "A"),
            (1_000_001, 0, "A"),  # group 1: the copy is wrong -> group fails
            (2, 0, "Hmm"),  # group 2: no rule matches -> unmatched, wrong
        ],
    )
    report = MMBenchTask().score(load_questions(circular_tsv), read_answers(answers, rounds=True))
    assert report.circular_accuracy == pytest.approx(100 / 3)  # groups: 0 right, 1 and 2 wrong
    assert report.vanilla_accuracy == pytest.approx(200 / 3)  # originals 0 and 1 right, 2 wrong
    assert report.per_category == pytest.approx({"attr": 50.0, "color": 0.0})  # attr: 0 ok, 2 not
    assert report.per_l2_category == pytest.approx({"perception": 50.0, "reasoning": 0.0})
    assert (report.unmatched, report.num_questions, report.num_answers) == (1, 3, 6)
    assert report.all_rounds is False


def test_llava_all_rounds_rotation(tmp_path):
    tsv = _tsv(
        tmp_path / "t.tsv", [_row(0, ["cat", "dog", "bird"], "B"), _row(1, ["red", "blue"], "A")]
    )
    questions = {q.index: q for q in load_questions(tsv)}
    # round r shows option (i + r) mod n under letter i, so "dog" moves B -> A -> C
    assert questions[0].choices(1) == {"A": "dog", "B": "bird", "C": "cat"}
    assert [questions[0].answer_at(r) for r in range(3)] == ["B", "A", "C"]
    assert [questions[1].answer_at(r) for r in range(2)] == ["A", "B"]
    right = [(0, 0, "B"), (0, 1, "A"), (0, 2, "C"), (1, 0, "A"), (1, 1, "B")]
    answers = _answers(tmp_path / "a.jsonl", right[:4] + [(1, 1, "A")])  # last round wrong
    report = MMBenchTask().score(list(questions.values()), read_answers(answers, rounds=True))
    assert (report.circular_accuracy, report.vanilla_accuracy) == (50.0, 100.0)
    assert report.all_rounds is True
    # a model that always says "A" is right once in three rounds: circular accuracy 0
    always_a = _answers(tmp_path / "a2.jsonl", [(q, r, "A") for q, r, _ in right])
    report = MMBenchTask().score(list(questions.values()), read_answers(always_a, rounds=True))
    assert (report.circular_accuracy, report.vanilla_accuracy) == (0.0, 50.0)


def test_all_rounds_must_be_complete(tmp_path):
    tsv = _tsv(tmp_path / "t.tsv", [_row(0, ["cat", "dog"], "B"), _row(1, ["x", "y"], "A")])
    answers = _answers(tmp_path / "a.jsonl", [(0, 0, "B"), (0, 1, "A"), (1, 0, "A")])
    with pytest.raises(EvalInputError, match=r"a.jsonl: 1 question\(s\) .* e\.g\. 1 round 1"):
        MMBenchTask().score(
            load_questions(tsv), read_answers(answers, rounds=True), answers_path=answers
        )


def test_unknown_question_and_duplicate_round(circular_tsv, tmp_path):
    unknown = _answers(tmp_path / "u.jsonl", [(0, 0, "B"), (7, 0, "A")])
    with pytest.raises(EvalInputError, match=r"u.jsonl line 2: question_id 7 round_id 0 is not"):
        MMBenchTask().score(
            load_questions(circular_tsv), read_answers(unknown, rounds=True), answers_path=unknown
        )
    dup = _answers(tmp_path / "d.jsonl", [(0, 1, "B"), (0, 1, "A")])
    with pytest.raises(
        EvalInputError,
        match=r"line 2: duplicate question_id 0 round_id 1 "
        r"\(first at line 1\)",
    ):
        read_answers(dup, rounds=True)


def test_prompt_like_llava(tmp_path):
    tsv = _tsv(
        tmp_path / "t.tsv",
        [_row(0, ["cat", "dog", "bird"], "B", question="What animal?", hint="Look closely.")],
    )
    (question,) = load_questions(tsv)
    assert MMBenchTask().build_prompt(question, round_id=1) == (
        "Look closely.\nWhat animal?\nA. dog\nB. bird\nC. cat\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert MMBenchTask(lang="cn").build_prompt(question).endswith("C. bird\n请直接回答选项字母。")


def test_na_cells_end_the_options_as_pandas_and_llava_read_them(tmp_path):
    # pandas reads "None" and "" as NaN; LLaVA's get_options stops at the first NaN option
    tsv = _tsv(tmp_path / "t.tsv", [_row(0, ["yes", "no", "None", "maybe"], "A", hint="nan")])
    (question,) = load_questions(tsv)
    assert question.options == ("yes", "no")
    assert question.hint is None


def test_tsv_reader_agrees_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    text = (
        "index\tquestion\tA\tB\n"
        '1\t"say ""hi"", then\ttab"\tNA\t x \n'
        "\n"  # blank lines are skipped by both
        '2\t"two\nlines"\tplain "quote" inside\t\n'
    )
    path = tmp_path / "t.tsv"
    path.write_text(text)
    header, rows = read_tsv(path, required=["index"])
    frame = pd.read_table(path)
    assert header == list(frame.columns)
    for row, (_, expected) in zip(rows, frame.iterrows(), strict=True):
        for name in header[1:]:
            cell = row.cells[name]
            want = expected[name]
            assert (mmbench.is_missing(cell) and pd.isna(want)) or cell == want, (name, cell)
    assert [row.line for row in rows] == [2, 5]  # a quoted newline spans lines 4-5


def test_bad_tsv_inputs(tmp_path):
    no_answer = _tsv(
        tmp_path / "n.tsv", [_row(0, ["a", "b"], "A")], header=[h for h in HEADER if h != "answer"]
    )
    with pytest.raises(EvalInputError, match=r"n.tsv: missing column\(s\) 'answer'"):
        load_questions(no_answer)
    bad_letter = _tsv(tmp_path / "b.tsv", [_row(0, ["a", "b", "c"], "D")])
    with pytest.raises(EvalInputError, match=r"b.tsv line 2: index 0 has answer 'D', not one "):
        load_questions(bad_letter)
    dup = _tsv(tmp_path / "d.tsv", [_row(3, ["a", "b"], "A"), _row(3, ["a", "b"], "B")])
    with pytest.raises(EvalInputError, match=r"d.tsv line 3: duplicate index 3 \(first at line 2"):
        load_questions(dup)
    orphan = _tsv(tmp_path / "o.tsv", [_row(0, ["a", "b"], "A"), _row(1_000_005, ["a", "b"], "B")])
    with pytest.raises(EvalInputError, match=r"o.tsv line 3: index 1000005 is a rotated copy of 5"):
        load_questions(orphan)
    bad_index = _tsv(tmp_path / "i.tsv", [_row("x1", ["a", "b"], "A")])
    with pytest.raises(EvalInputError, match=r"i.tsv line 2: column 'index' must be an integer"):
        load_questions(bad_index)
    short = tmp_path / "s.tsv"
    short.write_text("index\tquestion\tA\tB\tanswer\tcategory\n0\tq\ta\tb\tA\n")
    with pytest.raises(EvalInputError, match=r"s.tsv line 2: 5 fields, header has 6"):
        load_questions(short)


def test_convert_to_tsv_like_llava(circular_tsv, tmp_path):
    answers = _answers(tmp_path / "a.jsonl", [(0, 0, "B"), (0, 1, "rotated"), (1, 0, "The A")])
    submission = MMBenchTask().convert(circular_tsv, read_answers(answers, rounds=True))
    # LLaVA: drop hint, category, source, image, comment, l2-category; "prediction" at column 6
    assert submission.header == [
        "index",
        "question",
        "A",
        "B",
        "C",
        "D",
        "prediction",
        "answer",
        "split",
    ]
    assert (submission.num_missing, submission.ignored_rounds) == (4, 1)
    out = tmp_path / "up" / "sub.tsv"
    write_submission(submission, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "\t".join(submission.header)
    assert lines[1] == "0\tWhich?\tcat\tdog\tbird\t\tB\tB\tdev"  # round 0 only; D empty
    assert lines[2] == "1000000\tWhich?\tdog\tbird\tcat\t\t\tA\tdev"  # no answer: empty
    assert lines[4] == "1\tWhich?\tred\tblue\t\t\tThe A\tA\tdev"


def test_convert_refuses_unknown_ids(circular_tsv, tmp_path):
    answers = _answers(tmp_path / "a.jsonl", [(0, 0, "B"), (9, 0, "A")])
    with pytest.raises(EvalInputError, match=r"line 2: question_id 9 is not in"):
        MMBenchTask().convert(circular_tsv, read_answers(answers, rounds=True))


def test_xlsx_needs_openpyxl(monkeypatch, tmp_path):
    real = mmbench.importlib.util.find_spec
    monkeypatch.setattr(
        mmbench.importlib.util, "find_spec", lambda name: None if name == "openpyxl" else real(name)
    )
    with pytest.raises(EvalInputError, match=r"sub.xlsx: writing .xlsx needs openpyxl"):
        mmbench.check_submission_path(tmp_path / "sub.xlsx")
    with pytest.raises(EvalInputError, match=r"must end in .xlsx, .tsv, .csv"):
        mmbench.check_submission_path(tmp_path / "sub.json")


def test_xlsx_reads_back(circular_tsv, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    answers = _answers(tmp_path / "a.jsonl", [(0, 0, "B\x01")])  # a control char xlsx refuses
    submission = MMBenchTask().convert(circular_tsv, read_answers(answers, rounds=True))
    write_submission(submission, tmp_path / "sub.xlsx")
    sheet = openpyxl.load_workbook(tmp_path / "sub.xlsx").active
    rows = list(sheet.iter_rows(values_only=True))
    assert list(rows[0]) == submission.header
    assert list(rows[1]) == [0, "Which?", "cat", "dog", "bird", None, "B", "B", "dev"]
    assert rows[2][0] == 1_000_000  # index stays a number (OpenCompass compares it to 1e6)
