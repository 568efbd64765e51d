"""`vitsplit-vlm demo`: a Gradio chat about an uploaded image, answers streamed as generated.

    vitsplit-vlm demo --model-path checkpoints/vitsplit-tiny      # http://127.0.0.1:7860
    vitsplit-vlm demo --model-path checkpoints/vitsplit-tiny \\
        --examples playground/data/shapes/heldout.jsonl          # + 3 playground scenes

`build_demo(engine, ...)` returns the `gr.Blocks`; `serve(demo, ...)` queues and launches it.
The page has an image upload, a chat (`gr.Chatbot`, messages format), temperature / top-p /
max-new-tokens sliders, Send / Regenerate / Clear, and example images. A new image starts a new
conversation, as in LLaVA's demo. Problems are shown in the page and the server keeps serving:
a file that is not an image is refused at upload (a warning, the image is cleared), Gradio
refuses uploads over `max_upload_mb`, and a failed generation becomes a warning plus an error
note in the chat (notes are never sent back to the model). The handlers themselves refuse an
image over `MAX_IMAGE_PIXELS` and a question too long for the model's context, so the API is
held to the page's limits; a chat that outgrows the context drops its earliest rounds (a note
says so).

API (gradio_client): ``Client(url).submit(handle_file(png), "question", api_name="/chat")``
streams the chat as a list of ``{"role", "content"}`` messages; the history and the generation
settings are optional arguments. ``/regenerate`` re-answers the last question.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .session import Round, build_messages

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from ..vlm.engine import GenerationSettings, VLMEngine

logger = logging.getLogger(__name__)

TITLE = "LLaVA-1.5 + ViT-Split"
CSS = "#banner { border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; }"
MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs before the model decodes them
History = list[dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-path",
        type=Path,
        required=True,
        help="a saved model folder (`make quickstart` trains checkpoints/vitsplit-tiny)",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="LLaVA question file (JSONL with 'image' and 'text') whose first rows become "
        "example images, e.g. playground/data/shapes/heldout.jsonl (default: photos only)",
    )
    parser.add_argument(
        "--image-folder",
        type=Path,
        default=None,
        help="folder the --examples images are relative to (default: the file's images/ folder)",
    )
    parser.add_argument("--num-examples", type=int, default=3, help="rows taken from --examples")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the demo)",
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-upload-mb", type=int, default=10, help="largest accepted upload")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="generations run at once; further users wait in the queue",
    )
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        print(
            "[demo] Gradio is not installed: pip install -e '.[demo]' (make test installs it)",
            file=sys.stderr,
        )
        return 2
    from .examples import example_rows, question_examples
    from .session import ModelFolderError, load_served_model

    try:
        extra = (
            question_examples(args.examples, args.image_folder, limit=args.num_examples)
            if args.examples
            else []
        )
        served = load_served_model(args.model_path, device=args.device)
    except (ModelFolderError, ValueError) as err:
        print(f"[demo] {err}", file=sys.stderr)
        return 2
    print(f"[demo] model: {served.description}", flush=True)
    if args.host not in ("127.0.0.1", "localhost"):
        print(f"[demo] binding {args.host}: the demo is reachable from the network", flush=True)
    demo = build_demo(
        served.engine,
        model_info=served.description,
        examples=example_rows(extra=extra),
    )
    serve(
        demo,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
    )
    return 0


def serve(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: int = 10,
    concurrency: int = 1,
    block: bool = True,
) -> None:
    """Queue (at most `concurrency` generations at once) and launch; `block=False` returns."""
    if concurrency < 1:
        raise ValueError(f"--concurrency: must be >= 1, got {concurrency}")
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{max_upload_mb}mb",
        css=CSS,
        show_error=True,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
    )


def build_demo(
    engine: VLMEngine,
    *,
    model_info: str | None = None,
    banner: str | None = None,
    examples: Sequence[Sequence[str]] | None = None,
    defaults: GenerationSettings | None = None,
    min_new_tokens: int = 0,
) -> gr.Blocks:
    """The demo page for `engine`.

    `banner` (Markdown) is shown prominently (e.g. a note about the model); `examples` are
    ``[image_path, question]`` rows; `defaults` set the sliders (temperature 0.2, top-p 0.7,
    512 new tokens); `min_new_tokens` is a floor on every answer's length.
    """
    import gradio as gr

    from ..vlm.engine import GenerationSettings

    d = defaults or GenerationSettings(max_new_tokens=512, temperature=0.2, top_p=0.7)
    handlers = ChatHandlers(engine, min_new_tokens=min_new_tokens)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}" + (f"\nModel: `{model_info}`" if model_info else ""))
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(  # image_mode None: 16-bit images reach `to_rgb` unclipped
                    type="pil",
                    image_mode=None,
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="image",
                )
                temperature = gr.Slider(
                    0.0, 1.0, value=d.temperature, step=0.05, label="Temperature (0 = greedy)"
                )
                top_p = gr.Slider(
                    0.0,
                    1.0,
                    value=d.top_p if d.top_p is not None else 1.0,
                    step=0.05,
                    label="Top p",
                )
                max_new_tokens = gr.Slider(
                    1, 1024, value=d.max_new_tokens, step=1, label="Max new tokens"
                )
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420)
                question = gr.Textbox(
                    label="Question",
                    show_label=False,
                    elem_id="question",
                    placeholder="Ask about the image and press Enter",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
        if examples:
            gr.Examples(
                [list(row) for row in examples],
                inputs=[image, question],
                label="Examples (click one, then Send)",
            )

        settings = [temperature, top_p, max_new_tokens]
        # Send: move the question into the chat at once, then stream the answer to it.
        gr.on(
            [send.click, question.submit],
            _take_question,
            [question, chatbot],
            [question, chatbot],
            validator=_check_question,
            concurrency_limit=None,
            api_visibility="private",
        ).success(handlers.respond, [image, chatbot, *settings], chatbot, api_visibility="private")
        regenerate.click(
            handlers.respond, [image, chatbot, *settings], chatbot, api_name="regenerate"
        )
        clear.click(
            lambda: ([], ""), None, [chatbot, question], queue=False, api_visibility="private"
        )
        image.upload(
            handlers.check_upload,
            image,
            image,
            preprocess=False,
            concurrency_limit=None,
            api_visibility="private",
        )
        image.change(lambda: [], None, chatbot, queue=False, api_visibility="private")
        # The API endpoint: image, question and (optional) history in one call; no UI trigger.
        gr.on([], handlers.chat, [image, question, chatbot, *settings], chatbot, api_name="chat")
    return demo


class ChatHandlers:
    """The demo's event handlers over one engine (Gradio calls them from its worker threads)."""

    def __init__(
        self,
        engine: VLMEngine,
        *,
        min_new_tokens: int = 0,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.engine = engine
        self.min_new_tokens = min_new_tokens
        self.max_image_pixels = max_image_pixels

    def chat(
        self,
        image: Image.Image | None,
        message: str,
        history: History | None = None,
        temperature: float = 0.2,
        top_p: float = 0.7,
        max_new_tokens: int = 512,
    ) -> Iterator[History]:
        """Answer `message` about `image` after `history`; yields the chat as the answer grows."""
        _, history = _take_question(message, history)
        yield from self.respond(image, history, temperature, top_p, max_new_tokens)

    def respond(
        self,
        image: Image.Image | None,
        history: History | None = None,
        temperature: float = 0.2,
        top_p: float = 0.7,
        max_new_tokens: int = 512,
    ) -> Iterator[History]:
        """Answer the last question of `history` (again, dropping any answer it has)."""
        import gradio as gr

        history = list(history or [])
        last_user = max((j for j, m in enumerate(history) if m["role"] == "user"), default=None)
        if last_user is None:
            gr.Warning("Nothing to answer yet: ask a question first.")
            yield history
            return
        question = message_text(history[last_user]["content"])
        yield from self._answer(
            image, history[:last_user], question, self._settings(temperature, top_p, max_new_tokens)
        )

    def check_upload(self, payload: dict | None) -> Any:
        """Refuse an upload PIL cannot read (or a huge one): warn and clear the image."""
        import gradio as gr
        from PIL import Image

        path = (payload or {}).get("path")
        if not path:
            return gr.skip()
        name = (payload or {}).get("orig_name") or Path(path).name
        try:
            with Image.open(path) as im:
                width, height = im.size
                im.verify()
        except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for non-images
            logger.info("refused upload %s: %s", name, err)
            gr.Warning(f"{name} is not an image this demo can read; upload a PNG or JPEG.")
            return None
        problem = self.image_problem(width, height, name)
        if problem:
            gr.Warning(problem)
            return None
        return gr.skip()

    def image_problem(self, width: int, height: int, name: str = "the image") -> str | None:
        """Why an image of this size is refused (None when it is not)."""
        if width * height <= self.max_image_pixels:
            return None
        return f"{name} is {width}x{height} pixels; the limit is {self.max_image_pixels:,}."

    def _settings(self, temperature: float, top_p: float, max_new_tokens: int):
        from ..vlm.engine import GenerationSettings

        max_new_tokens = int(max_new_tokens)
        floor = min(self.min_new_tokens, max_new_tokens)
        return GenerationSettings(
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            extra={"min_new_tokens": floor} if floor else {},
        )

    def _answer(
        self,
        image: Image.Image | None,
        history: History,
        question: str,
        settings: GenerationSettings,
    ) -> Iterator[History]:
        import gradio as gr

        from ..vlm.context import PromptTooLong, fit

        messages = build_messages(self.engine.template, rounds_from_history(history), question)
        history = [*history, {"role": "user", "content": question}]
        yield history
        problem = None if image is None else self.image_problem(*image.size)
        if problem:  # the upload check covers the page; the API reaches this handler directly
            gr.Warning(problem)
            yield [*history, _note("⚠️ Image refused", problem)]
            return
        answer = ""
        try:
            fitted = fit(self.engine, image, messages, settings)
            history = [*history, *(_note("Note", note) for note in fitted.notes)]
            for text in self.engine.stream(image, fitted.messages, fitted.settings):
                if text != answer:
                    answer = text
                    yield [*history, {"role": "assistant", "content": answer}]
        except PromptTooLong as err:
            gr.Warning(str(err))
            yield [*history, _note("⚠️ Prompt too long", str(err))]
            return
        except Exception as err:  # the page shows it and the server keeps serving
            logger.exception("generation failed")
            gr.Warning(f"Generation failed: {err}")
            yield [*history, _note("⚠️ Generation failed", str(err))]
            return
        if not answer:
            yield [*history, _note("Empty answer", "The model ended its reply without any text.")]


def _check_question(message: str, history: History | None) -> tuple[dict, dict]:
    """Validation of the Send inputs: an empty question is marked in the page, nothing runs."""
    import gradio as gr

    asked = bool((message or "").strip())
    return gr.validate(asked, "Type a question first."), gr.validate(True, "")


def _take_question(message: str, history: History | None) -> tuple[str, History]:
    """("", the chat with `message` appended as the user's); an empty message is an error."""
    import gradio as gr

    question = (message or "").strip()
    if not question:
        raise gr.Error("Type a question first.", title="Empty question")
    return "", [*(history or []), {"role": "user", "content": question}]


def _note(title: str, text: str) -> dict[str, Any]:
    """An assistant message shown as a titled note; `rounds_from_history` leaves notes out."""
    return {"role": "assistant", "content": text, "metadata": {"title": title}}


def message_text(content: Any) -> str:
    """The text of a chat message's content (a string or Gradio's list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return ""


def rounds_from_history(history: History) -> list[Round]:
    """(question, answer) rounds of a Gradio chat; notes (messages with a title) are skipped."""
    rounds: list[Round] = []
    for message in history:
        if message["role"] == "user":
            rounds.append((message_text(message["content"]), ""))
        elif rounds and not (message.get("metadata") or {}).get("title"):
            asked, answered = rounds[-1]
            rounds[-1] = (asked, answered + message_text(message["content"]))
    return rounds
