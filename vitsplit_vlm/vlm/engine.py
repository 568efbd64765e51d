"""`VLMEngine`: the one place that turns (image, conversation) into text.

Evaluation, the lmms-eval plugin, the CLI chat and the Gradio demo all use it:

    engine = VLMEngine.from_pretrained("checkpoints/vitsplit-llava")
    engine.generate([Request(image, [("USER", "<image>\\nWhat colour is the circle?")])])
    for partial in engine.stream(image, messages): ...

The conversation template comes from the saved config (`conv_template`; for ``chat_template``
the LLM tokenizer's Jinja it recorded, `llm_chat_template`), never from a folder name.
Generation stops at the tokenizer's eos and at the template's end-of-turn token. Batches are
left-padded and decoded greedily at temperature 0 (KV cache on), so batched answers equal
batch-1 answers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from PIL import Image

from .conversation import IMAGE_PLACEHOLDER, Message, Template, render_prompt
from .data import background_color, expand2square, tokenize_prompt
from .tokenizer_chat import bind_template


@dataclass
class Request:
    """One generation request: an optional image and the messages so far (ending with the user)."""

    image: Image.Image | None
    messages: Sequence[Message]


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    extra: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        kw = dict(max_new_tokens=self.max_new_tokens, **self.extra)
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kw["top_p"] = self.top_p
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


@dataclass(frozen=True)
class ContinuationScore:
    """Log-likelihood of a reply continuation given a prompt (`VLMEngine.loglikelihood`)."""

    logprob: float  # sum of the continuation tokens' log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax at its position
    num_tokens: int


class VLMEngine:
    def __init__(self, model, processor, template: Template | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.config = model.config
        self.template = template or bind_template(
            model.config.conv_template,
            self.tokenizer,
            source=getattr(model.config, "llm_chat_template", None),
        )

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None
    ) -> VLMEngine:
        """Load a saved model folder (model + processor) with `from_pretrained`."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from . import register

        register()
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"--model-path {path}: no config.json; pass a folder written by stage 2 "
                "(scripts/finetune.sh) or `vitsplit-vlm merge-lora`"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- inputs ----------------------------------------------------------------------------
    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) pixels: padded to a square with the mean colour when the model was trained so."""
        from ..images import to_rgb  # 16-bit greyscale scaled, not clipped to white

        image = to_rgb(image)
        if self.config.image_aspect_ratio == "pad":
            image = expand2square(image, background_color(self.image_processor))
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def prompt_ids(self, request: Request) -> torch.Tensor:
        """Token ids (L,) of the rendered prompt, image placeholders expanded."""
        return self._tokenize(self.prompt_text(request))

    def _tokenize(self, text: str) -> torch.Tensor:
        return tokenize_prompt(
            text,
            self.tokenizer,
            num_image_tokens=self.config.image_seq_length,
            image_token_id=self.config.image_token_id,
        )

    def prompt_text(self, request: Request) -> str:
        """The prompt as the template renders it, ending with the assistant's cue; an image
        request without ``<image>`` gets it in front of the first message (as LLaVA)."""
        messages = list(request.messages)
        has_placeholder = any(IMAGE_PLACEHOLDER in (text or "") for _, text in messages)
        if request.image is not None and not has_placeholder:
            role, text = messages[0]
            messages[0] = (role, f"{IMAGE_PLACEHOLDER}\n{text}")
        if request.image is None and has_placeholder:
            raise ValueError("the conversation has an <image> placeholder but no image was given")
        return render_prompt(self.template, messages)

    def collate(self, requests: Sequence[Request]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids/attention_mask (B, L) and pixel_values of the image requests."""
        ids = [self.prompt_ids(r) for r in requests]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x) :] = x
            mask[i, width - len(x) :] = 1
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        images = [self.prepare_image(r.image) for r in requests if r.image is not None]
        if images:
            batch["pixel_values"] = torch.stack(images).to(self.device, self.model.dtype)
        return batch

    # ---- generation ----------------------------------------------------------------------
    def _stop_ids(self) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        stop = self.template.stop_str
        if stop and stop != self.tokenizer.eos_token:
            token = self.tokenizer.convert_tokens_to_ids(stop)
            if token is not None and token != self.tokenizer.unk_token_id:
                ids.append(token)
        return ids

    def _clean(self, text: str) -> str:
        """The answer: cut at the stop string, stripped, without what the template writes before
        a reply (Qwen3's empty ``<think>`` block; "" while it is still being written)."""
        stop = self.template.stop_str
        if stop and stop in text:
            text = text[: text.index(stop)]
        text = text.strip()
        prefix = self.template.chat.reply_prefix.strip() if self.template.chat else ""
        if prefix and text.startswith(prefix):
            return text[len(prefix) :].strip()
        if prefix and prefix.startswith(text):
            return ""
        return text

    @torch.inference_mode()
    def generate(
        self, requests: Sequence[Request], settings: GenerationSettings | None = None
    ) -> list[str]:
        """Answers for a batch of requests (one batch; the caller chunks); the answer length is
        cut to the room the prompts leave in the context (`context.limit`)."""
        from .context import limit as limit_to_context

        settings = settings or GenerationSettings()
        batch = self.collate(requests)
        settings = limit_to_context(self, batch["input_ids"].shape[1], settings)  # left-padded
        out = self.model.generate(
            **batch,
            eos_token_id=self._stop_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
            **settings.kwargs(),
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [self._clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def generate_batches(
        self,
        requests: Iterable[Request],
        settings: GenerationSettings | None = None,
        *,
        batch_size: int = 8,
    ) -> Iterator[str]:
        """Answers in request order, `batch_size` requests per `generate` call.

        `requests` is consumed lazily, one batch at a time, so a generator that opens images as
        it goes keeps only one batch of images in memory.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pending = iter(requests)
        while batch := list(islice(pending, batch_size)):
            yield from self.generate(batch, settings)

    @torch.inference_mode()
    def loglikelihood(
        self, requests: Sequence[Request], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Score each reply continuation (e.g. ``" A"``) after its request's prompt, one batch.

        Prompt and prompt + continuation are tokenized as training tokenizes them; the
        continuation is every token after their common prefix (so a token that straddles the
        boundary counts as continuation). Rows are right-padded, so padding never shifts a
        position and a row scores as it would alone.
        """
        if len(requests) != len(continuations):
            raise ValueError(f"{len(requests)} requests but {len(continuations)} continuations")
        rows = []
        for request, continuation in zip(requests, continuations, strict=True):
            prompt = self.prompt_text(request)
            prompt_ids, ids = self._tokenize(prompt), self._tokenize(prompt + continuation)
            start = _common_prefix(prompt_ids, ids)
            if start == len(ids):
                raise ValueError(f"continuation {continuation!r} adds no token to the prompt")
            rows.append((ids, start))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        images = [self.prepare_image(r.image) for r in requests if r.image is not None]
        if images:
            batch["pixel_values"] = torch.stack(images).to(self.device, self.model.dtype)
        logits = self.model(**batch, use_cache=False).logits
        scores = []
        for i, (ids, start) in enumerate(rows):
            # logits at position p predict token p + 1
            logprobs = logits[i, start - 1 : len(ids) - 1].float().log_softmax(-1)
            target = ids[start:].to(logprobs.device)
            picked = logprobs.gather(-1, target[:, None])[:, 0]
            scores.append(
                ContinuationScore(
                    logprob=float(picked.sum()),
                    is_greedy=bool((logprobs.argmax(-1) == target).all()),
                    num_tokens=len(target),
                )
            )
        return scores

    def stream(
        self,
        image: Image.Image | None,
        messages: Sequence[Message],
        settings: GenerationSettings | None = None,
    ) -> Iterator[str]:
        """Yield the growing answer text as tokens are generated.

        If the caller stops early (closes the generator, or an exception such as Ctrl-C is
        raised while it waits), generation stops at the next token instead of running on.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from .context import limit as limit_to_context

        settings = settings or GenerationSettings()
        batch = self.collate([Request(image, messages)])
        settings = limit_to_context(self, batch["input_ids"].shape[1], settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = settings.kwargs()
        abandoned = threading.Event()
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(_StopWhenSet(abandoned))
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **batch,
                        streamer=streamer,
                        eos_token_id=self._stop_ids(),
                        pad_token_id=self.tokenizer.pad_token_id,
                        stopping_criteria=criteria,
                        **kwargs,
                    )
            except BaseException as err:  # surfaced in the caller's thread below
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield self._clean(text)
        finally:
            abandoned.set()  # a no-op once generation has ended
        thread.join()
        if errors:
            raise errors[0]


class _StopWhenSet:
    """A stopping criterion that ends generation once `event` is set (the stream's reader left)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D id tensors."""
    n = min(len(a), len(b))
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0]) if len(differs) else n
