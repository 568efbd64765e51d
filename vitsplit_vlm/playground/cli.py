"""`vitsplit-vlm make-data <dataset>`: generate an offline playground data set.

Generators live in an explicit registry (`GENERATORS`): subcommand name -> (add-arguments,
run). Example::

    vitsplit-vlm make-data shapes --out playground/data/shapes --num-train 2000 \\
        --num-heldout 200 --image-size 112 --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _add_shapes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("playground/data/shapes"),
        help="output folder (default: %(default)s)",
    )
    parser.add_argument("--num-train", type=int, default=2000, help="training images")
    parser.add_argument("--num-heldout", type=int, default=200, help="held-out images")
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_shapes(args: argparse.Namespace) -> int:
    from vitsplit_vlm.playground.shapes import write_llava_dataset

    paths = write_llava_dataset(
        args.out,
        num_train=args.num_train,
        num_heldout=args.num_heldout,
        image_size=args.image_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    for label, path in [
        ("images", paths.image_folder),
        ("pretrain", paths.pretrain),
        ("finetune", paths.finetune),
        ("heldout", paths.heldout),
    ]:
        print(f"{label:<9} {path}")
    return 0


GENERATORS: dict[str, tuple[str, Callable, Callable]] = {
    "shapes": (
        "coloured-shape scenes with captions and short-answer QA (LLaVA format)",
        _add_shapes,
        _run_shapes,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, (help_, add, _) in GENERATORS.items():
        add(sub.add_parser(name, help=help_, description=help_))


def run(args: argparse.Namespace) -> int:
    return GENERATORS[args.dataset][2](args)
