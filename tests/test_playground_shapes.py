"""Shapes playground: pixels agree with the scene, answers with ground truth, LLaVA formats."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vitsplit_vlm.playground.shapes import (
    BACKGROUND,
    COLOURS,
    IMAGE_TOKEN,
    QTYPES,
    SHAPES,
    SHORT_ANSWER_PROMPT,
    Scene,
    all_questions,
    captions,
    corpus,
    sample_scene,
    write_llava_dataset,
)

# fraction of an object's box its colour fills: square 1, circle pi/4, triangle 1/2, cross 5/9
FILL = {
    "square": (0.99, 1.01),
    "circle": (0.70, 0.85),
    "triangle": (0.40, 0.56),
    "cross": (0.52, 0.64),
}


def _scenes(n: int, image_size: int = 112) -> list[Scene]:
    return [sample_scene(random.Random(f"test-{i}"), image_size=image_size) for i in range(n)]


@pytest.mark.parametrize("image_size", [112, 64])
def test_pixels_agree_with_scene(image_size):
    for scene in _scenes(60, image_size):
        pixels = np.asarray(scene.render())
        assert pixels.shape == (image_size, image_size, 3)
        assert 1 <= len(scene.objects) <= 4
        covered = np.zeros(pixels.shape[:2], bool)
        for obj in scene.objects:
            x, y = obj.centre
            assert tuple(pixels[y, x]) == COLOURS[obj.colour]
            x0, y0, x1, y1 = obj.bbox
            assert x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= image_size and y1 <= image_size
            assert not covered[y0:y1, x0:x1].any(), "objects overlap"
            covered[y0:y1, x0:x1] = True
            box = pixels[y0:y1, x0:x1]
            fill = (box == COLOURS[obj.colour]).all(-1).mean()
            lo, hi = FILL[obj.shape]
            assert lo <= fill <= hi, (obj, fill)
            assert (box == COLOURS[obj.colour]).all(-1).any(0)[[0, -1]].any()  # touches its box
        assert (pixels[~covered] == BACKGROUND).all()
        assert len({(o.shape, o.colour) for o in scene.objects}) == len(scene.objects)
        xs = [o.centre[0] for o in scene.objects]
        assert xs == sorted(xs)


def test_answers_follow_ground_truth():
    seen = Counter()
    for scene in _scenes(300):
        objs = scene.objects
        for qa in all_questions(scene, random.Random(0)):
            seen[qa.qtype] += 1
            assert qa.prompt == f"{qa.question}\n{SHORT_ANSWER_PROMPT}"
            assert re.fullmatch(r"[A-Z][a-z]*|\d", qa.answer), qa.answer
            if qa.qtype == "colour":
                shape = re.fullmatch(r"What colour is the (\w+)\?", qa.question)[1]
                (obj,) = [o for o in objs if o.shape == shape]
                assert qa.answer == obj.colour.capitalize()
            elif qa.qtype == "shape":
                colour = re.fullmatch(r"What shape is the (\w+) object\?", qa.question)[1]
                (obj,) = [o for o in objs if o.colour == colour]
                assert qa.answer == obj.shape.capitalize()
            elif qa.qtype == "count":
                assert qa.question == "How many shapes are there?"
                assert qa.answer == str(len(objs))
            elif qa.qtype == "position":
                colour, shape = re.fullmatch(
                    r"Is the (\w+) (\w+) on the left or the right\?", qa.question
                ).groups()
                left, right = objs
                assert left.bbox[2] <= right.bbox[0]
                asked = left if (left.colour, left.shape) == (colour, shape) else right
                assert (asked.colour, asked.shape) == (colour, shape)
                assert qa.answer == ("Left" if asked is left else "Right")
            else:
                colour, shape = re.fullmatch(r"Is there an? (\w+) (\w+)\?", qa.question).groups()
                assert colour in COLOURS and shape in SHAPES
                present = (shape, colour) in {(o.shape, o.colour) for o in objs}
                assert qa.answer == ("Yes" if present else "No")
    assert set(seen) == set(QTYPES)


def test_captions_list_objects_left_to_right():
    for scene in _scenes(50):
        names = [f"{o.colour} {o.shape}" for o in scene.objects]
        for cap in captions(scene):
            assert cap.endswith(".") and cap == cap.lower()
            positions = [cap.index(name) for name in names]
            assert positions == sorted(positions)


def _write(out: Path, **kw):
    args = dict(num_train=40, num_heldout=12, image_size=64, seed=0) | kw
    return write_llava_dataset(out, **args)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_llava_formats(tmp_path):
    paths = _write(tmp_path)
    pretrain = json.loads(paths.pretrain.read_text())
    assert len(pretrain) == 40
    for s in pretrain:
        assert set(s) == {"id", "image", "conversations"}
        assert (paths.image_folder / s["image"]).is_file()
        human, gpt = s["conversations"]
        assert human == {"from": "human", "value": "<image>\n"}
        assert gpt["from"] == "gpt" and gpt["value"].endswith(".")

    finetune = json.loads(paths.finetune.read_text())
    with_image = [s for s in finetune if "image" in s]
    text_only = [s for s in finetune if "image" not in s]
    assert len(finetune) == 4 * 40  # FINETUNE_PER_IMAGE samples per training image by default
    assert 0 < len(text_only) < 0.15 * len(finetune)
    assert len({s["id"] for s in finetune}) == len(finetune)
    for s in finetune:
        turns = s["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        values = [t["value"] for t in turns]
        if "image" in s:
            assert set(s) == {"id", "image", "conversations"} and len(turns) == 2
            assert values[0].startswith(f"{IMAGE_TOKEN}\n")
            assert values[0].endswith(SHORT_ANSWER_PROMPT)
            assert s["id"].startswith(s["image"].removesuffix(".png"))
        else:
            assert set(s) == {"id", "conversations"} and 1 <= len(turns) // 2 <= 3
        assert sum(v.count(IMAGE_TOKEN) for v in values) == ("image" in s)

    heldout = [json.loads(line) for line in paths.heldout.read_text().splitlines()]
    assert len({h["image"] for h in heldout}) == 12
    assert [h["question_id"] for h in heldout] == list(range(len(heldout)))
    for h in heldout:
        assert set(h) == {"question_id", "image", "text", "answer", "qtype"}
        assert h["qtype"] in QTYPES and h["text"].endswith(f"\n{SHORT_ANSWER_PROMPT}")
        assert IMAGE_TOKEN not in h["text"]
    presence = Counter(h["answer"] for h in heldout if h["qtype"] == "presence")
    assert presence == {"Yes": 6, "No": 6}

    train_images = {s["image"] for s in pretrain} | {s["image"] for s in with_image}
    assert not train_images & {h["image"] for h in heldout}
    digest = {
        name: hashlib.sha256((paths.image_folder / name).read_bytes()).hexdigest()
        for name in train_images | {h["image"] for h in heldout}
    }
    assert not {digest[n] for n in train_images} & {digest[h["image"]] for h in heldout}


def _qtype(question: str) -> str:
    for opening, qtype in [
        ("What colour", "colour"),
        ("What shape", "shape"),
        ("How many", "count"),
        ("Is there", "presence"),  # before "Is the"
        ("Is the", "position"),
    ]:
        if question.startswith(opening):
            return qtype
    raise AssertionError(question)  # fmt: skip


def test_stage2_reads_colour_and_shape_first(tmp_path):
    """finetune.json is in training order: the first half asks colour or shape only, the second
    every qtype; each answer is the ground truth of its image's scene."""
    paths = _write(tmp_path, num_train=60, num_finetune=2000)
    finetune = json.loads(paths.finetune.read_text())
    assert len(finetune) == 2000
    scenes = {
        s: sample_scene(random.Random(f"shapes-train-0-{i}"), image_size=64)
        for i, s in enumerate(f"train_{i:05d}.png" for i in range(60))
    }
    halves = [Counter(), Counter()]
    for k, s in enumerate(finetune):
        if "image" not in s:
            continue
        question = s["conversations"][0]["value"].removeprefix(f"{IMAGE_TOKEN}\n")
        qtype = _qtype(question)
        halves[k >= 1000][qtype] += 1
        if qtype == "count":  # the answer agrees with the image's own scene
            assert s["conversations"][1]["value"] == str(len(scenes[s["image"]].objects))
    assert set(halves[0]) == {"colour", "shape"}
    assert set(halves[1]) == set(QTYPES) and halves[1]["count"] > 0.1 * sum(halves[1].values())
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["counts"]["finetune_by_qtype"] == dict(sorted((halves[0] + halves[1]).items()))


def test_deterministic_by_seed(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    _write(tmp_path / "c", seed=1)
    a, b, c = (_tree(tmp_path / d) for d in "abc")
    assert a == b
    assert a["pretrain.json"] != c["pretrain.json"]
    assert a["images/train_00000.png"] != c["images/train_00000.png"]


def test_idempotent_and_rewrites_on_new_args(tmp_path):
    paths = _write(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    _write(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes

    _write(tmp_path, num_train=10, num_heldout=3)
    assert len(list(paths.image_folder.glob("train_*.png"))) == 10  # stale images removed
    assert len(list(paths.image_folder.glob("heldout_*.png"))) == 3
    assert json.loads(paths.manifest.read_text())["args"]["num_train"] == 10


def test_corpus_covers_generated_text():
    lines = corpus(200, seed=0)
    assert lines == corpus(200, seed=0) and lines != corpus(200, seed=1)
    text = "\n".join(lines)
    for word in [*SHAPES, *COLOURS, "Yes", "No", "Left", "Right", SHORT_ANSWER_PROMPT]:
        assert word in text
    for q in [
        "What colour is the",
        "What shape is the",
        "How many shapes are there?",
        "on the left or the right?",
        "Is there a",
    ]:
        assert q in text


def test_make_data_cli(tmp_path, capsys):
    from vitsplit_vlm.cli import main

    out = tmp_path / "shapes"
    argv = [
        "make-data",
        "shapes",
        "--out",
        str(out),
        "--num-train",
        "8",
        "--num-heldout",
        "4",
        "--image-size",
        "64",
        "--seed",
        "3",
        "--num-finetune",
        "50",
        "--max-objects",
        "2",
    ]
    assert main(argv) == 0
    assert str(out / "finetune.json") in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    args = {
        "num_train": 8, "num_heldout": 4, "image_size": 64, "seed": 3, "num_finetune": 50,
        "max_objects": 2,
    }  # fmt: skip
    assert manifest["args"] == args
    answers = {q["answer"] for q in map(json.loads, (out / "heldout.jsonl").read_text().splitlines())
               if q["qtype"] == "count"}  # fmt: skip
    assert answers <= {"1", "2"}
    assert len(json.loads((out / "finetune.json").read_text())) == 50
    assert len(list((out / "images").glob("*.png"))) == 12
    with pytest.raises(SystemExit):
        main(["make-data"])  # the dataset subcommand is required


def test_stage2_samples_stop_when_no_question_applies():
    """Two circles and two squares in red and blue: no shape and no colour is unique, so the
    reading phase has nothing to ask; it says so instead of looping."""
    from vitsplit_vlm.playground.shapes import SceneObject, stage2_samples

    pairs = [("circle", "red"), ("circle", "blue"), ("square", "red"), ("square", "blue")]
    objects = tuple(
        SceneObject(s, c, (25 * i, 0, 25 * i + 20, 20)) for i, (s, c) in enumerate(pairs)
    )
    with pytest.raises(ValueError, match="applies to any training image"):
        stage2_samples([Scene(112, objects)], 10, seed=0)
