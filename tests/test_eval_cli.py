"""``vitsplit-vlm eval``: JSON on stdout, exit 2 with one error line on bad input, no partial
output files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vitsplit_vlm.cli import main
from vitsplit_vlm.eval import mmbench


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def vqa(tmp_path):
    annotations = {
        "annotations": [
            {
                "question_id": 1,
                "answer_type": "yes/no",
                "question_type": "is the",
                "answers": [{"answer": "yes", "answer_id": i} for i in range(10)],
            },
            {
                "question_id": 2,
                "answer_type": "number",
                "question_type": "how many",
                "answers": [
                    {"answer": a, "answer_id": i} for i, a in enumerate(["2", "2"] + ["3"] * 8)
                ],
            },
        ]
    }
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    answers = _jsonl(
        tmp_path / "a.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "two"}]
    )
    questions = _jsonl(tmp_path / "test.jsonl", [{"question_id": q} for q in (1, 2, 3)])
    return str(tmp_path / "ann.json"), answers, questions


def test_score_vqav2_prints_json(vqa, capsys):
    annotations, answers, _ = vqa
    assert main(["eval", "score-vqav2", "--answers", answers, "--annotations", annotations]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(80.0)  # (1.0 + 0.6) / 2: "two" matches 2 of 10
    assert report["per_answer_type"] == pytest.approx({"number": 60.0, "yes/no": 100.0})
    assert (report["num_questions"], report["protocol"]) == (2, "llava")


def test_bad_input_exits_2_with_one_line(vqa, tmp_path, capsys):
    annotations, _, _ = vqa
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2, text}\n')
    assert main(["eval", "score-vqav2", "--answers", str(bad), "--annotations", annotations]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vitsplit-vlm eval score-vqav2: error: ")
    assert f"{bad} line 2: malformed JSON" in captured.err
    assert captured.err.count("\n") == 1


def test_convert_vqav2_writes_and_warns(vqa, tmp_path, capsys):
    _, answers, questions = vqa
    out = tmp_path / "upload" / "ckpt.json"
    args = ["--answers", answers, "--questions", questions, "--out", str(out)]
    assert main(["eval", "convert-vqav2", *args]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "out": str(out),
        "num_questions": 3,
        "num_answered": 2,
        "num_missing": 1,
    }
    assert '1 of 3 questions have no answer; written as ""' in captured.err
    assert json.loads(out.read_text())[2] == {"question_id": 3, "answer": ""}


def test_failed_convert_writes_nothing(vqa, tmp_path, capsys):
    _, _, questions = vqa
    answers = _jsonl(
        tmp_path / "x.jsonl", [{"question_id": 1, "text": "a"}, {"question_id": 42, "text": "b"}]
    )
    out = tmp_path / "out.json"
    out.write_text("old upload")
    assert (
        main(
            [
                "eval",
                "convert-vqav2",
                "--answers",
                answers,
                "--questions",
                questions,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "x.jsonl line 2: question_id 42 is not in" in capsys.readouterr().err
    assert out.read_text() == "old upload"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_score_pope_from_label_folder(tmp_path, capsys):
    coco = tmp_path / "coco"
    coco.mkdir()
    _jsonl(
        coco / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}],
    )
    llava = _jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {
                "question_id": 7,
                "image": "a.jpg",
                "text": "Is there a cat?\nAnswer briefly.",
                "category": "random",
            }
        ],
    )
    answers = _jsonl(tmp_path / "a.jsonl", [{"question_id": 7, "text": "Yes, there is."}])
    args = ["--answers", answers, "--questions", llava, "--question-dir", str(coco)]
    assert main(["eval", "score-pope", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["categories"]["random"]["tp"] == 1
    assert report["mean"]["accuracy"] == 100.0


def test_score_and_convert_mmbench(tmp_path, capsys):
    tsv = tmp_path / "mmbench_dev.tsv"
    tsv.write_text(
        "index\tquestion\thint\tA\tB\tanswer\tcategory\timage\tl2-category\tsplit\n"
        "0\tWhich?\t\tcat\tdog\tB\tattr\timg\tpercep\tdev\n"
        "1000000\tWhich?\t\tdog\tcat\tA\tattr\timg\tpercep\tdev\n"
    )
    answers = _jsonl(
        tmp_path / "a.jsonl",
        [{"question_id": 0, "round_id": 0, "text": "B"}, {"question_id": 1000000, "text": "cat"}],
    )
    assert main(["eval", "score-mmbench", "--answers", answers, "--tsv", str(tsv)]) == 0
    report = json.loads(capsys.readouterr().out)
    # the copy's answer "cat" is option B there, the right one is A: the question fails
    assert (report["circular_accuracy"], report["vanilla_accuracy"]) == (0.0, 100.0)
    assert report["unmatched"] == 0
    out = tmp_path / "sub.csv"
    args = ["--answers", answers, "--tsv", str(tsv), "--out", str(out)]
    assert main(["eval", "convert-mmbench", *args]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "csv"
    assert out.read_text().splitlines()[0] == "index,question,A,B,answer,split,prediction"


def test_xlsx_without_openpyxl_fails_before_reading(tmp_path, monkeypatch, capsys):
    real = mmbench.importlib.util.find_spec
    monkeypatch.setattr(
        mmbench.importlib.util, "find_spec", lambda name: None if name == "openpyxl" else real(name)
    )
    out = tmp_path / "sub.xlsx"
    args = ["--answers", "missing.jsonl", "--tsv", "missing.tsv", "--out", str(out)]
    assert main(["eval", "convert-mmbench", *args]) == 2
    assert "writing .xlsx needs openpyxl" in capsys.readouterr().err
    assert not out.exists()


def test_entry_point_subprocess(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("index\tquestion\tA\tB\tcategory\n0\tq\ta\tb\tc\n")  # no 'answer' column
    answers = _jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "A"}])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitsplit_vlm.cli",
            "eval",
            "score-mmbench",
            "--answers",
            answers,
            "--tsv",
            str(tsv),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "t.tsv: missing column(s) 'answer'" in done.stderr


def test_action_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval"])
    assert exit_.value.code == 2
