"""LLaVA-1.5 + ViT-Split as Hugging Face classes, on the tiny CLIP and Llama."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vitsplit_vlm.vlm import PROJECTOR_TYPES, ViTSplitLlavaConfig
from vitsplit_vlm.vlm.builder import build_vlm, connector_state_dict, load_connector
from vitsplit_vlm.vlm.configuration import connector_preset


@pytest.fixture(scope="module")
def built(tiny):
    torch.manual_seed(0)
    return build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)


def inputs(built, text="What colour is the circle?", colour=(255, 0, 0), n=1):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = built.processor.apply_chat_template(msgs, add_generation_prompt=True)
    images = [Image.new("RGB", (112, 112), colour)] * n
    return built.processor(images=images, text=[prompt] * n, return_tensors="pt")


def test_builder_prepares_tokenizer_and_config(built, tiny):
    tok, cfg = built.tokenizer, built.model.config
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id == 1000
    assert tok.pad_token == tok.unk_token  # LLaVA-1.5 with Vicuna
    assert cfg.image_seq_length == 64 and cfg.vision_feature_layer == -2
    assert cfg.mm_projector_type == "vitsplit" and cfg.conv_template == "vicuna_v1"
    assert built.model.get_input_embeddings().weight.shape[0] == len(tok) == 1001


def test_fresh_connector_has_pytorch_default_init(built):
    """As LLaVA's projector (nn.Linear / nn.Conv2d defaults: uniform weights of std
    1/sqrt(3 fan_in), non-zero biases), not the N(0, 0.02) transformers 5 would leave."""
    for conv in (built.model.connector.heads.fusion[0], built.model.connector.heads.fusion[2]):
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.05)
        assert conv.weight.abs().max() <= fan_in**-0.5
        assert conv.bias.abs().max() > 0


def test_task_head_copied_from_loaded_tower(built):
    tower = built.model.model.vision_tower
    task = built.model.connector.heads.task_head.blocks[0]
    src = tower.encoder.layers[2]  # CLIP N=4, f=3 (penultimate), k=1 -> block 2
    for (name, a), (_, b) in zip(task.state_dict().items(), src.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in tower.parameters())


def test_processor_prompt_and_image_tokens(built):
    batch = inputs(built)
    text = built.tokenizer.decode(batch["input_ids"][0][:60])
    assert text.startswith("<s> A chat between a curious user")
    assert int((batch["input_ids"] == 1000).sum()) == 64


def test_save_load_round_trip_identical_logits(built, tmp_path):
    batch = inputs(built)
    built.model.eval()
    with torch.no_grad():
        before = built.model(**batch).logits
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "vitsplit_llava"
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(model).__name__ == "ViTSplitLlavaForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(tmp_path)
    batch2 = processor(
        images=Image.new("RGB", (112, 112), (255, 0, 0)),
        text=processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": "What colour is the circle?"},
                    ],
                }
            ],
            add_generation_prompt=True,
        ),
        return_tensors="pt",
    )
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        after = model(**batch2).logits
    assert torch.equal(before, after)


def test_generate_feeds_image_once_and_uses_cache(built):
    calls, lengths = [], []
    model = built.model
    handles = [
        model.connector.register_forward_hook(lambda *a: calls.append(1)),
        model.model.language_model.register_forward_pre_hook(
            lambda m, a, k: lengths.append(k["inputs_embeds"].shape[1]), with_kwargs=True
        ),
    ]
    try:
        out = model.generate(**inputs(built), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 1  # the image is encoded once, before prefill
    prompt_len = inputs(built)["input_ids"].shape[1]
    assert lengths == [prompt_len] + [1] * 5  # KV cache: one new token per step
    assert out.shape[1] == inputs(built)["input_ids"].shape[1] + 6
    # cached decoding equals recomputing the whole sequence greedily, step by step, without a cache
    batch = inputs(built)
    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            logits = model(
                input_ids=ids, pixel_values=batch["pixel_values"], use_cache=False
            ).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)


def test_image_token_count_mismatch_is_clear(built):
    batch = inputs(built)
    ids = batch["input_ids"]
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[(ids[0] == 1000).nonzero()[:3]] = False  # drop 3 image tokens
    with pytest.raises(ValueError, match=r"61 image tokens but the images give 64 features"):
        built.model(input_ids=ids[:, keep], pixel_values=batch["pixel_values"])


@pytest.mark.parametrize("kind", PROJECTOR_TYPES)
def test_every_projector_type_builds_and_runs(tiny, kind):
    # the tiny CLIP has 4 blocks: VipLlava's default layers (-2, -5, -8, -11, 6) need 10
    layers = [-2, -3, 1] if kind == "vipllava" else None
    b = build_vlm(
        model_name_or_path=tiny.llama,
        vision_tower=tiny.clip,
        mm_projector_type=kind,
        mm_projector_layers=layers,
    )
    with torch.no_grad():
        out = b.model(**inputs(b, n=2))
    assert out.logits.shape[0] == 2
    hidden = b.model.config.text_config.hidden_size
    feats = b.model.model.get_image_features(inputs(b)["pixel_values"]).last_hidden_state
    tokens = 64 + (2 * 64 // 8 if kind == "dc_sti" else 0)  # STI appends two pooled layers
    assert feats.shape == (1, tokens, hidden) and b.model.config.image_seq_length == tokens


def test_stage1_connector_file_loads_and_mismatch_is_clear(built, tiny, tmp_path):
    path = tmp_path / "mm_projector.safetensors"
    weights = {k: v + 1 for k, v in connector_state_dict(built.model).items()}
    save_file(weights, str(path))
    fresh = build_vlm(
        model_name_or_path=tiny.llama, vision_tower=tiny.clip, pretrain_mm_mlp_adapter=path
    )
    for k, v in connector_state_dict(fresh.model).items():
        assert torch.equal(v, weights[k]), k
    with pytest.raises(ValueError, match="does not fit the connector.*mlp2x_gelu"):
        build_vlm(
            model_name_or_path=tiny.llama,
            vision_tower=tiny.clip,
            mm_projector_type="mlp2x_gelu",
            pretrain_mm_mlp_adapter=path,
        )
    with pytest.raises(FileNotFoundError, match="--pretrain_mm_mlp_adapter"):
        load_connector(fresh.model, tmp_path / "missing.safetensors")


def test_config_rejects_unknown_projector_and_names_flag(tiny):
    with pytest.raises(ValueError, match="--mm_projector_type 'qformer' is unknown"):
        ViTSplitLlavaConfig(mm_projector_type="qformer")
    with pytest.raises(ValueError, match=r"ViTSplitConfig\.k"):
        build_vlm(
            model_name_or_path=tiny.llama,
            vision_tower=tiny.clip,
            vitsplit_config=connector_preset("vitsplit").with_(k=4),
        )


def test_trunk_skips_last_block_in_vlm(built):
    calls = []
    blocks = built.model.model.vision_tower.encoder.layers
    handles = [
        b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            built.model(**inputs(built))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]  # penultimate state: block 3 never runs


# --------------------------------------------------------------------------- HF model contract


def test_get_image_features_return_dict_false_gives_tuple(built):
    pixels = inputs(built)["pixel_values"]
    for owner in (built.model, built.model.model):
        as_output = owner.get_image_features(pixels)
        as_tuple = owner.get_image_features(pixel_values=pixels, return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], as_output.last_hidden_state)
        assert owner.get_image_features(pixels, vision_feature_layer=-2).pooler_output[0].ndim == 2
    with pytest.raises(ValueError, match=r"vision_feature_layer=-1: this connector was built for"):
        built.model.get_image_features(pixels, vision_feature_layer=-1)


def test_tower_stays_frozen_after_from_pretrained(vlm_dir):
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    model, info = AutoModelForImageTextToText.from_pretrained(vlm_dir, output_loading_info=True)
    assert not info["missing_keys"]
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def _task_head_grads(model, batch) -> dict[str, torch.Tensor | None]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad for n, p in model.connector.heads.task_head.named_parameters()}


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_keeps_task_head_gradients(vlm_dir, reentrant):
    """The task head reads a frozen hidden state: under reentrant checkpointing it got no grads."""
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).train()
    from types import SimpleNamespace

    batch = dict(inputs(SimpleNamespace(processor=AutoProcessor.from_pretrained(vlm_dir))))
    batch["labels"] = batch["input_ids"].clone()
    plain = _task_head_grads(model, batch)
    model.activation_checkpointing_enable({"use_reentrant": reentrant})
    checkpointed = _task_head_grads(model, batch)
    assert all(g is not None and g.abs().sum() > 0 for g in plain.values())
    for name, grad in checkpointed.items():
        assert grad is not None, name
        assert torch.equal(grad, plain[name]), name


def test_missing_tower_weights_get_clips_own_init(vlm_dir, tmp_path):
    """Weights a checkpoint lacks start as in a fresh CLIP (per-module stds), loaded ones stay."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(vlm_dir, tmp_path, dirs_exist_ok=True)
    weights = load_file(str(tmp_path / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.startswith("model.vision_tower.encoder")}
    save_file(kept, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    tower = model.model.vision_tower
    cfg = tower.config
    width, depth = cfg.hidden_size, cfg.num_hidden_layers
    expected = {  # CLIPPreTrainedModel._init_weights, initializer_factor 1
        "self_attn.q_proj.weight": width**-0.5 * (2 * depth) ** -0.5,
        "self_attn.out_proj.weight": width**-0.5,
        "mlp.fc1.weight": (2 * width) ** -0.5,
        "mlp.fc2.weight": width**-0.5 * (2 * depth) ** -0.5,
    }
    for name, std in expected.items():
        weight = tower.get_parameter(f"encoder.layers.0.{name}")
        assert weight.std().item() == pytest.approx(std, rel=0.1), name
    state = model.state_dict()
    for key in ("model.vision_tower.embeddings.patch_embedding.weight", "lm_head.weight"):
        assert torch.equal(state[key], weights[key]), key


def test_list_feature_layer_set_after_construction_is_clear(vlm_dir):
    from vitsplit_vlm.vlm import ViTSplitLlavaForConditionalGeneration

    for kind in ("vitsplit", "mlp2x_gelu"):
        config = ViTSplitLlavaConfig.from_pretrained(vlm_dir)
        if kind != config.mm_projector_type:
            config = ViTSplitLlavaConfig(
                **{**config.to_dict(), "mm_projector_type": kind, "vitsplit_config": None}
            )
        config.vision_feature_layer = [-1, -2]
        with pytest.raises(ValueError, match=r"vision_feature_layer=\[-1, -2\]: .* one feature"):
            ViTSplitLlavaForConditionalGeneration(config)
