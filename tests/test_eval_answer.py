"""`vitsplit-vlm eval answer` / `eval merge`: batched greedy answers equal batch-1 answers,
chunks merge to the unsharded file, answer files score through the scorers, bad inputs fail with
one clear error and leave no output."""

from __future__ import annotations

import json

import pytest

from vitsplit_vlm.cli import main
from vitsplit_vlm.eval import mmbench
from vitsplit_vlm.eval.answer import get_chunk
from vitsplit_vlm.eval.io import read_jsonl
from vitsplit_vlm.playground.evalsets import write_evalsets

TOKENS = ["--max-new-tokens", "3", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(sharp_vlm_dir):
    return sharp_vlm_dir


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_evalsets(
        tmp_path_factory.mktemp("eval"), vqav2_scenes=6, pope_images=4, mmbench_scenes=6,
        photos=True,
    )  # fmt: skip


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _answer(capsys, model_dir, task, questions, answers, *extra, images=None) -> dict:
    argv = ["answer", "--task", task, "--model-path", model_dir, "--question-file", questions,
            "--answers-file", answers, "--conv-mode", "vicuna_v1", "--temperature", "0", *TOKENS]  # fmt: skip
    if images is not None:
        argv += ["--image-folder", images]
    code, summary, err = _run(capsys, *argv, *extra)
    assert code == 0, err
    return summary


def _lines(path) -> list[dict]:
    return [r.data for r in read_jsonl(path)]


def _with_texts(path, texts, out) -> str:
    rows = _lines(path)
    out.write_text(
        "".join(json.dumps({**r, "text": t}) + "\n" for r, t in zip(rows, texts, strict=True))
    )
    return str(out)


@pytest.fixture(scope="module")
def pope_full(model_dir, sets, tmp_path_factory):
    """POPE answered unsharded at batch size 1 (the reference file)."""
    out = tmp_path_factory.mktemp("pope") / "full.jsonl"
    code = main(
        ["eval", "answer", "--task", "pope", "--model-path", str(model_dir), "--question-file",
         str(sets.pope_questions), "--image-folder", str(sets.pope_images), "--answers-file",
         str(out), "--batch-size", "1", *TOKENS]
    )  # fmt: skip
    assert code == 0
    return out


def test_batched_greedy_answers_equal_batch_one(model_dir, sets):
    from PIL import Image

    from vitsplit_vlm.vlm.engine import GenerationSettings, Request, VLMEngine

    engine = VLMEngine.from_pretrained(model_dir, device="cpu")
    questions = _lines(sets.vqav2_questions)[-10:]  # scenes and (non-square) photos
    requests = [
        Request(Image.open(sets.vqav2_images / q["image"]), [("USER", q["text"])])
        for q in questions
    ]
    settings = GenerationSettings(max_new_tokens=8, extra={"min_new_tokens": 3})
    alone = [engine.generate([r], settings)[0] for r in requests]
    batched = list(engine.generate_batches(requests, settings, batch_size=4))
    assert batched == alone
    assert all(alone) and len(set(alone)) > 3  # non-empty, and they differ between questions


def test_chunks_merge_to_the_unsharded_file(model_dir, sets, pope_full, tmp_path, capsys):
    chunks = []
    for k in range(3):
        chunks.append(tmp_path / f"3_{k}.jsonl")
        summary = _answer(
            capsys, model_dir, "pope", sets.pope_questions, chunks[-1], "--batch-size", "5",
            "--num-chunks", "3", "--chunk-idx", k, images=sets.pope_images,
        )  # fmt: skip
        assert summary["chunk"] == [k, 3]
    merged = tmp_path / "merge.jsonl"
    code, summary, err = _run(
        capsys, "merge", "--inputs", *chunks, "--questions", sets.pope_questions, "--out", merged
    )
    assert code == 0, err
    assert summary["num_answers"] == 72
    assert merged.read_bytes() == pope_full.read_bytes()  # same answers, ids and order
    ids = [r["question_id"] for r in _lines(merged)]
    assert sorted(ids) == list(range(1, 73))


def test_llava_chunking():
    assert [len(get_chunk(range(10), 4, k)) for k in range(4)] == [3, 3, 3, 1]
    assert [len(get_chunk(range(9), 4, k)) for k in range(4)] == [3, 3, 3, 0]  # LLaVA: IndexError
    assert sum((get_chunk(list(range(7)), 3, k) for k in range(3)), []) == list(range(7))


def test_pope_answers_score_and_ground_truth_scores_100(sets, pope_full, tmp_path, capsys):
    scorer = [
        "score-pope",
        "--questions",
        sets.pope_questions,
        "--question-dir",
        sets.pope_annotations,
    ]
    code, report, err = _run(capsys, *scorer, "--answers", pope_full)
    assert code == 0, err
    assert report["num_questions"] == 72
    line = _lines(pope_full)[0]
    assert list(line) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert line["prompt"].endswith("Answer the question using a single word or phrase.")
    labels = [
        r.data["label"]
        for c in ("adversarial", "popular", "random")
        for r in read_jsonl(sets.pope_annotations / f"shapes_pope_{c}.json")
    ]
    truth = _with_texts(
        pope_full, [f"{label.capitalize()}." for label in labels], tmp_path / "gt.jsonl"
    )
    code, report, err = _run(capsys, *scorer, "--answers", truth)
    assert code == 0, err
    assert {c: m["accuracy"] for c, m in report["categories"].items()} == {
        "adversarial": 100.0, "popular": 100.0, "random": 100.0
    }  # fmt: skip


def test_vqav2_answers_score_and_ground_truth_scores_100(model_dir, sets, tmp_path, capsys):
    answers = tmp_path / "vqa.jsonl"
    _answer(capsys, model_dir, "vqav2", sets.vqav2_questions, answers, "--batch-size", "8",
            images=sets.vqav2_images)  # fmt: skip
    scorer = [
        "score-vqav2",
        "--annotations",
        sets.vqav2_annotations,
        "--questions",
        sets.vqav2_questions,
    ]
    code, report, err = _run(capsys, *scorer, "--answers", answers)
    assert code == 0, err
    assert 0.0 <= report["accuracy"] <= 100.0
    annotations = json.loads(sets.vqav2_annotations.read_text())["annotations"]
    truth = _with_texts(
        answers, [a["multiple_choice_answer"] for a in annotations], tmp_path / "gt.jsonl"
    )
    code, report, err = _run(capsys, *scorer, "--answers", truth)
    assert code == 0, err
    assert report["accuracy"] == pytest.approx(100.0)
    code, summary, err = _run(capsys, "convert-vqav2", "--answers", truth, "--questions",
                              sets.vqav2_questions, "--out", tmp_path / "upload.json")  # fmt: skip
    assert code == 0 and summary["num_missing"] == 0, err


def test_mmbench_all_rounds_as_llava_and_the_scorer_expect(model_dir, sets, tmp_path, capsys):
    answers = tmp_path / "mm.jsonl"
    summary = _answer(capsys, model_dir, "mmbench", sets.mmbench_tsv, answers, "--all-rounds",
                      "--single-pred-prompt", "--batch-size", "8")  # fmt: skip
    questions = {q.index: q for q in mmbench.load_questions(sets.mmbench_tsv)}
    lines = _lines(answers)
    assert summary["num_answers"] == len(lines) == sum(len(q.options) for q in questions.values())
    keys = ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id",
            "model_id", "metadata"]  # fmt: skip
    assert list(lines[0]) == keys  # LLaVA's model_vqa_mmbench fields, in its order
    for line in lines:
        question, r = questions[line["question_id"]], line["round_id"]
        assert line["options"] == list(question.choices(r).values())
        letters = list("ABCD"[: len(question.options)])
        assert line["option_char"] == letters[r:] + letters[:r]
        assert line["prompt"].endswith(f"{letters[-1]}. {line['options'][-1]}")  # no instruction
    code, report, err = _run(
        capsys, "score-mmbench", "--answers", answers, "--tsv", sets.mmbench_tsv
    )
    assert code == 0 and report["all_rounds"], err
    truth = _with_texts(
        answers,
        [questions[x["question_id"]].answer_at(x["round_id"]) for x in lines],
        tmp_path / "gt.jsonl",
    )
    code, report, err = _run(capsys, "score-mmbench", "--answers", truth, "--tsv", sets.mmbench_tsv)
    assert code == 0, err
    assert (report["circular_accuracy"], report["vanilla_accuracy"]) == (100.0, 100.0)


# --------------------------------------------------------------------------- bad inputs


def _bad(capsys, argv, *needles) -> None:
    """Exit status 2 and one error line (after any progress bars), naming every needle."""
    code, _, err = _run(capsys, *argv)
    assert code == 2
    line = err.strip().split("\n")[-1]
    assert line.startswith("vitsplit-vlm eval ") and "error: " in line
    assert err.count("error: ") == 1
    for needle in needles:
        assert str(needle) in line, err


def _questions(path, rows) -> str:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_image_fails_before_loading_and_writes_nothing(model_dir, sets, tmp_path, capsys):
    questions = _questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "scene_00000.png", "text": "How many shapes are there?"},
        {"question_id": 2, "image": "nope.png", "text": "How many shapes are there?"},
    ])  # fmt: skip
    out = tmp_path / "out" / "a.jsonl"
    argv = ["answer", "--task", "vqav2", "--model-path", model_dir, "--question-file", questions,
            "--image-folder", sets.vqav2_images, "--answers-file", out, *TOKENS]  # fmt: skip
    _bad(capsys, argv, f"{questions} line 2", "question_id 2", sets.vqav2_images / "nope.png")
    assert not out.exists()


def test_corrupt_image_leaves_no_partial_answers(model_dir, sets, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "ok.png").write_bytes((sets.vqav2_images / "scene_00000.png").read_bytes())
    rows = [{"question_id": q, "image": "ok.png", "text": "What is it?"} for q in range(5)]
    rows.append({"question_id": 5, "image": "broken.png", "text": "What is it?"})
    out = tmp_path / "out" / "a.jsonl"
    argv = ["answer", "--task", "vqav2", "--model-path", model_dir, "--question-file",
            _questions(tmp_path / "q.jsonl", rows), "--image-folder", tmp_path,
            "--answers-file", out, "--batch-size", "2", *TOKENS]  # fmt: skip
    _bad(capsys, argv, "line 6", "question_id 5", "cannot read image")
    assert list((tmp_path / "out").iterdir()) == []  # no answers file, no temporary file


@pytest.mark.parametrize(
    "rows, extra, needles",
    [
        (['{"question_id": 1, "image": "a.png", "text": "x"}\n', "{oops\n"], [],
         ["line 2: malformed JSON"]),
        ([{"question_id": 1, "image": "a.png"}], [], ["line 1: missing field 'text'"]),
        ([{"question_id": 1, "image": "a.png", "text": "x"}] * 2, [],
         ["line 2: duplicate question_id 1"]),
        ([{"question_id": 1, "image": "a.png", "text": "x"}], ["--conv-mode", "plain"],
         ["--conv-mode 'plain'", "'vicuna_v1'"]),
        ([{"question_id": 1, "image": "a.png", "text": "x"}],
         ["--num-chunks", "2", "--chunk-idx", "2"], ["--chunk-idx"]),
        ([{"question_id": 1, "image": "a.png", "text": "x"}], ["--all-rounds"], ["--all-rounds"]),
    ],
)  # fmt: skip
def test_bad_question_files_and_flags(model_dir, tmp_path, capsys, rows, extra, needles):
    out = tmp_path / "a.jsonl"
    argv = ["answer", "--task", "pope", "--model-path", model_dir, "--question-file",
            _questions(tmp_path / "q.jsonl", rows), "--image-folder", tmp_path,
            "--answers-file", out, *extra]  # fmt: skip
    _bad(capsys, argv, *needles)
    assert not out.exists()


def test_model_folder_without_config(tmp_path, capsys):
    argv = ["answer", "--task", "pope", "--model-path", tmp_path, "--question-file", "q.jsonl",
            "--image-folder", tmp_path, "--answers-file", tmp_path / "a.jsonl"]  # fmt: skip
    _bad(capsys, argv, "no config.json")


def test_bad_mmbench_image(model_dir, sets, tmp_path, capsys):
    lines = sets.mmbench_tsv.read_text().split("\n")
    header = lines[0].split("\t")
    cells = lines[1].split("\t")
    cells[header.index("image")] = "not base64!"
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("\n".join([lines[0], "\t".join(cells)]) + "\n")
    argv = ["answer", "--task", "mmbench", "--model-path", model_dir, "--question-file", tsv,
            "--answers-file", tmp_path / "a.jsonl", *TOKENS]  # fmt: skip
    _bad(capsys, argv, f"{tsv} line 2 (index 0)", "base64")
    assert not (tmp_path / "a.jsonl").exists()


def test_merge_rejects_duplicates_missing_and_unknown_ids(sets, tmp_path, capsys):
    def answers(name, ids):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"question_id": q, "text": "yes"}) + "\n" for q in ids))
        return path

    a, b = answers("a.jsonl", range(1, 40)), answers("b.jsonl", range(39, 73))
    _bad(capsys, ["merge", "--inputs", a, b, "--out", tmp_path / "m.jsonl"],
         f"{b} line 1: duplicate question_id 39", f"{a} line 39")  # fmt: skip
    b = answers("b.jsonl", range(40, 72))
    _bad(capsys, ["merge", "--inputs", a, b, "--questions", sets.pope_questions, "--out",
                  tmp_path / "m.jsonl"], "1 question(s)", "question_id 72")  # fmt: skip
    c = answers("c.jsonl", [72, 999])
    _bad(capsys, ["merge", "--inputs", a, b, c, "--questions", sets.pope_questions, "--out",
                  tmp_path / "m.jsonl"], f"{c} line 2: question_id 999 is not in")  # fmt: skip
    assert not (tmp_path / "m.jsonl").exists()
    empty = tmp_path / "3_2.jsonl"  # a chunk past the end of the questions is empty
    empty.write_text("")
    c = answers("c.jsonl", [72])
    code, summary, err = _run(capsys, "merge", "--inputs", a, b, c, empty, "--questions",
                              sets.pope_questions, "--out", tmp_path / "m.jsonl")  # fmt: skip
    assert code == 0 and summary["num_answers"] == 72, err
