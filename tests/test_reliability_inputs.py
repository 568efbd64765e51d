"""Inputs a new user gets wrong, at inference: 16-bit images, model folders that hold no model,
and prompts longer than the model's context (chat and eval; the demo's are in
test_serve_gradio.py).

Each test reproduces a defect the old code had: 16-bit greyscale came out almost white,
``chat`` on a folder that holds no ViT-Split model printed a traceback, and an over-long prompt
gave a degenerate answer without a word.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitsplit_vlm.cli import main

QUESTION = "What colour is the circle?"


# --------------------------------------------------------------------------- 16-bit images


@pytest.fixture(scope="module")
def ramp16(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 16-bit greyscale PNG (a ramp over 0..65535) and the 8-bit values it should give."""
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path_factory.mktemp("img16") / "ramp16.png"
    Image.fromarray(values).save(path)
    return path, np.rint(values / 257.0).astype(np.uint8)


def test_16_bit_images_are_scaled_by_every_loader(ramp16, tmp_path):
    """Defect: ``convert("RGB")`` clips I;16 to 255: the ramp came out almost all white."""
    from vitsplit_vlm.dense.datasets import read_rgb
    from vitsplit_vlm.eval.answer import _open_image
    from vitsplit_vlm.images import open_rgb
    from vitsplit_vlm.vlm.data import load_image

    path, expected = ramp16
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # what PIL gives for this file
    loaded = {
        "images.open_rgb": open_rgb(path),
        "vlm training": load_image(path, "s1"),
        "dense": Image.fromarray(read_rgb(path)),
        "eval": _open_image(path, "q1"),
    }
    for where, image in loaded.items():
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (64, 64, 3), where
        assert np.array_equal(pixels[..., 0], expected), where
        assert np.array_equal(pixels[..., 0], pixels[..., 2]), where


def test_other_modes_are_pil_conversions_and_float_images_are_scaled():
    from vitsplit_vlm.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 40))
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(rgba.convert("RGB")))
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, np.nan]], np.float32), mode="F")
    assert np.asarray(to_rgb(unit))[..., 0].tolist() == [[0, 128], [255, 0]]
    wide = Image.fromarray(np.array([[0.0, 65535.0]], np.float32), mode="F")
    assert np.asarray(to_rgb(wide))[..., 0].tolist() == [[0, 255]]


def test_the_engine_sees_a_16_bit_image_as_its_8_bit_twin(vlm_dir, ramp16):
    from vitsplit_vlm.vlm.engine import VLMEngine

    path, expected = ramp16
    engine = VLMEngine.from_pretrained(vlm_dir, device="cpu")
    twin = Image.fromarray(expected).convert("RGB")
    with Image.open(path) as wide:
        wide.load()
        assert engine.prepare_image(wide).equal(engine.prepare_image(twin))


# --------------------------------------------------------------------------- chat


def _chat(capsys, model_path, image) -> tuple[int, str]:
    code = main(["chat", "--model-path", str(model_path), "--image-file", str(image)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from vitsplit_vlm.playground.shapes import sample_scene

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    sample_scene(random.Random(0)).render().save(path)
    return path


def test_chat_on_folders_without_a_model_is_one_line(tiny, vlm_dir, scene, tmp_path, capsys):
    """Defect: a folder with a config.json but no ViT-Split model gave a traceback."""
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(vlm_dir / "config.json", no_weights)
    stage1 = tmp_path / "stage1"
    shutil.copytree(no_weights, stage1)
    (stage1 / "mm_projector.safetensors").write_bytes(b"")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "config.json").write_text("{not json")
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(vlm_dir / name, no_processor)
    truncated = tmp_path / "truncated"
    shutil.copytree(vlm_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    cases = {
        tiny.llama: "holds a 'llama' model, not a ViT-Split LLaVA one",
        no_weights: "holds no model weights",
        stage1: "a stage-1 connector (mm_projector.safetensors)",
        garbled: "cannot read",
        no_processor: "holds no processor",
        truncated: "cannot load the model",
        tmp_path / "missing": "does not exist",
    }
    for folder, needle in cases.items():
        code, err = _chat(capsys, folder, scene)
        lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
        assert code == 2 and len(lines) == 1, (folder, err)
        assert lines[0].startswith(f"--model-path {folder}") and needle in lines[0], lines[0]


def test_chat_refuses_a_decompression_bomb_in_one_line(vlm_dir, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("L", (16000, 12000)).save(big)  # 192 MP: PIL's DecompressionBombError
    code, err = _chat(capsys, vlm_dir, big)
    assert code == 2 and err.strip().count("\n") == 0 and "cannot read an image" in err


@pytest.fixture(scope="module")
def engine(vlm_dir):
    from vitsplit_vlm.vlm.engine import VLMEngine

    return VLMEngine.from_pretrained(vlm_dir, device="cpu")


def _long_text(engine, tokens: int) -> str:
    """A question of about `tokens` tokens."""
    words = "red green blue circle square triangle ".split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    while len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) > tokens:
        text = text.rsplit(" ", 1)[0]
    return text


def _chat_loop(engine, scene, questions: list[str], max_new_tokens: int = 4):
    from vitsplit_vlm.serve.cli_chat import chat_loop
    from vitsplit_vlm.vlm.engine import GenerationSettings

    lines, out = iter(questions), io.StringIO()

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    rounds = chat_loop(engine, Image.open(scene), settings, read=read, out=out)
    return rounds, out.getvalue()


def test_chat_refuses_a_question_longer_than_the_context(engine, scene):
    """Defect: a prompt beyond the context gave a degenerate answer with no warning."""
    from vitsplit_vlm.vlm.context import context_length

    too_long = _long_text(engine, context_length(engine) + 10)
    rounds, out = _chat_loop(engine, scene, [too_long, QUESTION])
    errors = [line for line in out.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and "leaves no room to answer" in errors[0]
    assert f"context is {context_length(engine)} tokens" in errors[0]
    assert [q for q, _ in rounds] == [QUESTION]  # refused, and the chat goes on


def test_a_chat_that_outgrows_the_context_drops_its_earliest_rounds(engine, scene):
    from vitsplit_vlm.serve.session import build_messages
    from vitsplit_vlm.vlm.context import context_length, prompt_length

    third = _long_text(engine, context_length(engine) // 3)
    rounds, out = _chat_loop(engine, scene, [third, third, third, QUESTION])
    notes = [line for line in out.splitlines() if line.startswith("[note]")]
    assert len(rounds) == 4 and notes, out
    assert "dropped the 1 earliest round(s)" in notes[0]
    messages = build_messages(engine.template, rounds[1:3], QUESTION)  # what fit after the drop
    assert prompt_length(engine, Image.open(scene), messages) < context_length(engine)


def test_generate_cuts_the_answer_to_the_room_left(engine, scene, caplog):
    from vitsplit_vlm.vlm.context import PromptTooLong, context_length, prompt_length
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request

    image = Image.open(scene)
    overhead = prompt_length(engine, image, [(engine.template.user, "x")])  # system, image, cue
    close = _long_text(engine, context_length(engine) - overhead - 30)
    messages = [(engine.template.user, close)]
    room = context_length(engine) - prompt_length(engine, image, messages)
    assert 0 < room < 64
    settings = GenerationSettings(max_new_tokens=64, temperature=0.0, extra={"min_new_tokens": 64})
    with caplog.at_level("WARNING", logger="vitsplit_vlm.vlm.context"):
        (answer,) = engine.generate([Request(image, messages)], settings)
    assert f"answer limited to {room} new tokens (asked 64)" in caplog.text
    assert len(engine.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= room + 2
    with pytest.raises(PromptTooLong, match="no room to answer"):
        engine.generate([Request(image, [(engine.template.user, close + " " + close)])])


# --------------------------------------------------------------------------- eval


def test_eval_refuses_an_over_long_question_before_answering(vlm_dir, scene, tmp_path, capsys):
    from vitsplit_vlm.vlm.engine import VLMEngine

    engine = VLMEngine.from_pretrained(vlm_dir, device="cpu")
    shutil.copy(scene, tmp_path / "scene.png")
    long = _long_text(engine, 2100)
    rows = [{"question_id": q, "image": "scene.png", "text": QUESTION} for q in range(3)]
    rows.append({"question_id": 3, "image": "scene.png", "text": long})
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "a.jsonl"
    code = main(["eval", "answer", "--task", "vqav2", "--model-path", str(vlm_dir),
                 "--question-file", str(questions), "--image-folder", str(tmp_path),
                 "--answers-file", str(out), "--max-new-tokens", "3", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the weights' progress bar
    assert code == 2 and err.count("error: ") == 1, err
    for needle in ("line 4", "question_id 3", "--max-new-tokens", "context of 2048 tokens"):
        assert needle in last, last
    assert not out.exists()
