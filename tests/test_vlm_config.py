"""The connector's `ViTSplitConfig` is declared once and nested in `ViTSplitLlavaConfig`."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig

from vitsplit_vlm.core import ViTSplitConfig
from vitsplit_vlm.vlm import ViTSplitLlavaConfig
from vitsplit_vlm.vlm.arguments import ModelArguments, connector_config
from vitsplit_vlm.vlm.configuration import connector_preset
from vitsplit_vlm.vlm.train import parse_args

VISION = CLIPVisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
    image_size=28, patch_size=14,
)  # fmt: skip
TEXT = LlamaConfig(
    hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=100,
)  # fmt: skip


def llava_config(**kwargs) -> ViTSplitLlavaConfig:
    return ViTSplitLlavaConfig(vision_config=VISION.to_dict(), text_config=TEXT.to_dict(), **kwargs)


def test_default_is_the_official_llava_layout_at_the_llm_width():
    cfg = llava_config()
    split = cfg.vitsplit
    assert isinstance(split, ViTSplitConfig)
    assert (split.k, split.n, split.variant, split.task_input) == (1, 1, "vlm", "patch")
    assert split.feature_layer == cfg.vision_feature_layer == -2
    assert split.out_channels == TEXT.hidden_size
    dense = llava_config(mm_projector_type="vitsplit_dense").vitsplit
    assert (dense.variant, dense.out_channels, dense.final_norm) == ("dense", None, False)
    assert llava_config(mm_projector_type="mlp2x_gelu").vitsplit_config is None


def test_nested_config_round_trips_through_config_json(tmp_path):
    import vitsplit_vlm.vlm  # noqa: F401  (registers vitsplit_llava with AutoConfig)

    split = connector_preset("vitsplit").with_(
        selection="sparse_gate", gate_temperature=0.25, deform_offset_init="default"
    )
    llava_config(vitsplit_config=split).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["vitsplit_config"]["gate_temperature"] == 0.25
    assert saved["vitsplit_config"]["out_channels"] == TEXT.hidden_size
    assert not any(key.startswith("vitsplit_") and key != "vitsplit_config" for key in saved)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.vitsplit_config, ViTSplitConfig)
    assert loaded.vitsplit_config == split.with_(out_channels=TEXT.hidden_size)


def test_configs_saved_with_flat_vitsplit_keys_still_load(tmp_path):
    cfg = llava_config(vitsplit_config=connector_preset("vitsplit").with_(k=2))
    data = cfg.to_dict()
    data.pop("vitsplit_config")
    data.update(vitsplit_k=2, vitsplit_n=1, vitsplit_s=None, vitsplit_task_input="patch")
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = ViTSplitLlavaConfig.from_pretrained(tmp_path)
    assert loaded.vitsplit == cfg.vitsplit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vitsplit_config=ViTSplitConfig.llava(48, feature_layer=-3)), "feature_layer -3"),
        (dict(vitsplit_config=ViTSplitConfig.llava(64)), "out_channels 64 != the LLM width 48"),
        (dict(vitsplit_config=ViTSplitConfig.llava(variant="dense")), "variant 'dense'"),
        (
            dict(mm_projector_type="mlp2x_gelu", vitsplit_config=ViTSplitConfig.llava(48)),
            "mlp2x_gelu has no ViT-Split settings",
        ),
        (dict(vitsplit_config={"k": 1, "depth": 3}), r"unknown settings \['depth'\]"),
    ],
)
def test_a_config_that_does_not_fit_the_model_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        llava_config(**kwargs)


def test_every_core_setting_is_reachable_from_the_training_flags(tiny, tmp_path):
    argv = [
        "--model_name_or_path", str(tiny.llama), "--vision_tower", str(tiny.clip),
        "--data_path", "d.json", "--image_folder", "images", "--output_dir", str(tmp_path),
        "--vitsplit_selection", "sparse_gate", "--vitsplit_n", "2",
        "--vitsplit_gate_temperature", "0.3", "--vitsplit_deform_offset_init", "default",
        "--vitsplit_conv_init", "center", "--vitsplit_components", "prior,task,fusion",
        "--vitsplit_final_norm", "false",
        "--vitsplit_task_input", "all", "--mm_vision_select_layer", "-1",
    ]  # fmt: skip
    connector = parse_args(argv)[3]
    assert connector == ViTSplitConfig.llava(
        feature_layer=-1, selection="sparse_gate", n=2, gate_temperature=0.3,
        deform_offset_init="default", final_norm=False, task_input="all", conv_init="center",
    )  # fmt: skip
    from vitsplit_vlm.vlm.builder import build_vlm

    model = build_vlm(
        model_name_or_path=tiny.llama,
        vision_tower=tiny.clip,
        mm_vision_select_layer=-1,
        vitsplit_config=connector,
    ).model
    gate = model.connector.heads.prior_head.gate
    assert gate.temperature == 0.3 and gate.scores.shape == (4, 2)  # 4 CLIP blocks, n=2
    assert model.config.vitsplit.gate_temperature == 0.3


def test_mlp_baselines_refuse_vitsplit_flags():
    args = ModelArguments(model_name_or_path="m", vision_tower="v", mm_projector_type="linear")
    assert connector_config(args, {}) is None
    with pytest.raises(ValueError, match="--vitsplit_k: ViT-Split settings, but .* linear"):
        connector_config(args, {"vitsplit_k": 2})


def test_connector_built_from_the_nested_config_matches_its_settings(tiny):
    from vitsplit_vlm.vlm.builder import build_vlm

    split = connector_preset("vitsplit").with_(k=2)
    model = build_vlm(
        model_name_or_path=tiny.llama, vision_tower=tiny.clip, vitsplit_config=split
    ).model
    heads = model.connector.heads
    assert heads.layers.task_blocks == (1, 2)  # CLIP N=4, penultimate f=3, k=2
    tower = model.model.vision_tower.encoder.layers
    for copy, block in zip(heads.task_head.blocks, [tower[1], tower[2]], strict=True):
        for a, b in zip(copy.parameters(), block.parameters(), strict=True):
            assert torch.equal(a, b)


def test_llava_flag_spellings_map_onto_transformers_5(tiny, tmp_path, recwarn):
    argv = [
        "--model_name_or_path", str(tiny.llama), "--vision_tower", str(tiny.clip),
        "--data_path", "d.json", "--image_folder", "images", "--output_dir", str(tmp_path),
        "--gradient_checkpointing", "True", "--warmup_ratio=0.03", "--report_to", "none",
    ]  # fmt: skip
    training_args = parse_args(argv)[2]
    assert training_args.gradient_checkpointing and training_args.activation_checkpointing
    assert training_args.warmup_steps == 0.03
    assert not [w for w in recwarn if "is deprecated" in str(w.message)]
