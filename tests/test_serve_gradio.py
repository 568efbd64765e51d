"""The Gradio demo, served for real on 127.0.0.1 and driven by gradio_client and by headless
Chromium (Debian's /usr/bin/chromium through Playwright).

The model is the untrained tiny LLaVA + ViT-Split with a floor on answer length, so every answer
is visible text; it samples at temperature 1 so that answers contain spaces and stream in
several pieces (the streamer emits text at word boundaries).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
ANSWER_TOKENS = 24
MAX_UPLOAD_MB = 1
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not installed at /usr/bin/chromium "
    "(apt-get install chromium chromium-driver; .ci/run does this)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[list[str]]:
    """The photos, then 3 playground scenes read from a held-out question file (`--examples`)."""
    from vitsplit_vlm.playground.shapes import write_llava_dataset
    from vitsplit_vlm.serve.examples import example_rows, question_examples

    data = write_llava_dataset(tmp_path_factory.mktemp("shapes"), num_train=1, num_heldout=2)
    scenes = question_examples(data.heldout, limit=3)
    return example_rows(tmp_path_factory.mktemp("examples"), extra=scenes)


@pytest.fixture(scope="module")
def engine(tiny):
    """The untrained tiny model's real VLMEngine, recording when each streamed generation starts
    and ends on the server (`engine.intervals`): the client's job status lags the server, so it
    cannot tell whether two generations overlapped."""
    import torch

    from vitsplit_vlm.vlm.builder import build_vlm
    from vitsplit_vlm.vlm.engine import VLMEngine

    class TimedEngine(VLMEngine):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.intervals: list[tuple[float, float]] = []

        def stream(self, *args, **kwargs):
            start = time.monotonic()
            try:
                yield from super().stream(*args, **kwargs)
            finally:
                self.intervals.append((start, time.monotonic()))

    torch.manual_seed(0)
    built = build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)
    return TimedEngine(built.model, built.processor)


@pytest.fixture(scope="module")
def server(engine, examples):
    """URL of the demo on a free port; closed at the end of the module."""
    from vitsplit_vlm.serve.gradio_demo import build_demo, serve
    from vitsplit_vlm.vlm.engine import GenerationSettings

    demo = build_demo(
        engine,
        model_info="untrained tiny (tests)",
        banner="**Untrained tiny model** (test banner)",
        examples=examples,
        defaults=GenerationSettings(max_new_tokens=ANSWER_TOKENS, temperature=1.0, top_p=1.0),
        min_new_tokens=ANSWER_TOKENS,
    )
    port = _free_port()
    serve(demo, host="127.0.0.1", port=port, max_upload_mb=MAX_UPLOAD_MB, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _answers(history: list[dict]) -> list[str]:
    from vitsplit_vlm.serve.gradio_demo import message_text

    return [message_text(m["content"]) for m in history if m["role"] == "assistant"]


def test_examples_have_real_photos_and_playground_scenes(examples):
    names = [Path(image).name for image, _ in examples]
    assert {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"} <= set(names)
    assert sum(name.startswith("heldout_") for name in names) == 3
    assert all(Path(image).is_file() and question for image, question in examples)
    assert all("\n" not in question for _, question in examples)


def test_question_examples_name_the_row_of_a_missing_image(tmp_path):
    from vitsplit_vlm.serve.examples import question_examples

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"image": "a.png", "text": "Q?"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl line 1: image .*a.png not found"):
        question_examples(questions, tmp_path)


def test_client_streams_an_answer(server, examples):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    job = client.submit(handle_file(examples[0][0]), "What is in the image?", api_name="/chat")
    partial = []
    for history in job:  # bounded by the job's own end; the answer is 24 tokens
        partial.append(_answers(history)[-1] if _answers(history) else "")
    final = job.outputs()[-1]
    assert [m["role"] for m in final] == ["user", "assistant"]
    assert _answers(final)[0].strip(), "the final answer is empty"
    growing = [p for p in dict.fromkeys(partial) if p]
    assert len(growing) >= 2, f"no partial answers before the final one: {partial}"
    assert all(_answers(final)[0].startswith(p) for p in growing)

    # A second turn sends the history back: the answer is appended, nothing is lost.
    again = client.predict(handle_file(examples[0][0]), "And the colours?", final, api_name="/chat")
    assert [m["role"] for m in again] == ["user", "assistant"] * 2
    assert _answers(again)[0] == _answers(final)[0] and _answers(again)[1].strip()


def test_client_generation_failure_is_a_note_and_the_server_keeps_serving(server, examples):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    # An <image> placeholder without an image makes the engine raise: a real failure path.
    failed = client.predict(None, "<image> What is this?", api_name="/chat")
    assert failed[-1]["metadata"]["title"] == "⚠️ Generation failed"
    assert "no image was given" in _answers(failed)[-1]
    ok = client.predict(
        handle_file(examples[-1][0]), "How many shapes are there?", api_name="/chat"
    )
    assert _answers(ok)[-1].strip() and not ok[-1].get("metadata")


def test_client_concurrent_users_are_queued_one_at_a_time(server, engine, examples):
    from gradio_client import Client, handle_file

    engine.intervals.clear()
    image = handle_file(examples[1][0])
    jobs = [Client(server, verbose=False).submit(image, q, api_name="/chat") for q in "AB"]
    submitted = time.monotonic()
    deadline = submitted + 60
    while not all(job.done() for job in jobs):
        assert time.monotonic() < deadline, "the two requests did not finish within 60 s"
        time.sleep(0.05)
    assert all(_answers(job.outputs()[-1])[-1].strip() for job in jobs)
    (_, first_end), (second_start, _) = sorted(engine.intervals)
    assert submitted < first_end, "the second request came after the first had finished"
    assert first_end <= second_start, (
        f"two generations ran at once with --concurrency 1: {engine.intervals}"
    )


def test_client_limits_hold_in_the_handler(server, engine, examples, tmp_path):
    """Defect: the 50-megapixel limit sat on the page's upload event only, so the API answered a
    64 MP image; an over-long question got a degenerate answer with no word. Both are now
    refused by the handler (a titled note, no generation) and the next request works."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from vitsplit_vlm.serve.gradio_demo import MAX_IMAGE_PIXELS

    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 8000), 128).save(huge)  # 64 MP, a few hundred kB
    assert huge.stat().st_size < MAX_UPLOAD_MB * 2**20
    client = Client(server, verbose=False)
    engine.intervals.clear()
    refused = client.predict(handle_file(str(huge)), "What is this?", api_name="/chat")
    assert refused[-1]["metadata"]["title"] == "⚠️ Image refused"
    assert f"8000x8000 pixels; the limit is {MAX_IMAGE_PIXELS:,}" in _answers(refused)[-1]
    long = "circle " * 2100  # more tokens than the tiny model's context of 2048
    too_long = client.predict(handle_file(examples[0][0]), long, api_name="/chat")
    assert too_long[-1]["metadata"]["title"] == "⚠️ Prompt too long"
    assert "leaves no room to answer" in _answers(too_long)[-1]
    assert engine.intervals == [], "the model ran on a refused request"
    ok = client.predict(handle_file(examples[0][0]), "What is this?", api_name="/chat")
    assert _answers(ok)[-1].strip() and not ok[-1].get("metadata")


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(20_000)
        hosts: set[str] = set()
        page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
        page.goto(server)
        yield page
        browser.close()
    assert hosts == {server.split("/")[2]}, f"the page fetched from other hosts: {hosts}"


def _wait_until_answered(page, n: int, *, other_than: str = "", timeout: float = 30.0) -> str:
    """Text of the `n`-th bot message once it is non-empty, not `other_than`, and settled."""
    bot = page.locator("#chatbot .message.bot").nth(n - 1)
    deadline, last, stable = time.monotonic() + timeout, None, 0
    while stable < 3:
        assert time.monotonic() < deadline, f"answer {n} did not settle within {timeout}s"
        text = bot.inner_text() if bot.count() else ""
        settled = text.strip() and text != other_than and text == last
        stable = stable + 1 if settled else 0
        last = text
        page.wait_for_timeout(300)
    return last


def _ask(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#send").click()


@needs_chromium
def test_browser_upload_ask_and_see_the_streamed_answer(page, examples, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#banner")).to_contain_text("Untrained tiny model")
    photo = next(image for image, _ in examples if image.endswith("chelsea.png"))
    page.locator("#image input[type=file]").set_input_files(photo)
    expect(page.locator("#image img")).to_be_visible()
    _ask(page, "What animal is this?")
    expect(page.locator("#question textarea")).to_have_value("")  # moved into the chat at once
    expect(page.locator("#chatbot")).to_contain_text("What animal is this?")
    assert _wait_until_answered(page, 1).strip()

    shot = tmp_path / "demo_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, RESULTS / "demo_chat.png")
    print(f"screenshot: {RESULTS / 'demo_chat.png'}")

    page.locator("#clear").click()
    expect(page.locator("#chatbot .message")).to_have_count(0)


@needs_chromium
def test_browser_bad_uploads_are_refused_in_the_page_and_the_next_request_works(
    page, examples, tmp_path
):
    from playwright.sync_api import expect

    upload = page.locator("#image input[type=file]")
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG")
    upload.set_input_files(str(not_image))
    expect(page.locator(".toast-body").filter(has_text="notes.png is not an image")).to_be_visible()
    expect(page.locator("#image img")).to_have_count(0)  # the bad file was cleared

    too_big = tmp_path / "huge.png"
    too_big.write_bytes(b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    upload.set_input_files(str(too_big))
    expect(page.locator(".toast-body").filter(has_text="exceed the maximum")).to_be_visible()

    page.locator("#send").click()  # an empty question is marked in the page, nothing is sent
    expect(page.locator("#question")).to_contain_text("Type a question first.")

    scene = examples[-1][0]
    upload.set_input_files(scene)
    expect(page.locator("#image img")).to_be_visible()
    _ask(page, "How many shapes are there?")
    first = _wait_until_answered(page, 1)
    page.locator("#regenerate").click()  # samples again (temperature 1): a new answer replaces it
    _wait_until_answered(page, 1, other_than=first)
    expect(page.locator("#chatbot .message.bot")).to_have_count(1)
