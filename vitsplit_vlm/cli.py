"""The `vitsplit-vlm` entry point.

Commands live in an explicit registry (`COMMANDS`, the `vitsplit_vlm.commands.Command` shape
every registry of the project uses). Only the chosen command's module is imported, so
``vitsplit-vlm --help`` stays fast (no torch import). The development commands (tiny models,
playground data, the quickstart) come from `vitsplit_vlm.playground`, which no library module
imports.
"""

from __future__ import annotations

import sys

from .commands import Command, lazy, module_command, run_command

COMMANDS: dict[str, Command] = {
    "train": Command(
        "LLaVA-1.5 stage 1 / stage 2 training (LLaVA's flags)",
        main=lazy("vitsplit_vlm.vlm.train", "main"),
    ),
    "check-data": module_command(
        "check a LLaVA data file with training's own sample checks (before a long run)",
        "vitsplit_vlm.vlm.check_data",
    ),
    "merge-lora": module_command(
        "fold a stage-2 LoRA adapter into a full model", "vitsplit_vlm.vlm.merge_lora"
    ),
    "eval": module_command(
        "answer generation, scorers and submission converters", "vitsplit_vlm.eval.cli"
    ),
    "chat": module_command(
        "multi-turn terminal chat about an image (streamed)", "vitsplit_vlm.serve.cli_chat"
    ),
    "demo": module_command(
        "Gradio web demo: image upload, streamed chat", "vitsplit_vlm.serve.gradio_demo"
    ),
    "dense": module_command(
        "dense seg / depth / det: train, eval, predict overlays", "vitsplit_vlm.dense.cli"
    ),
    "convert": module_command(
        "checkpoints in (official ViT-Split LLaVA, LLaVA-1.5, llava-hf) and out (llava-hf)",
        "vitsplit_vlm.vlm.convert",
    ),
    "params": module_command(
        "trainable parameters per component (paper Tabs. 4-6)", "vitsplit_vlm.params"
    ),
    "bench": module_command(
        "benchmarks: timings, medians and ratios to benchmarks/results (a source checkout)",
        "vitsplit_vlm.bench",
    ),
    "analyze": module_command(
        "layer CKA and per-layer feature maps (paper Figs. 3-4)", "vitsplit_vlm.analysis.cli"
    ),
    # development: the embedded tiny default and its playground
    "quickstart": module_command(
        "run the embedded tiny default end to end", "vitsplit_vlm.playground.quickstart"
    ),
    "make-tiny": module_command(
        "build and save tiny random HF models and a tokenizer", "vitsplit_vlm.playground.tiny"
    ),
    "make-data": module_command(
        "generate the offline playground data sets", "vitsplit_vlm.playground.cli"
    ),
    "heldout": module_command(
        "held-out playground accuracy with image controls", "vitsplit_vlm.playground.heldout"
    ),
}


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: vitsplit-vlm <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
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
    return int(run_command(f"vitsplit-vlm {name}", COMMANDS[name], rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
