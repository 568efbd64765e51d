"""Synthetic scenes of coloured shapes, with captions and QA derived from ground truth.

A `Scene` holds 1 to `MAX_OBJECTS` (4) non-overlapping objects (shape, colour, square bounding
box; ``max_objects`` lowers the cap: the tiny default's data set uses 3) on a plain light
background; `Scene.render()` draws it with PIL (no anti-aliasing, so every object pixel has
exactly its colour, and the centre of every bounding box lies inside its shape). All text is
derived from the `Scene`, never from pixels:

- captions (LLaVA stage 1), lowercase, objects listed left to right, e.g.
  ``"a red circle and a blue square."``;
- short-answer QA (LLaVA stage 2 and held-out evaluation), each with a `qtype` in `QTYPES`, answered
  in LLaVA-1.5's short-answer style (one capitalised word or a digit, no period) after the
  prompt suffix ``"Answer the question using a single word or phrase."``.

Stage 2's questions come in training order (`stage2_samples`): a *reading* phase of colour and
shape questions, then a *mix* of every question type. Measured on the tiny default (README "It
learns"): counting, which a glance over the whole image answers, is learned first when it is in
the mix from the start and crowds out the object-selective reading that colour and shape need;
asked after the reading phase, it no longer does.

Everything is deterministic: each sample draws from its own ``random.Random`` seeded by a string
(``"shapes-train-{seed}-{i}"``), so results do not depend on ``PYTHONHASHSEED`` and the first
``m`` samples of a larger set equal a smaller set's.

`write_llava_dataset` writes the LLaVA layout (``images/``, ``pretrain.json``, ``finetune.json``,
``heldout.jsonl``, ``manifest.json``); image paths in the JSON files are relative to ``images/``
(LLaVA's ``--image_folder``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 30),
    "purple": (160, 50, 200),
    "black": (30, 30, 30),
}
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
QTYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "presence")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
IMAGE_TOKEN = "<image>"
MAX_OBJECTS = 4
GENERATOR_VERSION = 2  # 3 (count 0.25 in the mix) was measured and withdrawn: README
TEXT_ONLY_FRACTION = 0.05
# Stage 2 (finetune.json), one short-answer question per sample, in training order: the first
# READ_FRACTION of the samples ask colour or shape only, the rest draw every qtype by MIX_WEIGHTS
# (among those that apply to the image).
READ_FRACTION = 0.5
READ_WEIGHTS: dict[str, float] = {"colour": 0.5, "shape": 0.5}
MIX_WEIGHTS: dict[str, float] = {
    "colour": 0.3, "shape": 0.3, "count": 0.15, "presence": 0.15, "position": 0.1,
}  # fmt: skip
FINETUNE_PER_IMAGE = 4  # default stage-2 samples per training image

# Text-only instruct samples (like the ShareGPT part of LLaVA's 665K mix): free-form sentences,
# no short-answer prompt.
TEXT_ONLY_QA: tuple[tuple[str, str], ...] = (
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides of equal length."),
    ("How many corners does a square have?", "A square has four corners."),
    ("Does a circle have corners?", "No, a circle is round and has no corners."),
    ("What does a cross look like?", "A cross is made of two bars that meet in the middle."),
    ("Which shape is round?", "The circle is round."),
    ("Which shape has three sides?", "The triangle has three sides."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What colour do you get by mixing red and blue?", "Mixing red and blue gives purple."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What colour is fresh grass?", "Fresh grass is green."),
    ("What colour is a ripe banana?", "A ripe banana is yellow."),
    ("What colour is a ripe tomato?", "A ripe tomato is red."),
    ("What colour is coal?", "Coal is black."),
    ("What is two plus two?", "Two plus two is four."),
    ("What is one plus two?", "One plus two is three."),
    ("Count from one to four.", "One, two, three, four."),
    ("Is a square a kind of rectangle?", "Yes, a square is a rectangle with four equal sides."),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class SceneObject:
    """One shape; `bbox` = (x0, y0, x1, y1) in pixels, x1/y1 exclusive, always square."""

    shape: str
    colour: str
    bbox: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[int, int]:
        """(x, y) pixel at the middle of the box; it lies inside the drawn shape."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) // 2, (y0 + y1) // 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: objects sorted left to right by centre x (then y)."""

    image_size: int
    objects: tuple[SceneObject, ...]

    def render(self) -> Image.Image:
        """RGB image (image_size, image_size) drawn without anti-aliasing."""
        image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            _draw_object(draw, obj)
        return image

    def key(self) -> tuple:
        """Hashable identity of the scene (used to keep held-out scenes out of training)."""
        return (self.image_size, tuple((o.shape, o.colour, o.bbox) for o in self.objects))


@dataclass(frozen=True)
class QA:
    """One question with its short answer; `qtype` is one of `QTYPES`."""

    question: str
    answer: str
    qtype: str

    @property
    def prompt(self) -> str:
        """The question as the model sees it (LLaVA-1.5 short-answer suffix)."""
        return f"{self.question}\n{SHORT_ANSWER_PROMPT}"


@dataclass(frozen=True)
class LlavaDatasetPaths:
    """Files written by `write_llava_dataset`; JSON image paths are relative to `image_folder`."""

    root: Path
    image_folder: Path
    pretrain: Path
    finetune: Path
    heldout: Path
    manifest: Path


# --------------------------------------------------------------------------- scenes and pixels


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.bbox
    xe, ye = x1 - 1, y1 - 1  # PIL coordinates are inclusive
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, xe, ye), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, xe, ye), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + xe) / 2, y0), (xe, ye), (x0, ye)], fill=fill)
    elif obj.shape == "cross":
        side = x1 - x0
        arm = max(1, round(side / 3))
        a0 = x0 + (side - arm) // 2
        b0 = y0 + (side - arm) // 2
        draw.rectangle((a0, y0, a0 + arm - 1, ye), fill=fill)
        draw.rectangle((x0, b0, xe, b0 + arm - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def _boxes_apart(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def sample_scene(
    rng: random.Random, *, image_size: int = 112, max_objects: int = MAX_OBJECTS
) -> Scene:
    """1..max_objects objects with distinct (shape, colour) pairs, sides 20-30% of the image.

    Shapes or colours may repeat (a red and a blue circle), a (shape, colour) pair never does.
    """
    if image_size < 32:
        raise ValueError(
            f"image_size must be >= 32 to draw distinguishable shapes, got {image_size}"
        )
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
    count = rng.randint(1, max_objects)
    pairs = rng.sample([(s, c) for s in SHAPES for c in COLOURS], count)
    lo, hi = round(0.2 * image_size), round(0.3 * image_size)
    gap = max(2, image_size // 28)
    objects: list[SceneObject] = []
    for shape, colour in pairs:
        for _ in range(200):
            side = rng.randint(lo, hi)
            x0 = rng.randint(gap, image_size - gap - side)
            y0 = rng.randint(gap, image_size - gap - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_boxes_apart(box, o.bbox, gap) for o in objects):
                objects.append(SceneObject(shape, colour, box))
                break
        else:  # no room left (practically never at these sizes): keep fewer objects
            break
    objects.sort(key=lambda o: (o.centre[0], o.centre[1]))
    return Scene(image_size=image_size, objects=tuple(objects))


# --------------------------------------------------------------------------- text


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def captions(scene: Scene) -> list[str]:
    """Every caption phrasing of the scene (objects left to right, lowercase, final period)."""
    listed = _join([_with_article(o.name) for o in scene.objects])
    n = len(scene.objects)
    out = [
        f"{listed}.",
        f"a picture of {listed}.",
        f"{listed} on a plain background.",
        f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {listed}.",
    ]
    if n == 2:
        left, right = scene.objects
        if left.bbox[2] <= right.bbox[0]:
            out.append(
                f"{_with_article(left.name)} on the left and "
                f"{_with_article(right.name)} on the right."
            )
    elif n > 2:
        out.append(f"from left to right: {listed}.")
    return out


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption phrasing chosen by `rng`."""
    return rng.choice(captions(scene))


def _colour_qa(scene: Scene, rng: random.Random) -> QA | None:
    counts = Counter(o.shape for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.shape] == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    return QA(f"What colour is the {obj.shape}?", obj.colour.capitalize(), "colour")


def _shape_qa(scene: Scene, rng: random.Random) -> QA | None:
    counts = Counter(o.colour for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.colour] == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    return QA(f"What shape is the {obj.colour} object?", obj.shape.capitalize(), "shape")


def _count_qa(scene: Scene) -> QA:
    return QA("How many shapes are there?", str(len(scene.objects)), "count")


def _position_qa(scene: Scene, rng: random.Random) -> QA | None:
    """Two-object scenes whose boxes do not overlap horizontally (the answer is unambiguous)."""
    if len(scene.objects) != 2:
        return None
    left, right = scene.objects
    if left.bbox[2] > right.bbox[0]:
        return None
    obj, answer = rng.choice([(left, "Left"), (right, "Right")])
    return QA(f"Is the {obj.name} on the left or the right?", answer, "position")


def _presence_qa(scene: Scene, rng: random.Random, want_yes: bool | None = None) -> QA:
    """'Is there a <colour> <shape>?'; negatives are near misses (shared shape or colour) half the
    time, so the answer needs the binding of colour to shape."""
    if want_yes is None:
        want_yes = rng.random() < 0.5
    present = {(o.shape, o.colour) for o in scene.objects}
    if want_yes:
        shape, colour = rng.choice(sorted(present))
    else:
        absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
        near = [p for p in absent if any(p[0] == q[0] or p[1] == q[1] for q in present)]
        shape, colour = rng.choice(near if near and rng.random() < 0.5 else absent)
    question = f"Is there {_with_article(f'{colour} {shape}')}?"
    return QA(question, "Yes" if want_yes else "No", "presence")


def all_questions(
    scene: Scene, rng: random.Random, *, presence_yes: bool | None = None
) -> list[QA]:
    """One question of every qtype that applies to the scene, in `QTYPES` order.

    count and presence always apply; colour needs a unique shape, shape a unique colour, position
    a two-object scene with horizontally separated boxes.
    """
    candidates = [
        _colour_qa(scene, rng),
        _shape_qa(scene, rng),
        _count_qa(scene),
        _position_qa(scene, rng),
        _presence_qa(scene, rng, presence_yes),
    ]
    return [qa for qa in candidates if qa is not None]


def sample_conversation(scene: Scene, rng: random.Random) -> list[QA]:
    """2-4 questions of distinct qtypes in random order (fewer only if fewer apply)."""
    qas = all_questions(scene, rng)
    rng.shuffle(qas)
    return qas[: rng.randint(2, 4)]


def weighted_question(scene: Scene, rng: random.Random, weights: dict[str, float]) -> QA | None:
    """One question about the scene, its qtype drawn by `weights` among the qtypes that apply
    (a qtype missing from `weights` is never asked); None if none applies."""
    qas = [qa for qa in all_questions(scene, rng) if weights.get(qa.qtype, 0) > 0]
    if not qas:
        return None
    return rng.choices(qas, weights=[weights[qa.qtype] for qa in qas])[0]


def stage2_samples(
    scenes: list[Scene], num_samples: int, seed: int
) -> tuple[list[dict], Counter[str]]:
    """`num_samples` single-round LLaVA samples in training order (see the module docstring), and
    how many of them ask each qtype.

    Each phase walks the training images in a fresh random order, again and again, asking one
    question of each (an image no phase question applies to is passed over); ~`TEXT_ONLY_FRACTION`
    of the samples are text-only conversations. Ids: ``train_NNNNN_qK`` (K = position in the file)
    and ``text_K``.
    """
    num_read = round(num_samples * READ_FRACTION)
    out: list[dict] = []
    asked: Counter[str] = Counter()
    for phase, size, weights in [
        ("read", num_read, READ_WEIGHTS),
        ("mix", num_samples - num_read, MIX_WEIGHTS),
    ]:
        rng = random.Random(f"shapes-finetune-{seed}-{phase}")
        end, order, asked_in_pass = len(out) + size, [], True
        while len(out) < end:
            if rng.random() < TEXT_ONLY_FRACTION:
                turns = text_only_conversation(rng)
                out.append({"id": f"text_{len(out)}", "conversations": _conversation(turns, False)})
                continue
            if not order:
                if not asked_in_pass:
                    raise ValueError(f"no {sorted(weights)} question applies to any training image")
                order, asked_in_pass = rng.sample(range(len(scenes)), len(scenes)), False
            i = order.pop()
            qa = weighted_question(scenes[i], rng, weights)
            if qa is not None:
                asked_in_pass = True
                asked[qa.qtype] += 1
                out.append(
                    {
                        "id": f"train_{i:05d}_q{len(out)}",
                        "image": f"train_{i:05d}.png",
                        "conversations": _conversation([(qa.prompt, qa.answer)], True),
                    }
                )
    return out, asked


def text_only_conversation(rng: random.Random) -> list[tuple[str, str]]:
    """1-3 rounds of free-form text-only (question, answer) pairs."""
    return rng.sample(TEXT_ONLY_QA, rng.randint(1, 3))


def corpus(n: int, seed: int) -> list[str]:
    """Text a tokenizer (or a tiny LM) can learn from: every phrasing the generator can emit.

    `n` scenes contribute all their captions and one question of every applicable qtype with its
    answer; fixed lines cover the vocabulary (shapes, colours, digits, answers, text-only QA).
    """
    lines: list[str] = [SHORT_ANSWER_PROMPT]
    for shape in SHAPES:
        lines += [shape, shape.capitalize(), f"{shape}s"]
    for colour in COLOURS:
        lines += [colour, colour.capitalize()]
    lines += [str(d) for d in range(10)] + list(NUMBER_WORDS) + ["Yes", "No", "Left", "Right"]
    for question, answer in TEXT_ONLY_QA:
        lines += [question, answer]
    for i in range(n):
        rng = random.Random(f"shapes-corpus-{seed}-{i}")
        scene = sample_scene(rng)
        lines += captions(scene)
        for qa in all_questions(scene, rng):
            lines += [qa.prompt, qa.answer]
    return lines


# --------------------------------------------------------------------------- LLaVA files


def _train_sample(seed: int, i: int, image_size: int, max_objects: int) -> tuple[Scene, str]:
    rng = random.Random(f"shapes-train-{seed}-{i}")
    scene = sample_scene(rng, image_size=image_size, max_objects=max_objects)
    return scene, caption(scene, rng)


def _heldout_scene(
    seed: int, i: int, image_size: int, max_objects: int, taken: set[tuple]
) -> Scene:
    for retry in range(100):
        rng = random.Random(f"shapes-heldout-{seed}-{i}-{retry}")
        scene = sample_scene(rng, image_size=image_size, max_objects=max_objects)
        if scene.key() not in taken:
            return scene
    raise RuntimeError("could not draw a held-out scene distinct from the training scenes")


def _conversation(turns: Iterable[tuple[str, str]], with_image: bool) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for j, (human, gpt) in enumerate(turns):
        value = f"{IMAGE_TOKEN}\n{human}" if with_image and j == 0 else human
        out += [{"from": "human", "value": value}, {"from": "gpt", "value": gpt}]
    return out


def _iter_progress(items: list, desc: str, progress: bool) -> Iterator:
    if not progress:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="img"))


def _paths(out_dir: Path) -> LlavaDatasetPaths:
    return LlavaDatasetPaths(
        root=out_dir,
        image_folder=out_dir / "images",
        pretrain=out_dir / "pretrain.json",
        finetune=out_dir / "finetune.json",
        heldout=out_dir / "heldout.jsonl",
        manifest=out_dir / "manifest.json",
    )


def write_llava_dataset(
    out_dir: str | Path,
    *,
    num_train: int,
    num_heldout: int,
    image_size: int = 112,
    seed: int = 0,
    num_finetune: int | None = None,
    max_objects: int = MAX_OBJECTS,
    progress: bool = False,
) -> LlavaDatasetPaths:
    """Write the shapes set in LLaVA's formats; a no-op if `manifest.json` has the same args.

    - ``images/train_NNNNN.png`` (num_train) and ``images/heldout_NNNNN.png`` (num_heldout, scenes
      disjoint from training);
    - ``pretrain.json``: one caption pair per training image (stage 1);
    - ``finetune.json``: `num_finetune` (default ``FINETUNE_PER_IMAGE * num_train``) single-round
      short-answer samples about the training images, ~5% of them text-only conversations
      without an ``"image"`` key, in training order (`stage2_samples`; stage 2 reads the file in
      order: ``--train_sampling_strategy sequential``);
    - ``heldout.jsonl``: one line per question, one question of every applicable qtype per image,
      presence answers alternating Yes/No.

    Every scene holds 1 to `max_objects` objects (`sample_scene`).
    """
    if num_finetune is None:
        num_finetune = FINETUNE_PER_IMAGE * num_train
    if num_train < 1 or num_heldout < 0 or num_finetune < 1:
        raise ValueError(
            "need num_train >= 1, num_heldout >= 0 and num_finetune >= 1, got "
            f"{num_train}, {num_heldout}, {num_finetune}"
        )
    paths = _paths(Path(out_dir))
    args = {
        "num_train": num_train,
        "num_heldout": num_heldout,
        "image_size": image_size,
        "seed": seed,
        "num_finetune": num_finetune,
        "max_objects": max_objects,
    }
    manifest = {"generator": "shapes", "version": GENERATOR_VERSION, "args": args}
    if _is_current(paths, manifest):
        return paths

    paths.image_folder.mkdir(parents=True, exist_ok=True)
    for stale in [
        *paths.image_folder.glob("train_*.png"),
        *paths.image_folder.glob("heldout_*.png"),
    ]:
        stale.unlink()
    paths.manifest.unlink(missing_ok=True)

    train = [_train_sample(seed, i, image_size, max_objects) for i in range(num_train)]
    taken = {scene.key() for scene, _ in train}
    heldout = [_heldout_scene(seed, i, image_size, max_objects, taken) for i in range(num_heldout)]
    jobs = [(f"train_{i:05d}.png", s) for i, (s, _) in enumerate(train)]
    jobs += [(f"heldout_{i:05d}.png", s) for i, s in enumerate(heldout)]
    for name, scene in _iter_progress(jobs, "shapes images", progress):
        scene.render().save(paths.image_folder / name)

    pretrain = [
        {
            "id": f"train_{i:05d}",
            "image": f"train_{i:05d}.png",
            "conversations": _conversation([("", cap)], with_image=True),
        }
        for i, (_, cap) in enumerate(train)
    ]
    finetune, asked = stage2_samples([scene for scene, _ in train], num_finetune, seed)

    _write_json(paths.pretrain, pretrain)
    _write_json(paths.finetune, finetune)
    with open(paths.heldout, "w") as f:
        for line in _heldout_lines(heldout, seed):
            f.write(json.dumps(line) + "\n")
    manifest["counts"] = {
        "pretrain": len(pretrain),
        "finetune": len(finetune),
        "finetune_text_only": sum("image" not in s for s in finetune),
        "finetune_by_qtype": dict(sorted(asked.items())),
        "heldout_images": num_heldout,
    }
    _write_json(paths.manifest, manifest)  # last: its presence marks a complete set
    return paths


def _heldout_lines(scenes: list[Scene], seed: int) -> Iterator[dict]:
    question_id = 0
    for i, scene in enumerate(scenes):
        rng = random.Random(f"shapes-heldout-qa-{seed}-{i}")
        for qa in all_questions(scene, rng, presence_yes=i % 2 == 0):
            yield {
                "question_id": question_id,
                "image": f"heldout_{i:05d}.png",
                "text": qa.prompt,
                "answer": qa.answer,
                "qtype": qa.qtype,
            }
            question_id += 1


def _is_current(paths: LlavaDatasetPaths, manifest: dict) -> bool:
    try:
        old = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return False
    if {k: old.get(k) for k in manifest} != manifest:
        return False
    files = [paths.pretrain, paths.finetune, paths.heldout]
    return all(p.is_file() for p in files) and paths.image_folder.is_dir()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")
