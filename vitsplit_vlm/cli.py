"""The `vitsplit-vlm` entry point.

Subcommands live in an explicit registry (``COMMANDS``): name -> (module, one-line help).
A command module defines ``add_arguments(parser)`` and ``run(args) -> int | None``, or
``main(argv) -> int`` when it parses its own flags (training uses HfArgumentParser). Only the
chosen command's module is imported, so ``vitsplit-vlm --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny": (
        "vitsplit_vlm.playground.tiny",
        "build and save tiny random HF models and a tokenizer",
    ),
    "params": ("vitsplit_vlm.params", "trainable-parameter report (paper Tabs. 4-6, DESIGN §4-5)"),
    "make-data": ("vitsplit_vlm.playground.cli", "generate the offline playground data sets"),
    "eval": ("vitsplit_vlm.eval.cli", "answer generation, scorers and submission converters"),
    "train": ("vitsplit_vlm.vlm.train", "LLaVA-1.5 stage 1 / stage 2 training (LLaVA's flags)"),
    "merge-lora": ("vitsplit_vlm.vlm.merge_lora", "fold a stage-2 LoRA adapter into a full model"),
    "chat": ("vitsplit_vlm.serve.cli_chat", "multi-turn terminal chat about an image (streamed)"),
    "demo": ("vitsplit_vlm.serve.gradio_demo", "Gradio web demo: image upload, streamed chat"),
    "heldout": (
        "vitsplit_vlm.playground.heldout",
        "held-out playground accuracy with image controls",
    ),
    "dense": ("vitsplit_vlm.dense.cli", "dense seg / depth / det: train, eval, predict overlays"),
    "quickstart": (
        "vitsplit_vlm.playground.quickstart",
        "run the embedded tiny default end to end",
    ),
}


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: vitsplit-vlm <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `vitsplit-vlm <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vitsplit-vlm: unknown command {name!r}\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    if hasattr(module, "main"):
        return int(module.main(rest) or 0)
    parser = argparse.ArgumentParser(prog=f"vitsplit-vlm {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
