"""`vitsplit-vlm make-tiny`: build, seed and save small but real Hugging Face models.

No pretrained weights can be downloaded here, so tests and the playground run the project's real
loading code (`from_pretrained(path)`) on tiny models built by `make_tiny`, one subfolder each:

=============  ===========================  ==============================================
folder         model                        sizes
=============  ===========================  ==============================================
``clip-vit``   ``CLIPVisionModel``          112 px, patch 14 (8x8 grid + CLS), width 128,
                                            4 layers, 4 heads, MLP 512; ``CLIPImageProcessor``
``dinov2``     ``Dinov2Model``              112 px, patch 14, width 192, 8 layers, 6 heads,
                                            MLP ratio 4; ``BitImageProcessor`` (ImageNet stats)
``dinov2-reg`` ``Dinov2WithRegistersModel`` as ``dinov2`` plus 4 register tokens
``siglip``     ``SiglipVisionModel``        112 px, patch 14, width 128, 4 layers, 4 heads,
                                            MLP 512; ``SiglipImageProcessor``
``llama``      ``LlamaForCausalLM``         width 128, 4 layers, 4 heads, MLP 344, 2048
                                            positions, untied head; a Vicuna-like
                                            ``LlamaTokenizer`` (sentencepiece BPE trained here)
=============  ===========================  ==============================================

Weights are random (each model seeded from ``seed`` and its folder name) and bit-identical for
the same seed. The tokenizer is trained on project text (`tokenizer_corpus`) and does not depend
on ``seed``; like Vicuna's it has ``<unk>``/``<s>``/``</s>`` only: no pad and no ``<image>`` token
(the VLM builder adds those, as for the real Vicuna). ``DIR/tiny.json`` records a fingerprint of
the spec; a second call with the same spec and seed returns at once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

VERSION = 1
MANIFEST = "tiny.json"
IMAGE_SIZE = 112

# folder -> (model class, config class, config kwargs); plain data so the fingerprint covers it.
SPEC: dict[str, tuple[str, str, dict[str, Any]]] = {
    "clip-vit": (
        "CLIPVisionModel",
        "CLIPVisionConfig",
        dict(
            image_size=IMAGE_SIZE,
            patch_size=14,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
        ),
    ),
    "dinov2": (
        "Dinov2Model",
        "Dinov2Config",
        dict(
            image_size=IMAGE_SIZE,
            patch_size=14,
            hidden_size=192,
            num_hidden_layers=8,
            num_attention_heads=6,
            mlp_ratio=4,
        ),
    ),
    "dinov2-reg": (
        "Dinov2WithRegistersModel",
        "Dinov2WithRegistersConfig",
        dict(
            image_size=IMAGE_SIZE,
            patch_size=14,
            hidden_size=192,
            num_hidden_layers=8,
            num_attention_heads=6,
            mlp_ratio=4,
            num_register_tokens=4,
        ),
    ),
    "siglip": (
        "SiglipVisionModel",
        "SiglipVisionConfig",
        dict(
            image_size=IMAGE_SIZE,
            patch_size=14,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
        ),
    ),
    "llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=344,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        ),
    ),
}
TOKENIZER_SPEC: dict[str, Any] = dict(
    vocab_size=1000, corpus_scenes=3000, model_max_length=2048, model_type="bpe"
)

ENGLISH_PARAGRAPHS = (
    "An image is a grid of small coloured dots called pixels. Each pixel stores how much red, "
    "green and blue light it shows, and together the pixels form the picture we see.",
    "A vision model cuts an image into square patches, turns every patch into a vector and lets "
    "the patches exchange information, layer after layer, until each one knows about the whole "
    "picture.",
    "When you describe a picture, start with the main objects, then say what colour and shape "
    "they are, where they are, and how many of them there are. Short and precise answers are "
    "better than long and vague ones.",
    "The photo shows a small cat sitting next to a cup of coffee on a wooden table. Behind them "
    "there is a window, and the light of the morning falls on the left side of the room.",
    "A language model reads text one token at a time and learns to predict the next token. "
    "Connected to a vision model, it can answer questions about what an image contains.",
    "Simple shapes are easy to tell apart: a circle is round, a square has four equal sides and "
    "four corners, a triangle has three sides, and a cross is made of two bars.",
    "Please look at the image carefully and answer the question. If you are not sure, say so "
    "instead of guessing. Thank you for your help!",
)


@dataclass(frozen=True)
class TinyPaths:
    """Folders written by `make_tiny`; each loads with ``from_pretrained``."""

    root: Path
    clip: Path
    dinov2: Path
    dinov2_reg: Path
    siglip: Path
    llama: Path


def tiny_paths(out_dir: str | Path) -> TinyPaths:
    root = Path(out_dir)
    return TinyPaths(
        root=root,
        clip=root / "clip-vit",
        dinov2=root / "dinov2",
        dinov2_reg=root / "dinov2-reg",
        siglip=root / "siglip",
        llama=root / "llama",
    )


# --------------------------------------------------------------------------- tokenizer


def tokenizer_corpus() -> list[str]:
    """Project text for the tokenizer: Vicuna prompt, chat markers, playground text, English.

    The Vicuna text comes from the ``vicuna_v1`` conversation template, rendered as training
    renders it."""
    from vitsplit_vlm.playground.shapes import all_questions, corpus, sample_scene
    from vitsplit_vlm.vlm.conversation import get_template, render_conversation

    vicuna = get_template("vicuna_v1")
    user, assistant = vicuna.roles
    shapes = corpus(TOKENIZER_SPEC["corpus_scenes"], seed=0)
    chat = [vicuna.system, f"{user}:", f"{assistant}:", user, assistant, vicuna.sep2]
    for i in range(200):  # a few lines laid out as Vicuna v1 conversations
        rng = random.Random(f"tiny-chat-{i}")
        qas = all_questions(sample_scene(rng), rng)
        rounds = [turn for qa in qas for turn in ((user, qa.prompt), (assistant, qa.answer))]
        chat.append(render_conversation(vicuna, rounds).text)
    digits = [" ".join("0123456789"), "0123456789", *(str(n) for n in range(100))]
    return chat + digits + list(ENGLISH_PARAGRAPHS) + shapes


def _train_sentencepiece(lines: list[str], vocab_size: int) -> bytes:
    """Llama-style BPE (byte fallback, split digits, no normalisation), single-threaded."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type=TOKENIZER_SPEC["model_type"],
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def build_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerBase:
    """Train the sentencepiece BPE, save it as a `LlamaTokenizer` in `out_dir`, return it.

    The vocabulary is `TOKENIZER_SPEC["vocab_size"]`, lowered to the largest size the corpus
    supports if sentencepiece says it is too high.
    """
    from transformers import LlamaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = tokenizer_corpus()
    try:
        model = _train_sentencepiece(lines, TOKENIZER_SPEC["vocab_size"])
    except RuntimeError as err:
        limit = re.search(r"<= (\d+)", str(err))
        if limit is None:
            raise
        model = _train_sentencepiece(lines, int(limit.group(1)))
    (out / "tokenizer.model").write_bytes(model)
    # add_bos_token puts <s> into tokenizer.json's post-processor (transformers 5 does not write
    # the flag itself to tokenizer_config.json; the saved post-processor keeps adding <s>).
    tokenizer = LlamaTokenizer.from_pretrained(
        out, add_bos_token=True, model_max_length=TOKENIZER_SPEC["model_max_length"]
    )
    tokenizer.save_pretrained(out)
    return tokenizer


# --------------------------------------------------------------------------- models


def _model_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def build_model(name: str, *, seed: int = 0, vocab_size: int | None = None) -> PreTrainedModel:
    """The random model of `SPEC[name]` in eval mode, seeded without touching the global RNG.

    `vocab_size` is required for ``"llama"`` (the tokenizer's ``len``).
    """
    import torch
    import transformers

    if name not in SPEC:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {sorted(SPEC)}")
    model_cls, config_cls, kwargs = SPEC[name]
    kwargs = dict(kwargs)
    if name == "llama":
        if vocab_size is None:
            raise ValueError("vocab_size is required for the tiny llama")
        kwargs["vocab_size"] = vocab_size
    config = getattr(transformers, config_cls)(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_model_seed(seed, name))
        model = getattr(transformers, model_cls)(config)
    return model.eval()


def build_image_processor(name: str) -> Any:
    """The image processor saved next to vision model `name` (112 px, the family's stats)."""
    from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor
    from transformers.image_utils import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        PILImageResampling,
    )

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    common = dict(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size=square,
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        do_convert_rgb=True,
    )
    if name == "clip-vit":
        return CLIPImageProcessor(**common, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    if name in ("dinov2", "dinov2-reg"):
        return BitImageProcessor(
            **common, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
        )
    if name == "siglip":
        return SiglipImageProcessor(
            size=square,
            resample=PILImageResampling.BICUBIC,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        )
    raise ValueError(f"no image processor for {name!r}")


# --------------------------------------------------------------------------- make_tiny


def spec_fingerprint(seed: int = 0) -> str:
    """Hash of what `make_tiny` builds (version, seed, model and tokenizer specs): it rebuilds when
    this changes."""
    spec = {"version": VERSION, "seed": seed, "models": SPEC, "tokenizer": TOKENIZER_SPEC}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_current(root: Path, seed: int) -> bool:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("fingerprint") != spec_fingerprint(seed):
        return False
    return all((root / name / "config.json").is_file() for name in SPEC)


def make_tiny(out_dir: str | Path, *, seed: int = 0, force: bool = False) -> TinyPaths:
    """Build and save every tiny model (and the tokenizer) under `out_dir`; see the module doc.

    Returns at once, writing nothing, if ``out_dir/tiny.json`` matches this spec and seed and
    every folder exists, unless `force`.
    """
    root = Path(out_dir)
    paths = tiny_paths(root)
    if not force and _is_current(root, seed):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    for name in SPEC:
        shutil.rmtree(root / name, ignore_errors=True)

    tokenizer = build_tokenizer(paths.llama)
    models: dict[str, dict[str, Any]] = {}
    for name, (model_cls, _, _) in SPEC.items():
        folder = root / name
        model = build_model(name, seed=seed, vocab_size=len(tokenizer))
        model.save_pretrained(folder)
        if name != "llama":
            build_image_processor(name).save_pretrained(folder)
        models[name] = {"class": model_cls, "params": sum(p.numel() for p in model.parameters())}
    manifest = {
        "fingerprint": spec_fingerprint(seed),
        "version": VERSION,
        "seed": seed,
        "vocab_size": len(tokenizer),
        "models": models,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks completion
    return paths


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.TINY,
        help="output folder (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (tokenizer is fixed)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--pretrain",
        action="store_true",
        help="also pretrain the tiny DINOv2 on generated scenes (not a dense task) for a few CPU "
        "minutes into OUT/dinov2-pretrained (gives the layer hierarchy ViT-Split relies on)",
    )
    parser.add_argument(
        "--pretrain-clip",
        action="store_true",
        help="also pretrain the tiny CLIP on generated scenes (about 80 s on 2 cores) into "
        "OUT/clip-vit-pretrained: a VLM tower whose patch tokens name their object",
    )
    parser.add_argument(
        "--pretrain-llm",
        action="store_true",
        help="also train the tiny Llama on playground text into OUT/llama-chat ('tiny Vicuna')",
    )


def run(args: argparse.Namespace) -> int:
    paths = make_tiny(args.out, seed=args.seed, force=args.force)
    manifest = _read_manifest(paths.root) or {}
    for name, info in manifest.get("models", {}).items():
        print(f"{paths.root / name}  {info['class']}  {info['params']:,} params")
    if args.pretrain:
        from .dinov2_pretrain import MANIFEST as PRETRAIN_MANIFEST
        from .dinov2_pretrain import pretrain_dinov2

        dst = pretrain_dinov2(
            paths.dinov2, paths.root / "dinov2-pretrained", seed=args.seed, force=args.force
        )
        info = json.loads((dst / PRETRAIN_MANIFEST).read_text())
        print(
            f"{dst}  Dinov2Model pretrained on generated scenes: losses {info['first']} -> "
            f"{info['last']} in {info['args']['steps']} steps"
        )
    if args.pretrain_clip:
        from .clip_pretrain import describe, pretrain_clip

        dst = pretrain_clip(
            paths.clip, paths.root / "clip-vit-pretrained", seed=args.seed, force=args.force
        )
        print(describe(dst))
    if args.pretrain_llm:
        from .lm_pretrain import MANIFEST, pretrain_llm

        dst = pretrain_llm(paths.llama, paths.root / "llama-chat", seed=args.seed, force=args.force)
        info = json.loads((dst / MANIFEST).read_text())
        print(
            f"{dst}  LlamaForCausalLM pretrained on playground text: loss "
            f"{info['first_loss']} -> {info['last_loss']} in {info['steps']} steps"
        )
    return 0
