"""Strict readers and writers shared by every eval task.

Every problem with an input file becomes one :class:`EvalInputError` whose message names the file
and, where there is one, the line, question id or column. Outputs are written to a temporary file
next to the destination and renamed into place, so a failed run never leaves a partial file that
looks complete.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

QuestionId = int | str
"""A question id exactly as the JSON holds it; ``1`` and ``"1"`` are different ids."""

K = TypeVar("K")

_EXAMPLES = 5  # how many offending ids an error message lists
_CSV_FIELD_LIMIT = 2**31 - 1  # MMBench TSVs carry base64 images far above csv's 128 KiB default


class EvalInputError(ValueError):
    """A bad input file or argument; the message says which file, line, id or column."""


@dataclass(frozen=True)
class Record:
    """One JSON object from a file and where it came from (``"line 3"`` or ``"questions[2]"``)."""

    data: dict[str, Any]
    where: str


@dataclass(frozen=True)
class Answer:
    """One line of a LLaVA-style answers file (``model_vqa_loader`` / ``model_vqa_mmbench``)."""

    question_id: QuestionId
    text: str
    round_id: int
    where: str  # "answers.jsonl line 7"


@contextmanager
def _reading(path: str | Path) -> Iterator[IO[str]]:
    """Open ``path`` as UTF-8 text (BOM dropped, line ends untouched); OS and decoding problems
    become :class:`EvalInputError`."""
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvalInputError(f"{path}: is a directory, expected a file") from None
    except OSError as err:
        raise EvalInputError(f"{path}: cannot read ({err.strerror})") from None
    try:
        with handle:
            yield handle
    except UnicodeDecodeError as err:
        raise EvalInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_text(path: str | Path) -> str:
    with _reading(path) as handle:
        return handle.read()


def _json_error(
    path: str | Path, err: json.JSONDecodeError, line: int | None = None
) -> EvalInputError:
    return EvalInputError(
        f"{path} line {line or err.lineno}: malformed JSON: {err.msg} (column {err.colno})"
    )


def _as_object(path: str | Path, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvalInputError(f"{path} {where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSON-lines file: one object per line; blank lines (and CRLF endings) are fine."""
    return _parse_jsonl(path, _read_text(path))


def _parse_jsonl(path: str | Path, text: str) -> list[Record]:
    records = []
    # Split on "\n" only: str.splitlines() would also split inside a line at U+2028 and friends.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(path, err, number) from None
        records.append(Record(_as_object(path, value, f"line {number}"), f"line {number}"))
    if not records:
        raise EvalInputError(f"{path}: no records (empty file)")
    return records


def read_records(path: str | Path, *, list_key: str | None = None) -> list[Record]:
    """Read records from a JSON document or a JSON-lines file, whichever the file holds.

    A document may be a list of objects or an object holding the list under ``list_key`` (the
    official VQA files: ``{"questions": [...]}``, ``{"annotations": [...]}``). Anything else is
    read as JSON lines (POPE's ``coco_pope_*.json`` are JSON lines despite their name).
    """
    text = _read_text(path)
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise EvalInputError(f"{path}: no records (empty file)")
    try:
        document, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise _json_error(path, err) from None
    if text[end:].strip():
        return _parse_jsonl(path, text)
    if isinstance(document, dict) and list_key is not None and list_key in document:
        items, name = document[list_key], list_key
        if not isinstance(items, list):
            raise EvalInputError(f"{path}: '{list_key}' is not a list")
    elif isinstance(document, list):
        items, name = document, ""
    else:  # a one-line JSON-lines file
        return [Record(_as_object(path, document, "line 1"), "line 1")]
    records = [
        Record(_as_object(path, item, f"{name}[{i}]"), f"{name}[{i}]")
        for i, item in enumerate(items)
    ]
    if not records:
        raise EvalInputError(f"{path}: no records (empty list)")
    return records


def field(path: str | Path, record: Record, name: str, kind: type | tuple[type, ...]) -> Any:
    """``record.data[name]``, checked to be present and of type ``kind`` (bool is never an int)."""
    if name not in record.data:
        raise EvalInputError(f"{path} {record.where}: missing field '{name}'")
    value = record.data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise EvalInputError(
            f"{path} {record.where}: field '{name}' must be {expected}, got {value!r}"
        )
    return value


def question_id(path: str | Path, record: Record) -> QuestionId:
    """The record's ``question_id`` (an int or a string)."""
    return field(path, record, "question_id", (int, str))


def read_answers(path: str | Path, *, rounds: bool = False) -> dict[Any, Answer]:
    """Read a LLaVA answers file into ``{question_id: Answer}`` (or ``{(question_id, round_id):
    Answer}`` with ``rounds=True``, for MMBench's ``--all-rounds``).

    Each line needs ``question_id`` (int or str) and ``text`` (str); ``round_id`` defaults to 0.
    A key seen twice is an error naming both lines.
    """
    answers: dict[Any, Answer] = {}
    for record in read_jsonl(path):
        qid = question_id(path, record)
        text = field(path, record, "text", str)
        round_id = field(path, record, "round_id", int) if "round_id" in record.data else 0
        if round_id < 0:
            raise EvalInputError(f"{path} {record.where}: round_id must be >= 0, got {round_id}")
        key = (qid, round_id) if rounds else qid
        if key in answers:
            what = f"question_id {qid!r}" + (f" round_id {round_id}" if rounds else "")
            raise EvalInputError(
                f"{path} {record.where}: duplicate {what} (first at {answers[key].where})"
            )
        answers[key] = Answer(qid, text, round_id, record.where)
    return answers


def _examples(keys: Sequence[Any]) -> str:
    shown = ", ".join(
        f"{k[0]!r} round {k[1]}" if isinstance(k, tuple) else repr(k) for k in keys[:_EXAMPLES]
    )
    return shown + (", ..." if len(keys) > _EXAMPLES else "")


def reject_unknown(
    answers: Mapping[K, Answer], known: Collection[K], *, answers_path: str | Path, against: str
) -> None:
    """Raise if an answer's key is not among ``known`` (the questions of ``against``)."""
    unknown = [key for key in answers if key not in known]
    if unknown:
        first = answers[unknown[0]]
        raise EvalInputError(
            f"{answers_path} {first.where}: {_describe(unknown[0])} is not in {against} "
            f"({len(unknown)} answer(s) with unknown ids: {_examples(unknown)})"
        )


def require_all(
    answers: Mapping[K, Answer], expected: Iterable[K], *, answers_path: str | Path, against: str
) -> None:
    """Raise if any key of ``expected`` (the questions of ``against``) has no answer."""
    missing = [key for key in expected if key not in answers]
    if missing:
        raise EvalInputError(
            f"{answers_path}: {len(missing)} question(s) of {against} have no answer, e.g. "
            f"{_examples(missing)}; every question must be answered"
        )


def _describe(key: Any) -> str:
    if isinstance(key, tuple):
        return f"question_id {key[0]!r} round_id {key[1]}"
    return f"question_id {key!r}"


@dataclass(frozen=True)
class TsvRow:
    """One data row of a TSV file: the kept cells by column name, and its line number."""

    cells: dict[str, str]
    line: int


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def read_tsv(
    path: str | Path,
    *,
    required: Sequence[str],
    keep: Collection[str] | None = None,
    drop: Collection[str] = (),
) -> tuple[list[str], list[TsvRow]]:
    """Read a tab-separated file with a header row, as ``pandas.read_table`` parses it.

    Quoting follows pandas' defaults (``"`` quotes a field, ``""`` inside it is a quote; tabs and
    newlines may sit in quoted fields); blank lines are skipped. ``required`` columns must be in
    the header; every row must have as many fields as the header. Only the columns in ``keep``
    (default: all) and not in ``drop`` are stored, so MMBench's base64 images need not stay in
    memory. Returns the header and the rows; cells are raw strings (``mmbench.is_missing`` says
    which ones pandas would read as NaN).
    """
    rows: list[TsvRow] = []
    with _reading(path) as handle, _csv_field_limit(_CSV_FIELD_LIMIT):
        reader = csv.reader(handle, delimiter="\t", quotechar='"')
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise EvalInputError(f"{path}: empty file, expected a header row")
            missing = [name for name in required if name not in header]
            if missing:
                raise EvalInputError(
                    f"{path}: missing column(s) {', '.join(repr(m) for m in missing)} "
                    f"(header has: {', '.join(header)})"
                )
            kept = [
                (i, name)
                for i, name in enumerate(header)
                if (keep is None or name in keep) and name not in drop
            ]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise EvalInputError(
                        f"{path} line {reader.line_num}: {len(row)} fields, header has "
                        f"{len(header)}"
                    )
                rows.append(TsvRow({name: row[i] for i, name in kept}, reader.line_num))
        except csv.Error as err:
            raise EvalInputError(f"{path} line {reader.line_num}: malformed TSV: {err}") from None
    return header, rows


@contextmanager
def atomic_output(
    path: str | Path, *, binary: bool = False, newline: str | None = None
) -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file that is renamed into place on success.

    Parent folders are created; the file gets the usual permissions (0666 less the umask, where
    ``mkstemp`` would leave 0600). If the body raises, the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise EvalInputError(f"{path}: cannot write ({err.strerror})") from None
    try:
        if binary:
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding="utf-8", newline=newline)
        with handle:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
