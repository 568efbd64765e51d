"""Shared fixtures: tiny real Hugging Face models built once per test session.

Everything is built by the project's own `make_tiny` (the same code `vitsplit-vlm make-tiny`
runs) and reloaded with `from_pretrained(path)`: no mocks, no downloads.
"""

from __future__ import annotations

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
    from vitsplit_vlm.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))
