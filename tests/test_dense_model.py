"""Dense heads, detection neck, anchors / RoI pooling, the three methods, inference helpers."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from transformers import AutoModel

from vitsplit_vlm.core import ViTSplitConfig
from vitsplit_vlm.dense.detector import FixedStrideAnchorGenerator, batch_images, exact_roi_align
from vitsplit_vlm.dense.heads import DepthHead, SegHead
from vitsplit_vlm.dense.inference import predict_seg, slide_windows
from vitsplit_vlm.dense.losses import seg_loss
from vitsplit_vlm.dense.model import DenseModel, DenseSpec
from vitsplit_vlm.dense.neck import DetNeck


@pytest.fixture(scope="module")
def trunk(tiny):
    return AutoModel.from_pretrained(tiny.dinov2)


def test_head_and_neck_shapes():
    x = torch.randn(2, 64, 5, 7)
    assert SegHead(64, 9)(x).shape == (2, 9, 20, 28)
    assert SegHead(64, 9)(x, (70, 98)).shape == (2, 9, 70, 98)
    depth = DepthHead(64)(x, (70, 98))
    assert depth.shape == (2, 1, 70, 98) and depth.min() >= 1e-3
    scales = DetNeck(64)(x)
    assert [tuple(s.shape[-2:]) for s in scales] == [(20, 28), (10, 14), (5, 7), (2, 3)]
    assert all(s.shape[:2] == (2, 64) for s in scales)


def test_fixed_stride_anchors_match_torchvision_for_integer_strides():
    sizes, ratios = ((32,), (64,)), ((0.5, 1.0, 2.0),) * 2
    feats = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 8, 8, 8)]
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    ours = FixedStrideAnchorGenerator(sizes, ratios, (4.0, 8.0))(images, feats)[0]
    theirs = AnchorGenerator(sizes, ratios)(images, feats)[0]
    assert torch.equal(ours, theirs)
    fractional = FixedStrideAnchorGenerator(((28,),), ((1.0,),), (3.5,))
    anchors = fractional(
        ImageList(torch.zeros(1, 3, 112, 112), [(112, 112)]), [feats[0][..., :32, :32]]
    )
    centres = (anchors[0][:, 0] + anchors[0][:, 2]) / 2
    assert centres.unique().tolist() == [3.5 * i for i in range(16)]  # no rounding of 3.5


def test_exact_roi_align_scales():
    pool = exact_roi_align(7, (3.5, 7.0, 14.0, 28.0))
    assert pool.scales == [1 / 3.5, 1 / 7, 1 / 14, 1 / 28]
    assert (pool.map_levels.k_min, pool.map_levels.k_max) == (2, 5)


def test_batch_images_pads_to_patch_multiple():
    images = batch_images([torch.ones(3, 20, 30), torch.ones(3, 28, 10)], 14)
    assert images.tensors.shape == (2, 3, 28, 42) and images.image_sizes == [(20, 30), (28, 10)]
    assert images.tensors[0, :, 20:].abs().sum() == 0


@pytest.mark.parametrize("method", ["vitsplit", "linear", "full"])
def test_methods_groups_and_frozen_trunk(tiny, method):
    trunk = AutoModel.from_pretrained(tiny.dinov2)
    model = DenseModel(trunk, DenseSpec(task="seg", method=method, num_classes=5))
    groups = model.trainable_groups()
    expected = {
        "vitsplit": {"task_head", "prior_head", "fusion", "head"},
        "linear": {"head"},
        "full": {"backbone", "head"},
    }[method]
    assert set(groups) == expected
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    optimizer = torch.optim.AdamW([p for ps in groups.values() for p in ps], lr=1e-2)
    model.train()
    x = torch.randn(2, 3, 56, 70)
    logits = model(x)
    assert logits.shape == (2, 5, 56, 70)
    seg_loss(logits, torch.randint(0, 5, (2, 56, 70))).backward()
    optimizer.step()
    changed = any(not torch.equal(before[k], v) for k, v in trunk.state_dict().items())
    assert changed == (method == "full")
    if method != "full":
        assert not model.split.trunk.training  # the frozen trunk stays in eval mode


def test_linear_method_reads_last_layer_after_norm(trunk):
    model = DenseModel(trunk, DenseSpec(task="depth", method="linear")).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ref = trunk(pixel_values=x).last_hidden_state  # Dinov2Model: after its final norm
    feats = model.features(x)
    assert torch.allclose(feats.flatten(2).transpose(1, 2), ref[:, 1:], atol=1e-5)
    assert model.required_layers == (8,)


def test_depth_and_det_forward(trunk):
    depth = DenseModel(trunk, DenseSpec(task="depth")).eval()
    assert depth(torch.randn(1, 3, 56, 56)).shape == (1, 1, 56, 56)
    det = DenseModel(trunk, DenseSpec(task="det", num_classes=3)).eval()
    out = det([torch.randn(3, 50, 60), torch.randn(3, 56, 56)])
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    if len(out[0]["boxes"]):
        assert out[0]["masks"].shape[-2:] == (50, 60)


def test_slide_windows_cover_the_image():
    windows = list(slide_windows((100, 130), (56, 56), (37, 37)))
    cover = torch.zeros(100, 130)
    for y1, y2, x1, x2 in windows:
        assert y2 - y1 == 56 and x2 - x1 == 56
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert list(slide_windows((40, 40), (56, 56), (37, 37))) == [(0, 40, 0, 40)]


def test_slide_equals_whole_when_window_covers_image(trunk):
    model = DenseModel(trunk, DenseSpec(task="seg", num_classes=4)).eval()
    x = torch.randn(1, 3, 50, 61)  # not a patch multiple: both paths pad the same way
    whole = predict_seg(model, x, mode="whole")
    slide = predict_seg(model, x, mode="slide", crop=(70, 70), stride=(40, 40))
    assert whole.shape == (1, 4, 50, 61) and torch.allclose(whole, slide, atol=1e-6)
    small = predict_seg(
        model, torch.randn(1, 3, 84, 84), mode="slide", crop=(56, 56), stride=(28, 28)
    )
    assert small.shape == (1, 4, 84, 84) and torch.isfinite(small).all()


def test_spec_validation():
    with pytest.raises(ValueError, match="DenseSpec.task"):
        DenseSpec(task="pose")
    with pytest.raises(ValueError, match="DenseSpec.num_classes"):
        DenseSpec(task="seg")
    with pytest.raises(ValueError, match="DenseSpec.method"):
        DenseSpec(task="depth", method="lora")
    split = ViTSplitConfig(components=("prior",))
    spec = DenseSpec(task="seg", num_classes=3, split=split, class_names=("a", "b", "c"))
    assert DenseSpec.from_dict(spec.to_dict()) == spec


def test_sparse_gate_selection_trains_the_gate(trunk):
    spec = DenseSpec(task="seg", num_classes=3, split=ViTSplitConfig(selection="sparse_gate", n=2))
    model = DenseModel(trunk, spec).train()
    assert model.required_layers == tuple(range(1, 9))  # the gate sees every block
    logits = model(torch.randn(2, 3, 28, 28))
    seg_loss(logits, torch.randint(0, 3, (2, 28, 28))).backward()
    gate = model.split.heads.prior_head.gate.scores
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_preset_kind_recognises_playground_sets(tmp_path):
    from vitsplit_vlm.dense.recipes import preset_kind
    from vitsplit_vlm.playground.dense_sets import write_dense_sets

    sets = write_dense_sets(tmp_path / "d", num_train=1, num_val=1)
    assert preset_kind("auto", sets.ade) == "playground"
    assert preset_kind("auto", tmp_path) == "real"
    assert preset_kind("real", sets.ade) == "real"


def _plain_head_forward(head, x, size):
    """The head's layers called one after another: what the recomputing paths must equal."""
    import torch.nn.functional as F

    last = head.classifier if isinstance(head, SegHead) else head.conv
    out = F.interpolate(last(head.norm(head.up(x))), size=size, mode="bilinear")
    return out if isinstance(head, SegHead) else F.relu(out) + head.min_depth


@pytest.mark.parametrize("head_cls", [SegHead, DepthHead])
def test_head_recomputation_same_results_fewer_saved_tensors(head_cls, record_saved_tensors):
    """Default (GN->GELU and BatchNorm recomputed) and --checkpoint-head (whole stack) training
    give the plain forward's outputs, gradients and BatchNorm statistics, keeping less."""
    import copy

    torch.manual_seed(0)
    head = head_cls(64, 5) if head_cls is SegHead else head_cls(64)
    x = torch.randn(2, 64, 6, 6, requires_grad=True)
    results = {}
    for mode in ("plain", "default", "checkpoint-head"):
        model = copy.deepcopy(head).train()
        model.checkpoint_up = mode == "checkpoint-head"
        x.grad = None
        with record_saved_tensors() as saved:
            for _ in range(2):  # two steps: the running statistics move exactly twice
                out = (
                    _plain_head_forward(model, x, (24, 24))
                    if mode == "plain"
                    else model(x, (24, 24))
                )
        (out.square().mean()).backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
        results[mode] = (out.detach(), grads, sum(saved) / 2, model.norm)
    out0, grads0, saved0, bn0 = results["plain"]
    # Measured: default keeps 54-57% of the plain path's saved elements, checkpoint-head 20-23%.
    for mode, max_fraction in (("default", 0.65), ("checkpoint-head", 0.3)):
        out1, grads1, saved1, bn1 = results[mode]
        torch.testing.assert_close(out1, out0)
        for g1, g0 in zip(grads1, grads0, strict=True):
            torch.testing.assert_close(g1, g0)
        assert bn1.num_batches_tracked == bn0.num_batches_tracked == 2
        torch.testing.assert_close(bn1.running_mean, bn0.running_mean)
        torch.testing.assert_close(bn1.running_var, bn0.running_var)
        assert saved1 < max_fraction * saved0, (mode, saved1 / saved0)
    # In evaluation the head reads the running statistics the recomputing path updated.
    model = copy.deepcopy(head)
    model.train()(x)
    with torch.no_grad():
        expected = _plain_head_forward(model.eval(), x, (24, 24))
        torch.testing.assert_close(model(x, (24, 24)), expected)
    assert model.norm.running_mean.abs().sum() > 0


def test_resize_false_returns_head_resolution_logits(trunk):
    model = DenseModel(trunk, DenseSpec(task="seg", num_classes=4))
    pixels = torch.randn(1, 3, 56, 56)
    low = model(pixels, resize=False)
    assert low.shape[-2:] == (4 * 56 // model.patch_size,) * 2
    torch.testing.assert_close(
        torch.nn.functional.interpolate(low, (56, 56), mode="bilinear", align_corners=False),
        model(pixels),
    )
    with pytest.raises(ValueError, match="resize=False is for segmentation"):
        DenseModel(trunk, DenseSpec(task="depth"))(pixels, resize=False)
