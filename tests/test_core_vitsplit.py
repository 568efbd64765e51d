"""ViT-Split core on tiny real HF models (built by `make_tiny`, reloaded with `from_pretrained`)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, ViTConfig, ViTModel

from vitsplit_vlm.core import FrozenTrunk, ViTSplit, ViTSplitConfig

# family -> (tiny folder attribute, prefix tokens dropped)
FAMILIES = {"clip": 1, "dinov2": 1, "dinov2_reg": 5, "siglip": 0}


def load(tiny, family: str) -> torch.nn.Module:
    if family == "vit":
        return _tiny_vit(tiny)
    return AutoModel.from_pretrained(getattr(tiny, family))


def _tiny_vit(tiny) -> torch.nn.Module:
    path = tiny.root.parent / "vit-test"  # beside, not inside, the shared tiny folder
    if not path.exists():
        torch.manual_seed(0)
        cfg = ViTConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
        ViTModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return AutoModel.from_pretrained(path)


def pixels(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_hidden_states(model, x):
    with torch.no_grad():
        return model(x, output_hidden_states=True).hidden_states


def final_norm(model):
    name = {
        "dinov2": "layernorm",
        "dinov2_with_registers": "layernorm",
        "siglip_vision_model": "post_layernorm",
        "vit": "layernorm",
    }.get(model.config.model_type)
    return getattr(model, name) if name else None


def to_map(tokens, prefix, grid):
    b, _, c = tokens.shape
    return tokens[:, prefix:].transpose(1, 2).reshape(b, c, *grid)


@pytest.mark.parametrize("family", [*FAMILIES, "vit"])
def test_task_head_equals_frozen_feature_layer_at_init(tiny, family):
    """'all' mode: the copied blocks reproduce hidden_states[f] bit for bit (after the final norm
    where the dense variant uses it), CLS/register tokens dropped."""
    model = load(tiny, family)
    cfg = ViTSplitConfig(k=2, n=2, s=1, task_input="all")
    vs = ViTSplit(model, cfg)
    x = pixels(model)
    out = vs(x)
    hs = reference_hidden_states(model, x)
    f = vs.layers.feature_layer
    assert f == model.config.num_hidden_layers
    norm = final_norm(model)
    expected = norm(hs[f]) if norm is not None else hs[f]
    grid = (x.shape[-2] // 14, x.shape[-1] // 14)
    prefix = FAMILIES.get(family, 1)
    assert torch.equal(out.task, to_map(expected, prefix, grid))


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_penultimate_feature_layer_matches_llava_selection(tiny, family):
    """feature_layer=-2 (LLaVA's vision_feature_layer) with no final norm: task == hidden_states[-2]."""
    model = load(tiny, family)
    vs = ViTSplit(
        model, ViTSplitConfig(k=1, n=1, feature_layer=-2, task_input="all", final_norm=False)
    )
    x = pixels(model)
    hs = reference_hidden_states(model, x)
    assert torch.equal(vs(x).task, to_map(hs[-2], 1, (8, 8)))


def test_patch_task_input_matches_its_definition(tiny):
    """'patch' mode (official LLaVA connector): the copied block sees only the patch tokens of
    hidden_states[f-k]; compare with the frozen block run on those tokens."""
    model = load(tiny, "clip")
    vs = ViTSplit(model, ViTSplitConfig.llava(out_channels=96))
    x = pixels(model)
    hs = reference_hidden_states(model, x)
    f = vs.layers.feature_layer
    assert (f, vs.layers.task_blocks) == (3, (2,))
    with torch.no_grad():
        expected = model.encoder.layers[2](hs[2][:, 1:], None)
    out = vs(x)
    assert torch.equal(out.task, to_map(expected, 0, (8, 8)))
    assert not torch.equal(out.task, to_map(hs[3], 1, (8, 8)))  # differs from 'all' mode
    assert out.fused.shape == (2, 96, 8, 8)
    # the prior head reads the frozen penultimate state itself (n=1)
    assert vs.layers.prior_hidden_layers == (3,)


def test_prior_head_reads_selected_layers(tiny):
    """The prior head's input is exactly the (normed) hidden states of the uniform indices."""
    model = load(tiny, "dinov2")
    vs = ViTSplit(model, ViTSplitConfig(k=3, n=4, s=2))
    assert vs.layers.prior_blocks == (2, 3, 5, 7)  # N=8: 2 + int(i * 5 / 3)
    seen = {}
    vs.heads.prior_head.convs.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    x = pixels(model)
    vs(x)
    hs = reference_hidden_states(model, x)
    expected = torch.cat([to_map(model.layernorm(hs[i + 1]), 1, (8, 8)) for i in (2, 3, 5, 7)], 1)
    assert torch.equal(seen["x"], expected)


def test_registers_are_dropped(tiny):
    model = load(tiny, "dinov2_reg")
    vs = ViTSplit(model, ViTSplitConfig(k=1, n=2))
    assert vs.trunk.spec.num_prefix_tokens == 1 + model.config.num_register_tokens
    assert vs(pixels(model)).fused.shape == (2, model.config.hidden_size, 8, 8)


def test_trunk_frozen_after_optimizer_step(tiny):
    model = load(tiny, "dinov2")
    vs = ViTSplit(model, ViTSplitConfig(k=2, n=2, s=1))
    vs.train()
    before = {k: v.clone() for k, v in vs.trunk.state_dict().items()}
    trainable = [p for group in vs.trainable_groups().values() for p in group]
    assert trainable and all(p.requires_grad for p in trainable)
    assert not any(p.requires_grad for p in vs.trunk.parameters())
    assert not vs.trunk.training  # stays in eval mode under .train()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(2):
        loss = vs(pixels(model)).fused.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in vs.trunk.parameters())
    for k, v in vs.trunk.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the heads did change
    assert not torch.equal(
        vs.heads.task_head.blocks[0].mlp.fc1.weight, model.encoder.layer[6].mlp.fc1.weight
    )


def test_frozen_features_carry_no_graph(tiny):
    model = load(tiny, "clip")
    vs = ViTSplit(model, ViTSplitConfig.llava(out_channels=64))
    feats = vs.frozen_features(pixels(model))
    assert feats and all(not t.requires_grad and t.grad_fn is None for t in feats.values())


@pytest.mark.parametrize(
    "cfg, deepest",
    [
        (ViTSplitConfig.llava(out_channels=64), 3),  # CLIP N=4: penultimate, last block idle
        (ViTSplitConfig(k=1, n=1, components=("task",), feature_layer=-2), 2),
        (ViTSplitConfig(k=2, n=2, s=0, components=("prior",), feature_layer=-2), 3),
    ],
)
def test_blocks_after_deepest_layer_never_run(tiny, cfg, deepest):
    model = load(tiny, "clip")
    vs = ViTSplit(model, cfg)
    assert vs.layers.deepest_layer == deepest
    calls = [0] * len(model.encoder.layers)
    for i, block in enumerate(model.encoder.layers):
        block.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    vs(pixels(model))
    assert calls == [1] * deepest + [0] * (len(calls) - deepest)


def test_trunk_returns_exact_hidden_states(tiny):
    model = load(tiny, "siglip")
    x = pixels(model)
    got = FrozenTrunk(model)(x, [0, 2, 3])
    hs = reference_hidden_states(model, x)
    assert sorted(got) == [0, 2, 3]
    for i in got:
        assert torch.equal(got[i], hs[i])


def test_other_resolutions_interpolate(tiny):
    model = load(tiny, "dinov2")
    out = ViTSplit(model, ViTSplitConfig(k=1, n=2))(torch.randn(1, 3, 140, 98))
    assert out.fused.shape == (1, 192, 10, 7)


def test_ablation_components(tiny):
    model = load(tiny, "dinov2")
    x = pixels(model)
    hs = reference_hidden_states(model, x)
    linear = ViTSplit(model, ViTSplitConfig(components=()))
    assert linear.trainable_groups() == {}
    assert torch.equal(linear(x).fused, to_map(model.layernorm(hs[-1]), 1, (8, 8)))
    added = ViTSplit(model, ViTSplitConfig(components=("prior", "task")))
    out = added(x)
    assert torch.equal(out.fused, out.prior + out.task)
    assert set(added.trainable_groups()) == {"task_head", "prior_head"}


def test_output_is_a_dict_of_its_maps(tiny):
    """DeepSpeed ZeRO-3's hooks find tensors in dicts, tuples and lists only: the output is a
    ModelOutput; a map a configuration lacks is None as an attribute and absent from the dict."""
    model = load(tiny, "dinov2")
    x = pixels(model)
    linear = ViTSplit(model, ViTSplitConfig(components=()))(x)
    assert isinstance(linear, dict) and list(linear) == ["fused"]
    assert linear.task is None and linear.prior is None and linear["fused"] is linear.fused
    full = ViTSplit(model, ViTSplitConfig())(x)
    assert list(full) == ["fused", "task", "prior"]
    assert all(full[k] is getattr(full, k) for k in full)


def test_sparse_gate_model_runs_and_trains_gate(tiny):
    model = load(tiny, "dinov2")
    vs = ViTSplit(model, ViTSplitConfig(k=1, n=3, selection="sparse_gate"))
    assert vs.layers.gate_candidates == 8 and vs.layers.required_layers == tuple(range(1, 9))
    vs(pixels(model)).fused.sum().backward()
    assert vs.heads.prior_head.gate.scores.grad.abs().min() > 0


def test_input_validation(tiny):
    model = load(tiny, "dinov2")
    vs = ViTSplit(model, ViTSplitConfig(k=1, n=2))
    with pytest.raises(ValueError, match=r"channels; expected \(B, 3, H, W\)"):
        vs(torch.randn(1, 1, 112, 112))
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        vs(torch.randn(1, 3, 100, 112))
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        vs(torch.randn(3, 112, 112))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(k=8), "k"),  # not smaller than the number of blocks (8)
        (dict(n=0), "n"),
        (dict(s=8), "s"),
        (dict(s=6, n=4), "n"),
        (dict(feature_layer=-9), "feature_layer"),
        (dict(prior_layers=(1, 9), n=2), "prior_layers"),
    ],
)
def test_config_errors_against_trunk(tiny, kwargs, field):
    model = load(tiny, "dinov2")
    with pytest.raises(ValueError, match=rf"ViTSplitConfig\.{field}:"):
        ViTSplit(model, ViTSplitConfig(**kwargs))


def test_unsupported_trunk_is_named():
    from transformers import LlamaConfig, LlamaModel

    llama = LlamaModel(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=50,
        )
    )
    with pytest.raises(ValueError, match="unsupported trunk LlamaModel"):
        ViTSplit(llama, ViTSplitConfig())
