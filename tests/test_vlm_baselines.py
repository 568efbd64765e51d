"""The multi-layer connector baselines compute what their sources compute.

Each connector's image tokens are recomputed here from the tower's own ``hidden_states``
(``output_hidden_states=True``, not this project's trunk adapter), with the recipe written out
for the tiny CLIP (4 blocks, feature layer -2 = hidden state 3):

- Dense Connector (HJYao00/DenseConnector ``dense_connector.py``): STI appends the tokens of
  two layers average-pooled by 8; SCI concatenates them along channels; DCI concatenates the
  means of the two halves of the hidden states up to the feature layer;
- VipLlava: transformers' own `VipLlavaMultiModalProjector`, given the connector's weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitsplit_vlm.vlm.builder import build_vlm
from vitsplit_vlm.vlm.configuration import default_projector_layers

VIPLLAVA_LAYERS = [-2, -3, 1]


def built_and_hidden(tiny, kind: str, **kw):
    """(built VLM, its image tokens, the tower's hidden states without CLS) for one image."""
    built = build_vlm(
        model_name_or_path=tiny.llama, vision_tower=tiny.clip, mm_projector_type=kind, **kw
    )
    image = Image.new("RGB", (112, 112), (30, 200, 90))
    image.paste((250, 20, 20), (10, 10, 60, 70))
    pixels = built.image_processor(image, return_tensors="pt")["pixel_values"]
    model = built.model.eval()
    with torch.no_grad():
        tokens = model.model.get_image_features(pixels).last_hidden_state
        states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    return built, tokens, [h[:, 1:] for h in states]


def pool8(x: torch.Tensor) -> torch.Tensor:
    """Dense Connector's ``AvgPool1d(8, 8)`` along the tokens."""
    return F.avg_pool1d(x.transpose(1, 2), 8, 8).transpose(1, 2)


DENSE_CONNECTOR = {  # hidden states h[0..4] of the tiny CLIP -> the projector's input
    "dc_sti": lambda h: torch.cat([h[3], pool8(h[0]), pool8(h[2])], dim=1),
    "dc_sci": lambda h: torch.cat([h[3], h[0], h[2]], dim=-1),
    "dc_dci": lambda h: torch.cat([h[3], (h[0] + h[1]) / 2, (h[2] + h[3]) / 2], dim=-1),
}


@pytest.mark.parametrize("kind", sorted(DENSE_CONNECTOR))
def test_dense_connector_matches_its_recipe(tiny, kind):
    built, tokens, h = built_and_hidden(tiny, kind)
    with torch.no_grad():
        want = built.model.model.multi_modal_projector.proj(DENSE_CONNECTOR[kind](h))
    torch.testing.assert_close(tokens, want, rtol=1e-5, atol=1e-5)
    assert built.model.config.image_seq_length == tokens.shape[1]


def test_vipllava_matches_transformers_projector(tiny):
    from transformers import VipLlavaConfig
    from transformers.models.vipllava.modeling_vipllava import VipLlavaMultiModalProjector

    built, tokens, h = built_and_hidden(tiny, "vipllava", mm_projector_layers=VIPLLAVA_LAYERS)
    config = built.model.config
    reference = VipLlavaMultiModalProjector(
        VipLlavaConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            vision_feature_layer=VIPLLAVA_LAYERS,
        )
    )
    reference.load_state_dict(built.model.model.multi_modal_projector.proj.state_dict())
    with torch.no_grad():
        want = reference(torch.cat([h[i] for i in VIPLLAVA_LAYERS], dim=-1))
    torch.testing.assert_close(tokens, want, rtol=1e-5, atol=1e-5)


def test_default_layers_are_the_sources_at_llava_1_5_size():
    """CLIP-L (24 blocks, feature layer -2): Dense Connector reads hidden states 7 and 15,
    VipLlava transformers' (-2, -5, -8, -11, 6)."""
    for kind in ("dc_sti", "dc_sci"):
        assert default_projector_layers(kind, feature_layer=-2, num_blocks=24) == (7, 15)
    assert default_projector_layers("vipllava", feature_layer=-2, num_blocks=24) == (
        -2, -5, -8, -11, 6,
    )  # fmt: skip
    assert default_projector_layers("mlp2x_gelu", feature_layer=-2, num_blocks=24) is None


def test_projector_layers_a_tower_lacks_is_one_clear_error(tiny):
    with pytest.raises(ValueError, match=r"mm_projector_layers: the default .*vipllava.*4 blocks"):
        build_vlm(
            model_name_or_path=tiny.llama, vision_tower=tiny.clip, mm_projector_type="vipllava"
        )
    with pytest.raises(ValueError, match=r"mm_projector_type mlp2x_gelu reads no extra layers"):
        build_vlm(
            model_name_or_path=tiny.llama, vision_tower=tiny.clip,
            mm_projector_type="mlp2x_gelu", mm_projector_layers=[1],
        )  # fmt: skip


@pytest.mark.parametrize("kind", [*sorted(DENSE_CONNECTOR), "vipllava"])
def test_stage1_connector_file_of_a_baseline_loads_into_stage2(tiny, tmp_path, kind):
    """This project's ``mm_projector.safetensors`` for every baseline, and Dense Connector's own
    stage-1 ``mm_projector.bin`` (LLaVA's ``model.mm_projector.{0,2}`` keys of its MLP)."""
    from safetensors.torch import save_file

    from vitsplit_vlm.vlm.builder import connector_state_dict

    layers = {"mm_projector_layers": VIPLLAVA_LAYERS} if kind == "vipllava" else {}
    build = dict(model_name_or_path=tiny.llama, vision_tower=tiny.clip, mm_projector_type=kind)
    built = build_vlm(**build, **layers)
    weights = {k: torch.randn_like(v) for k, v in connector_state_dict(built.model).items()}
    save_file(weights, str(tmp_path / "mm_projector.safetensors"))
    loaded = build_vlm(**build, **layers, pretrain_mm_mlp_adapter=tmp_path)
    for key, value in connector_state_dict(loaded.model).items():
        assert torch.equal(value, weights[key]), key
    if kind == "vipllava":
        return
    llava = {
        k.replace("model.multi_modal_projector.proj.", "model.mm_projector."): v
        for k, v in weights.items()
    }
    torch.save(llava, tmp_path / "mm_projector.bin")
    loaded = build_vlm(**build, pretrain_mm_mlp_adapter=tmp_path / "mm_projector.bin")
    for key, value in connector_state_dict(loaded.model).items():
        assert torch.equal(value, weights[key]), key
