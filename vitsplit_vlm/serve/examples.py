"""Example images for the demo: real photos, plus rows of a LLaVA question file.

The photos are scikit-image's (`skimage/data/`, found without importing scikit-image; skipped when
it is not installed), copied into `cache_dir` (a temp folder by default), where Gradio may serve
them from; nothing is written into the repository. `question_examples` reads the first rows of a
question file in LLaVA's format (JSON lines with ``image`` and ``text``), e.g. the playground's
``heldout.jsonl``, so a model trained on the playground shows scenes it can answer about.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..eval.io import field, read_jsonl

PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut.png", "What is the person in the picture wearing?"),
    ("chelsea.png", "What animal is this?"),
    ("coffee.png", "What is in the cup?"),
    ("rocket.jpg", "Describe the image."),
)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vitsplit_vlm-demo-examples"


def skimage_data_dir() -> Path | None:
    """scikit-image's bundled data folder, or None if scikit-image is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def question_examples(
    path: Path, image_folder: Path | None = None, *, limit: int = 3
) -> list[list[str]]:
    """``[[image_path, question], ...]`` from the first `limit` rows of a LLaVA question file.

    Images are relative to `image_folder` (default: ``images/`` next to the file, the layout
    `make-data shapes` writes). The question's first line is kept (LLaVA's answer-format hint
    on later lines is left out). A missing image is an error naming the file and the row.
    """
    folder = image_folder or Path(path).parent / "images"
    rows = []
    for record in read_jsonl(path)[:limit]:
        image = folder / field(path, record, "image", str)
        if not image.is_file():
            raise ValueError(f"{path} {record.where}: image {image} not found (--image-folder?)")
        rows.append([str(image), field(path, record, "text", str).splitlines()[0]])
    return rows


def example_rows(
    cache_dir: Path | None = None, *, extra: Sequence[Sequence[str]] = ()
) -> list[list[str]]:
    """``[[image_path, question], ...]``: the photos found, then `extra` rows."""
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    photos = skimage_data_dir()
    for name, question in PHOTOS if photos else ():
        source, target = photos / name, cache_dir / name
        if source.exists():
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copyfile(source, target)
            rows.append([str(target), question])
    return rows + [list(row) for row in extra]
