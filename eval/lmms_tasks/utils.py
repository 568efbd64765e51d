"""lmms-eval hooks for the playground tasks in this folder (``--include_path eval/lmms_tasks``).

Prompts, answer parsing and scores come from the project's task classes
(:mod:`vitsplit_vlm.eval`), so lmms-eval asks what ``vitsplit-vlm eval answer`` asks and scores
as ``vitsplit-vlm eval score-*`` does (percentages, 0-100).

Images: POPE and VQAv2 documents name an image file; a relative name is looked up in the folder
given by ``VITSPLIT_POPE_IMAGES`` / ``VITSPLIT_VQAV2_IMAGES`` (default: the playground's), a
relative folder first from the current directory, then from the repository root. MMBench
documents carry the image as base64 (the TSV's ``image`` column).
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path

from PIL import Image

from vitsplit_vlm.eval.mmbench import LETTERS, MMBenchQuestion, MMBenchTask, is_missing
from vitsplit_vlm.eval.pope import PopeTask, pope_metrics
from vitsplit_vlm.eval.vqav2 import VQAv2Annotation, VQAv2Task

REPO = Path(__file__).resolve().parents[2]
POPE_IMAGES = ("VITSPLIT_POPE_IMAGES", "playground/data/eval/pope/images")
VQAV2_IMAGES = ("VITSPLIT_VQAV2_IMAGES", "playground/data/eval/vqav2/images")


def _open_image(name: str, folder: tuple[str, str]) -> Image.Image:
    path = Path(name)
    if not path.is_absolute():
        env, default = folder
        root = Path(os.environ.get(env) or default)
        if not root.is_absolute() and not root.is_dir():
            root = REPO / root
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found (set {folder[0]} to the image folder)")
    with Image.open(path) as image:
        return image.convert("RGB")


# --------------------------------------------------------------------------- POPE


def pope_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [_open_image(doc["image"], POPE_IMAGES)]


def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return PopeTask().build_prompt(doc["text"])


def pope_process_results(doc: dict, results: list[str]) -> dict:
    pair = {"prediction": PopeTask().parse(results[0]), "label": doc["label"].strip().lower()}
    return {f"pope_{rate}": pair for rate in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def _pope_rate(rate: str, results: list[dict]) -> float:
    return getattr(pope_metrics([(r["prediction"], r["label"]) for r in results]), rate)


def pope_accuracy(results: list[dict]) -> float:
    return _pope_rate("accuracy", results)


def pope_precision(results: list[dict]) -> float:
    return _pope_rate("precision", results)


def pope_recall(results: list[dict]) -> float:
    return _pope_rate("recall", results)


def pope_f1(results: list[dict]) -> float:
    return _pope_rate("f1", results)


def pope_yes_ratio(results: list[dict]) -> float:
    return _pope_rate("yes_ratio", results)


# --------------------------------------------------------------------------- VQAv2


def vqav2_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [_open_image(doc["image"], VQAV2_IMAGES)]


def vqav2_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return VQAv2Task().build_prompt(doc["question"])


def vqav2_process_results(doc: dict, results: list[str]) -> dict:
    annotation = VQAv2Annotation(
        question_id=doc["question_id"],
        answers=tuple(doc["answers"]),
        answer_type=doc["answer_type"],
        question_type=doc["question_type"],
    )
    return {"vqa_accuracy": 100.0 * VQAv2Task().score_answer(results[0], annotation)}


# --------------------------------------------------------------------------- MMBench


def _cell(value) -> str | None:
    """A TSV cell as the csv loader reads it: NaN / None / NA strings mean no value; a column
    of numbers may come back as floats ("3" -> 3.0)."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    value = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return None if is_missing(value) else value


def _mmbench_question(doc: dict) -> MMBenchQuestion:
    options = []
    for letter in LETTERS:
        option = _cell(doc.get(letter))
        if option is None:
            break
        options.append(option)
    return MMBenchQuestion(
        index=int(doc["index"]),
        question=str(doc["question"]),
        hint=_cell(doc.get("hint")),
        options=tuple(options),
        answer=_cell(doc.get("answer")),
        category=_cell(doc.get("category")),
        l2_category=_cell(doc.get("l2-category")),
        line=0,
    )


def mmbench_doc_to_visual(doc: dict) -> list[Image.Image]:
    with Image.open(io.BytesIO(base64.b64decode(doc["image"]))) as image:
        return [image.convert("RGB")]


def mmbench_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return MMBenchTask().build_prompt(_mmbench_question(doc))


def mmbench_process_results(doc: dict, results: list[str]) -> dict:
    question = _mmbench_question(doc)
    letter = MMBenchTask().parse(results[0], question)
    return {"mmbench_accuracy": 100.0 * (letter == question.answer_at(0))}


def mmbench_doc_to_choice(doc: dict) -> list[str]:
    return list(LETTERS[: len(_mmbench_question(doc).options)])


def mmbench_doc_to_target(doc: dict) -> int:
    return LETTERS.index(_mmbench_question(doc).answer_at(0))
