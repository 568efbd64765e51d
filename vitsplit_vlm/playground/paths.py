"""Default locations of the playground's generated models and data and of the tiny default's
checkpoints, relative to the working folder (the repository root, as LLaVA's ``./playground``).

The one place these paths are written down. Only command-line layers and scripts read them (and
say so when they use them); library modules take every path as an argument.
"""

from __future__ import annotations

from pathlib import Path

PLAYGROUND = Path("playground")

# `vitsplit-vlm make-tiny`: tiny random Hugging Face models, one subfolder each
TINY = PLAYGROUND / "tiny"
TINY_DINOV2 = TINY / "dinov2"
TINY_DINOV2_PRETRAINED = TINY / "dinov2-pretrained"  # `make-tiny --pretrain`
TINY_CLIP_PRETRAINED = TINY / "clip-vit-pretrained"  # `make-tiny --pretrain-clip`: the VLM tower

DATA = PLAYGROUND / "data"
# the tiny CLIP's hidden states for the shapes images (`--cache_features`, stages 1-2)
FEATURE_CACHE = PLAYGROUND / "feature-cache"
SHAPES = DATA / "shapes"  # `make-data shapes`: the tiny VLM's training and held-out data
EVAL = DATA / "eval"  # `make-data evalsets`: LLaVA's playground/data/eval layout
DENSE_DATA = DATA / "dense"  # `make-data dense`: the five dense layouts

CHECKPOINTS = Path("checkpoints")
TINY_PRETRAIN = CHECKPOINTS / "vitsplit-tiny-pretrain"  # stage 1 of the tiny default
TINY_FINETUNE = CHECKPOINTS / "vitsplit-tiny"  # stage 2 of the tiny default
TINY_LORA = CHECKPOINTS / "vitsplit-tiny-lora"
