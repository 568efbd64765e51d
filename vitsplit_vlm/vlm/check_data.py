"""`vitsplit-vlm check-data`: training's own sample checks over a whole data file, before a run.

    vitsplit-vlm check-data --data llava_v1_5_mix665k.json --image-folder playground/data \\
        [--version vicuna_v1 --model-path M [--vision-tower T]] [--fix usable.json] [--jobs 8]

Every record goes through `SampleReader`, the object `LazySupervisedDataset` reads training
samples with, so a record is refused here exactly when training would skip it: format, roles, a
reply, empty turns, ``<image>`` count and placement, the image path (inside ``--image-folder``
after resolving symlinks, present) and its decoding (every image fully decoded, as training
does; the image processor's resize is not run). With ``--model-path`` (a ViT-Split LLaVA folder,
or an LLM folder plus ``--vision-tower`` as training takes them) records are also tokenized:
length after tokenization (``too_long``) and label masking (``tokenization_mismatch``).

The file is streamed (a JSON list or JSONL, never loaded whole) in blocks of records that
``--jobs`` worker processes check side by side (tokenizing and decoding images); results come
back in file order. Output: a progress bar on stderr, then a
summary by reason with sample ids on stdout (``--report`` writes every id as JSON); exit status 1
when any record is unusable (or the file is malformed), 0 when all are usable, 2 for bad flags.
``--fix OUT`` writes the usable records, in order (JSONL when OUT ends in ``.jsonl``).
"""

from __future__ import annotations

import argparse
import codecs
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .data import BadSample, SampleReader, record_id

CHUNK_BYTES = 1 << 20
BLOCK = 256  # records per unit of work handed to an image worker
SHOWN_IDS = 10  # sample ids printed per reason (all of them go to --report)
# the tokenizer's own length limit: lengths are checked against --model-max-length (too_long);
# the tokenizer's warning about long texts would only repeat that, once per worker
UNBOUNDED = 1 << 62


class MalformedData(ValueError):
    """The data file cannot be parsed as a JSON list / JSONL of records."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Entry:
    """One record of the file; `error` is set for a JSONL line that is not JSON."""

    index: int
    record: Any
    error: str | None = None


def iter_records(path: Path) -> Iterator[tuple[Entry, int]]:
    """(entry, bytes read so far) for each record of a JSON list or a ``.jsonl`` file, streamed."""
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
    else:
        yield from _json_list(path)


def _jsonl(path: Path) -> Iterator[tuple[Entry, int]]:
    index, consumed = 0, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            consumed += len(raw)
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                yield Entry(index, json.loads(line)), consumed
            except json.JSONDecodeError as err:
                yield Entry(index, None, f"line {lineno}: malformed JSON ({err.msg})"), consumed
            index += 1


def _json_list(path: Path) -> Iterator[tuple[Entry, int]]:
    """A JSON list decoded one element at a time (`json.JSONDecoder.raw_decode` on a buffer)."""
    decoder, text = json.JSONDecoder(), _Buffer(path)
    with text:
        pos = text.skip_space(0)
        if text.char(pos) != "[":
            raise MalformedData(f"{path}: expected a JSON list of samples ('[' at the start)")
        pos, index = text.skip_space(pos + 1), 0
        if text.char(pos) == "]":
            return
        while True:
            value, pos = text.decode(decoder, pos)
            yield Entry(index, value), text.bytes_read
            index += 1
            pos = text.skip_space(pos)
            sep = text.char(pos)
            if sep == "]":
                return
            if sep != ",":
                raise MalformedData(f"{path}: expected ',' or ']' after sample {index - 1}")
            pos = text.skip_space(pos + 1)


class _Buffer:
    """The text of a file, read in chunks; positions are relative to what is kept."""

    def __init__(self, path: Path) -> None:
        self.path, self.text, self.bytes_read, self.eof = path, "", 0, False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._file: IO[bytes] | None = None

    def __enter__(self) -> _Buffer:
        self._file = open(self.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        assert self._file is not None
        self._file.close()

    def _more(self) -> bool:
        assert self._file is not None
        chunk = self._file.read(CHUNK_BYTES)
        self.bytes_read += len(chunk)
        self.eof = not chunk
        self.text += self._decoder.decode(chunk, final=self.eof)
        return bool(chunk)

    def char(self, pos: int) -> str:
        while pos >= len(self.text) and self._more():
            pass
        return self.text[pos] if pos < len(self.text) else ""

    def skip_space(self, pos: int) -> int:
        while self.char(pos).isspace():
            pos += 1
        return pos

    def decode(self, decoder: json.JSONDecoder, pos: int) -> tuple[Any, int]:
        """The JSON value at `pos` and the position after it; drops the text before it."""
        self.text, pos = self.text[pos:], 0
        while True:
            try:
                return decoder.raw_decode(self.text, pos)
            except json.JSONDecodeError as err:
                if self.eof or not self._more():
                    raise MalformedData(
                        f"{self.path}: malformed JSON ({err.msg}) near byte {self.bytes_read}"
                    ) from None


# --------------------------------------------------------------------------- checking


@dataclass
class Report:
    """What check-data found: unusable sample ids by reason (in file order)."""

    data: str
    records: int = 0
    bad: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # reason -> first detail
    seconds: float = 0.0
    tokenized: bool = False

    @property
    def unusable(self) -> int:
        return sum(len(ids) for ids in self.bad.values())

    def add(self, err: BadSample) -> None:
        self.bad.setdefault(err.reason, []).append(str(err.sample_id))
        self.details.setdefault(err.reason, f"{err.sample_id}: {err.detail}")

    def lines(self) -> list[str]:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        head = (
            f"[check-data] {self.data}: {self.records} records, {self.records - self.unusable} "
            f"usable, {self.unusable} unusable ({self.seconds:.1f} s, {rate:,.0f} records/s"
            + ("" if self.tokenized else "; not tokenized: give --model-path to check lengths")
            + ")"
        )
        out = [head]
        for reason, ids in sorted(self.bad.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
            out.append(f"  {reason}: {len(ids)} [{shown}] e.g. {self.details[reason]}")
        return out

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "records": self.records,
            "usable": self.records - self.unusable,
            "unusable": self.unusable,
            "by_reason": {reason: len(ids) for reason, ids in sorted(self.bad.items())},
            "ids": dict(sorted(self.bad.items())),
            "details": dict(sorted(self.details.items())),
            "tokenized": self.tokenized,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds > 0 else None,
        }


# the reader of a worker process (set once when the pool starts, inherited by fork)
_WORKER_READER: SampleReader | None = None


def _start_worker(reader: SampleReader) -> None:
    global _WORKER_READER
    _WORKER_READER = reader


def _check_block(
    entries: list[Entry], reader: SampleReader | None = None
) -> list[tuple[str, str, str] | None]:
    """Every check training applies (`SampleReader.item`: text, tokenization, the image decoded)
    for each entry: None when usable, else (reason, sample id, detail). Runs in a worker (the
    reader it was started with) or, for ``--jobs 1``, in the main process."""
    reader = reader or _WORKER_READER
    assert reader is not None
    return [_check_one(reader, entry) for entry in entries]


def _check_one(reader: SampleReader, entry: Entry) -> tuple[str, str, str] | None:
    sample_id = record_id(entry.record, entry.index)
    if entry.error is not None:
        return "bad_format", sample_id, entry.error
    try:
        reader.item(entry.record, sample_id)
    except BadSample as err:
        return err.reason, sample_id, err.detail
    return None


class Checker:
    """Streams a data file through `reader`'s checks, in blocks of `BLOCK` records: `jobs`
    worker processes check blocks side by side (tokenizing and decoding), the main process
    reads the file, keeps the blocks in order and writes the report and ``--fix``."""

    def __init__(self, reader: SampleReader, *, jobs: int = 1) -> None:
        self.reader = reader
        self.jobs = max(1, jobs)

    def run(self, path: Path, *, fix: Path | None = None, progress: bool = True) -> Report:
        report = Report(str(path), tokenized=self.reader.tokenizer is not None)
        started = time.perf_counter()
        bar = _bar(path, progress)
        pool = self._pool()
        writer = _FixWriter(fix) if fix is not None else None
        pending: deque[tuple[list[Entry], Future | list]] = deque()
        block: list[Entry] = []
        seen = 0
        try:
            for entry, consumed in iter_records(path):
                block.append(entry)
                if len(block) >= BLOCK:
                    pending.append((block, self._submit(block, pool)))
                    block = []
                while len(pending) > 2 * self.jobs:
                    self._finish(*pending.popleft(), report, writer)
                if bar is not None:
                    bar.update(consumed - seen)
                    seen = consumed
            pending.append((block, self._submit(block, pool)))
            while pending:
                self._finish(*pending.popleft(), report, writer)
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if bar is not None:
                bar.close()
        if writer is not None:
            writer.close()
        report.seconds = time.perf_counter() - started
        return report

    def _pool(self) -> ProcessPoolExecutor | None:
        """`jobs` workers (none for 1), all started now: forked before the tokenizer first runs
        (a fork after that makes HF tokenizers warn and turn their threads off)."""
        if self.jobs == 1:
            return None
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = ProcessPoolExecutor(
            self.jobs, mp_context=context, initializer=_start_worker, initargs=(self.reader,)
        )
        list(pool.map(_check_block, [[]] * self.jobs))  # start them all
        return pool

    def _submit(self, block: list[Entry], pool: ProcessPoolExecutor | None) -> Future | list:
        if pool is None:
            return _check_block(block, self.reader)
        return pool.submit(_check_block, block)

    @staticmethod
    def _finish(
        block: list[Entry], checked: Future | list, report: Report, writer: _FixWriter | None
    ) -> None:
        results = checked.result() if isinstance(checked, Future) else checked
        for entry, found in zip(block, results, strict=True):
            report.records += 1
            if found is not None:
                report.add(BadSample(*found))
            elif writer is not None:
                writer.write(entry.record)


def _bar(path: Path, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc="check-data", file=sys.stderr
    )


class _FixWriter:
    """The usable records, streamed into a temporary file renamed to `path` when done."""

    def __init__(self, path: Path) -> None:
        self.path, self.jsonl, self.count = path, path.suffix == ".jsonl", 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "w", encoding="utf-8")
        if not self.jsonl:
            self.file.write("[")

    def write(self, record: Any) -> None:
        text = json.dumps(record, ensure_ascii=False)
        if self.jsonl:
            self.file.write(text + "\n")
        else:
            self.file.write(("," if self.count else "") + "\n" + text)
        self.count += 1

    def close(self) -> None:
        if not self.jsonl:
            self.file.write("\n]\n")
        self.file.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- before training


def usable_records(data_args, version: str) -> list:
    """Training's records of ``--data_path``; exits (one line) before any model loads when there
    are none, or when none passes the checks that need no model (format, roles, a reply, the
    image path, image decoding). Stops at the first usable record: a good data set costs one
    check (this is no substitute for check-data, which reads every record)."""
    from .conversation import get_template
    from .data import load_records

    path = data_args.data_path
    try:
        records = load_records(path)
        template = get_template(version)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--data_path {path}: {err}") from err
    if not records:
        raise SystemExit(f"--data_path {path} holds no samples: there is nothing to train on")
    reader = SampleReader(
        Path(data_args.image_folder),
        template if renders_alone(template) else None,
        image_aspect_ratio=data_args.image_aspect_ratio,
        allow_images_outside_folder=data_args.allow_images_outside_folder,
    )
    report = Report(str(path))
    for index, record in enumerate(records):
        found = _check_one(reader, Entry(index, record))
        if found is None:
            return records
        report.add(BadSample(*found))
    reasons = "; ".join(
        f"{len(ids)} {reason} (e.g. {report.details[reason]})" for reason, ids in report.bad.items()
    )
    raise SystemExit(
        f"--data_path {path}: none of its {len(records)} samples is usable with --image_folder "
        f"{data_args.image_folder} and --version {version}: {reasons}. "
        f"`vitsplit-vlm check-data --data {path} --image-folder {data_args.image_folder}` "
        "lists every problem"
    )


def renders_alone(template) -> bool:
    """Whether `template` renders a conversation before it meets a tokenizer (one bound to the
    tokenizer's own chat template does not: its conversations are checked when tokenized)."""
    from .conversation import IMAGE_PLACEHOLDER, InvalidConversation, render_conversation

    probe = [(template.user, f"{IMAGE_PLACEHOLDER}\nWhat is it?"), (template.assistant, "A cat.")]
    try:
        render_conversation(template, probe)
    except InvalidConversation:
        return True  # it renders, and refuses the probe by its own rules
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="LLaVA JSON list or JSONL")
    parser.add_argument(
        "--image-folder", type=Path, required=True, help="folder the image paths are relative to"
    )
    parser.add_argument(
        "--version", default=None, help="conversation template (default: the model's, else "
        "vicuna_v1; plain for stage-1 data)",
    )  # fmt: skip
    parser.add_argument(
        "--model-path", type=Path, default=None,
        help="tokenize as training does: a ViT-Split LLaVA folder, or an LLM folder (training's "
        "--model_name_or_path) with --vision-tower",
    )  # fmt: skip
    parser.add_argument("--vision-tower", type=Path, default=None, help="with an LLM --model-path")
    parser.add_argument("--model-max-length", type=int, default=2048, help="training's value")
    parser.add_argument("--image-aspect-ratio", default="pad", choices=("pad", "square"))
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true",
        help="as training's --allow_images_outside_folder True",
    )  # fmt: skip
    parser.add_argument("--fix", type=Path, default=None, help="write the usable records here")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (each tokenizes and decodes)",
    )
    parser.add_argument("--report", type=Path, default=None, help="write the full report (JSON)")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        reader = build_reader(args)
    except (ValueError, OSError) as err:
        print(f"[check-data] {err}", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"[check-data] --data {args.data}: no such file", file=sys.stderr)
        return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        report = Checker(reader, jobs=args.jobs).run(args.data, fix=args.fix, progress=progress)
    except MalformedData as err:
        print(f"[check-data] {err}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    if report.records == 0:
        print(f"[check-data] {args.data} holds no samples: there is nothing to train on")
    if args.fix is not None:
        print(f"[check-data] {report.records - report.unusable} usable records -> {args.fix}")
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 1 if report.unusable or report.records == 0 else 0


def build_reader(args: argparse.Namespace) -> SampleReader:
    """The `SampleReader` training would build for these flags (tokenizer only with
    ``--model-path``); bad flags raise ``ValueError`` naming them."""
    from .configuration import check_choice
    from .conversation import TEMPLATES, get_template
    from .tokenizer_chat import bind_template

    if not args.image_folder.is_dir():
        raise ValueError(f"--image-folder {args.image_folder}: not a folder")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    settings: dict[str, Any] = {}
    version = args.version
    if args.model_path is not None:
        settings, saved_version = _tokenizer_settings(args)
        version = version or saved_version
    version = version or "vicuna_v1"
    check_choice("--version", version, tuple(TEMPLATES))
    if settings:  # bound to the tokenizer as training binds it (chat_template: its own Jinja)
        template = bind_template(version, settings["tokenizer"])
    else:
        template = get_template(version)
        if not renders_alone(template):
            template = None  # conversations are checked when tokenized, not here
    return SampleReader(
        args.image_folder,
        template,
        image_aspect_ratio=args.image_aspect_ratio,
        allow_images_outside_folder=args.allow_images_outside_folder,
        model_max_length=args.model_max_length,
        **settings,
    )


def _tokenizer_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """(tokenizer, image token id and count) as training builds them, and the model's template."""
    from transformers import AutoConfig, AutoTokenizer

    from .builder import is_vlm_folder, prepare_tokenizer
    from .processing import DEFAULT_IMAGE_TOKEN

    path = args.model_path
    if is_vlm_folder(path):
        from . import register

        register()
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=UNBOUNDED)
        return {
            "tokenizer": tokenizer,
            "image_token_id": config.image_token_id,
            "num_image_tokens": config.image_seq_length,
        }, config.conv_template
    if args.vision_tower is None:
        raise ValueError(
            f"--model-path {path} is an LLM, not a ViT-Split LLaVA folder: give --vision-tower too "
            "(as training's --vision_tower), for the number of image tokens"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=UNBOUNDED)
    prepare_tokenizer(tokenizer)
    vision = AutoConfig.from_pretrained(args.vision_tower)
    vision = getattr(vision, "vision_config", vision)
    grid = vision.image_size // vision.patch_size
    return {
        "tokenizer": tokenizer,
        "image_token_id": tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        "num_image_tokens": grid * grid,
    }, None
