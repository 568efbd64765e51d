"""`vitsplit-vlm convert`: tiny checkpoints written in each source's exact layout (key names,
config.json, ``.bin`` / ``.safetensors``, sharded indexes) convert and reproduce a reference
forward written here from the source's own definition:

- LLaVA-1.5 (``llava/model/llava_arch.py``, ``multimodal_encoder/clip_encoder.py``,
  ``multimodal_projector/builder.py``): CLIP hidden state ``mm_vision_select_layer`` without CLS,
  ``mm_projector`` (Linear, GELU, Linear), features spliced into the embeddings where
  ``IMAGE_TOKEN_INDEX`` (-200) stands;
- the official ViT-Split LLaVA fork (``multimodal_projector/vitsplit.py``): a list of selected
  hidden states, ``frozen_conv`` on list elements ``mm_frozen_select_layer``, ``tuned_head``
  (copied CLIP blocks) on list element ``-k-2``, ``fusion_conv`` on ``concat(frozen, tuned)``;
- llava-hf: transformers' own ``LlavaForConditionalGeneration``, both ways.

Image features must agree to 1e-5, logits to 1e-4 (fp32).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessor,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from vitsplit_vlm.cli import main
from vitsplit_vlm.vlm.builder import build_vlm, connector_state_dict
from vitsplit_vlm.vlm.convert import REPORT, convert

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id (llava/constants.py)
SELECT = [-4, -3, -2, -1]  # the official scripts' list (-18 .. -1) on the 4-block tiny CLIP
TEXT = [
    [1, 319, 135, 546, 263, -200, 13, 561, 338, 445, 299],
    [1, 42, 77, -200, 13, 5, 6, 7, 8, 9, 10],
]
FEATURE_TOL, LOGIT_TOL = 1e-5, 1e-4


# --------------------------------------------------------------------------- reference models


class OfficialViTSplit(nn.Module):
    """The official projector (``vitsplit.py``) with k tuned blocks and frozen list indices."""

    def __init__(self, tower: CLIPVisionModel, width: int, llm_width: int, k: int, frozen: list):
        super().__init__()
        self.k, self.frozen = k, frozen
        self.tuned_head = nn.ModuleList(copy.deepcopy(tower.encoder.layers[-k - 1 : -1]))
        c = width * len(frozen)
        self.frozen_conv = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU()
        )
        self.fusion_conv = nn.Sequential(
            nn.Conv2d(c + width, llm_width, 1),
            nn.GELU(),
            nn.Conv2d(llm_width, llm_width, 3, padding=1),
            nn.GELU(),
        )

    @staticmethod
    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        b, length, _ = tokens.shape
        side = int(length**0.5)
        return tokens.reshape(b, side, side, -1).permute(0, 3, 1, 2)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        frozen = self.frozen_conv(self.to_map(torch.cat([x[i] for i in self.frozen], dim=2)))
        tuned = x[-(self.k + 1) - 1]
        for block in self.tuned_head:
            tuned = block(tuned, None)
        fused = self.fusion_conv(torch.cat([frozen, self.to_map(tuned)], dim=1))
        return fused.flatten(2).transpose(1, 2)


@dataclass
class Source:
    """A tiny source checkpoint folder and the modules it was written from."""

    folder: Path
    llm: LlamaForCausalLM
    tower: CLIPVisionModel
    projector: nn.Module
    select: int | list[int]

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIPVisionTower.forward + feature_select ('patch'), then mm_projector."""
        hidden = self.tower(pixels, output_hidden_states=True).hidden_states
        if isinstance(self.select, list):
            return self.projector([hidden[i][:, 1:] for i in self.select])
        return self.projector(hidden[self.select][:, 1:])

    @torch.no_grad()
    def logits(self, ids: list[list[int]], pixels: torch.Tensor) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal: one image's features where -200 stands."""
        features = self.image_features(pixels)
        embed = self.llm.get_input_embeddings()
        rows = []
        for row, feats in zip(ids, features, strict=True):
            at = row.index(IMAGE_TOKEN_INDEX)
            before, after = torch.tensor(row[:at]), torch.tensor(row[at + 1 :])
            rows.append(torch.cat([embed(before), feats, embed(after)]))
        return self.llm(inputs_embeds=torch.stack(rows)).logits


def sharpen(module: nn.Module, generator: torch.Generator) -> None:
    """Larger random matrices, so outputs depend on the inputs (the tiny init is near-uniform)."""
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim >= 2:
                param.normal_(0, 1.5 / param[0].numel() ** 0.5, generator=generator)


def llava_config_json(llm: LlamaForCausalLM, width: int, projector_type: str, select) -> dict:
    """config.json as LLaVA 1.5 (transformers 4.3x) writes it: a flat Llama config + mm_*."""
    c = llm.config
    return {
        "_name_or_path": "./checkpoints/vicuna-7b-v1.5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "use_cache": True,
        "vocab_size": c.vocab_size,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": width,
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": projector_type,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": select,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }


def save_weights(weights: dict, folder: Path, fmt: str, shards: int) -> None:
    """One file or `shards` files plus the index, as transformers 4.x `save_pretrained`."""
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    keys = sorted(weights)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    groups = [keys[i::shards] for i in range(shards)]
    names = [f"{stem}.{ext}"] if shards == 1 else []
    names = names or [f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" for i in range(shards)]
    for name, group in zip(names, groups, strict=True):
        part = {k: weights[k] for k in group}
        if fmt == "safetensors":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
    if shards > 1:
        index = {
            "metadata": {},
            "weight_map": {k: n for n, g in zip(names, groups, strict=True) for k in g},
        }
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


def copy_tokenizer(tiny, folder: Path) -> None:
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny.llama / name, folder / name)


def make_llava_source(
    tiny,
    folder: Path,
    *,
    projector_type: str = "mlp2x_gelu",
    fmt: str = "safetensors",
    shards: int = 1,
    with_tower: bool = True,
    k: int = 1,
    frozen: tuple[int, ...] = (-2,),
    seed: int = 0,
) -> Source:
    """A LLaVA (``mlp2x_gelu``) or official ViT-Split (``vitsplit``) checkpoint folder."""
    generator = torch.Generator().manual_seed(seed)
    llm = LlamaForCausalLM.from_pretrained(tiny.llama).eval()
    tower = CLIPVisionModel.from_pretrained(tiny.clip).eval()
    sharpen(llm, generator)
    width, llm_width = tower.config.hidden_size, llm.config.hidden_size
    if projector_type == "vitsplit":
        projector, select = OfficialViTSplit(tower, width, llm_width, k, list(frozen)), SELECT
    else:
        projector = nn.Sequential(
            nn.Linear(width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width)
        )
        select = -2
    sharpen(projector, generator)
    weights = {f"model.{k}": v for k, v in llm.model.state_dict().items()}
    weights["lm_head.weight"] = llm.lm_head.weight
    weights |= {f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}
    for i in range(llm.config.num_hidden_layers):  # transformers 4.3x saved the rotary buffer
        weights[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = llm.model.rotary_emb.inv_freq
    if with_tower:
        prefix = "model.vision_tower.vision_tower.vision_model."
        weights |= {prefix + k: v for k, v in tower.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(weights, folder, fmt, shards)
    config = llava_config_json(llm, width, projector_type, select)
    if projector_type == "vitsplit":
        config |= dict(mm_frozen_select_layer=list(frozen), mm_tuned_layers_num=k)
        config["mm_frozen_num"] = len(frozen)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    copy_tokenizer(tiny, folder)
    return Source(folder, llm, tower, projector.eval(), select)


def llava_ids(ids: list[list[int]], image_token_id: int, num_tokens: int) -> torch.Tensor:
    """LLaVA's ids with -200 expanded to this project's image tokens (the processor's job)."""
    rows = [
        [t for i in row for t in ([image_token_id] * num_tokens if i == -200 else [i])]
        for row in ids
    ]
    return torch.tensor(rows)


def pixels(seed: int = 0, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def check_parity(source: Source, out: Path) -> dict[str, float]:
    """Max |difference| of image features and logits between the converted model and the source."""
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    px = pixels()
    with torch.no_grad():
        features = model.get_image_features(px).last_hidden_state
        ids = llava_ids(TEXT, model.config.image_token_id, model.config.image_seq_length)
        logits = model(input_ids=ids, pixel_values=px).logits
    reference = source.logits(TEXT, px)
    diffs = {
        "features": (features - source.image_features(px)).abs().max().item(),
        "logits": (logits[..., : reference.shape[-1]] - reference).abs().max().item(),
    }
    assert diffs["features"] <= FEATURE_TOL and diffs["logits"] <= LOGIT_TOL, diffs
    assert reference.std() > 0.1  # a forward that depends on the weights, not a constant
    return diffs


# transformers 5's `save_pretrained` layout -> the other layouts llava-hf folders come in
HF_LAYOUTS = {
    "saved": (),
    "hub": (("vision_tower.", "vision_tower.vision_model."),),  # llava-hf/llava-1.5-7b-hf
    "module-names": (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ),
}


def make_llava_hf(tiny, folder: Path, *, layout: str = "saved", seed: int = 0):
    """transformers' own Llava (tiny CLIP + Llama, `<image>` at 1000) saved by transformers, its
    keys then renamed to `layout` (`HF_LAYOUTS`)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.llama)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    llm = LlamaForCausalLM.from_pretrained(tiny.llama)
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tower = CLIPVisionModel.from_pretrained(tiny.clip)
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    generator = torch.Generator().manual_seed(seed)
    sharpen(model.model.language_model, generator)
    sharpen(model.model.multi_modal_projector, generator)
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    renamed = {}
    for key, value in weights.items():
        old, new = next((r for r in HF_LAYOUTS[layout] if key.startswith(r[0])), ("", ""))
        renamed[new + key[len(old) :]] = value
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model


def hf_inputs(config, n: int = 2) -> dict:
    ids = llava_ids(TEXT, config.image_token_id, config.image_seq_length)
    return {"input_ids": ids, "pixel_values": pixels(n=n)}


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("fmt", "shards", "with_tower"),
    [("safetensors", 1, True), ("bin", 2, True), ("safetensors", 3, False)],
    ids=["safetensors", "bin-sharded", "safetensors-sharded-tower-from-flag"],
)
def test_llava_converts_and_matches_its_forward(tiny, tmp_path, fmt, shards, with_tower):
    source = make_llava_source(
        tiny, tmp_path / "src", fmt=fmt, shards=shards, with_tower=with_tower
    )
    report = convert("llava", source.folder, tmp_path / "out", vision_tower=tiny.clip)
    check_parity(source, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / REPORT).read_text())
    assert (
        saved["renamed"]["model.mm_projector.0.weight"]
        == "model.multi_modal_projector.proj.0.weight"
    )
    assert saved["renamed"]["model.layers.0.mlp.up_proj.weight"] == (
        "model.language_model.layers.0.mlp.up_proj.weight"
    )
    assert saved["used"] == ["lm_head.weight"]
    assert set(saved["ignored"]) == {
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(4)
    }
    tower_keys = [k for k in saved["added"] if k.startswith("model.vision_tower.")]
    assert bool(tower_keys) != with_tower  # from the checkpoint, else from --vision-tower
    assert report.summary() == saved["summary"]


@pytest.mark.parametrize(
    ("k", "frozen", "fmt", "prior_layers"),
    [(1, (-2,), "safetensors", None), (2, (-3, -2), "bin", [1, 2])],
    ids=["published-k1-frozen[-2]", "k2-frozen[-3,-2]-bin"],
)
def test_official_vitsplit_converts_and_matches_its_forward(
    tiny, tmp_path, k, frozen, fmt, prior_layers
):
    source = make_llava_source(
        tiny, tmp_path / "src", projector_type="vitsplit", k=k, frozen=frozen, fmt=fmt
    )
    convert("official-vitsplit", source.folder, tmp_path / "out", vision_tower=tiny.clip)
    check_parity(source, tmp_path / "out")
    split = json.loads((tmp_path / "out" / "config.json").read_text())["vitsplit_config"]
    assert (split["k"], split["n"], split["prior_layers"]) == (k, len(frozen), prior_layers)
    assert (split["feature_layer"], split["task_input"], split["variant"]) == (-2, "patch", "vlm")


@pytest.mark.parametrize("layout", list(HF_LAYOUTS))
def test_llava_hf_in_and_out_matches_transformers_llava(tiny, tmp_path, layout):
    reference = make_llava_hf(tiny, tmp_path / "hf", layout=layout)
    pad = "pad" if layout == "saved" else None  # LLaVA-1.5 pads; the exported processor must too
    convert("llava-hf", tmp_path / "hf", tmp_path / "ours", image_aspect_ratio=pad)
    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "ours").eval()
    assert type(ours).__name__ == "ViTSplitLlavaForConditionalGeneration"
    batch = hf_inputs(ours.config)
    with torch.no_grad():
        expected = reference(**batch).logits
        got = ours(**batch).logits
        feats = ours.get_image_features(batch["pixel_values"]).last_hidden_state
        ref_feats = torch.stack(reference.get_image_features(batch["pixel_values"]).pooler_output)
    assert (feats - ref_feats).abs().max() <= FEATURE_TOL
    assert (got - expected).abs().max() <= LOGIT_TOL
    if layout != "saved":
        return
    # and back out: plain transformers, in a process that never imports this package
    assert (
        main(
            ["convert", "--to", "llava-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]
        )
        == 0
    )
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoProcessor, LlavaForConditionalGeneration\n"
        f"model = LlavaForConditionalGeneration.from_pretrained({str(tmp_path / 'back')!r}).eval()\n"
        f"processor = AutoProcessor.from_pretrained({str(tmp_path / 'back')!r})\n"
        f"batch = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        "with torch.no_grad():\n"
        "    logits = model(**batch).logits\n"
        "from PIL import Image\n"
        f"msgs = {chat_with_image()!r}\n"
        "msgs[0]['content'][0]['image'] = Image.new('RGB', (140, 112), (200, 30, 30))\n"
        "prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,\n"
        "                                       return_dict=True, return_tensors='pt')\n"
        "assert 'vitsplit_vlm' not in sys.modules\n"
        f"torch.save({{'logits': logits, 'prompt': dict(prompt)}}, {str(tmp_path / 'back.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    back = torch.load(tmp_path / "back.pt")
    assert (back["logits"] - got).abs().max() <= LOGIT_TOL
    # the exported processor renders, expands and pads (LlavaImageProcessor do_pad) as ours
    from PIL import Image

    from vitsplit_vlm.vlm.engine import VLMEngine

    engine = VLMEngine.from_pretrained(tmp_path / "ours", device="cpu")
    image = Image.new("RGB", (140, 112), (200, 30, 30))
    messages = [("USER", "<image>\nHi?")]
    from vitsplit_vlm.vlm.engine import Request

    request = Request(image, messages)
    assert back["prompt"]["input_ids"][0].tolist() == engine.prompt_ids(request).tolist()
    expected_pixels = engine.prepare_image(image)
    assert (back["prompt"]["pixel_values"][0] - expected_pixels).abs().max() < 0.05


def chat_with_image() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]


# --------------------------------------------------------------------------- stage-1 files


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "vitsplit"])
def test_llava_stage1_mm_projector_bin_loads(tiny, tmp_path, kind):
    """LLaVA's / the official code's stage-1 `mm_projector.bin` (`model.mm_projector.*`)."""
    source = make_llava_source(tiny, tmp_path / "src", projector_type=kind)
    path = tmp_path / "mm_projector.bin"
    torch.save(
        {f"model.mm_projector.{k}": v for k, v in source.projector.state_dict().items()}, path
    )
    built = build_vlm(
        model_name_or_path=tiny.llama,
        vision_tower=tiny.clip,
        mm_projector_type=kind,
        pretrain_mm_mlp_adapter=tmp_path,  # the folder: its mm_projector.bin
    )
    with torch.no_grad():
        got = built.model.get_image_features(pixels()).last_hidden_state
    assert (got - source.image_features(pixels())).abs().max() <= FEATURE_TOL
    assert len(connector_state_dict(built.model)) == len(source.projector.state_dict())


# --------------------------------------------------------------------------- refusals


def test_refusals_name_the_key_shape_or_flag(tiny, tmp_path):
    official = make_llava_source(tiny, tmp_path / "official", projector_type="vitsplit")
    with pytest.raises(
        ValueError, match="mm_projector_type 'vitsplit'; convert it with --from official-vitsplit"
    ):
        convert("llava", official.folder, tmp_path / "a", vision_tower=tiny.clip)
    llava = make_llava_source(tiny, tmp_path / "llava", with_tower=False)
    with pytest.raises(ValueError, match="holds no vision tower weights .* pass --vision-tower"):
        convert("llava", llava.folder, tmp_path / "b")
    config = json.loads((llava.folder / "config.json").read_text())
    (llava.folder / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "org/x"}))
    with pytest.raises(ValueError, match="tower 'org/x' is not one this converter knows"):
        convert("llava", llava.folder, tmp_path / "b")
    (llava.folder / "config.json").write_text(json.dumps(config))
    # a projector for another LLM width: the shape and both sizes are named
    bad = {"model.mm_projector.2.weight": torch.zeros(64, 128)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    built = build_vlm(
        model_name_or_path=tiny.llama, vision_tower=tiny.clip, mm_projector_type="mlp2x_gelu"
    )
    with pytest.raises(
        ValueError, match=r"proj\.2\.weight: file \(64, 128\) vs model \(128, 128\)"
    ):
        from vitsplit_vlm.vlm.builder import load_connector

        load_connector(built.model, tmp_path / "bad.safetensors")
    # a key the layout does not know is refused by name
    from safetensors.torch import load_file

    shutil.copytree(llava.folder, tmp_path / "extra")
    weights = load_file(str(llava.folder / "model.safetensors"))
    weights["model.mm_resampler.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "extra" / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"llm weights do not fit .* unexpected \['model\.mm_resampler"
    ):
        convert("llava", tmp_path / "extra", tmp_path / "c", vision_tower=tiny.clip)
    # .bin files are read with weights_only=True: a pickled object is refused, not executed
    torch.save({"weight": torch.zeros(1), "opts": argparse_namespace()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        from vitsplit_vlm.vlm.checkpoints import read_weight_file

        read_weight_file(tmp_path / "evil.bin")
    # the official layout must map onto ViT-Split's layers
    config = json.loads((official.folder / "config.json").read_text())
    config["mm_vision_select_layer"] = [-3, -2]
    (official.folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"reads mm_vision_select_layer\[-3\] for the tuned head's input"
    ):
        convert("official-vitsplit", official.folder, tmp_path / "d", vision_tower=tiny.clip)


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1.0)


def test_cli_convert_and_refusals(tiny, tmp_path, capsys):
    source = make_llava_source(tiny, tmp_path / "src", projector_type="vitsplit")
    argv = [
        "convert",
        "--from",
        "official-vitsplit",
        str(source.folder),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--vision-tower", str(tiny.clip)]) == 0
    assert "renamed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--out .* is not empty"):
        main([*argv, "--vision-tower", str(tiny.clip)])
    # without --vision-tower the config's tower (CLIP-L/336) is assumed: the tiny one does not fit
    with pytest.raises(
        SystemExit, match=r"class_embedding: \(128,\) but the tower config needs \(1024,\)"
    ):
        main([*argv[:-1], str(tmp_path / "out2")])
    with pytest.raises(SystemExit, match=r"writes mlp2x_gelu models only"):
        main(["convert", "--to", "llava-hf", str(tmp_path / "out"), "--out", str(tmp_path / "hf")])


# --------------------------------------------------------------------------- prompts as LLaVA's


def llava_prompt_ids(prompt: str, tokenizer) -> list[int]:
    """LLaVA's `tokenizer_image_token` (llava/mm_utils.py): each text chunk around ``<image>``
    tokenized on its own, BOS kept once, -200 where an image stands."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]] if chunks[0][:1] == [tokenizer.bos_token_id] else []
    offset = len(ids)
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += chunk[offset:]
    return ids


QUESTIONS = (  # LLaVA-1.5's eval prompt suffixes (VQAv2 / GQA, POPE, MMBench-style)
    "What is the color of the bus?\nAnswer the question using a single word or phrase.",
    "Is there a dog in the image? Answer the question using a single word or phrase.",
    "Which shape is red?\nA. circle\nB. square\nAnswer with the option's letter from the given "
    "choices directly.",
)


@pytest.mark.parametrize("source_legacy", [False, True], ids=["legacy-false", "legacy-true"])
def test_converted_prompts_are_llavas_ids_on_the_real_llama_tokenizer(
    llama_tokenizer_dir, tmp_path, source_legacy
):
    """LLaVA-1.5 / Vicuna v1.5's real tokenizer: a converted model's processor and training /
    eval tokenization give exactly LLaVA's ids for its single-round prompts, whatever the
    source's `legacy` flag; in later rounds a `legacy: false` source differs after `</s>`."""
    from transformers import AutoProcessor, AutoTokenizer, LlamaConfig

    from vitsplit_vlm.vlm.builder import prepare_tokenizer
    from vitsplit_vlm.vlm.conversation import get_template, render_prompt
    from vitsplit_vlm.vlm.data import tokenize_prompt
    from vitsplit_vlm.vlm.processing import build_processor
    from vitsplit_vlm.vlm.sources import read_tokenizer

    src = tmp_path / "src"
    shutil.copytree(llama_tokenizer_dir, src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": source_legacy}))
    llava_tokenizer = AutoTokenizer.from_pretrained(src)  # as LLaVA loads the checkpoint's
    tokenizer = read_tokenizer(src, 2048, LlamaConfig())  # as `convert` does
    prepare_tokenizer(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == 32000
    processor = build_processor(
        CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer,
        patch_size=14,
        conv_template="vicuna_v1",
    )
    processor.save_pretrained(tmp_path / "processor")
    processor = AutoProcessor.from_pretrained(
        tmp_path / "processor"
    )  # what a converted folder holds
    template = get_template("vicuna_v1")

    def ours(prompt: str) -> list[int]:
        ids = tokenize_prompt(
            prompt, processor.tokenizer, num_image_tokens=1, image_token_id=image_id
        )
        return [IMAGE_TOKEN_INDEX if i == image_id else int(i) for i in ids]

    for question in QUESTIONS:
        prompt = render_prompt(template, [("USER", f"<image>\n{question}")])
        expected = llava_prompt_ids(prompt, llava_tokenizer)
        assert ours(prompt) == expected, question
        assert expected[expected.index(IMAGE_TOKEN_INDEX) + 1 :][:2] == [29871, 13]  # "▁", "\n"
        from PIL import Image

        batch = processor(text=prompt, images=Image.new("RGB", (28, 28)), return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        assert ids.count(image_id) == 4  # 28 px / 14 = a 2x2 grid
        first = ids.index(image_id)
        collapsed = ids[:first] + [IMAGE_TOKEN_INDEX] + ids[first + 4 :]
        assert collapsed == expected
    two_rounds = render_prompt(
        template,
        [
            ("USER", "<image>\nWhat colour is the bus?"),
            ("ASSISTANT", "Red"),
            ("USER", "And the car?"),
        ],
    )
    expected, got = llava_prompt_ids(two_rounds, llava_tokenizer), ours(two_rounds)
    if source_legacy:
        assert got == expected
    else:  # LLaVA's slow legacy=false tokenizer writes "USER" after "</s>"; ours "▁USER"
        eos = got.index(2)
        assert got[: eos + 1] == expected[: eos + 1]
        assert processor.tokenizer.convert_ids_to_tokens(got[eos + 1 : eos + 3]) == ["▁US", "ER"]
        assert llava_tokenizer.convert_ids_to_tokens(expected[eos + 1]) == "USER"


# --------------------------------------------------------------------------- using a conversion


@pytest.fixture(scope="module")
def converted_official(tiny, tmp_path_factory):
    """The published official layout (k=1, frozen [-2]), converted: a model folder."""
    root = tmp_path_factory.mktemp("official")
    source = make_llava_source(tiny, root / "src", projector_type="vitsplit", seed=3)
    convert("official-vitsplit", source.folder, root / "model", vision_tower=tiny.clip)
    return root / "model"


def test_converted_official_is_a_native_model_folder(tiny, converted_official):
    """Same config type, connector config, template and processor as `build_vlm` makes."""
    from transformers import AutoProcessor

    native = build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)
    model = AutoModelForImageTextToText.from_pretrained(converted_official)
    assert type(model) is type(native.model)
    for field in ("mm_projector_type", "vitsplit_config", "vision_feature_layer", "conv_template",
                  "image_aspect_ratio", "image_token_index", "image_seq_length"):  # fmt: skip
        assert getattr(model.config, field) == getattr(native.model.config, field), field
    processor = AutoProcessor.from_pretrained(converted_official)
    assert processor.chat_template == native.processor.chat_template
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def test_converted_official_takes_a_stage2_step(tiny, converted_official, tmp_path):
    """`--model_name_or_path` a converted folder: ZeRO-3, connector + LLM train, tower frozen."""
    from vitsplit_vlm.playground.shapes import write_llava_dataset
    from vitsplit_vlm.vlm.train import parse_args

    data = write_llava_dataset(tmp_path / "data", num_train=4, num_heldout=1, seed=0)
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "stage2"
    argv = [
        "--model_name_or_path", converted_official, "--data_path", data.finetune,
        "--image_folder", data.image_folder, "--output_dir", out, "--version", "vicuna_v1",
        "--deepspeed", repo / "scripts" / "zero3.json", "--per_device_train_batch_size", "2",
        "--max_steps", "2", "--learning_rate", "1e-3", "--model_max_length", "256",
        "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "vitsplit_vlm.vlm.train", *map(str, argv)]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable"]["vision_tower"] == 0
    assert summary["trainable"]["connector"] > 0 and summary["trainable"]["llm"] > 0
    # (a model loaded with from_pretrained is saved under transformers' checkpoint names: compare
    # the reloaded models)
    before = AutoModelForImageTextToText.from_pretrained(converted_official).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    tower = [k for k in before if k.startswith("model.vision_tower.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    for key in ("lm_head.weight", "model.multi_modal_projector.heads.fusion.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    # flags that contradict the folder, and a second tower, are one line each
    for extra, message in (
        (["--vision_tower", str(tiny.clip)], "is a whole ViT-Split LLaVA model with its own"),
        (["--mm_projector_type", "mlp2x_gelu"], "--mm_projector_type 'mlp2x_gelu' .the model has"),
        (["--vitsplit_k", "2"], r"--vitsplit_k 2 \(the model has 1\)"),
    ):
        with pytest.raises(SystemExit, match=message):
            parse_args([*map(str, argv), "--output_dir", str(tmp_path / "x"), *extra])


def test_converted_official_answers_and_chats_like_a_native_model(
    converted_official, tmp_path, capsys
):
    from PIL import Image

    from vitsplit_vlm.playground.evalsets import write_evalsets
    from vitsplit_vlm.serve.cli_chat import chat_loop
    from vitsplit_vlm.serve.session import build_messages
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request, VLMEngine

    sets = write_evalsets(tmp_path / "eval", vqav2_scenes=2, pope_images=2, mmbench_scenes=2)
    answers = tmp_path / "pope.jsonl"
    argv = ["eval", "answer", "--task", "pope", "--model-path", converted_official,
            "--question-file", sets.pope_questions, "--image-folder", sets.pope_images,
            "--answers-file", answers, "--max-new-tokens", "4", "--no-progress"]  # fmt: skip
    assert main(list(map(str, argv))) == 0
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    questions = sets.pope_questions.read_text().splitlines()
    assert len(lines) == len(questions) and all(line["text"] for line in lines)
    engine = VLMEngine.from_pretrained(converted_official, device="cpu")
    first = json.loads(questions[0])
    image = Image.open(sets.pope_images / first["image"])
    settings = GenerationSettings(max_new_tokens=4)
    direct = engine.generate([Request(image, [("USER", first["text"])])], settings)[0]
    assert lines[0]["text"] == direct  # eval answer = the engine, greedy
    capsys.readouterr()
    turns = iter(["What colour is the circle?", "How many shapes are there?"])

    def read(prompt: str) -> str:
        try:
            return next(turns)
        except StopIteration:
            raise EOFError from None

    out = __import__("io").StringIO()
    rounds = chat_loop(engine, image, settings, read=read, out=out)
    t = engine.template
    a1 = engine.generate([Request(image, build_messages(t, [], rounds[0][0]))], settings)[0]
    a2 = engine.generate([Request(image, build_messages(t, rounds[:1], rounds[1][0]))], settings)[0]
    assert [a for _, a in rounds] == [a1, a2]
    assert out.getvalue() == f"ASSISTANT: {a1}\nASSISTANT: {a2}\n\n"
