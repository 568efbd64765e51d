"""Playground evaluation sets in the exact formats of LLaVA-1.5's VQAv2, POPE and MMBench files.

``write_evalsets(out)`` writes, from the project's synthetic scenes (`shapes`) plus a few real
photos shipped with scikit-image (when it is installed):

``vqav2/``
    ``images/``; ``llava_vqav2_playground.jsonl`` (LLaVA's question file: ``question_id, image,
    text`` with the short-answer instruction, ``category``); ``v2_OpenEnded_playground_questions
    .json`` and ``v2_playground_annotations.json`` (the official VQAv2 schemas, 10 human-style
    answers per question: the true answer in several surface forms, 7-10 times, plus 0-3 plausible
    slips); ``lmms_vqav2_playground.jsonl`` (the same questions with their answers, for lmms-eval).
    Scene questions are the `shapes` QA types; photo questions are written by hand.
``pope/``
    ``images/``; ``annotations/shapes_pope_{adversarial,popular,random}.json`` (POPE's files:
    JSON lines ``question_id`` from 1, ``image, text, label``) and ``llava_pope_test.jsonl``
    (LLaVA's: unique ids, the instruction, ``category``). Synthetic scenes only: POPE needs every
    object of an image annotated to ask about absent ones, which only a generated scene gives.
    Each image (3-4 objects) gets 3 "yes" questions (objects in it) and 3 "no" questions per
    category: *random* absent objects, the most *popular* absent objects (scene objects are drawn
    from a skewed distribution), and *adversarial* ones, the absent objects that co-occur most
    often with the image's objects (scenes mostly keep to one colour, so these are near misses:
    "a red square?" beside a red circle and a red cross).
``mmbench/``
    ``mmbench_playground.tsv``: MMBench dev's columns, base64 PNG images, 2-4 options A-D with
    the answer's position balanced, leaf and l2 categories, a hint on some rows.

Everything is deterministic (string-seeded ``random.Random``) and idempotent: ``manifest.json``
records the arguments and is written last; a second call with the same arguments returns at once.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vitsplit_vlm.playground.shapes import (
    COLOURS,
    QA,
    SHAPES,
    SHORT_ANSWER_PROMPT,
    Scene,
    SceneObject,
    all_questions,
    sample_scene,
)

GENERATOR_VERSION = 1
PHOTO_MAX_SIDE = 336  # LLaVA-1.5's input resolution
POPE_CATEGORIES = ("adversarial", "popular", "random")
POPE_PER_IMAGE = 3  # yes questions per image (and as many no questions per category)
PALETTE_PROBABILITY = 0.7  # a POPE scene object shares the first object's colour
MMBENCH_COLUMNS = (
    "index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
    "l2-category", "comment", "split",
)  # fmt: skip
# VQAv2 question types are the question's first words; the longest listed prefix wins.
QUESTION_TYPES = (
    "what colour is the", "what color is the", "what color are the", "what shape is the",
    "how many", "is there a", "is the", "is this", "is it", "what animal is", "what is the",
    "what is", "what",
)  # fmt: skip


@dataclass(frozen=True)
class PhotoQA:
    question: str
    answer: str  # canonical, lower case
    answer_type: str  # "yes/no", "number", "other"
    slips: tuple[str, ...] = ()  # plausible wrong answers some annotators give


@dataclass(frozen=True)
class Photo:
    """A scikit-image photo and what is in it (checked by eye)."""

    file: str
    subject: str  # MMBench "main subject" option
    colour: bool  # a colour photograph (else black and white)
    questions: tuple[PhotoQA, ...]


# fmt: off
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut.png", "an astronaut", True, (
        PhotoQA("How many people are in the picture?", "1", "number", ("2",)),
        PhotoQA("What color is the suit?", "orange", "other", ("red",)),
        PhotoQA("Is there a flag in the picture?", "yes", "yes/no", ("no",)))),
    Photo("chelsea.png", "a cat", True, (
        PhotoQA("What animal is this?", "cat", "other", ("kitten",)),
        PhotoQA("Is there a dog in the picture?", "no", "yes/no", ("yes",)))),
    Photo("coffee.png", "a cup of coffee", True, (
        PhotoQA("What drink is in the cup?", "coffee", "other", ("espresso", "tea")),
        PhotoQA("What color is the cup?", "red", "other", ("orange",)),
        PhotoQA("Is there a spoon?", "yes", "yes/no"))),
    Photo("rocket.jpg", "a rocket", True, (
        PhotoQA("What is on the launch pad?", "rocket", "other", ("spaceship",)),
        PhotoQA("Is it night?", "yes", "yes/no", ("no",)))),
    Photo("motorcycle_left.png", "a motorcycle", True, (
        PhotoQA("What vehicle is this?", "motorcycle", "other", ("motorbike", "bike")),
        PhotoQA("What color is the motorcycle?", "red", "other"))),
    Photo("horse.png", "a horse", True, (
        PhotoQA("What animal is this?", "horse", "other", ("pony",)),
        PhotoQA("What color is the horse?", "black", "other"))),
    Photo("camera.png", "a man with a camera", False, (
        PhotoQA("Is this photo in color?", "no", "yes/no"),
        PhotoQA("What is the man looking through?", "camera", "other", ("tripod",)))),
    Photo("coins.png", "coins", False, (
        PhotoQA("What objects are shown?", "coins", "other", ("money",)),
        PhotoQA("Is this photo in color?", "no", "yes/no"))),
)
# MMBench leaf category -> l2 category, for each kind of generated question
MMBENCH_CATEGORIES = {
    "colour": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "shape": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "count": ("object_counting", "finegrained_perception (cross-instance)"),
    "position": ("spatial_relationship", "finegrained_perception (cross-instance)"),
    "presence": ("object_recognition", "coarse_perception"),
    "subject": ("image_topic", "coarse_perception"),
    "style": ("image_style", "coarse_perception"),
}
# fmt: on
SCENE_HINT = "The image shows coloured shapes on a plain background."
PHOTO_HINT = "This is a photograph."


@dataclass(frozen=True)
class EvalsetPaths:
    root: Path
    vqav2_questions: Path  # LLaVA question JSONL
    vqav2_official_questions: Path
    vqav2_annotations: Path
    vqav2_lmms: Path
    vqav2_images: Path
    pope_questions: Path  # llava_pope_test.jsonl
    pope_annotations: Path  # folder of shapes_pope_<category>.json
    pope_images: Path
    mmbench_tsv: Path
    manifest: Path


def evalset_paths(out_dir: str | Path) -> EvalsetPaths:
    root = Path(out_dir)
    return EvalsetPaths(
        root=root,
        vqav2_questions=root / "vqav2" / "llava_vqav2_playground.jsonl",
        vqav2_official_questions=root / "vqav2" / "v2_OpenEnded_playground_questions.json",
        vqav2_annotations=root / "vqav2" / "v2_playground_annotations.json",
        vqav2_lmms=root / "vqav2" / "lmms_vqav2_playground.jsonl",
        vqav2_images=root / "vqav2" / "images",
        pope_questions=root / "pope" / "llava_pope_test.jsonl",
        pope_annotations=root / "pope" / "annotations",
        pope_images=root / "pope" / "images",
        mmbench_tsv=root / "mmbench" / "mmbench_playground.tsv",
        manifest=root / "manifest.json",
    )


def photos_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("skimage") is not None


def load_photo(photo: Photo) -> Image.Image:
    """The photo as RGB (transparency on white), longest side at most `PHOTO_MAX_SIDE`."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / photo.file
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB")
    scale = PHOTO_MAX_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def photo_name(photo: Photo) -> str:
    return f"photo_{Path(photo.file).stem}.png"


# --------------------------------------------------------------------------- VQAv2


def question_type(question: str) -> str:
    lowered = question.lower()
    matches = [t for t in QUESTION_TYPES if lowered.startswith(t + " ")]
    return max(matches, key=len) if matches else " ".join(lowered.split()[:2])


def _surface_forms(answer: str) -> list[str]:
    """Ways annotators write the same answer (equal after VQA normalisation)."""
    numbers = {"1": "one", "2": "two", "3": "three", "4": "four"}
    forms = [answer, answer.capitalize()]
    if answer in numbers:
        forms.append(numbers[answer])
    return forms


def human_answers(answer: str, slips: Sequence[str], rng: random.Random) -> list[str]:
    """10 answers: 0-3 slips (only if there are any), the rest the answer in varied forms."""
    num_slips = min(len(slips) and rng.choice((0, 0, 1, 1, 2, 3)), 3)
    answers = [rng.choice(_surface_forms(answer)) for _ in range(10 - num_slips)]
    answers += [rng.choice(slips) for _ in range(num_slips)]
    rng.shuffle(answers)
    return answers


def _scene_slips(qa: QA, scene: Scene) -> tuple[str, tuple[str, ...], str]:
    """(canonical answer, slips, answer_type) of a `shapes` question."""
    answer = qa.answer.lower()
    if qa.qtype == "count":
        n = int(answer)
        return answer, tuple(str(k) for k in (n - 1, n + 1) if k >= 1), "number"
    if qa.qtype == "presence":
        return answer, ("no" if answer == "yes" else "yes",), "yes/no"
    if qa.qtype == "position":
        return answer, ("right" if answer == "left" else "left",), "other"
    # a colour or shape slip: another object's in the scene, else any other
    seen = [o.colour if qa.qtype == "colour" else o.shape for o in scene.objects]
    pool = [p for p in dict.fromkeys(seen) if p != answer]
    pool = pool or [p for p in (COLOURS if qa.qtype == "colour" else SHAPES) if p != answer][:2]
    return answer, tuple(pool), "other"


def _vqa_items(paths: EvalsetPaths, num_scenes: int, image_size: int, seed: int, photos: bool):
    """(image name, question, answer, slips, answer_type) per question; writes the images."""
    items = []
    for i in range(num_scenes):
        rng = random.Random(f"evalsets-vqav2-{seed}-{i}")
        scene = sample_scene(rng, image_size=image_size)
        name = f"scene_{i:05d}.png"
        scene.render().save(paths.vqav2_images / name)
        for qa in all_questions(scene, rng, presence_yes=i % 2 == 0):
            answer, slips, answer_type = _scene_slips(qa, scene)
            items.append((name, qa.question, answer, slips, answer_type))
    for photo in PHOTOS if photos else ():
        load_photo(photo).save(paths.vqav2_images / photo_name(photo))
        for qa in photo.questions:
            items.append((photo_name(photo), qa.question, qa.answer, qa.slips, qa.answer_type))
    return items


def write_vqav2(
    paths: EvalsetPaths, *, num_scenes: int, image_size: int, seed: int, photos: bool
) -> int:
    """Write the VQAv2-style set; returns the number of questions."""
    items = _vqa_items(paths, num_scenes, image_size, seed, photos)
    image_ids = {name: k + 1 for k, name in enumerate(dict.fromkeys(n for n, *_ in items))}
    llava, official, annotations, lmms = [], [], [], []
    per_image: Counter[str] = Counter()
    for name, question, answer, slips, answer_type in items:
        image_id = image_ids[name]
        qid = image_id * 1000 + per_image[name]
        per_image[name] += 1
        rng = random.Random(f"evalsets-vqav2-answers-{seed}-{qid}")
        humans = human_answers(answer, slips, rng)
        qtype = question_type(question)
        llava.append(
            {
                "question_id": qid,
                "image": name,
                "text": f"{question}\n{SHORT_ANSWER_PROMPT}",
                "category": "default",
            }
        )
        official.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": answer,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(humans)
                ],
                "image_id": image_id,
                "answer_type": answer_type,
                "question_id": qid,
            }
        )
        lmms.append(
            {
                "question_id": qid,
                "image": name,
                "question": question,
                "answers": humans,
                "answer_type": answer_type,
                "question_type": qtype,
            }
        )
    _write_jsonl(paths.vqav2_questions, llava)
    info = {"description": "vitsplit_vlm playground VQAv2-style set", "version": "2.0"}
    _write_json(
        paths.vqav2_official_questions,
        {
            "info": info,
            "task_type": "Open-Ended",
            "data_type": "playground",
            "license": {},
            "data_subtype": "playground",
            "questions": official,
        },
    )
    _write_json(
        paths.vqav2_annotations,
        {
            "info": info,
            "license": {},
            "data_subtype": "playground",
            "annotations": annotations,
        },
    )
    _write_jsonl(paths.vqav2_lmms, lmms)
    return len(llava)


# --------------------------------------------------------------------------- POPE

OBJECTS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOURS)


def _popularity(seed: int) -> dict[tuple[str, str], float]:
    """A Zipf-like weight per (shape, colour), in a seeded order."""
    order = list(OBJECTS)
    random.Random(f"evalsets-pope-popularity-{seed}").shuffle(order)
    return {obj: 1.0 / (rank + 1) for rank, obj in enumerate(order)}


def pope_scene(seed: int, i: int, image_size: int, weights: dict) -> Scene:
    """A 3-4 object scene: a popular anchor, then mostly objects of the anchor's colour (so
    objects of one colour co-occur, which is what the adversarial negatives exploit)."""
    for retry in range(100):
        rng = random.Random(f"evalsets-pope-{seed}-{i}-{retry}")
        layout = sample_scene(rng, image_size=image_size)
        if len(layout.objects) >= POPE_PER_IMAGE:
            break
    else:
        raise RuntimeError("could not draw a scene with 3 or more objects")
    chosen = [rng.choices(OBJECTS, weights=[weights[o] for o in OBJECTS])[0]]
    while len(chosen) < len(layout.objects):
        rest = [o for o in OBJECTS if o not in chosen]
        palette = [o for o in rest if o[1] == chosen[0][1]]
        pool = palette if palette and rng.random() < PALETTE_PROBABILITY else rest
        chosen.append(rng.choices(pool, weights=[weights[o] for o in pool])[0])
    boxes = [o.bbox for o in layout.objects]
    objects = [SceneObject(s, c, box) for (s, c), box in zip(chosen, boxes, strict=True)]
    return Scene(image_size=image_size, objects=tuple(objects))


def pope_negatives(
    present: set[tuple[str, str]], rng: random.Random, frequency: Counter, cooccur: Counter
) -> dict[str, list[tuple[str, str]]]:
    """POPE's three ways to pick absent objects for one image."""
    absent = [o for o in OBJECTS if o not in present]

    def top(score) -> list[tuple[str, str]]:
        return sorted(absent, key=lambda o: (-score(o), -frequency[o], o))[:POPE_PER_IMAGE]

    return {
        "adversarial": top(lambda o: sum(cooccur[frozenset((o, p))] for p in present)),
        "popular": top(lambda o: frequency[o]),
        "random": rng.sample(absent, POPE_PER_IMAGE),
    }


def write_pope(paths: EvalsetPaths, *, num_images: int, image_size: int, seed: int) -> int:
    """Write the POPE-style set; returns the number of questions per category."""
    weights = _popularity(seed)
    scenes = [pope_scene(seed, i, image_size, weights) for i in range(num_images)]
    frequency: Counter = Counter()
    cooccur: Counter = Counter()
    for scene in scenes:
        names = [(o.shape, o.colour) for o in scene.objects]
        frequency.update(names)
        cooccur.update(frozenset((a, b)) for a in names for b in names if a < b)
    files: dict[str, list[dict]] = {c: [] for c in POPE_CATEGORIES}
    for i, scene in enumerate(scenes):
        name = f"pope_{i:05d}.png"
        scene.render().save(paths.pope_images / name)
        rng = random.Random(f"evalsets-pope-questions-{seed}-{i}")
        present = [(o.shape, o.colour) for o in scene.objects]
        positives = rng.sample(present, POPE_PER_IMAGE)
        negatives = pope_negatives(set(present), rng, frequency, cooccur)
        for category in POPE_CATEGORIES:
            for yes, no in zip(positives, negatives[category], strict=True):
                for (shape, colour), label in ((yes, "yes"), (no, "no")):
                    files[category].append(
                        {
                            "question_id": len(files[category]) + 1,
                            "image": name,
                            "text": f"Is there a {colour} {shape} in the image?",
                            "label": label,
                        }
                    )
    llava = []
    for category in POPE_CATEGORIES:
        _write_jsonl(paths.pope_annotations / f"shapes_pope_{category}.json", files[category])
        for row in files[category]:
            llava.append(
                {
                    "question_id": len(llava) + 1,
                    "image": row["image"],
                    "text": f"{row['text']}\n{SHORT_ANSWER_PROMPT}",
                    "category": category,
                }
            )
    _write_jsonl(paths.pope_questions, llava)
    return len(files["random"])


# --------------------------------------------------------------------------- MMBench


def _scene_choice(scene: Scene, qa: QA, rng: random.Random) -> tuple[str, list[str], str]:
    """(question, options with the right one first, kind) for a `shapes` question."""
    if qa.qtype == "colour":
        others = rng.sample([c.capitalize() for c in COLOURS if c != qa.answer.lower()], 3)
        return qa.question, [qa.answer, *others], "colour"
    if qa.qtype == "shape":
        return (
            qa.question,
            [qa.answer, *[s.capitalize() for s in SHAPES if s.capitalize() != qa.answer]],
            "shape",
        )
    if qa.qtype == "count":
        others = [str(k) for k in range(1, 5) if str(k) != qa.answer]
        return qa.question, [qa.answer, *rng.sample(others, rng.choice((2, 3)))], "count"
    if qa.qtype == "position":  # "Is the red circle on the left or the right?"
        name = qa.question.removeprefix("Is the ").removesuffix(" on the left or the right?")
        other = "Right" if qa.answer == "Left" else "Left"
        return f"On which side is the {name}?", [qa.answer, other], "position"
    present = {(o.shape, o.colour) for o in scene.objects}
    absent = [f"{c} {s}" for s, c in OBJECTS if (s, c) not in present]
    right = rng.choice(sorted(f"{c} {s}" for s, c in present))
    return "Which of these objects is in the image?", [right, *rng.sample(absent, 3)], "presence"


def _mmbench_row(
    index: int,
    question: str,
    options: list[str],
    kind: str,
    image: Image.Image,
    hint: str | None,
    source: str,
    rng: random.Random,
) -> dict[str, str]:
    """One TSV row; the right option (``options[0]``) goes to letter ``index mod n``, so answer
    letters are balanced."""
    right, others = options[0], list(options[1:])
    rng.shuffle(others)
    at = index % len(options)
    shown = others[:at] + [right] + others[at:]
    category, l2 = MMBENCH_CATEGORIES[kind]
    row = {
        "index": str(index),
        "question": question,
        "hint": hint or "",
        "answer": "ABCD"[at],
        "category": category,
        "image": _base64_png(image),
        "source": source,
        "l2-category": l2,
        "comment": "",
        "split": "dev",
    }
    row.update({letter: shown[k] if k < len(shown) else "" for k, letter in enumerate("ABCD")})
    return row


def write_mmbench(
    paths: EvalsetPaths, *, num_scenes: int, image_size: int, seed: int, photos: bool
) -> int:
    """Write the MMBench-style TSV; returns the number of rows."""
    rows = []
    for i in range(num_scenes):
        rng = random.Random(f"evalsets-mmbench-{seed}-{i}")
        scene = sample_scene(rng, image_size=image_size)
        qas = all_questions(scene, rng)
        qa = qas[i % len(qas)]
        question, options, kind = _scene_choice(scene, qa, rng)
        hint = SCENE_HINT if i % 3 == 0 else None
        rows.append(
            _mmbench_row(
                len(rows),
                question,
                options,
                kind,
                scene.render(),
                hint,
                "vitsplit-playground-shapes",
                rng,
            )
        )
    subjects = [p.subject for p in PHOTOS]
    for photo in PHOTOS if photos else ():
        rng = random.Random(f"evalsets-mmbench-photo-{seed}-{photo.file}")
        image = load_photo(photo)
        others = rng.sample([s for s in subjects if s != photo.subject], 3)
        style = ["in colour", "in black and white"][:: 1 if photo.colour else -1]
        for question, options, kind in (
            ("What is the main subject of this image?", [photo.subject, *others], "subject"),
            ("Is this photograph in colour or in black and white?", style, "style"),
        ):
            rows.append(
                _mmbench_row(
                    len(rows), question, options, kind, image, PHOTO_HINT, "scikit-image", rng
                )
            )
    paths.mmbench_tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.mmbench_tsv, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, MMBENCH_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


# --------------------------------------------------------------------------- all


def write_evalsets(
    out_dir: str | Path,
    *,
    vqav2_scenes: int = 100,
    pope_images: int = 50,
    mmbench_scenes: int = 100,
    image_size: int = 112,
    seed: int = 0,
    photos: bool | None = None,
) -> EvalsetPaths:
    """Write the three sets (see the module docstring); a no-op if ``manifest.json`` matches.

    ``photos=None`` adds the scikit-image photos when scikit-image is installed; ``True``
    requires it. The manifest records what was chosen.
    """
    if min(vqav2_scenes, pope_images, mmbench_scenes) < 1:
        raise ValueError("vqav2_scenes, pope_images and mmbench_scenes must be >= 1")
    if photos is None:
        photos = photos_available()
    elif photos and not photos_available():
        raise ValueError("photos=True needs scikit-image (pip install scikit-image)")
    paths = evalset_paths(out_dir)
    args = dict(
        vqav2_scenes=vqav2_scenes,
        pope_images=pope_images,
        mmbench_scenes=mmbench_scenes,
        image_size=image_size,
        seed=seed,
        photos=photos,
    )
    manifest = {"generator": "evalsets", "version": GENERATOR_VERSION, "args": args}
    if _is_current(paths, manifest):
        return paths
    paths.manifest.unlink(missing_ok=True)
    for folder in (paths.vqav2_images, paths.pope_images, paths.pope_annotations):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    manifest["counts"] = {
        "vqav2_questions": write_vqav2(
            paths, num_scenes=vqav2_scenes, image_size=image_size, seed=seed, photos=photos
        ),
        "pope_questions_per_category": write_pope(
            paths, num_images=pope_images, image_size=image_size, seed=seed
        ),
        "mmbench_rows": write_mmbench(
            paths, num_scenes=mmbench_scenes, image_size=image_size, seed=seed, photos=photos
        ),
    }
    _write_json(paths.manifest, manifest)  # last: its presence marks a complete set
    return paths


def _is_current(paths: EvalsetPaths, manifest: dict) -> bool:
    try:
        old = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return False
    files = [
        paths.vqav2_questions,
        paths.vqav2_annotations,
        paths.pope_questions,
        paths.mmbench_tsv,
    ]
    return {k: old.get(k) for k in manifest} == manifest and all(p.is_file() for p in files)


def _base64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
