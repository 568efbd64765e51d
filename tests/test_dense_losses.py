"""The lean upsample + cross-entropy equals the plain composition, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from vitsplit_vlm.dense.losses import UpsampledCrossEntropy, seg_loss


def _reference(logits, labels, ignore_index=255):
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, labels, ignore_index=ignore_index)


@pytest.mark.parametrize("chunk", [16, 4, 1])  # one chunk; 4 + 2 classes; one class at a time
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("low", "high"), [((3, 5), (12, 20)), ((4, 4), (13, 9))])
def test_upsampled_cross_entropy_matches_plain_composition(monkeypatch, chunk, dtype, low, high):
    monkeypatch.setattr(UpsampledCrossEntropy, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, *low, generator=g, dtype=dtype) * 3).requires_grad_()
    labels = torch.randint(0, 6, (2, *high), generator=g)
    labels[0, :3] = 255  # some ignored pixels
    labels[1, -1, -2:] = 255
    want = _reference(logits, labels)
    (want_grad,) = torch.autograd.grad(want * 1.7, logits)
    got = seg_loss(logits, labels)  # resizes, so it takes the lean path
    (got_grad,) = torch.autograd.grad(got * 1.7, logits)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, want.to(got.dtype), atol=tol, rtol=tol)
    torch.testing.assert_close(got_grad, want_grad, atol=tol, rtol=tol)


def test_upsampled_cross_entropy_passes_gradcheck(monkeypatch):
    monkeypatch.setattr(UpsampledCrossEntropy, "CHUNK", 3)  # 4 classes: chunks of 3 + 1
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (1, 7, 5), generator=g)
    labels[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda x: UpsampledCrossEntropy.apply(x, labels, 255), logits)


def test_upsampled_cross_entropy_keeps_only_low_resolution_tensors(record_saved_tensors):
    # The point of the Function: nothing (B, K, H, W)-sized is saved for backward.
    logits = torch.randn(2, 150, 16, 16, requires_grad=True)
    labels = torch.randint(0, 150, (2, 64, 64))
    full = 2 * 150 * 64 * 64
    for fn, expect_big in ((_reference, True), (seg_loss, False)):
        with record_saved_tensors() as saved:
            fn(logits, labels)
        assert (max(saved) >= full) is expect_big, (fn.__name__, max(saved))


def test_bf16_logits_get_a_float32_loss_and_bf16_gradient():
    logits = torch.randn(1, 5, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 5, (1, 8, 8))
    loss = seg_loss(logits, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    want = _reference(logits.detach().float(), labels)
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
