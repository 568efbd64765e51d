"""Tiny real HF models from `make_tiny`: reload, determinism, tokenizer, idempotence, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from vitsplit_vlm.playground.shapes import sample_scene
from vitsplit_vlm.playground.tiny import SPEC, build_model, make_tiny

VISION = ["clip-vit", "dinov2", "dinov2-reg", "siglip"]
# folder -> number of tokens in last_hidden_state for a 112 px image (8x8 patches + CLS/registers)
TOKENS = {"clip-vit": 65, "dinov2": 65, "dinov2-reg": 69, "siglip": 64}
WIDTH = {"clip-vit": 128, "dinov2": 192, "dinov2-reg": 192, "siglip": 128}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _image():
    import random

    return sample_scene(random.Random("test-tiny"), image_size=112).render()


@pytest.mark.parametrize("name", VISION)
def test_vision_model_reloads_with_same_outputs(tiny, name):
    """AutoModel/AutoImageProcessor reload what was saved; outputs equal a fresh in-memory build."""
    from transformers import AutoImageProcessor, AutoModel

    folder = tiny.root / name
    loaded = AutoModel.from_pretrained(folder).eval()
    assert type(loaded).__name__ == SPEC[name][0]
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=_image(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 112, 112)

    built = build_model(name, seed=0)
    with torch.no_grad():
        out_loaded = loaded(pixel_values=pixels).last_hidden_state
        out_built = built(pixel_values=pixels).last_hidden_state
    assert out_loaded.shape == (1, TOKENS[name], WIDTH[name])
    torch.testing.assert_close(out_loaded, out_built, rtol=0, atol=0)


def test_clip_grid_and_processor(tiny):
    """CLIP: 112/14 = 8x8 patches + CLS; CLIPImageProcessor loads with CLIP stats."""
    from transformers import CLIPImageProcessor, CLIPVisionModel
    from transformers.image_utils import OPENAI_CLIP_MEAN

    model = CLIPVisionModel.from_pretrained(tiny.clip)
    cfg = model.config
    assert (cfg.image_size // cfg.patch_size) ** 2 == 64
    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    assert processor.crop_size == {"height": 112, "width": 112}
    assert list(processor.image_mean) == list(OPENAI_CLIP_MEAN)
    pixels = processor(images=_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == cfg.num_hidden_layers + 1
    assert hidden[-2][:, 1:].reshape(1, 8, 8, 128).shape == (1, 8, 8, 128)


def test_llama_reloads_with_same_logits(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.llama)
    loaded = AutoModelForCausalLM.from_pretrained(tiny.llama).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    cfg = loaded.config
    assert cfg.vocab_size == len(tokenizer)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (128, 4, 344)
    assert cfg.max_position_embeddings == 2048 and not cfg.tie_word_embeddings
    assert not torch.equal(loaded.lm_head.weight, loaded.get_input_embeddings().weight)

    ids = tokenizer("USER: What colour is the circle? ASSISTANT:", return_tensors="pt").input_ids
    built = build_model("llama", seed=0, vocab_size=len(tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, built(ids).logits, rtol=0, atol=0)


def test_tokenizer_matches_sentencepiece_and_round_trips(tiny, tmp_path):
    """Vicuna-like: <unk>/<s>/</s> = 0/1/2, BOS added, no pad, no <image>; ids equal raw spm."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.llama)
    assert isinstance(tokenizer, LlamaTokenizer)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token is None and "<image>" not in tokenizer.get_vocab()
    assert tokenizer.model_max_length == 2048 and len(tokenizer) == 1000

    sp = spm.SentencePieceProcessor(model_file=str(tiny.llama / "tokenizer.model"))
    texts = [
        "A chat between a curious user and an artificial intelligence assistant.",
        "What colour is the circle?\nAnswer the question using a single word or phrase.",
        "two  spaces,\ttab and 12345 digits",
        "Ünïcödé 日本 😀 (byte fallback)",
    ]
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids == [1, *sp.encode(text)], text
        assert again(text).input_ids == ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Red</s>").input_ids[-1] == tokenizer.eos_token_id


def test_second_call_is_noop(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert make_tiny(tiny.root) == tiny
    assert time.perf_counter() - start < 1.0
    assert {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*") if p.is_file()} == before


def test_same_seed_bit_identical_other_seed_differs(tiny, tmp_path):
    """A rebuild with seed 0 is byte-identical; seed 1 rebuilds the same folder with new weights."""
    reference = _files(tiny.root)
    make_tiny(tmp_path, seed=0)
    assert _files(tmp_path) == reference

    make_tiny(tmp_path, seed=1)
    other = _files(tmp_path)
    assert json.loads(other["tiny.json"])["seed"] == 1
    for name in SPEC:
        assert other[f"{name}/model.safetensors"] != reference[f"{name}/model.safetensors"]
        assert other[f"{name}/config.json"] == reference[f"{name}/config.json"]
    for file in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        assert other[f"llama/{file}"] == reference[f"llama/{file}"]  # tokenizer ignores the seed


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("clip-vit", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_cli_prints_one_line_per_model(tiny, capsys):
    from vitsplit_vlm.cli import main

    assert main(["make-tiny", "--out", str(tiny.root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(SPEC)
    for line, (name, (cls, _, _)) in zip(lines, SPEC.items(), strict=True):
        assert str(tiny.root / name) in line and cls in line and "params" in line
