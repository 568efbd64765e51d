"""Default locations of the playground: generated models and data, relative to the working folder.

The one place these paths are written down. Only command-line layers and scripts read them (and
say so when they use them); library modules take every path as an argument.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("playground")

# `vitsplit-vlm make-tiny`: tiny random Hugging Face models, one subfolder each
TINY = ROOT / "tiny"
TINY_DINOV2 = TINY / "dinov2"

# `vitsplit-vlm make-data dense`: shape scenes in the ADE20K / NYU-v2 / COCO layouts
DENSE_DATA = ROOT / "data" / "dense"
