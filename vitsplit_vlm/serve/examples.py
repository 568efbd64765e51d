"""Example images for the demo: real photos and rendered playground scenes, each with a question.

The photos are scikit-image's (`skimage/data/`, found without importing scikit-image; skipped when
it is not installed). Everything is copied or rendered into `cache_dir` (a temp folder by
default), where Gradio may serve it from; nothing is written into the repository.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import tempfile
from pathlib import Path

PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut.png", "What is the person in the picture wearing?"),
    ("chelsea.png", "What animal is this?"),
    ("coffee.png", "What is in the cup?"),
    ("rocket.jpg", "Describe the image."),
)
NUM_SCENES = 3


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vitsplit_vlm-demo-examples"


def skimage_data_dir() -> Path | None:
    """scikit-image's bundled data folder, or None if scikit-image is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def example_rows(cache_dir: Path | None = None, *, num_scenes: int = NUM_SCENES) -> list[list[str]]:
    """``[[image_path, question], ...]``: the photos found, then `num_scenes` playground scenes."""
    from ..playground.shapes import sample_conversation, sample_scene

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
    for i in range(num_scenes):
        rng = random.Random(f"demo-example-{i}")
        scene = sample_scene(rng)
        target = cache_dir / f"shapes-{i}.png"
        scene.render().save(target)  # cheap, and never stale
        rows.append([str(target), sample_conversation(scene, rng)[0].prompt])
    return rows
