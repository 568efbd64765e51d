"""Where the playground's generated models, data and tiny checkpoints go, relative to the working
directory (the repository root, as for LLaVA's ``./playground``). One place for every default
path of the development commands; library modules never read these."""

from __future__ import annotations

from pathlib import Path

PLAYGROUND = Path("playground")
TINY = PLAYGROUND / "tiny"  # `vitsplit-vlm make-tiny`
DATA = PLAYGROUND / "data"
SHAPES = DATA / "shapes"  # `make-data shapes`: the tiny VLM's training and held-out data
EVAL = DATA / "eval"  # `make-data evalsets`: LLaVA's playground/data/eval layout
DENSE = DATA / "dense"  # `make-data dense`: ade/, nyu/, coco/

CHECKPOINTS = Path("checkpoints")
TINY_PRETRAIN = CHECKPOINTS / "vitsplit-tiny-pretrain"  # stage 1 of the tiny default
TINY_FINETUNE = CHECKPOINTS / "vitsplit-tiny"  # stage 2 of the tiny default
TINY_LORA = CHECKPOINTS / "vitsplit-tiny-lora"
