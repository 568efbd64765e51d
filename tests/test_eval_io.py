"""Strict readers and the atomic writer: each bad input is one error naming file, line, column."""

from __future__ import annotations

import json

import pytest

from vitsplit_vlm.eval.io import (
    EvalInputError,
    atomic_output,
    read_answers,
    read_jsonl,
    read_records,
    read_tsv,
)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n\n{"question_id": 2, "text": "b"\n')
    with pytest.raises(EvalInputError, match=r"answers.jsonl line 3: malformed JSON: Expecting"):
        read_jsonl(path)


def test_jsonl_line_must_be_an_object(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(EvalInputError, match=r"a.jsonl line 1: expected a JSON object, got list"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "a"}'], r"line 1: missing field 'question_id'"),
        (['{"question_id": 1}'], r"line 1: missing field 'text'"),
        (['{"question_id": 1, "text": null}'], r"field 'text' must be str, got None"),
        (['{"question_id": true, "text": "a"}'], r"'question_id' must be int or str, got True"),
        (['{"question_id": 1.5, "text": "a"}'], r"'question_id' must be int or str, got 1.5"),
        (['{"question_id": 1, "text": "a", "round_id": -1}'], r"round_id must be >= 0"),
        (
            [
                '{"question_id": 1, "text": "a"}',
                '{"question_id": 2, "text": "b"}',
                '{"question_id": 1, "text": "c"}',
            ],
            r"a.jsonl line 3: duplicate question_id 1 \(first at line 1\)",
        ),
    ],
)
def test_bad_answer_lines(tmp_path, lines, message):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalInputError, match=message):
        read_answers(path)


def test_ids_keep_their_json_type(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": "1", "text": "b"}\n')
    assert sorted(map(repr, read_answers(path))) == ["'1'", "1"]


def test_records_from_documents_and_lines(tmp_path):
    official = tmp_path / "q.json"
    official.write_text(json.dumps({"info": {}, "questions": [{"question_id": 5}]}, indent=2))
    array = tmp_path / "arr.json"
    array.write_text('[{"question_id": 6}, {"question_id": 7}]')
    one_line = tmp_path / "one.json"
    one_line.write_text('{"question_id": 8, "label": "yes"}\r\n')
    lines = tmp_path / "coco_pope_random.json"  # POPE: JSON lines under a .json name
    lines.write_text('{"question_id": 1}\r\n{"question_id": 2}\r\n')
    assert [
        (r.data["question_id"], r.where) for r in read_records(official, list_key="questions")
    ] == [(5, "questions[0]")]
    assert [r.where for r in read_records(array)] == ["[0]", "[1]"]
    assert [r.data for r in read_records(one_line)] == [{"question_id": 8, "label": "yes"}]
    assert [r.where for r in read_records(lines)] == ["line 1", "line 2"]


def test_broken_json_document_reports_its_line(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{\n  "annotations": [\n    {"question_id": 1,}\n  ]\n}\n')
    with pytest.raises(EvalInputError, match=r"ann.json line 3: malformed JSON"):
        read_records(path, list_key="annotations")


def test_unreadable_files(tmp_path):
    with pytest.raises(EvalInputError, match=r"nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(EvalInputError, match=r"is a directory"):
        read_jsonl(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(EvalInputError, match=r"latin.jsonl: not UTF-8 text"):
        read_jsonl(latin)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(EvalInputError, match=r"empty.jsonl: no records"):
        read_jsonl(empty)
    with pytest.raises(EvalInputError, match=r"empty.jsonl: no records"):
        read_records(empty)


def test_tsv_columns_and_fields(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("index\tA\n1\tx\n2\ty\tz\n")
    with pytest.raises(
        EvalInputError,
        match=r"t.tsv: missing column\(s\) 'B', 'answer' "
        r"\(header has: index, A\)",
    ):
        read_tsv(path, required=["index", "B", "answer"])
    with pytest.raises(EvalInputError, match=r"t.tsv line 3: 3 fields, header has 2"):
        read_tsv(path, required=["index"])


def test_tsv_keep_and_drop_columns(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("index\timage\tA\n1\t" + "x" * 300_000 + "\ty\n")  # over csv's default limit
    header, rows = read_tsv(path, required=["index"], drop=["image"])
    assert header == ["index", "image", "A"]
    assert rows[0].cells == {"index": "1", "A": "y"}
    _, rows = read_tsv(path, required=[], keep=["A"])
    assert rows[0].cells == {"A": "y"}


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("previous")
    with pytest.raises(RuntimeError), atomic_output(out) as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left
    with atomic_output(tmp_path / "new" / "out.json") as handle:
        handle.write("done")
    assert (tmp_path / "new" / "out.json").read_text() == "done"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["out.json"]
