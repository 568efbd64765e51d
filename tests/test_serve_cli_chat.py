"""`vitsplit-vlm chat` and what it shares with the demo (`serve.session`), on a saved tiny model.

The expected answers come from `VLMEngine.generate` (greedy) in this process; the chat must print
the same text, streamed, turn after turn, with the history sent back to the model.
"""

from __future__ import annotations

import io
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

Q1, Q2 = "What colour is the circle?", "How many shapes are there?"
MAX_NEW = 12


@pytest.fixture(scope="module")
def model_dir(vlm_dir) -> Path:
    return vlm_dir


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    from vitsplit_vlm.playground.shapes import sample_scene

    path = tmp_path_factory.mktemp("img") / "scene.png"
    sample_scene(random.Random(0)).render().save(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    from vitsplit_vlm.vlm.engine import VLMEngine

    return VLMEngine.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def expected(engine, image_file) -> tuple[str, str]:
    """Greedy answers to Q1, then to Q2 after the first round, from `generate`."""
    from PIL import Image

    from vitsplit_vlm.serve.session import build_messages
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request

    image = Image.open(image_file).convert("RGB")
    settings = GenerationSettings(max_new_tokens=MAX_NEW, temperature=0.0)
    t = engine.template
    a1 = engine.generate([Request(image, build_messages(t, [], Q1))], settings)[0]
    a2 = engine.generate([Request(image, build_messages(t, [(Q1, a1)], Q2))], settings)[0]
    assert a1 and a2, "the seeded tiny model should answer both questions with some text"
    return a1, a2


def test_build_messages_drops_unanswered_rounds_and_plain_takes_one_round():
    from vitsplit_vlm.serve.session import build_messages
    from vitsplit_vlm.vlm.conversation import get_template

    vicuna = get_template("vicuna_v1")
    rounds = [("q1", "a1"), ("q2", ""), ("q3", "a3")]
    assert build_messages(vicuna, rounds, "q4") == [
        ("USER", "q1"),
        ("ASSISTANT", "a1"),
        ("USER", "q3"),
        ("ASSISTANT", "a3"),
        ("USER", "q4"),
    ]
    assert build_messages(get_template("plain"), rounds, "q4") == [("USER", "q4")]


def test_chat_loop_streams_answers_with_history_and_ends_at_eof(engine, image_file, expected):
    from PIL import Image

    from vitsplit_vlm.serve.cli_chat import chat_loop
    from vitsplit_vlm.vlm.engine import GenerationSettings

    lines = iter(["", "   ", Q1, Q2])
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    rounds = chat_loop(
        engine,
        Image.open(image_file),
        GenerationSettings(max_new_tokens=MAX_NEW),
        read=read,
        out=out,
    )
    a1, a2 = expected
    assert rounds == [(Q1, a1), (Q2, a2)]
    assert prompts == ["USER: "] * 5  # two blank lines ignored, two questions, then EOF
    assert out.getvalue() == f"ASSISTANT: {a1}\nASSISTANT: {a2}\n\n"


def test_an_abandoned_stream_stops_generating(engine, image_file):
    """Closing `engine.stream` early (Ctrl-C in the chat, a closed page) ends its worker thread."""
    from PIL import Image

    from vitsplit_vlm.vlm.engine import GenerationSettings

    long = GenerationSettings(max_new_tokens=1800, extra={"min_new_tokens": 1800})  # ~10 s
    before = set(threading.enumerate())
    stream = engine.stream(Image.open(image_file), [("USER", Q1)], long)
    next(stream)
    (worker,) = set(threading.enumerate()) - before
    stream.close()
    worker.join(timeout=3)
    assert not worker.is_alive(), "generation went on after the stream was closed"


class _Reader:
    """Collects a pipe's output in a thread so the test can wait for text with a deadline."""

    def __init__(self, stream) -> None:
        self.text = ""
        self._chunks: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            self._chunks.put(chunk.decode("utf-8", errors="replace"))

    def wait_for(self, needle: str, start: int, timeout: float) -> int:
        """Index just past the first `needle` at or after `start`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (at := self.text.find(needle, start)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {needle!r} within {timeout}s; output so far:\n{self.text}")
            try:
                self.text += self._chunks.get(timeout=min(left, 0.5))
            except queue.Empty:
                pass
        return at + len(needle)


def test_cli_chat_two_turns_through_stdin(model_dir, image_file, expected, tmp_path):
    """The real command in a subprocess: each answer is printed before the next prompt is read."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    cmd = [
        sys.executable,
        "-m",
        "vitsplit_vlm.cli",
        "chat",
        "--model-path",
        str(model_dir),
        "--image-file",
        str(image_file),
        "--temperature",
        "0",
        "--max-new-tokens",
        str(MAX_NEW),
    ]
    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env
        )
    try:
        out = _Reader(proc.stdout)
        a1, a2 = expected
        at = out.wait_for("USER: ", 0, timeout=90)  # startup: imports and model loading
        for line, answer in (("", None), (Q1, a1), (Q2, a2)):
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            if answer is not None:
                at = out.wait_for(f"ASSISTANT: {answer}\n", at, timeout=30)
            at = out.wait_for("USER: ", at, timeout=30)
        proc.stdin.write(b"exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.text.count("USER: ") == 4  # start, after the blank line, after each answer
    assert f"[chat] model: {model_dir}" in log.read_text()


def test_cli_chat_refuses_an_unreadable_image(tmp_path, capsys):
    from vitsplit_vlm.cli import main

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["chat", "--model-path", str(tmp_path), "--image-file", str(bad)]) == 2
    assert "cannot read an image" in capsys.readouterr().err


def test_a_folder_without_a_model_is_one_clear_error(model_dir, tmp_path, capsys):
    from PIL import Image

    from vitsplit_vlm.cli import main
    from vitsplit_vlm.serve.session import ModelFolderError, load_served_model

    served = load_served_model(model_dir, device="cpu")
    assert served.engine.template.name == "vicuna_v1" and str(model_dir) in served.description
    with pytest.raises(ModelFolderError, match="holds no config.json"):
        load_served_model(tmp_path, device="cpu")
    image = tmp_path / "scene.png"
    Image.new("RGB", (32, 32)).save(image)
    missing = tmp_path / "no-model"
    assert main(["chat", "--model-path", str(missing), "--image-file", str(image)]) == 2
    assert f"--model-path {missing} does not exist" in capsys.readouterr().err
