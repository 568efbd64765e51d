"""`vitsplit-vlm chat`: a multi-turn terminal chat about one image, answers streamed as generated.

    $ vitsplit-vlm chat --model-path checkpoints/vitsplit-tiny --image-file scene.png
    USER: What colour is the circle?
    ASSISTANT: Red
    USER: exit

The conversation template (and so the role names of the prompts) comes from the model's saved
config (`conv_template`). `exit`, `quit` or end of input ends the chat; an empty line is ignored;
Ctrl-C stops the answer being generated (and at the prompt, the chat). A chat that outgrows the
model's context drops its earliest rounds (a ``[note]`` says so); a question too long to answer
is refused with one ``[error]`` line. A model folder or image that cannot be read is one line on
stderr (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .session import Round, build_messages

if TYPE_CHECKING:
    from PIL import Image

    from ..vlm.engine import GenerationSettings, VLMEngine

EXIT_WORDS = frozenset({"exit", "quit"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-path",
        type=Path,
        required=True,
        help="a saved model folder (`make quickstart` trains checkpoints/vitsplit-tiny)",
    )
    parser.add_argument("--image-file", type=Path, required=True, help="the image to talk about")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 decodes greedily")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with T > 0)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..images import open_rgb
    from ..vlm.engine import GenerationSettings
    from .session import ModelFolderError, load_served_model

    try:
        image = open_rgb(args.image_file)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        print(f"--image-file {args.image_file}: cannot read an image ({err})", file=sys.stderr)
        return 2
    try:
        served = load_served_model(args.model_path, device=args.device)
    except ModelFolderError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"[chat] model: {served.description}", file=sys.stderr)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p
    )
    chat_loop(served.engine, image, settings)
    return 0


def chat_loop(
    engine: VLMEngine,
    image: Image.Image,
    settings: GenerationSettings,
    *,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[Round]:
    """Prompt, stream the answer, repeat until `exit`/EOF; returns the rounds (question, answer)."""
    from ..vlm.context import PromptTooLong, fit

    out = out or sys.stdout
    template = engine.template
    rounds: list[Round] = []
    while True:
        try:
            question = read(f"{template.user}: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out, flush=True)
            return rounds
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            return rounds
        try:  # a chat longer than the context drops its earliest rounds
            fitted = fit(engine, image, build_messages(template, rounds, question), settings)
        except PromptTooLong as err:
            print(f"[error] {err}", file=out, flush=True)
            continue
        for note in fitted.notes:
            print(f"[note] {note}", file=out, flush=True)
        print(f"{template.assistant}: ", end="", file=out, flush=True)
        answer = _stream_answer(engine, image, fitted.messages, fitted.settings, out)
        rounds.append((question, answer))


def _stream_answer(engine, image, messages, settings, out: TextIO) -> str:
    """Print the answer as it grows; returns it ("" if none, the round is then not remembered)."""
    shown = answer = ""
    try:
        for answer in engine.stream(image, messages, settings):
            if answer.startswith(shown):  # cleaning may rewrite the tail; print only growth
                print(answer[len(shown) :], end="", file=out, flush=True)
                shown = answer
    except KeyboardInterrupt:
        print(" [stopped]", file=out, flush=True)
        return answer
    except (ValueError, RuntimeError) as err:  # a bad conversation, or the model failed
        print(f"\n[error] {err}", file=out, flush=True)
        return ""
    print("" if answer else "(empty answer)", file=out, flush=True)
    return answer
