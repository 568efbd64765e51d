"""lmms-eval adapter: ``lmms-eval --model vitsplit_llava --model_args pretrained=DIR,...``.

A thin layer over :class:`~vitsplit_vlm.vlm.engine.VLMEngine` (the model wrapper that
``vitsplit-vlm eval answer`` and the demo use), registered with lmms-eval through the
``lmms_eval.models`` entry point (``pyproject.toml``), which names :func:`manifest`::

    lmms-eval --model vitsplit_llava \\
        --model_args pretrained=checkpoints/vitsplit-tiny,conv_mode=vicuna_v1,batch_size=8 \\
        --tasks vitsplit_pope --include_path eval/lmms_tasks --output_path outputs/lmms

- ``generate_until``: batched greedy decoding (requests grouped by generation settings, longest
  prompts first), each answer cut at the first ``until`` string;
- ``loglikelihood``: how likely each continuation is after the prompt's assistant cue
  (``"... ASSISTANT:"`` + ``" A"``), one forward pass per batch. As lmms-eval's own LLaVA
  adapters, it returns ``(loss, is_greedy)`` with ``loss`` the mean negative log-likelihood of the
  continuation's tokens, not the log-probability the base class's docstring names: lmms-eval
  0.7.3 picks a multiple-choice answer by ``argmin``;
- ``generate_until_multi_round``: lmms-eval's multi-round protocol (the task's ``doc_to_text``
  gives each next round's visuals and prompt from the previous answers, until it says stop).

Constructor arguments (``--model_args``): ``pretrained`` (a saved model folder), ``conv_mode``
(must equal the model's saved template), ``batch_size``, ``device``, ``dtype`` (``float32``,
``bfloat16``, ...), ``max_new_tokens`` (default when a task gives none). Values in
``--model_args`` win over the CLI's ``--batch_size`` / ``--device``. Under ``accelerate launch``
each process takes ``cuda:LOCAL_RANK``; lmms-eval shards the requests itself.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.api.model import lmms
from tqdm import tqdm

from vitsplit_vlm.eval.answer import check_conv_mode

MODEL_ID = "vitsplit_llava"
DEFAULT_MAX_NEW_TOKENS = 128
MAX_ROUNDS = 64  # guard against a multi-round task that never says stop
_IGNORED = ("max_batch_size",)  # passed by lmms-eval's CLI, meaningless here
Visuals = Sequence | Callable[[], Sequence] | None  # PIL images, or a function returning them


def manifest():
    """The ``lmms_eval.models`` entry point: how lmms-eval finds :class:`VitsplitLlava`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VitsplitLlava")


class VitsplitLlava(lmms):
    """LLaVA-1.5 + ViT-Split for lmms-eval (one image per request, or none)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        conv_mode: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from vitsplit_vlm.vlm.engine import VLMEngine

        unknown = sorted(set(kwargs) - set(_IGNORED))
        if unknown:
            raise TypeError(f"{MODEL_ID}: unknown --model_args {', '.join(unknown)}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"{MODEL_ID}: batch_size must be an integer >= 1, got {batch_size!r}")
        self._batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        check_conv_mode(Path(pretrained), conv_mode)
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.engine = VLMEngine.from_pretrained(
            pretrained, device=device, dtype=getattr(torch, dtype) if dtype else None
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, except that ``--model_args`` override the CLI's defaults (its
        ``--batch_size 1`` would otherwise clash with ``batch_size=N`` in ``--model_args``)."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **args})

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ---- helpers --------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _request(self, visuals: Visuals, context: str):
        """An engine request from lmms-eval's visuals (a list of PIL images, or a function
        giving it, so that images open one batch at a time) and context."""
        from vitsplit_vlm.vlm.engine import Request

        visuals = visuals() if callable(visuals) else visuals
        images = [v for v in (visuals or []) if v is not None]
        if len(images) > 1:
            raise ValueError(
                f"{MODEL_ID} takes one image per request (LLaVA-1.5); the task gave {len(images)}"
            )
        if images and not hasattr(images[0], "convert"):
            raise ValueError(f"{MODEL_ID} takes images, got {type(images[0]).__name__}")
        return Request(images[0] if images else None, [(self.engine.template.user, context)])

    def _settings(self, gen_kwargs: dict) -> tuple[Any, list[str]]:
        """Engine settings and stop strings from a task's ``generation_kwargs``."""
        from vitsplit_vlm.vlm.engine import GenerationSettings

        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0) or 0) if sample else 0.0
        extra = {}
        if int(kwargs.get("num_beams", 1) or 1) > 1:
            extra["num_beams"] = int(kwargs["num_beams"])
        settings = GenerationSettings(
            max_new_tokens=int(kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=temperature,
            top_p=kwargs.get("top_p") if temperature > 0 else None,
            extra=extra,
        )
        return settings, [u for u in until if u]

    @staticmethod
    def _cut(text: str, until: Sequence[str]) -> str:
        for stop in until:
            if stop in text:
                text = text[: text.index(stop)]
        return text

    def _batches(self, indices: list[int], key: Callable[[int], Any], length: Callable[[int], int]):
        """Batches of request indices with equal ``key``, longest prompts first."""
        groups: dict[Any, list[int]] = defaultdict(list)
        for i in indices:
            groups[key(i)].append(i)
        for group in groups.values():
            group.sort(key=lambda i: -length(i))
            for start in range(0, len(group), self.batch_size):
                yield group[start : start + self.batch_size]

    def _generate(self, items: list[tuple[Visuals, str, dict]], pbar: tqdm | None) -> list[str]:
        """Answers to ``(visuals, context, gen_kwargs)`` items, in order."""
        out: list[str] = [""] * len(items)
        key = lambda i: json.dumps(items[i][2], sort_keys=True, default=str)  # noqa: E731
        for batch in self._batches(list(range(len(items))), key, lambda i: len(items[i][1])):
            settings, until = self._settings(items[batch[0]][2])
            requests = [self._request(items[i][0], items[i][1]) for i in batch]
            for i, text in zip(batch, self.engine.generate(requests, settings), strict=True):
                out[i] = self._cut(text, until)
            if pbar is not None:
                pbar.update(len(batch))
        return out

    # ---- lmms-eval API --------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        items = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            items.append(
                (partial(doc_to_visual, self._doc(task, split, doc_id)), context, gen_kwargs)
            )
        pbar = tqdm(total=len(items), disable=self.rank != 0, desc=f"{MODEL_ID} generate")
        answers = self._generate(items, pbar)
        pbar.close()
        for (_, context, gen_kwargs), text in zip(items, answers, strict=True):
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list:
        rows = []
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(task, split, doc_id)
            continuation = target if isinstance(target, str) else target(doc)
            rows.append((partial(doc_to_visual, doc), context, str(continuation)))
        out: list = [None] * len(rows)
        pbar = tqdm(total=len(rows), disable=self.rank != 0, desc=f"{MODEL_ID} loglikelihood")
        indices = list(range(len(rows)))
        for batch in self._batches(indices, lambda i: 0, lambda i: len(rows[i][1])):
            requests_ = [self._request(rows[i][0], rows[i][1]) for i in batch]
            scores = self.engine.loglikelihood(requests_, [rows[i][2] for i in batch])
            for i, score in zip(batch, scores, strict=True):
                out[i] = _response(-score.logprob / score.num_tokens, score.is_greedy)
            pbar.update(len(batch))
        pbar.close()
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Every document's answers, one per round. Round 0 asks the request's context with
        ``doc_to_visual(doc)``; then ``doc_to_text(doc, previous_output=answers so far,
        round_idx=r, previous_round_info=...)`` returns ``(visuals, context, stop, round_results,
        info)`` for round r (lmms-eval's protocol); documents advance together, batched."""
        states = []
        for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (
            r.args for r in requests
        ):
            doc = self._doc(task, split, doc_id)
            states.append(
                _Rounds(doc, doc_to_text, gen_kwargs, partial(doc_to_visual, doc), context)
            )
        pbar = tqdm(total=len(states), disable=self.rank != 0, desc=f"{MODEL_ID} multi-round")
        for round_idx in range(MAX_ROUNDS):
            active = [s for s in states if not s.done]
            if not active:
                break
            answers = self._generate([(s.visuals, s.context, s.gen_kwargs) for s in active], None)
            for state, text in zip(active, answers, strict=True):
                state.answers.append(text)
                state.advance(round_idx + 1)
                pbar.update(state.done)
        else:
            raise RuntimeError(
                f"{MODEL_ID}: a multi-round task did not stop in {MAX_ROUNDS} rounds"
            )
        pbar.close()
        return [s.answers for s in states]


def _response(loss: float, is_greedy: bool):
    """``(loss, is_greedy)`` as lmms-eval will read it. Its 0.7.3 evaluator passes every response
    through ``unwrap_generation_output``, which turns a tuple of numbers into its string (and
    multiple-choice scoring then fails); a ``GenerationResult`` passes its payload through."""
    pair = (loss, is_greedy)
    if isinstance(unwrap_generation_output(pair)[0], tuple):  # an lmms-eval without the bug
        return pair
    return GenerationResult(text=pair)  # type: ignore[arg-type]


class _Rounds:
    """One document's progress through a multi-round task."""

    def __init__(self, doc, doc_to_text, gen_kwargs, visuals, context) -> None:
        self.doc, self.doc_to_text, self.gen_kwargs = doc, doc_to_text, gen_kwargs
        self.visuals, self.context = visuals, context
        self.answers: list[str] = []
        self.info: Any = None
        self.done = False

    def advance(self, round_idx: int) -> None:
        visuals, context, stop, results, info = self.doc_to_text(
            self.doc,
            previous_output=list(self.answers),
            round_idx=round_idx,
            previous_round_info=self.info,
        )
        if results is not None:
            self.answers = list(results)
        self.visuals, self.context, self.info, self.done = visuals, context, info, bool(stop)
