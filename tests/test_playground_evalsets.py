"""`vitsplit-vlm make-data evalsets`: LLaVA's eval file formats, ground truth that scores 100
through the project's scorers, meaningful POPE negatives, determinism and idempotence."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter

import pytest
from PIL import Image

from vitsplit_vlm.cli import main
from vitsplit_vlm.eval import mmbench, pope, vqav2
from vitsplit_vlm.eval.io import read_jsonl
from vitsplit_vlm.playground import evalsets

SIZES = dict(vqav2_scenes=12, pope_images=8, mmbench_scenes=12, image_size=112, seed=0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return evalsets.write_evalsets(tmp_path_factory.mktemp("eval"), photos=True, **SIZES)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _score(capsys, *argv) -> dict:
    assert main(["eval", *argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_vqav2_files_follow_the_official_and_llava_schemas(sets):
    questions = [r.data for r in read_jsonl(sets.vqav2_questions)]
    assert set(questions[0]) == {"question_id", "image", "text", "category"}
    assert all(
        q["text"].endswith("\nAnswer the question using a single word or phrase.")
        for q in questions
    )
    assert all((sets.vqav2_images / q["image"]).is_file() for q in questions)
    assert any(q["image"].startswith("photo_") for q in questions)  # scikit-image photos
    annotations = json.loads(sets.vqav2_annotations.read_text())["annotations"]
    official = json.loads(sets.vqav2_official_questions.read_text())["questions"]
    assert [a["question_id"] for a in annotations] == [q["question_id"] for q in questions]
    assert [q["question_id"] for q in official] == [q["question_id"] for q in questions]
    for a in annotations:
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert a["answer_type"] in ("yes/no", "number", "other")
    assert vqav2.load_annotations(sets.vqav2_annotations)  # the scorer's strict reader


def test_vqav2_ground_truth_scores_100(sets, tmp_path, capsys):
    annotations = json.loads(sets.vqav2_annotations.read_text())["annotations"]
    answers = _jsonl(
        tmp_path / "gt.jsonl",
        [
            {"question_id": a["question_id"], "text": a["multiple_choice_answer"]}
            for a in annotations
        ],
    )
    report = _score(
        capsys, "score-vqav2", "--answers", answers, "--annotations", str(sets.vqav2_annotations),
        "--questions", str(sets.vqav2_questions),
    )  # fmt: skip
    assert report["accuracy"] == pytest.approx(100.0)
    assert report["num_questions"] == len(annotations)
    # the human answers disagree sometimes: a slip scores below 100
    slips = [a for a in annotations if len({x["answer"].lower() for x in a["answers"]}) > 1]
    assert slips


def test_pope_ground_truth_scores_100_per_category(sets, tmp_path, capsys):
    labels = {
        c: [r.data for r in read_jsonl(sets.pope_annotations / f"shapes_pope_{c}.json")]
        for c in evalsets.POPE_CATEGORIES
    }
    llava = [r.data for r in read_jsonl(sets.pope_questions)]
    assert [q["category"] for q in llava] == [c for c in labels for _ in labels[c]]
    gt = [row["label"] for c in labels for row in labels[c]]
    answers = _jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": q["question_id"], "text": t.capitalize()}
            for q, t in zip(llava, gt, strict=True)
        ],
    )
    report = _score(
        capsys, "score-pope", "--answers", answers, "--questions", str(sets.pope_questions),
        "--question-dir", str(sets.pope_annotations),
    )  # fmt: skip
    assert set(report["categories"]) == set(evalsets.POPE_CATEGORIES)
    for metrics in report["categories"].values():
        assert (metrics["accuracy"], metrics["f1"], metrics["tp"]) == (100.0, 100.0, 24)
    for rows in labels.values():  # each file: ids from 1, half yes, 6 questions per image
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert Counter(r["label"] for r in rows) == {"yes": 24, "no": 24}


def test_pope_adversarial_negatives_are_near_misses(sets):
    """Adversarial "no" objects co-occur with the image's objects: scenes mostly keep to one
    colour, so they share a colour with an object in the image far more often than random or
    popular negatives do."""

    def same_colour_rate(category: str) -> float:
        rows = [r.data for r in read_jsonl(sets.pope_annotations / f"shapes_pope_{category}.json")]
        by_image: dict[str, list[dict]] = {}
        for row in rows:
            by_image.setdefault(row["image"], []).append(row)
        hits = []
        for questions in by_image.values():
            colours = [q["text"].split()[3] for q in questions]  # "Is there a red circle ..."
            present = {c for c, q in zip(colours, questions, strict=True) if q["label"] == "yes"}
            hits += [
                c in present for c, q in zip(colours, questions, strict=True) if q["label"] == "no"
            ]
        return sum(hits) / len(hits)

    adversarial = same_colour_rate("adversarial")
    assert adversarial > same_colour_rate("popular")
    assert adversarial > 2 * same_colour_rate("random")


def test_pope_labels_match_the_rendered_scene(sets):
    """A "yes" object's colour is in the image; a "no" object is absent (checked on pixels of
    the first image: every colour asked about as present appears)."""
    from vitsplit_vlm.playground.shapes import COLOURS

    rows = [r.data for r in read_jsonl(sets.pope_annotations / "shapes_pope_random.json")]
    first = [r for r in rows if r["image"] == rows[0]["image"]]
    image = Image.open(sets.pope_images / rows[0]["image"]).convert("RGB")
    pixels = {image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    for row in first:
        if row["label"] == "yes":
            assert COLOURS[row["text"].split()[3]] in pixels


def test_mmbench_tsv_scores_100_with_every_rotation(sets, tmp_path, capsys):
    questions = mmbench.load_questions(sets.mmbench_tsv)
    assert {len(q.options) for q in questions} >= {2, 3, 4}
    assert Counter(q.answer for q in questions).keys() == {"A", "B", "C", "D"}
    assert any(q.hint for q in questions) and any(q.hint is None for q in questions)
    rows = [
        {"question_id": q.index, "round_id": r, "text": q.answer_at(r)}
        for q in questions
        for r in range(len(q.options))
    ]
    answers = _jsonl(tmp_path / "mm.jsonl", rows)
    report = _score(capsys, "score-mmbench", "--answers", answers, "--tsv", str(sets.mmbench_tsv))
    assert (report["circular_accuracy"], report["vanilla_accuracy"]) == (100.0, 100.0)
    assert report["all_rounds"] and report["unmatched"] == 0
    assert "image_topic" in report["per_category"]  # the photo questions


def test_mmbench_images_are_base64_pngs(sets):
    from vitsplit_vlm.eval.io import read_tsv

    header, rows = read_tsv(sets.mmbench_tsv, required=["index", "image"], keep={"image"})
    assert tuple(header) == evalsets.MMBENCH_COLUMNS
    image = Image.open(io.BytesIO(base64.b64decode(rows[0].cells["image"])))
    assert image.size == (112, 112)


def test_deterministic_and_idempotent(sets, tmp_path):
    again = evalsets.write_evalsets(tmp_path / "again", photos=True, **SIZES)
    for name in ("vqav2_questions", "vqav2_annotations", "pope_questions", "mmbench_tsv"):
        assert getattr(again, name).read_bytes() == getattr(sets, name).read_bytes(), name
    png = sorted(sets.pope_images.iterdir())[0].name
    assert (again.pope_images / png).read_bytes() == (sets.pope_images / png).read_bytes()
    stamp = again.mmbench_tsv.stat().st_mtime_ns
    evalsets.write_evalsets(tmp_path / "again", photos=True, **SIZES)
    assert again.mmbench_tsv.stat().st_mtime_ns == stamp  # up to date: nothing rewritten


def test_without_photos_and_cli(tmp_path, capsys):
    argv = ["make-data", "evalsets", "--out", str(tmp_path), "--photos", "no",
            "--vqav2-scenes", "3", "--pope-images", "2", "--mmbench-scenes", "3"]  # fmt: skip
    assert main(argv) == 0
    assert "llava_pope_test.jsonl" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["args"]["photos"] is False
    assert not any(p.name.startswith("photo_") for p in (tmp_path / "vqav2" / "images").iterdir())
    assert manifest["counts"]["mmbench_rows"] == 3
    assert pope.load_questions([tmp_path / "pope" / "llava_pope_test.jsonl"],
                               label_dir=tmp_path / "pope" / "annotations")  # fmt: skip
