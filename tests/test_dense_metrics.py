"""Dense losses and metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitsplit_vlm.dense.losses import SILogLoss, seg_loss
from vitsplit_vlm.dense.metrics import DepthMetric, SegMetric, depth_errors


def test_seg_loss_ignores_255_and_resizes():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 255], [2, 1]]])
    keep = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert seg_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    big = seg_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 8, 8, dtype=torch.long))
    assert big.ndim == 0 and torch.isfinite(big)


def test_seg_loss_all_ignored_is_zero_with_grad():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = seg_loss(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_silog_hand_computed():
    # valid: gt 1 and 1 (pred 1 and 2); invalid: gt 0, gt 12 > max_depth 10
    pred = torch.tensor([1.0, 2.0, 5.0, 5.0]).view(1, 1, 2, 2)
    gt = torch.tensor([1.0, 1.0, 0.0, 12.0]).view(1, 1, 2, 2)
    a = math.log(2.001) - math.log(1.001)  # g = [0, a], eps = 1e-3
    var_unbiased, mean = a * a / 2, a / 2
    expected = 10 * math.sqrt(var_unbiased + 0.15 * mean * mean)
    assert SILogLoss()(pred, gt).item() == pytest.approx(expected, rel=1e-5)
    assert SILogLoss(weight=1.0)(pred, gt).item() == pytest.approx(expected / 10, rel=1e-5)


def test_silog_scale_invariant_part_and_no_valid_pixels():
    gt = torch.rand(1, 1, 4, 4) * 5 + 1
    # a constant factor only enters through 0.15 * mean(g)^2
    loss = SILogLoss(weight=1.0, eps=0.0)(gt * 2, gt).item()
    assert loss == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-4)
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    zero = SILogLoss()(pred, torch.zeros(1, 1, 2, 2))
    zero.backward()
    assert zero.item() == 0.0


def test_seg_metric_hand_computed():
    m = SegMetric(3)
    gt = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 1]])
    m.update(pred, gt)
    m.update(torch.tensor([2]), torch.tensor([255]))  # ignored pixel
    out = m.compute()
    assert out["IoU"][0] == pytest.approx(50.0)  # inter 1, union 2
    assert out["IoU"][1] == pytest.approx(200 / 3)  # inter 2, union 3
    assert math.isnan(out["IoU"][2])  # class 2 never occurs: left out of the mean
    assert out["mIoU"] == pytest.approx((50 + 200 / 3) / 2)
    assert out["aAcc"] == pytest.approx(75.0)
    with pytest.raises(ValueError, match="labels outside"):
        m.update(torch.tensor([0]), torch.tensor([7]))


def test_depth_errors_hand_computed():
    e = depth_errors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    ln2 = math.log(2)
    assert e["abs_rel"] == pytest.approx(0.5)
    assert e["sq_rel"] == pytest.approx(0.5)
    assert e["rmse"] == pytest.approx(math.sqrt(0.5))
    assert e["rmse_log"] == pytest.approx(math.sqrt(ln2 * ln2 / 2))
    assert e["log10"] == pytest.approx(math.log10(2) / 2)
    assert e["silog"] == pytest.approx(100 * ln2 / 2)
    assert (e["d1"], e["d2"], e["d3"]) == (0.5, 0.5, 0.5)  # ratio 2 > 1.25^3


def test_depth_metric_averages_images_and_counts_empty():
    m = DepthMetric(max_depth=10.0)
    gt = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]], [[0.0, 0.0]]])  # (B=3, 1, 2)
    pred = torch.tensor([[[1.0, 2.0]], [[2.0, 9.0]], [[1.0, 1.0]]])
    m.update(pred, gt)
    out = m.compute()
    assert m.count == 2 and m.empty == 1
    assert out["abs_rel"] == pytest.approx((0.5 + 0.0) / 2)  # per image, then averaged
    assert out["d1"] == pytest.approx((0.5 + 1.0) / 2)
    cropped = DepthMetric(crop=(0, 1, 0, 1))
    cropped.update(pred[:1], gt[:1])
    assert cropped.compute()["abs_rel"] == 0.0


def test_metrics_merge_shards_into_the_one_pass_result():
    torch.manual_seed(0)
    preds, labels = torch.randint(0, 4, (6, 5, 5)), torch.randint(0, 4, (6, 5, 5))
    labels[0, 0] = 255
    whole, shards = SegMetric(4), [SegMetric(4), SegMetric(4)]
    for i in range(6):
        whole.update(preds[i], labels[i])
        shards[i % 2].update(preds[i], labels[i])
    shards[0].merge(shards[1])
    assert torch.equal(shards[0].confusion, whole.confusion)
    with pytest.raises(ValueError, match="cannot merge 3 classes into 4"):
        shards[0].merge(SegMetric(3))

    depth_pred, depth_gt = torch.rand(4, 1, 6, 6) * 9 + 0.5, torch.rand(4, 1, 6, 6) * 9 + 0.5
    depth_gt[3] = 0  # no valid pixel: counted as empty
    whole_depth, a, b = DepthMetric(), DepthMetric(), DepthMetric()
    whole_depth.update(depth_pred, depth_gt)
    a.update(depth_pred[:2], depth_gt[:2])
    b.update(depth_pred[2:], depth_gt[2:])
    a.merge(b)
    assert (a.count, a.empty) == (whole_depth.count, whole_depth.empty) == (3, 1)
    assert a.compute() == pytest.approx(whole_depth.compute(), rel=1e-12)
