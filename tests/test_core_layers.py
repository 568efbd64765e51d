"""The grid_sample deformable conv is held to torchvision's kernel (it is several times faster on CPU)."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from vitsplit_vlm.core.layers import DeformBlock, deform_conv2d_sampled


def _inputs(seed: int, shape=(2, 5, 7, 9), c_out=4, scale=2.5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    # Offsets up to a few pixels: taps land between pixels, on borders and outside the image.
    offset = (torch.randn(b, 18, h, w, generator=g, dtype=dtype) * scale).requires_grad_()
    weight = torch.randn(c_out, c, 3, 3, generator=g, dtype=dtype, requires_grad=True)
    return x, offset, weight


def _run(fn, x, offset, weight):
    out = fn(x, offset, weight)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=out.dtype)
    grads = torch.autograd.grad((out * upstream).sum(), (x, offset, weight))
    return out, grads


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 2, 6), (3, 8, 11, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampled_matches_torchvision_outputs_and_gradients(seed, shape, dtype):
    x, offset, weight = _inputs(seed, shape, dtype=dtype)
    ref_out, ref_grads = _run(
        lambda a, o, w: deform_conv2d(a, o, w, padding=(1, 1)), x, offset, weight
    )
    out, grads = _run(lambda a, o, w: deform_conv2d_sampled(a, o, w, padding=1), x, offset, weight)
    # float64: the same maths to 1e-10. float32: within 1e-5 of each tensor's scale (the two
    # kernels sum in different orders; single elements differ by float32 rounding only).
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    pairs = zip(("output", "grad x", "grad offset", "grad weight"), (out, *grads),
                (ref_out, *ref_grads), strict=True)  # fmt: skip
    for name, got, want in pairs:
        torch.testing.assert_close(
            got, want, atol=rel * want.abs().max().item(), rtol=0, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_sampled_matches_torchvision_in_float64_with_integer_offsets():
    # Integer offsets put taps exactly on pixel centres (and exactly on the image border).
    x, offset, weight = _inputs(3, dtype=torch.float64)
    offset = offset.detach().round().requires_grad_()
    ref_out = deform_conv2d(x, offset, weight, padding=(1, 1))
    torch.testing.assert_close(
        deform_conv2d_sampled(x, offset, weight), ref_out, atol=1e-10, rtol=0
    )


def test_zero_offsets_are_a_plain_conv():
    x, offset, weight = _inputs(4)
    out = deform_conv2d_sampled(x, torch.zeros_like(offset), weight)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, padding=1))


def test_deform_block_impls_agree_and_share_parameters():
    torch.manual_seed(0)
    block = DeformBlock(6, 5, offset_init="default", impl="sampled")
    x = torch.randn(2, 6, 8, 8)
    fast = block(x)
    block.impl = "torchvision"
    torch.testing.assert_close(fast, block(x), atol=1e-5, rtol=1e-5)
    assert block.impl == "torchvision" and set(dict(block.named_parameters())) == {
        "offsets.weight",
        "offsets.bias",
        "deform.weight",
    }
    with pytest.raises(ValueError, match="impl must be one of"):
        DeformBlock(4, 4, impl="cuda")


def test_shape_mismatch_names_the_expected_offset_shape():
    x, offset, weight = _inputs(5)
    with pytest.raises(ValueError, match=r"expected offset \(B, 18, 7, 9\)"):
        deform_conv2d_sampled(x, offset[:, :, :-1], weight)
