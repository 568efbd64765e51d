"""The analysis PNGs, drawn with matplotlib (the ``analysis`` extra) on its file-only backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            "the analysis PNGs need matplotlib: pip install 'vitsplit_vlm[analysis]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cka_heatmap(matrix: np.ndarray, layers: Sequence[int], title: str, path: Path) -> Path:
    """Layer x layer CKA as paper Fig. 3: layer 1 at the bottom-left, colour bar 0..1."""
    plt = pyplot()
    size = min(3 + 0.18 * len(layers), 9)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(matrix, origin="lower", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    step = max(1, len(layers) // 12)
    ticks = list(range(0, len(layers), step))
    ax.set_xticks(ticks, [str(layers[i]) for i in ticks])
    ax.set_yticks(ticks, [str(layers[i]) for i in ticks])
    if len(layers) <= 12:  # small matrices: the values too
        for (i, j), value in np.ndenumerate(matrix):
            colour = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def map_grid(
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    columns: Sequence[str],
    thumbnails: Sequence[np.ndarray | None],
    title: str,
    path: Path,
) -> Path:
    """A grid of (h, w) maps: one row per (label, maps), one column per label in `columns`, the
    row's image thumbnail (or nothing) in front; None leaves a cell empty."""
    plt = pyplot()
    cols = len(columns) + 1
    height = 0.95 * len(rows) + 0.45
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(0.9 * cols + 0.5, height), dpi=80, squeeze=False
    )
    for r, ((label, maps), thumb) in enumerate(zip(rows, thumbnails, strict=True)):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                if thumb is not None:
                    ax.imshow(thumb)
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
                continue
            if maps[c - 1] is not None:
                ax.imshow(maps[c - 1], cmap="viridis", interpolation="nearest")
            if r == 0:
                ax.set_title(columns[c - 1], fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.3 / height))  # room for the title
    fig.savefig(path)
    plt.close(fig)
    return path
