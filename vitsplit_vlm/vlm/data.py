"""LLaVA-1.5 training data: label masking, the lazy dataset, skip handling and the collator.

Label masking renders a conversation once (`conversation.render_conversation`), tokenizes the
text once with character offsets, and supervises exactly the tokens that lie inside the
rendered replies. There is no per-round length arithmetic, so LLaVA's "tokenization mismatch"
(a whole sample silently masked) cannot happen; a token that straddles a reply boundary is
reported as a `BadSample` instead.

The tokenizer must be a fast tokenizer that knows ``<image>`` as one added token with id
``image_token_id`` (the model builder adds it, as HF's llava-1.5 checkpoints have it); each
``<image>`` becomes ``num_image_tokens`` copies of that id, as HF's `LlavaProcessor` expands it.
Use `tokenize_prompt` at inference so prompts are tokenized exactly as in training.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vitsplit_vlm.images import open_rgb
from vitsplit_vlm.vlm.conversation import (
    IMAGE_PLACEHOLDER,
    InvalidConversation,
    Message,
    RenderedConversation,
    Template,
    render_conversation,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_IMAGE_TOKEN = IMAGE_PLACEHOLDER
ASPECT_RATIOS = ("pad", "square", None)
SKIP_REASONS = (
    "bad_format",  # a record that is not {"conversations": [{"from", "value"}, ...], ...}
    "bad_roles",  # unknown "from", roles out of order, several rounds for `plain`
    "no_assistant_turn",
    "empty_turn",
    "image_in_reply",
    "image_count",  # number of <image> placeholders != number of images given
    "path_outside_folder",  # the image path leaves --image_folder (after resolving symlinks)
    "missing_image",
    "corrupt_image",
    "too_long",  # truncation would cut image tokens or leave no supervised token
    "tokenization_mismatch",  # a token straddles the boundary of a supervised span
    "marker_in_text",  # a message holds a chat format's markup (e.g. "<|im_end|>")
    "template_mismatch",  # the tokenizer's chat template renders a reply out of place
)


class BadSample(ValueError):
    """A training sample that cannot be used; `reason` is one of `SKIP_REASONS`."""

    def __init__(
        self, reason: str, sample_id: str | None, detail: str = "", source: str | None = None
    ) -> None:
        where = f" in {source}" if source else ""
        super().__init__(
            f"sample {sample_id!r}{where}: {reason}" + (f": {detail}" if detail else "")
        )
        self.reason = reason
        self.sample_id = sample_id
        self.detail = detail
        self.source = source


@dataclass(frozen=True)
class TokenizedSample:
    """`input_ids` and `labels`: (L,) int64, image tokens expanded; `labels` is IGNORE_INDEX
    outside the supervised replies. `num_images`: ``<image>`` placeholders in the text."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    num_images: int


# --------------------------------------------------------------------------- tokenization


def llava_messages(
    conversations: Any, template: Template, sample_id: str | None = None
) -> list[Message]:
    """LLaVA ``[{"from": "human"|"gpt", "value": str}, ...]`` -> ``[(role, text), ...]``.

    As LLaVA, a leading reply is dropped; an unanswered last user message is dropped too (it
    would carry no loss).
    """
    if not isinstance(conversations, list) or not all(
        isinstance(t, dict) and isinstance(t.get("value"), str) for t in conversations
    ):
        raise BadSample("bad_format", sample_id, "conversations must be a list of {from, value}")
    names = {"human": template.user, "gpt": template.assistant}
    messages: list[Message] = []
    for turn in conversations:
        if turn.get("from") not in names:
            raise BadSample("bad_roles", sample_id, f"unknown speaker {turn.get('from')!r}")
        messages.append((names[turn["from"]], turn["value"]))
    if messages and messages[0][0] == template.assistant:
        messages = messages[1:]
    if len(messages) % 2 and messages[-1][0] == template.user:
        messages = messages[:-1]
    return messages


def _encode(
    text: str, tokenizer: PreTrainedTokenizerBase, image_token_id: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text` as the processor tokenizes a chat-template
    string: with the tokenizer's own special tokens (its BOS, offsets (0, 0); none for Qwen),
    unless the text already starts with the BOS token (a template that writes it)."""
    if not tokenizer.is_fast:
        raise ValueError("a fast tokenizer (return_offsets_mapping) is required")
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    image_spans = [(s, e) for i, (s, e) in zip(ids, offsets, strict=True) if i == image_token_id]
    if len(image_spans) != text.count(IMAGE_PLACEHOLDER) or any(
        text[s:e] != IMAGE_PLACEHOLDER for s, e in image_spans
    ):
        raise ValueError(
            f"the tokenizer does not encode {IMAGE_PLACEHOLDER!r} as the single token "
            f"{image_token_id}; register it with tokenizer.add_tokens([{IMAGE_PLACEHOLDER!r}], "
            "special_tokens=True) and pass its id"
        )
    return ids, offsets


def _supervised_mask(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], sample_id: str | None
) -> list[bool]:
    """True for tokens inside a span; a token that only partly overlaps one raises."""
    mask = []
    for s, e in offsets:
        inside = False
        for a, b in spans:
            overlaps = min(e, b) > max(s, a) if e > s else a <= s < b
            if not overlaps:
                continue
            if not (a <= s and e <= b):
                raise BadSample(
                    "tokenization_mismatch",
                    sample_id,
                    f"token at characters [{s}, {e}) straddles supervised span [{a}, {b})",
                )
            inside = True
        mask.append(inside)
    return mask


def _expand_images(
    ids: list[int], labels: list[int], image_token_id: int, num_image_tokens: int
) -> tuple[list[int], list[int]]:
    out_ids: list[int] = []
    out_labels: list[int] = []
    for token, label in zip(ids, labels, strict=True):
        if token == image_token_id:
            out_ids += [image_token_id] * num_image_tokens
            out_labels += [IGNORE_INDEX] * num_image_tokens
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels


def check_conversation(
    conversations: Any,
    template: Template,
    *,
    num_images: int | None = None,
    sample_id: str | None = None,
) -> tuple[RenderedConversation, int]:
    """The checks of `tokenize_conversation` that need no tokenizer: format, roles, a reply,
    the ``<image>`` count (if `num_images` is given) and the template's own rules. Returns the
    rendered conversation and its number of ``<image>`` placeholders; raises `BadSample`."""
    messages = llava_messages(conversations, template, sample_id)
    if not any(role == template.assistant for role, _ in messages):
        raise BadSample("no_assistant_turn", sample_id, "the conversation has no reply")
    count = sum((text or "").count(IMAGE_PLACEHOLDER) for _, text in messages)
    if num_images is not None and count != num_images:
        raise BadSample(
            "image_count",
            sample_id,
            f"{count} {IMAGE_PLACEHOLDER} placeholders, {num_images} images",
        )
    try:
        return render_conversation(template, messages), count
    except InvalidConversation as err:
        raise BadSample(err.reason, sample_id, err.detail) from None


def tokenize_conversation(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    *,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
    num_images: int | None = None,
    sample_id: str | None = None,
) -> TokenizedSample:
    """Tokenize one LLaVA conversation with labels on the replies (and their end token).

    `num_images` (if given) must equal the number of ``<image>`` placeholders. Sequences longer
    than `max_length` (image tokens counted) are truncated; raises `BadSample` if that would cut
    image tokens or leave no supervised token, and for every other unusable conversation.
    """
    rendered, count = check_conversation(
        conversations, template, num_images=num_images, sample_id=sample_id
    )
    ids, offsets = _encode(rendered.text, tokenizer, image_token_id)
    mask = _supervised_mask(offsets, rendered.supervised, sample_id)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    ids, labels = _expand_images(ids, labels, image_token_id, num_image_tokens)
    if len(ids) > max_length:
        if image_token_id in ids[max_length:]:
            raise BadSample(
                "too_long", sample_id, f"{len(ids)} tokens > {max_length} cut image tokens"
            )
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise BadSample("too_long", sample_id, f"no supervised token within {max_length} tokens")
    return TokenizedSample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        num_images=count,
    )


def tokenize_prompt(
    prompt: str, tokenizer: PreTrainedTokenizerBase, *, num_image_tokens: int, image_token_id: int
) -> torch.Tensor:
    """Token ids (L,) of a rendered prompt (`render_prompt`) exactly as training tokenizes it:
    the tokenizer's BOS (if it adds one), then the text with each ``<image>`` expanded to
    `num_image_tokens` image tokens."""
    ids, _ = _encode(prompt, tokenizer, image_token_id)
    ids, _ = _expand_images(ids, ids, image_token_id, num_image_tokens)
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- images


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad `image` to a centred square of side max(W, H) filled with `background` (LLaVA's
    ``image_aspect_ratio pad``); a square image is returned as is."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def background_color(image_processor: Any) -> tuple[int, int, int]:
    """The processor's mean colour in 0..255 (truncated, as LLaVA: CLIP -> (122, 116, 104))."""
    return tuple(int(m * 255) for m in image_processor.image_mean)


def load_image(path: Path, sample_id: str | None) -> Image.Image:
    """Open and decode `path` as 8-bit RGB (high bit depths scaled, `vitsplit_vlm.images`);
    missing or undecodable files raise `BadSample`."""
    if not path.is_file():
        raise BadSample("missing_image", sample_id, f"no image file {path}")
    try:
        return open_rgb(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadSample("corrupt_image", sample_id, f"cannot decode {path}: {err}") from None


def image_path(
    folder: Path, name: str, sample_id: str | None, *, allow_outside: bool = False
) -> Path:
    """``folder / name``, which must stay inside `folder` once symlinks are resolved (``..``,
    an absolute path or a link out of the folder raise ``path_outside_folder``, unless
    `allow_outside`) and must be a file (``missing_image``)."""
    path = folder / name
    if not allow_outside and not path.resolve().is_relative_to(folder.resolve()):
        raise BadSample(
            "path_outside_folder",
            sample_id,
            f"image {name!r} resolves to {path.resolve()}, outside --image_folder {folder} "
            "(--allow_images_outside_folder True accepts it)",
        )
    if not path.is_file():
        raise BadSample("missing_image", sample_id, f"no image file {path}")
    return path


# --------------------------------------------------------------------------- dataset


def load_records(path: str | Path) -> list[Any]:
    """Samples of a LLaVA JSON list (or JSONL, one sample a line, for ``*.jsonl``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: malformed JSON line ({err.msg}, column {err.colno})"
                ) from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: malformed JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "expected a list of LLaVA samples (use the .jsonl suffix for one sample per line)"
        ) from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def _word_count(record: Any) -> int:
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list):
        return 0
    return sum(
        len(t["value"].split())
        for t in turns
        if isinstance(t, dict) and isinstance(t.get("value"), str)
    )


def record_id(record: Any, index: int) -> str:
    """A record's ``id``, or ``#index`` when it has none."""
    if isinstance(record, dict) and "id" in record:
        return str(record["id"])
    return f"#{index}"


@dataclass
class SampleReader:
    """Every check training applies to one LLaVA record, in training's order, and the item it
    becomes. `LazySupervisedDataset` reads its samples with it and ``vitsplit-vlm check-data``
    checks a data file with it, so both refuse exactly the same records.

    `text` (format, roles, tokenization and label masking, the image path) runs without
    opening the image; `pixels` decodes it. Without a `tokenizer` (check-data without a model)
    `text` runs every check that needs none (none of the conversation's when `template` is None:
    a template that cannot render before it meets the tokenizer); without an `image_processor`
    `pixels` only decodes.
    """

    image_folder: Path
    template: Template | None
    tokenizer: PreTrainedTokenizerBase | None = None
    image_processor: Any = None
    model_max_length: int = 2048
    num_image_tokens: int = 1
    image_token_id: int = -1
    image_aspect_ratio: str | None = "pad"
    allow_images_outside_folder: bool = False

    def __post_init__(self) -> None:
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(
                f"image_aspect_ratio: must be one of {ASPECT_RATIOS}, "
                f"got {self.image_aspect_ratio!r}"
            )
        if self.num_image_tokens < 1:
            raise ValueError(f"num_image_tokens: must be >= 1, got {self.num_image_tokens}")
        self.image_folder = Path(self.image_folder)

    def text(self, record: Any, sample_id: str) -> tuple[dict[str, Any], Path | None]:
        """(the item without ``pixel_values``, the image file or None); raises `BadSample`."""
        if not isinstance(record, dict):
            raise BadSample("bad_format", sample_id, "a sample must be a JSON object")
        image_file = record.get("image")
        if image_file is not None and not isinstance(image_file, str):
            raise BadSample("bad_format", sample_id, "'image' must be one file name")
        num_images = 0 if image_file is None else 1
        item: dict[str, Any] = {"id": sample_id}
        if self.tokenizer is None and self.template is not None:
            check_conversation(
                record.get("conversations"), self.template, num_images=num_images,
                sample_id=sample_id,
            )  # fmt: skip
        elif self.tokenizer is not None:
            sample = tokenize_conversation(
                record.get("conversations"),
                self.tokenizer,
                self.template,
                num_image_tokens=self.num_image_tokens,
                image_token_id=self.image_token_id,
                max_length=self.model_max_length,
                num_images=num_images,
                sample_id=sample_id,
            )
            item.update(input_ids=sample.input_ids, labels=sample.labels)
        if image_file is None:
            return item, None
        path = image_path(
            self.image_folder, image_file, sample_id,
            allow_outside=self.allow_images_outside_folder,
        )  # fmt: skip
        return item, path

    def pixels(self, path: Path, sample_id: str) -> torch.Tensor | None:
        """(3, H, W) float pixels of the image file (None without an image processor: the file
        is only decoded); raises `BadSample`."""
        image = load_image(path, sample_id)
        if self.image_processor is None:
            return None
        if self.image_aspect_ratio == "pad":
            image = expand2square(image, background_color(self.image_processor))
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def item(self, record: Any, sample_id: str) -> dict[str, Any]:
        """`text` then `pixels`: the training item."""
        item, path = self.text(record, sample_id)
        if path is not None:
            item["pixel_values"] = self.pixels(path, sample_id)
        return item


class LazySupervisedDataset(Dataset):
    """LLaVA's lazy supervised dataset: JSON records in memory, images opened per item.

    Items: ``{"input_ids": (L,), "labels": (L,), "pixel_values": (3, H, W), "id": str}``,
    ``pixel_values`` absent for text-only samples. Each record goes through `SampleReader`. A
    `BadSample` raises if `fail_fast`; otherwise it is logged (a warning and a JSON line appended
    to `skip_log`) and the next usable sample (following indices, wrapping) is returned in its
    place. `records` (already read from `data_path`) saves reading the file again.
    """

    def __init__(
        self,
        data_path: str | Path,
        image_folder: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        template: Template,
        *,
        model_max_length: int,
        num_image_tokens: int,
        image_token_id: int,
        image_aspect_ratio: str | None = "pad",
        fail_fast: bool = False,
        skip_log: str | Path | None = None,
        allow_images_outside_folder: bool = False,
        records: list[Any] | None = None,
    ) -> None:
        self.reader = SampleReader(
            Path(image_folder),
            template,
            tokenizer,
            image_processor,
            model_max_length=model_max_length,
            num_image_tokens=num_image_tokens,
            image_token_id=image_token_id,
            image_aspect_ratio=image_aspect_ratio,
            allow_images_outside_folder=allow_images_outside_folder,
        )
        self.data_path = Path(data_path)
        self.image_folder = self.reader.image_folder
        self.records = load_records(self.data_path) if records is None else records
        self.tokenizer, self.image_processor, self.template = tokenizer, image_processor, template
        self.model_max_length = model_max_length
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.image_aspect_ratio = image_aspect_ratio
        self.fail_fast = fail_fast
        self.skip_log = None if skip_log is None else Path(skip_log)
        self._bad: set[int] = set()  # per process (DataLoader worker): skipped without a retry

    def __len__(self) -> int:
        return len(self.records)

    def _has_image(self, index: int) -> bool:
        record = self.records[index]
        return isinstance(record, dict) and record.get("image") is not None

    @property
    def lengths(self) -> list[int]:
        """Estimated length per sample: words + image tokens (at least 1)."""
        return [
            max(1, _word_count(r) + (self.num_image_tokens if self._has_image(i) else 0))
            for i, r in enumerate(self.records)
        ]

    @property
    def modality_lengths(self) -> list[int]:
        """`lengths`, negated for text-only samples (never 0), for modality grouping."""
        return [n if self._has_image(i) else -n for i, n in enumerate(self.lengths)]

    def sample_id(self, index: int) -> str:
        return record_id(self.records[index], index)

    def load(self, index: int) -> dict[str, Any]:
        """Item `index`, or `BadSample` naming the sample and the data file."""
        sample_id = self.sample_id(index)
        try:
            return self.reader.item(self.records[index], sample_id)
        except BadSample as err:
            raise BadSample(err.reason, sample_id, err.detail, str(self.data_path)) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        for step in range(n):
            candidate = (index + step) % n
            if candidate in self._bad:
                continue
            try:
                return self.load(candidate)
            except BadSample as err:
                if self.fail_fast:
                    raise
                self._bad.add(candidate)
                self._record_skip(candidate, err)
        raise RuntimeError(
            f"{self.data_path}: every one of the {n} samples is unusable"
            + (f"; reasons in {self.skip_log}" if self.skip_log else "; see the warnings above")
        )

    def _record_skip(self, index: int, err: BadSample) -> None:
        logger.warning("skipping sample %r (%s): %s", err.sample_id, err.reason, err.detail)
        if self.skip_log is None:
            return
        line = {
            "id": err.sample_id,
            "reason": err.reason,
            "detail": err.detail,
            "index": index,
            "data_path": str(self.data_path),
            "rank": int(os.environ.get("RANK", 0)),
            "pid": os.getpid(),
            "time": time.time(),
        }
        append_line(self.skip_log, json.dumps(line) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append `line` with one ``write`` on an ``O_APPEND`` descriptor, so lines from several
    DataLoader workers and ranks do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def summarize_skips(skip_log: str | Path | None) -> dict[str, Any]:
    """Skipped samples of a run: ``{"total", "by_reason": {reason: n}, "ids": {reason: [id]},
    "events", "unreadable_lines"}``; a sample skipped by several workers is counted once."""
    ids: dict[str, set[str]] = {}
    events = unreadable = 0
    path = None if skip_log is None else Path(skip_log)
    lines = path.read_text(encoding="utf-8").splitlines() if path and path.is_file() else []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        events += 1
        ids.setdefault(str(entry.get("reason")), set()).add(str(entry.get("id")))
    by_id = {reason: sorted(found) for reason, found in sorted(ids.items())}
    return {
        "total": len(set().union(*ids.values())) if ids else 0,
        "by_reason": {reason: len(found) for reason, found in by_id.items()},
        "ids": by_id,
        "events": events,
        "unreadable_lines": unreadable,
    }


# --------------------------------------------------------------------------- collator


@dataclass
class DataCollator:
    """Right-pads a list of dataset items into a batch.

    Returns ``input_ids`` (B, L) padded with `pad_token_id`, ``labels`` (B, L) padded with
    IGNORE_INDEX, ``attention_mask`` (B, L) int64 from the true lengths (not ``ids != pad``, so a
    pad id that also occurs in text stays attended), and ``pixel_values`` (N, 3, H, W) of the N
    items that have an image, in batch order (absent if N == 0).
    """

    pad_token_id: int
    model_max_length: int

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("DataCollator.pad_token_id: the tokenizer has no pad token; add one")

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("DataCollator: empty batch")
        lengths = [len(x["input_ids"]) for x in instances]
        if max(lengths) > self.model_max_length:
            raise ValueError(
                f"DataCollator: a sample has {max(lengths)} tokens > model_max_length "
                f"{self.model_max_length}; the dataset must truncate with the same limit"
            )
        shape = (len(instances), max(lengths))
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        for row, (item, n) in enumerate(zip(instances, lengths, strict=True)):
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [x["pixel_values"] for x in instances if "pixel_values" in x]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch
