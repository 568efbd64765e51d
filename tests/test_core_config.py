"""Config validation, layer selection and the sparse gate (no models needed)."""

from __future__ import annotations

import pytest
import torch

from vitsplit_vlm.core import SparseGate, ViTSplitConfig, uniform_indices
from vitsplit_vlm.core.layers import DeformBlock


def test_uniform_indices_match_design_examples():
    assert uniform_indices(s=2, n=4, last=11) == [2, 5, 8, 11]  # DINOv2-S
    assert uniform_indices(s=2, n=8, last=23) == [2, 5, 8, 11, 14, 17, 20, 23]  # DINOv2-L
    assert ViTSplitConfig(k=3, n=4, s=2).resolve(12).prior_blocks == (2, 5, 8, 11)
    assert ViTSplitConfig(k=4, n=8, s=2).resolve(24).prior_blocks == (2, 5, 8, 11, 14, 17, 20, 23)


def test_llava_preset_layers():
    layers = ViTSplitConfig.llava(out_channels=4096).resolve(24)  # CLIP ViT-L/14: 24 blocks
    assert layers.feature_layer == 23  # penultimate, vision_feature_layer = -2
    assert layers.task_blocks == (22,)  # the block that produces the penultimate state
    assert layers.task_input_layer == 22
    assert layers.prior_hidden_layers == (23,)  # n=1: the frozen penultimate state itself
    assert layers.deepest_layer == 23  # block 23 is dead compute


def test_dense_defaults_resolve_like_the_paper():
    layers = ViTSplitConfig(k=3, n=4, s=2).resolve(12)
    assert layers.feature_layer == 12 and layers.task_blocks == (9, 10, 11)
    assert layers.task_input_layer == 9 and layers.prior_hidden_layers == (3, 6, 9, 12)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n=0), "n"),
        (dict(k=0), "k"),
        (dict(s=-1), "s"),
        (dict(selection="topk"), "selection"),
        (dict(variant="seg"), "variant"),
        (dict(task_input="cls"), "task_input"),
        (dict(components=("prior", "fusion")), "components"),
        (dict(components=("head",)), "components"),
        (dict(out_channels=64), "out_channels"),  # dense stays at the trunk width
        (dict(prior_layers=(1, 2)), "prior_layers"),  # n=4 but 2 layers
        (dict(feature_layer=0), "feature_layer"),
        (dict(deform_offset_init="xavier"), "deform_offset_init"),
        (dict(conv_init="dirac"), "conv_init"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^ViTSplitConfig\.{field}:"):
        ViTSplitConfig(**kwargs)


def test_k_must_be_smaller_than_depth():
    with pytest.raises(
        ValueError, match=r"ViTSplitConfig\.k: must be smaller than the number of blocks \(12\)"
    ):
        ViTSplitConfig(k=12).resolve(12)


def test_sparse_gate_forward_is_sparse_and_backward_dense():
    torch.manual_seed(0)
    gate = SparseGate(num_layers=12, n=4, temperature=0.5)
    g = gate()
    assert g.shape == (12, 4)
    assert ((g != 0).sum(dim=0) == 4).all()  # exactly n non-zeros per column
    torch.testing.assert_close(g.sum(dim=0), torch.ones(4))
    # forward value is the renormalised top-n softmax (official semantics)
    soft = torch.softmax(gate.scores.detach() / 0.5, dim=0)
    top = soft.topk(4, dim=0).indices
    sparse = torch.zeros_like(soft).scatter(0, top, soft.gather(0, top))
    torch.testing.assert_close(g.detach(), sparse / sparse.sum(0, keepdim=True))
    # backward reaches every score, selected or not
    layers = torch.randn(2, 12, 8, 3, 3)
    gate.select(layers).square().sum().backward()
    assert (gate.scores.grad != 0).all()


def test_deform_block_zero_offsets_equal_plain_conv():
    torch.manual_seed(0)
    block = DeformBlock(8, 6)
    x = torch.randn(2, 8, 5, 7)
    expected = torch.nn.functional.conv2d(x, block.deform.weight, padding=1)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert block.deform.bias is None
    assert sum(p.numel() for p in block.deform.parameters()) == 6 * 8 * 9


@pytest.mark.parametrize("deform", [False, True])
def test_center_conv_init_starts_per_patch_and_default_mixes_neighbours(deform):
    """conv_init="center": a change at one location reaches only that output location (the 3x3
    kernel is a 1x1 conv at init, with a 1x1 conv's scale); the default 3x3 reaches neighbours."""
    from vitsplit_vlm.core.layers import conv_block

    x = torch.randn(1, 8, 6, 6)
    bumped = x.clone()
    bumped[0, :, 2, 3] += 1.0
    for conv_init in ("center", "default"):
        torch.manual_seed(0)
        block = conv_block(8, 16, deform=deform, offset_init="zero", conv_init=conv_init)
        changed = (block(bumped) - block(x)).abs().sum(1)[0] > 1e-6
        if conv_init == "center":
            assert changed.nonzero().tolist() == [[2, 3]]
        else:
            assert changed[1:4, 2:5].all() and changed.sum() == 9
    second = block[2].deform if deform else block[2]
    torch.manual_seed(0)
    block = conv_block(8, 16, deform=deform, offset_init="zero", conv_init="center")
    kernel = (block[2].deform if deform else block[2]).weight
    off_centre = kernel.clone()
    off_centre[:, :, 1, 1] = 0
    assert kernel[:, :, 1, 1].count_nonzero() == 16 * 16 and off_centre.count_nonzero() == 0
    # PyTorch's bound 1/sqrt(fan_in): 1/4 for a 16-channel 1x1 conv, 1/12 for the 3x3 default
    assert 0.2 < kernel[:, :, 1, 1].abs().max() <= 0.25 and second.weight.abs().max() <= 1 / 12
