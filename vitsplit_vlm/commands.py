"""One shape for every command registry: `vitsplit-vlm <command>` and each command's actions.

A registry is a ``dict[str, Command]`` next to its entry point. A `Command` carries its one-line
help and two functions, `add_arguments(parser)` and `run(args)`; `lazy("module", "name")` stands
for a function of a module imported only when the command runs, so ``vitsplit-vlm --help`` does
not import torch. A command that parses its own argument list (training, with transformers'
`HfArgumentParser`) gives `main(argv)` instead of the two functions.

    ACTIONS = {"train": Command("train a head", add_train_args, run_train), ...}
    add_subcommands(parser, ACTIONS, dest="action")   # one sub-parser per entry
    run_subcommand(args, ACTIONS, dest="action")      # calls the chosen entry's run(args)
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], Any] | None = None
    main: Callable[[list[str]], int] | None = None

    def __post_init__(self) -> None:
        if (self.main is None) == (self.add_arguments is None or self.run is None):
            raise ValueError("a Command has add_arguments + run, or main, not both")


def lazy(module: str, name: str) -> Callable:
    """`module.name`, imported when first called."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = f"{module}.{name}"
    return call


def module_command(help: str, module: str) -> Command:
    """The command of a module that defines `add_arguments(parser)` and `run(args)`."""
    return Command(help, lazy(module, "add_arguments"), lazy(module, "run"))


def add_subcommands(
    parser: argparse.ArgumentParser, registry: Mapping[str, Command], *, dest: str
) -> None:
    """One sub-parser per entry (`main`-style entries cannot nest and are refused)."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    for name, command in registry.items():
        if command.add_arguments is None:
            raise ValueError(f"{name}: a nested command needs add_arguments and run")
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))


def run_subcommand(args: argparse.Namespace, registry: Mapping[str, Command], *, dest: str) -> Any:
    return registry[getattr(args, dest)].run(args)


def run_command(prog: str, command: Command, argv: list[str]) -> Any:
    """Parse `argv` for `command` (or hand it to its `main`) and run it."""
    if command.main is not None:
        return command.main(argv)
    parser = argparse.ArgumentParser(prog=prog, description=command.help)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))
