"""Shared fixtures: tiny real Hugging Face models built once per test session.

Everything is built by the project's own `make_tiny` (the same code `vitsplit-vlm make-tiny`
runs) and reloaded with `from_pretrained(path)`: no mocks, no downloads.
"""

from __future__ import annotations

import contextlib
import os

import pytest

# Two heavy processes on two cores slow each other ~20x with default threading.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ.get("VITSPLIT_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the tiny models (`TinyPaths`), built once per session by `make_tiny`."""
    from vitsplit_vlm.playground.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))


def _save_untrained_vlm(tiny, folder, *, sharpen_seed: int | None = None):
    """Build LLaVA + ViT-Split from the tiny Llama and CLIP and save model + processor.

    With `sharpen_seed`, the LLM and connector matrices are redrawn with a larger scale so that
    greedy answers depend on the prompt and the image (the default init gives near-uniform
    logits: the same token everywhere)."""
    import torch

    from vitsplit_vlm.vlm.builder import build_vlm

    built = build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)
    if sharpen_seed is not None:
        generator = torch.Generator().manual_seed(sharpen_seed)
        with torch.no_grad():
            for name, param in built.model.named_parameters():
                if param.ndim == 2 and not name.startswith("model.vision_tower"):
                    param.normal_(0, 2 / param.shape[1] ** 0.5, generator=generator)
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vlm_dir(tiny, tmp_path_factory):
    """An untrained tiny LLaVA + ViT-Split model folder (model + processor)."""
    return _save_untrained_vlm(tiny, tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="session")
def sharp_vlm_dir(tiny, tmp_path_factory):
    """As `vlm_dir`, with weights scaled so that answers depend on the prompt and the image."""
    return _save_untrained_vlm(tiny, tmp_path_factory.mktemp("vlm-sharp"), sharpen_seed=0)


@contextlib.contextmanager
def _record_saved_tensors():
    import torch

    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield sizes


@pytest.fixture
def record_saved_tensors():
    """`with record_saved_tensors() as sizes:` numel of every tensor autograd keeps for backward."""
    return _record_saved_tensors
