"""`vitsplit-vlm make-data <dataset>`: generate an offline playground data set.

Generators live in an explicit registry (`GENERATORS`, name -> `Command`). Examples::

    vitsplit-vlm make-data shapes --out playground/data/shapes --num-train 2000 \\
        --num-heldout 200 --image-size 112 --seed 0
    vitsplit-vlm make-data evalsets --out playground/data/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..commands import Command, add_subcommands, run_subcommand
from . import paths
from .shapes import MAX_OBJECTS


def _add_shapes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.SHAPES,
        help="output folder (default: %(default)s)",
    )
    parser.add_argument("--num-train", type=int, default=2000, help="training images")
    parser.add_argument("--num-heldout", type=int, default=200, help="held-out images")
    parser.add_argument(
        "--num-finetune",
        type=int,
        default=None,
        help="stage-2 samples in finetune.json, in training order (default: 4 per training image)",
    )
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    parser.add_argument(
        "--max-objects",
        type=int,
        default=MAX_OBJECTS,
        help="objects per scene: 1 to this, drawn uniformly (default: %(default)s)",
    )
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
        num_finetune=args.num_finetune,
        max_objects=args.max_objects,
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


def _add_evalsets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.EVAL,
        help="output folder, LLaVA's playground/data/eval layout (default: %(default)s)",
    )
    parser.add_argument("--vqav2-scenes", type=int, default=100, help="VQAv2-style scenes")
    parser.add_argument("--pope-images", type=int, default=50, help="POPE scenes (x6 per set)")
    parser.add_argument("--mmbench-scenes", type=int, default=100, help="MMBench-style scenes")
    parser.add_argument("--image-size", type=int, default=112, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--photos",
        choices=("auto", "yes", "no"),
        default="auto",
        help="add scikit-image's photos to VQAv2 and MMBench (auto: if it is installed)",
    )


def _run_evalsets(args: argparse.Namespace) -> int:
    from vitsplit_vlm.playground.evalsets import write_evalsets

    paths = write_evalsets(
        args.out,
        vqav2_scenes=args.vqav2_scenes,
        pope_images=args.pope_images,
        mmbench_scenes=args.mmbench_scenes,
        image_size=args.image_size,
        seed=args.seed,
        photos={"auto": None, "yes": True, "no": False}[args.photos],
    )
    for label, path in [
        ("vqav2", paths.vqav2_questions),
        ("vqav2 gt", paths.vqav2_annotations),
        ("pope", paths.pope_questions),
        ("pope gt", paths.pope_annotations),
        ("mmbench", paths.mmbench_tsv),
    ]:
        print(f"{label:<9} {path}")
    return 0


def _add_dense(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.DENSE_DATA,
        help="output folder; ade/, nyu/, coco/, cityscapes/ and pascal_context/ go inside "
        "(default: %(default)s)",
    )
    parser.add_argument("--num-train", type=int, default=2000, help="training images per set")
    parser.add_argument("--num-val", type=int, default=200, help="validation images per set")
    parser.add_argument("--seed", type=int, default=0)


def _run_dense(args: argparse.Namespace) -> int:
    from vitsplit_vlm.playground.dense_sets import write_dense_sets

    paths = write_dense_sets(
        args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed
    )
    for label, path in [
        ("ADE20K", paths.ade),
        ("NYU-v2", paths.nyu),
        ("COCO", paths.coco),
        ("Cityscapes", paths.cityscapes),
        ("Pascal Context", paths.pascal_context),
    ]:
        print(f"{label:<14} {path}")
    return 0


GENERATORS: dict[str, Command] = {
    "shapes": Command(
        "coloured-shape scenes with captions and short-answer QA (LLaVA format)",
        _add_shapes,
        _run_shapes,
    ),
    "evalsets": Command(
        "VQAv2 / POPE / MMBench-style eval sets with ground truth (LLaVA's file formats)",
        _add_evalsets,
        _run_evalsets,
    ),
    "dense": Command(
        "shape scenes as ADE20K / Cityscapes / Pascal Context masks, NYU-v2 depth and COCO "
        "instances (dense tasks)",
        _add_dense,
        _run_dense,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, GENERATORS, dest="dataset")


def run(args: argparse.Namespace) -> int:
    return run_subcommand(args, GENERATORS, dest="dataset")
