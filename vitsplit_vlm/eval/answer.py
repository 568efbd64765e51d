"""Answer generation (``vitsplit-vlm eval answer``) and chunk merging (``eval merge``).

LLaVA-1.5's ``model_vqa_loader.py`` (VQAv2, POPE) and ``model_vqa_mmbench.py`` (MMBench),
batched through :class:`~vitsplit_vlm.vlm.engine.VLMEngine`, which decodes greedily with
left-padded batches, so a batch of 8 answers exactly as 8 batches of 1.

Question files (LLaVA's):

- ``vqav2`` / ``pope``: JSON lines (or a JSON list) of ``{"question_id", "image", "text"}``;
  ``image`` is relative to ``--image-folder``; other fields (``category``, ``label``) are
  ignored. The model is asked ``text`` plus the short-answer instruction unless ``text`` already
  ends with it (LLaVA's ``llava_*.jsonl`` files do; POPE's ``coco_pope_*.json`` do not).
- ``mmbench``: the TSV with base64 images; the prompt is hint, question, ``A. ...`` options and
  the instruction, one per line (``--single-pred-prompt``); ``--all-rounds`` adds LLaVA's
  rotations (round ``r`` shows option ``(i + r) mod n`` under letter ``i``).

Answer lines are LLaVA's: ``{"question_id", "prompt", "text", "answer_id", "model_id",
"metadata"}`` (MMBench adds ``round_id``, ``options``, ``option_char`` after ``question_id``),
``prompt`` being LLaVA's ``cur_prompt`` (the question text without the image; for MMBench without
the instruction). ``answer_id`` is a hash of the model, question, round and answer (LLaVA uses a
random id), so the same run writes the same file.

Sharding is LLaVA's: ``--num-chunks N --chunk-idx K`` answers the K-th of N contiguous chunks of
``ceil(len / N)`` questions (MMBench: rows, each with all its rounds); a chunk past the end is
empty (LLaVA raises). Chunk files concatenated in order are the unsharded file; ``eval merge``
does that and checks that no question is answered twice (or, given the questions, missing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from vitsplit_vlm.eval import mmbench, pope, vqav2
from vitsplit_vlm.eval.io import (
    EvalInputError,
    QuestionId,
    Record,
    atomic_output,
    field,
    question_id,
    read_records,
    read_tsv,
)
from vitsplit_vlm.images import open_rgb

T = TypeVar("T")
TASKS = ("vqav2", "pope", "mmbench")
# LLaVA's defaults: model_vqa_loader --max_new_tokens 128; model_vqa_mmbench uses 1024.
DEFAULT_MAX_NEW_TOKENS = {"vqav2": 128, "pope": 128, "mmbench": 1024}
_ANSWER_ID_CHARS = 22  # as long as LLaVA's shortuuid ids


@dataclass(frozen=True)
class Question:
    """One prompt to answer: what the user asks, how to get the image, the answer line's fields."""

    text: str  # the user message (the engine puts the image placeholder in front)
    image: Callable[[], Image.Image]
    line: dict[str, Any]  # answer-line fields before "text": question_id, [round_id], prompt
    extra: dict[str, Any]  # fields after "text" (MMBench: options, option_char)
    where: str  # "questions.jsonl line 3 (question_id 7)", for errors
    image_file: Path | None = None  # checked to exist before the model loads


@dataclass(frozen=True)
class AnswerRequest:
    """What ``eval answer`` was asked to do (the command-line flags, checked)."""

    task: str
    model_path: Path
    question_file: Path
    image_folder: Path | None
    answers_file: Path
    conv_mode: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    batch_size: int = 8
    num_chunks: int = 1
    chunk_idx: int = 0
    all_rounds: bool = False
    max_new_tokens: int | None = None
    lang: str = "en"
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise EvalInputError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.num_chunks < 1 or not 0 <= self.chunk_idx < self.num_chunks:
            raise EvalInputError(
                f"--chunk-idx must be in [0, --num-chunks), got --num-chunks {self.num_chunks} "
                f"--chunk-idx {self.chunk_idx}"
            )
        if self.batch_size < 1:
            raise EvalInputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.temperature < 0:
            raise EvalInputError(f"--temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise EvalInputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.all_rounds and self.task != "mmbench":
            raise EvalInputError("--all-rounds is for --task mmbench (option rotations)")
        if self.task != "mmbench" and self.image_folder is None:
            raise EvalInputError(f"--task {self.task} needs --image-folder")


# --------------------------------------------------------------------------- sharding


def get_chunk(items: Sequence[T], num_chunks: int, chunk_idx: int) -> list[T]:
    """LLaVA's ``get_chunk``: the ``chunk_idx``-th slice of ``ceil(len / num_chunks)`` items
    (empty when the chunks run out before ``num_chunks``)."""
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size : (chunk_idx + 1) * size])


# --------------------------------------------------------------------------- questions


def _open_image(path: Path, where: str) -> Image.Image:
    try:
        return open_rgb(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise EvalInputError(f"{where}: cannot read image {path}: {err}") from None


def _decode_image(data: str, where: str) -> Image.Image:
    try:
        raw = base64.b64decode(data, validate=True)
        return open_rgb(io.BytesIO(raw))
    except (binascii.Error, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise EvalInputError(f"{where}: column 'image' is not a base64 image ({err})") from None


def _vqa_rows(request: AnswerRequest) -> list[list[Question]]:
    """One single-round row per line of a LLaVA question file (VQAv2 or POPE)."""
    path = request.question_file
    task = vqav2.VQAv2Task() if request.task == "vqav2" else pope.PopeTask()
    rows: list[list[Question]] = []
    seen: dict[QuestionId, str] = {}
    for record in read_records(path, list_key="questions"):
        qid = question_id(path, record)
        if qid in seen:
            raise EvalInputError(
                f"{path} {record.where}: duplicate question_id {qid!r} (first at {seen[qid]})"
            )
        seen[qid] = record.where
        text = field(path, record, "text", str)
        image = field(path, record, "image", str)
        where = f"{path} {record.where} (question_id {qid!r})"
        image_path = request.image_folder / image
        rows.append(
            [
                Question(
                    text=task.build_prompt(text),
                    image=partial(_open_image, image_path, where),
                    line={"question_id": qid, "prompt": text},
                    extra={},
                    where=where,
                    image_file=image_path,
                )
            ]
        )
    return rows


def _check_images(rows: Sequence[list[Question]], request: AnswerRequest) -> None:
    """Fail before loading the model if an image file of this chunk is missing."""
    for question in (q for row in rows for q in row if q.image_file is not None):
        if not question.image_file.is_file():
            raise EvalInputError(
                f"{question.where}: image {question.image_file} not found "
                f"(--image-folder {request.image_folder})"
            )


def _mmbench_rows(request: AnswerRequest) -> list[list[Question]]:
    """One row per TSV row: round 0, or every rotation with ``--all-rounds``."""
    path = request.question_file
    task = mmbench.MMBenchTask(lang=request.lang)
    questions = mmbench.load_questions(path, need_answer=False)
    _, image_rows = read_tsv(path, required=["index", "image"], keep={"image"})
    rows = []
    for question, cells in zip(questions, image_rows, strict=True):
        where = f"{path} line {question.line} (index {question.index})"
        image = partial(_decode_image, cells.cells["image"], where)
        rounds = range(len(question.options)) if request.all_rounds else range(1)
        row = []
        for round_id in rounds:
            asked = task.build_prompt(question, round_id)
            shown = question.options[round_id:] + question.options[:round_id]
            letters = mmbench.LETTERS[: len(question.options)]
            line = {
                "question_id": question.index,
                "round_id": round_id,
                "prompt": asked.rsplit("\n", 1)[0],  # LLaVA's cur_prompt: no instruction
            }
            extra = {
                "options": list(shown),
                "option_char": list(letters[round_id:] + letters[:round_id]),
            }
            row.append(Question(asked, image, line, extra, f"{where} round {round_id}"))
        rows.append(row)
    return rows


def load_questions(request: AnswerRequest) -> list[Question]:
    """This chunk's questions (every round of its MMBench rows), image files checked."""
    rows = _mmbench_rows(request) if request.task == "mmbench" else _vqa_rows(request)
    chunk = get_chunk(rows, request.num_chunks, request.chunk_idx)
    _check_images(chunk, request)
    return [question for row in chunk for question in row]


# --------------------------------------------------------------------------- model


def model_id(model_path: str | Path) -> str:
    """LLaVA's ``get_model_name_from_path``: the folder name (``run_checkpoint-N`` for
    ``run/checkpoint-N``)."""
    parts = Path(model_path).resolve().parts
    return f"{parts[-2]}_{parts[-1]}" if parts[-1].startswith("checkpoint-") else parts[-1]


def saved_conv_template(model_path: Path) -> str:
    """The conversation template saved in ``model_path/config.json`` (``conv_template``)."""
    config_path = model_path / "config.json"
    if not config_path.is_file():
        raise EvalInputError(
            f"--model-path {model_path}: no config.json; pass a folder written by stage 2 "
            "(scripts/finetune.sh) or `vitsplit-vlm merge-lora`"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EvalInputError(f"{config_path}: cannot read ({err})") from None
    template = config.get("conv_template") if isinstance(config, dict) else None
    if not isinstance(template, str):
        raise EvalInputError(
            f"{config_path}: no 'conv_template' (model_type {config.get('model_type')!r}); "
            "is this a vitsplit_llava model folder?"
        )
    return template


def check_conv_mode(model_path: Path, conv_mode: str | None) -> str:
    """The model's template; ``conv_mode`` (if given) must be it: it is never guessed."""
    saved = saved_conv_template(model_path)
    if conv_mode is not None and conv_mode != saved:
        raise EvalInputError(
            f"--conv-mode {conv_mode!r} does not match the template the model was trained "
            f"with, {saved!r} ({model_path / 'config.json'} conv_template); pass --conv-mode "
            f"{saved} (or leave it out)"
        )
    return saved


def answer_id(model: str, line: dict[str, Any], text: str) -> str:
    """A stable id for one answer (same model, question, round and text -> same id)."""
    key = json.dumps([model, line["question_id"], line.get("round_id", 0), text])
    return hashlib.sha256(key.encode()).hexdigest()[:_ANSWER_ID_CHARS]


def _progress(total: int, request: AnswerRequest):
    """A tqdm bar (on stderr), or None with ``progress=False``."""
    if not request.progress:
        return None
    from tqdm import tqdm

    desc = f"{request.task} chunk {request.chunk_idx + 1}/{request.num_chunks}"
    return tqdm(total=total, desc=desc, unit="answer")


def check_prompt_lengths(engine, questions: Sequence[Question], max_new_tokens: int) -> None:
    """Refuse (one line naming the question) a prompt that, with `max_new_tokens`, would not fit
    the model's context: its answer would be cut or degenerate. Checked before any answer is
    generated; the tokens of a prompt do not depend on the image's pixels (1x1 stand-in)."""
    from vitsplit_vlm.vlm.context import context_length, prompt_length

    stand_in = Image.new("RGB", (1, 1))
    limit = context_length(engine)
    too_long = []
    for question in questions:
        length = prompt_length(engine, stand_in, [(engine.template.user, question.text)])
        if length + max_new_tokens > limit:
            too_long.append((question, length))
    if too_long:
        question, length = too_long[0]
        raise EvalInputError(
            f"{question.where}: the prompt is {length} tokens (the image counts "
            f"{engine.config.image_seq_length}) and --max-new-tokens asks for up to "
            f"{max_new_tokens} more, beyond the model's context of {limit} tokens "
            f"({len(too_long)} question(s) like this): shorten the question or lower "
            "--max-new-tokens"
        )


def answer(request: AnswerRequest) -> dict[str, Any]:
    """Write the answers file for one chunk; returns a JSON-able summary.

    Everything that can be checked without the model (flags, template, question file, this
    chunk's image files) is checked before it loads. The answers file appears only when every
    answer is written.
    """
    template = check_conv_mode(request.model_path, request.conv_mode)
    questions = load_questions(request)

    from vitsplit_vlm.vlm.engine import GenerationSettings, Request, VLMEngine

    engine = VLMEngine.from_pretrained(request.model_path, device=request.device)
    settings = GenerationSettings(
        max_new_tokens=request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[request.task],
        temperature=request.temperature,
        top_p=request.top_p,
    )
    user = engine.template.user
    check_prompt_lengths(engine, questions, settings.max_new_tokens)
    requests = (Request(q.image(), [(user, q.text)]) for q in questions)
    answers = engine.generate_batches(requests, settings, batch_size=request.batch_size)
    name = model_id(request.model_path)
    start = time.perf_counter()
    bar = _progress(len(questions), request)
    with atomic_output(request.answers_file) as out:
        for question, text in zip(questions, answers, strict=True):
            line = {**question.line, "text": text, **question.extra}
            line.update(answer_id=answer_id(name, line, text), model_id=name, metadata={})
            out.write(json.dumps(line) + "\n")
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    return {
        "answers_file": str(request.answers_file),
        "task": request.task,
        "model_id": name,
        "conv_mode": template,
        "chunk": [request.chunk_idx, request.num_chunks],
        "num_answers": len(questions),
        "batch_size": request.batch_size,
        "seconds": round(seconds, 3),
        "answers_per_second": round(len(questions) / seconds, 3) if seconds > 0 else None,
    }


# --------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class _Line:
    key: tuple[QuestionId, int]
    raw: str
    where: str


def _answer_lines(path: Path) -> list[_Line]:
    """The lines of one chunk's answers file (an empty file is an empty chunk)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EvalInputError(f"{path}: cannot read ({err})") from None
    lines = []
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{path} line {number}: malformed JSON: {err.msg}") from None
        if not isinstance(value, dict):
            raise EvalInputError(f"{path} line {number}: expected a JSON object")
        record = Record(value, f"line {number}")
        qid = question_id(path, record)
        field(path, record, "text", str)
        round_id = field(path, record, "round_id", int) if "round_id" in value else 0
        lines.append(_Line((qid, round_id), raw, f"{path} line {number}"))
    return lines


def _expected_keys(questions: Path, keys: set[tuple[QuestionId, int]]) -> list[tuple]:
    """Every (question_id, round_id) the question file asks for (MMBench: all rounds if any
    answer has a round > 0)."""
    if questions.suffix.lower() == ".tsv":
        rows = mmbench.load_questions(questions, need_answer=False)
        all_rounds = any(round_id > 0 for _, round_id in keys)
        return [(q.index, r) for q in rows for r in (range(len(q.options)) if all_rounds else (0,))]
    return [(qid, 0) for qid in vqav2.load_question_ids(questions)]


def _describe(key: tuple[QuestionId, int]) -> str:
    return f"question_id {key[0]!r}" + (f" round_id {key[1]}" if key[1] else "")


def merge(inputs: Sequence[Path], out: Path, *, questions: Path | None = None) -> dict[str, Any]:
    """Concatenate chunk answer files in order into ``out``; no answer may appear twice and,
    given ``questions``, every question must be answered and no other."""
    lines: list[_Line] = []
    first: dict[tuple, str] = {}
    for path in inputs:
        for line in _answer_lines(path):
            if line.key in first:
                raise EvalInputError(
                    f"{line.where}: duplicate {_describe(line.key)} (first at {first[line.key]})"
                )
            first[line.key] = line.where
            lines.append(line)
    if questions is not None:
        expected = _expected_keys(questions, set(first))
        wanted = set(expected)
        unknown = [line for line in lines if line.key not in wanted]
        if unknown:
            raise EvalInputError(
                f"{unknown[0].where}: {_describe(unknown[0].key)} is not in {questions} "
                f"({len(unknown)} such answer(s))"
            )
        missing = [key for key in expected if key not in first]
        if missing:
            shown = ", ".join(_describe(k) for k in missing[:5]) + (", ..." * (len(missing) > 5))
            raise EvalInputError(
                f"{len(missing)} question(s) of {questions} have no answer in "
                f"{', '.join(map(str, inputs))}: {shown}; did a chunk fail?"
            )
    with atomic_output(out) as handle:
        handle.writelines(line.raw + "\n" for line in lines)
    return {
        "out": str(out),
        "num_inputs": len(inputs),
        "num_answers": len(lines),
        "checked_against": str(questions) if questions is not None else None,
    }
