"""Command-line flags of `ViTSplitConfig`, generated from its fields in one place.

Every field whose metadata marks it as a flag becomes one option, in one of two spellings:

=========  ====================================  =========================================
style      example                               used by
=========  ====================================  =========================================
``dash``   ``--k 3 --deform-offset-init zero``   ``vitsplit-vlm dense``, ``vitsplit-vlm params``
``llava``  ``--vitsplit_k 1 --vitsplit_n 1``     ``vitsplit-vlm train`` (LLaVA's flag style)
=========  ====================================  =========================================

Every option defaults to ``None`` ("not given"): `overrides` returns only the fields given, which
the caller applies to its task's preset (``preset.with_(**overrides(args))``), so a default is
declared once, by the preset, never by a parser. List fields take comma-separated values
(``--components prior,task``), booleans ``true`` / ``false``.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .config import ViTSplitConfig

STYLES = ("dash", "llava")


@dataclass(frozen=True)
class Flag:
    """One `ViTSplitConfig` field as a command-line option."""

    field: str
    help: str
    parse: Callable[[str], Any]
    choices: tuple | None
    metavar: str | None

    def option(self, style: str) -> str:
        """``--deform-offset-init`` (dash) or ``--vitsplit_deform_offset_init`` (llava)."""
        return "--" + (
            self.field.replace("_", "-") if style == "dash" else f"vitsplit_{self.field}"
        )

    def dest(self, style: str) -> str:
        return self.field if style == "dash" else f"vitsplit_{self.field}"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_list(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def _parser_for(annotation: Any) -> tuple[Callable[[str], Any], str | None]:
    """A string parser for a field annotation (``int | None``, ``tuple[str, ...]``, ...)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _parser_for(args[0])
    if typing.get_origin(annotation) is tuple:
        item, _ = _parser_for(args[0])
        return _parse_list(item), "A,B,..."
    if annotation is bool:
        return parse_bool, "true|false"
    return annotation, {int: "INT", float: "FLOAT"}.get(annotation)


def _flags() -> tuple[Flag, ...]:
    hints = typing.get_type_hints(ViTSplitConfig)
    out = []
    for f in fields(ViTSplitConfig):
        if not f.metadata.get("flag"):
            continue
        parse, metavar = _parser_for(hints[f.name])
        out.append(Flag(f.name, f.metadata["help"], parse, f.metadata.get("choices"), metavar))
    return tuple(out)


FLAGS: tuple[Flag, ...] = _flags()


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    style: str = "dash",
    title: str = "ViT-Split settings",
    preset_note: str = "default: the task's preset",
) -> argparse._ArgumentGroup:
    """Add one option per flag field to `parser` (in a group named `title`)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    group = parser.add_argument_group(title, f"Each option overrides one field ({preset_note}).")
    for flag in FLAGS:
        group.add_argument(
            flag.option(style),
            dest=flag.dest(style),
            type=flag.parse,
            choices=flag.choices,
            default=None,
            metavar=flag.metavar,
            help=flag.help,
        )
    return group


def overrides(args: argparse.Namespace | Mapping[str, Any], *, style: str = "dash") -> dict:
    """`{field: value}` for the flags given on the command line (not None)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    given = {flag.field: values.get(flag.dest(style)) for flag in FLAGS}
    return {name: value for name, value in given.items() if value is not None}
